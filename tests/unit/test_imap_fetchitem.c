/*
 * Unit tests for proxy/imap_fetchitem.c: the FETCH response tokenizer.
 *
 * Every response is fed whole, split in two at every byte boundary, and one byte at a time
 * (the relay feeds whatever the framer hands it); each literal's kind is asked where the relay
 * asks, right after its "{n}\r\n" (the literal's data is never fed). All feeding styles must
 * give the same literal kinds, UID, quoted content spans and error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "imap_fetchitem.h"

#define MAXLIT 16

struct res {
    unsigned nlits;
    enum fi_kind kind[MAXLIT];
    uint64_t origin[MAXLIT];
    uint64_t uid;
    bool uid_late;
    bool err;
    bool done;
    unsigned nspans;
    struct fi_span spans[FI_SPANS_MAX];
};

/* Where a literal header ends: after "{digits[+]}\r\n" (quoted strings never hold a CR). */
static bool lit_end_at(const char *t, size_t i)
{
    if (i < 4 || t[i - 1] != '\n' || t[i - 2] != '\r' || t[i - 3] != '}')
        return false;
    size_t j = i - 4;
    if (t[j] == '+')
        j--;
    size_t d = 0;
    while (j > 0 && t[j] >= '0' && t[j] <= '9') {
        j--;
        d++;
    }
    return d > 0 && t[j] == '{';
}

static void note_lit(struct res *r, const struct fetch_items *f)
{
    assert_true(r->nlits < MAXLIT);
    r->kind[r->nlits] = fi_literal_kind(f, &r->origin[r->nlits]);
    r->nlits++;
}

static void finish(struct res *r, const struct fetch_items *f)
{
    r->uid = f->uid;
    r->uid_late = f->uid_late;
    r->err = fi_error(f) != NULL;
    r->done = f->done;
    const struct fi_span *sp = fi_spans(f, &r->nspans);
    assert_true(r->nspans <= FI_SPANS_MAX);
    memcpy(r->spans, sp, r->nspans * sizeof *sp);
    assert_int_equal(fi_quoted_content(f), r->nspans > 0);
}

/* Feed t in pieces no longer than `step` (0 = whole), also cutting at `cut` and at every
 * literal header's end (where the relay asks). */
static void run(const char *t, size_t step, size_t cut, struct res *r)
{
    struct fetch_items f;
    size_t n = strlen(t), i = 0;
    memset(r, 0, sizeof *r);
    fi_init(&f);
    while (i < n) {
        size_t j = i + 1;
        while (j < n && !lit_end_at(t, j) && j != cut && (step == 0 || j - i < step))
            j++;
        fi_feed(&f, t + i, j - i);
        if (lit_end_at(t, j))
            note_lit(r, &f);
        i = j;
    }
    finish(r, &f);
}

static void same(const struct res *a, const struct res *b)
{
    assert_int_equal(a->nlits, b->nlits);
    for (unsigned i = 0; i < a->nlits; i++) {
        assert_int_equal(a->kind[i], b->kind[i]);
        assert_int_equal(a->origin[i], b->origin[i]);
    }
    assert_int_equal(a->uid, b->uid);
    assert_int_equal(a->uid_late, b->uid_late);
    assert_int_equal(a->err, b->err);
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->nspans, b->nspans);
    for (unsigned i = 0; i < a->nspans; i++) {
        assert_int_equal(a->spans[i].off, b->spans[i].off);
        assert_int_equal(a->spans[i].len, b->spans[i].len);
    }
}

/* Feed every way; return the (identical) result. */
static struct res feed(const char *t)
{
    struct res whole, other;
    run(t, 0, (size_t)-1, &whole);
    run(t, 1, (size_t)-1, &other);
    same(&whole, &other);
    for (size_t k = 1; k < strlen(t); k++) {
        run(t, 0, k, &other);
        same(&whole, &other);
    }
    return whole;
}

/* The kind of the last literal of t. */
static enum fi_kind kind_of(const char *t, uint64_t *origin_r)
{
    struct res r = feed(t);
    assert_true(r.nlits > 0);
    if (origin_r)
        *origin_r = r.origin[r.nlits - 1];
    return r.kind[r.nlits - 1];
}

/* The quoted text of span i of t. */
static void assert_span(const char *t, const struct res *r, unsigned i, const char *want)
{
    assert_true(i < r->nspans);
    assert_int_equal(r->spans[i].len, strlen(want));
    assert_memory_equal(t + r->spans[i].off, want, strlen(want));
}

static void test_whole(void **state)
{
    (void)state;
    assert_int_equal(kind_of("* 1 FETCH (BODY[] {12}\r\n", NULL), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (RFC822 {12}\r\n", NULL), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[] ~{12}\r\n", NULL),
                     FI_PART); /* BINARY[] is the server's decoding: judged on BODY[] */
    assert_int_equal(kind_of("* 1 FETCH (BODY.PEEK[] {12}\r\n", NULL), FI_WHOLE);
    const char *t = "* 7 FETCH (UID 42 FLAGS (\\Seen \\Answered) body[] {3}\r\n";
    struct res r = feed(t);
    assert_int_equal(r.kind[0], FI_WHOLE);
    assert_int_equal(r.uid, 42);
    assert_false(r.uid_late);
    t = "* 7 FETCH (FLAGS () RFC822.SIZE 100 INTERNALDATE \"01-Jan-2025 10:00:00 +0000\" UID 9 "
        "BODY[] {3}\r\n";
    r = feed(t);
    assert_int_equal(r.kind[0], FI_WHOLE);
    assert_int_equal(r.uid, 9);
    assert_int_equal(r.nspans, 0);
    assert_false(r.err);
}

static void test_partial_and_parts(void **state)
{
    (void)state;
    uint64_t o;
    assert_int_equal(kind_of("* 1 FETCH (UID 3 BODY[]<65536> {100}\r\n", &o), FI_PARTIAL);
    assert_int_equal(o, 65536);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[]<10> ~{100}\r\n", &o), FI_PART);
    assert_int_equal(o, 10);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2] {100}\r\n", &o), FI_PART);
    assert_int_equal(o, 0);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2.1]<10> {100}\r\n", &o), FI_PART);
    assert_int_equal(o, 10);
    assert_int_equal(kind_of("* 1 FETCH (BODY[TEXT] {100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[1.TEXT] {100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (RFC822.TEXT {100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[2] ~{100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BINARY.PEEK[2.3]<7> {100}\r\n", &o), FI_PART);
    assert_int_equal(o, 7);
}

static void test_nested_headers_are_content(void **state)
{
    (void)state;
    assert_int_equal(kind_of("* 1 FETCH (BODY[2.HEADER] {100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2.MIME] {100}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[1.2.HEADER.FIELDS (FROM TO)] {100}\r\n", NULL),
                     FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[3.HEADER.FIELDS.NOT (X)] {100}\r\n", NULL), FI_PART);
}

static void test_not_content(void **state)
{
    (void)state;
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER] {100}\r\n", NULL), FI_NONE);
    assert_int_equal(
        kind_of("* 1 FETCH (BODY[HEADER.FIELDS (FROM TO \"SUBJECT\")] {100}\r\n", NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS.NOT (X-A)] {100}\r\n", NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (RFC822.HEADER {100}\r\n", NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (ENVELOPE (\"date\" {100}\r\n", NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (BINARY.SIZE[1] 55 BODY[HEADER] {3}\r\n", NULL), FI_NONE);
    /* a very long HEADER.FIELDS list: nothing is cut, still a header */
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS (A1 A2 A3 A4 A5 A6 A7 A8 A9 B1 B2 "
                             "B3 B4 B5 B6 B7 B8 B9 C1 C2 C3 C4 C5 C6 \"D]\" E])] {5}\r\n",
                             NULL),
                     FI_NONE);
    struct res r = feed("* 1 FETCH (BODY[HEADER] \"x\" FLAGS (a) INTERNALDATE \"d\" "
                        "BODYSTRUCTURE (\"text\" \"plain\" NIL NIL NIL \"7bit\" 1 1))\r\n");
    assert_int_equal(r.nspans, 0);
    assert_false(r.err);
    assert_true(r.done);
}

/* The bug of issue 15: a "[" (or "]", "(") in a keyword decided what the literal was. */
static void test_keywords_with_brackets(void **state)
{
    (void)state;
    assert_int_equal(kind_of("* 1 FETCH (FLAGS (foo[) BODY[] {5}\r\n", NULL), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (FLAGS (\\Seen foo[ x] y[z] [ ]) BODY[] {5}\r\n", NULL),
                     FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (FLAGS (foo[HEADER]) BODY[1] {5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (FLAGS (foo[ bar[) UID 5 BODY.PEEK[1] {5}\r\n", NULL),
                     FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (FLAGS (\\Foo[) RFC822 {5}\r\n", NULL), FI_WHOLE);
    /* a "(" in FLAGS is not a flag: the response is unjudgeable, never NONE */
    struct res r = feed("* 1 FETCH (FLAGS (y() BODY[] {5}\r\n");
    assert_true(r.err);
    assert_int_equal(r.kind[0], FI_PART);
    r = feed("* 1 FETCH (FLAGS (y( BODY[HEADER]) {5}\r\n");
    assert_true(r.err);
    assert_int_equal(r.kind[0], FI_PART);
}

static void test_quoted_specials(void **state)
{
    (void)state;
    const char *t = "* 1 FETCH (INTERNALDATE \"[{5}\\\"(\" BODY[] {5}\r\n";
    struct res r = feed(t);
    assert_int_equal(r.kind[0], FI_WHOLE);
    assert_int_equal(r.nspans, 0);
    /* strings of an unknown item are content; a literal after them is what its name says */
    t = "* 1 FETCH (X-GM-LABELS (\"BODY[]\" \"a{5}\" \"q\\\"[\") BODY[HEADER] {5}\r\n";
    r = feed(t);
    assert_int_equal(r.kind[0], FI_NONE);
    assert_int_equal(r.nspans, 3);
    assert_span(t, &r, 0, "\"BODY[]\"");
    assert_span(t, &r, 2, "\"q\\\"[\"");
    assert_false(r.err);
}

static void test_envelope_bodystructure(void **state)
{
    (void)state;
    const char *t = "* 3 FETCH (ENVELOPE (\"d\" {4}\r\n NIL ((\"a[b\" NIL \"x]\" \"y(\"))"
                    "((NIL NIL \"c\" \"d\")(\"e\" NIL {3}\r\n \"f\")) NIL NIL NIL NIL \"<m[1]>\") "
                    "BODYSTRUCTURE ((\"text\" \"plain\" (\"name\" \"a[1].txt\") NIL NIL \"7bit\" "
                    "5 1)(\"application\" \"zip\" (\"name*0\" \"]x[\") NIL NIL \"base64\" 10) "
                    "\"mixed\") UID 77 BODY[]<0> {10}\r\n";
    struct res r = feed(t);
    assert_int_equal(r.nlits, 3);
    assert_int_equal(r.kind[0], FI_NONE);
    assert_int_equal(r.kind[1], FI_NONE);
    assert_int_equal(r.kind[2], FI_PARTIAL);
    assert_int_equal(r.uid, 77);
    assert_true(r.uid_late); /* after the ENVELOPE literals */
    assert_int_equal(r.nspans, 0);
    assert_false(r.err);
}

static void test_header_fields_literal(void **state)
{
    (void)state;
    struct res r = feed("* 1 FETCH (BODY[HEADER.FIELDS ({4}\r\n TO)] {10}\r\n)\r\n");
    assert_int_equal(r.nlits, 2);
    assert_int_equal(r.kind[0], FI_NONE);
    assert_int_equal(r.kind[1], FI_NONE);
    assert_true(r.done);
    assert_false(r.err);
    r = feed("* 1 FETCH (BODY[2.HEADER.FIELDS ({4}\r\n)] {10}\r\n)\r\n");
    assert_int_equal(r.kind[0], FI_NONE);
    assert_int_equal(r.kind[1], FI_PART);
}

static void test_literal8_and_binary(void **state)
{
    (void)state;
    assert_int_equal(kind_of("* 1 FETCH (BINARY[TEXT] ~{5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[1.MIME] {5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BINARY.SIZE[] 5 BODY[] ~{5}\r\n", NULL), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (BINARY.SIZE[1] ~{5}\r\n", NULL), FI_PART);
}

static void test_unknown_items(void **state)
{
    (void)state;
    const char *t = "* 1 FETCH (UID 4 PREVIEW \"X5O!P%@AP[4\\\\PZX54(P^)7CC)7}\")\r\n";
    struct res r = feed(t);
    assert_int_equal(r.nlits, 0);
    assert_int_equal(r.nspans, 1);
    assert_span(t, &r, 0, "\"X5O!P%@AP[4\\\\PZX54(P^)7CC)7}\"");
    assert_true(r.done);
    assert_false(r.err);
    t = "* 1 FETCH (SNIPPET (FUZZY \"body text\") UID 4)\r\n";
    r = feed(t);
    assert_int_equal(r.nspans, 1);
    assert_span(t, &r, 0, "\"body text\"");
    assert_int_equal(r.uid, 4);
    assert_int_equal(kind_of("* 1 FETCH (PREVIEW {40}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (X-FOO (a (b {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (X-FOO[1] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[MIME] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[0] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[1..2] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[1.] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER (X)] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS.NOTX (A)] {4}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS ()] {4}\r\n", NULL), FI_PART);
    /* known items with a value of the wrong syntax are unknown */
    assert_int_equal(kind_of("* 1 FETCH (INTERNALDATE {5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (FLAGS ({5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (UID {5}\r\n", NULL), FI_PART);
    r = feed("* 1 FETCH (RFC822.SIZE \"5\" FLAGS (\"a\") ENVELOPE \"e\")\r\n");
    assert_int_equal(r.nspans, 3);
    /* empty strings and NIL carry nothing */
    r = feed("* 1 FETCH (PREVIEW \"\" SNIPPET NIL BODY[1] \"\" BODY[2] NIL)\r\n");
    assert_int_equal(r.nspans, 0);
    assert_false(r.err);
}

static void test_long_names(void **state)
{
    (void)state;
    assert_int_equal(
        kind_of("* 1 FETCH (BODYSTRUCTUREXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX {5}\r\n", NULL),
        FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (FLAGSFLAGSFLAGSFLAGSFLAGS (a {5}\r\n", NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BODY.PEEK.XXXXXXXXXXXXXXXXXXXXXX[] {5}\r\n", NULL),
                     FI_PART);
    assert_int_equal(
        kind_of("* 1 FETCH (BODY[HEADER.FIELDS.NOT.XXXXXXXXXXXXXXXX (A)] {5}\r\n", NULL), FI_PART);
    /* long digit runs in a section are fine (no buffer), a long number is not a uid */
    assert_int_equal(kind_of("* 1 FETCH (BODY[1.22222222222222222222222222222.3] {5}\r\n", NULL),
                     FI_PART);
    struct res r = feed("* 1 FETCH (UID 123456789012345678901234567890)\r\n");
    assert_int_equal(r.uid, 0);
}

static void test_quoted_content_spans(void **state)
{
    (void)state;
    const char *t =
        "* 2 FETCH (BODY[1] \"hello\" RFC822.TEXT \"a\\\"b\" BODY[]<4> \"xy\" UID 8)\r\n";
    struct res r = feed(t);
    assert_int_equal(r.nspans, 3);
    assert_span(t, &r, 0, "\"hello\"");
    assert_span(t, &r, 1, "\"a\\\"b\"");
    assert_span(t, &r, 2, "\"xy\"");
    assert_int_equal(r.uid, 8);
    assert_false(r.err);
    /* offsets count fed bytes only (literal data is never fed) */
    t = "* 2 FETCH (BODY[HEADER] {3}\r\n BODY[TEXT] \"t\")\r\n";
    r = feed(t);
    assert_span(t, &r, 0, "\"t\"");
    /* more than FI_SPANS_MAX: an error */
    r = feed("* 2 FETCH (X (\"1\" \"2\" \"3\" \"4\" \"5\" \"6\" \"7\" \"8\" \"9\"))\r\n");
    assert_true(r.err);
    assert_int_equal(r.nspans, FI_SPANS_MAX);
}

static void test_uid_after_literal(void **state)
{
    (void)state;
    struct res r = feed("* 3 FETCH (BODY[1] {5}\r\n UID 9)\r\n");
    assert_int_equal(r.kind[0], FI_PART);
    assert_int_equal(r.uid, 9);
    assert_true(r.uid_late);
    assert_true(r.done);
    /* a UID inside another item's value is not the message's */
    r = feed("* 3 FETCH (X-FOO (UID 5) BODY[] NIL)\r\n");
    assert_int_equal(r.uid, 0);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {
        "* 1 FETCH (FLAGS (a)) BODY[] {5}\r\n",
        "* 1 FETCH (FOO] {5}\r\n",
        "* 1 FETCH (FLAGS (a) ]BODY[] {5}\r\n",
        "* 1 FETCH BODY[] {5}\r\n",
        "* 1 FETCH (FLAGS (a)\r\n",
        "* 1 FETCH (BODY[]x {5}\r\n",
        "* 1 FETCH (BODY[] foo)\r\n",
        "* 1 FETCH (BODY[] (a))\r\n",
        "* 1 FETCH (BODY[]<> {5}\r\n",
        "* 1 FETCH (BODY[]<1.2> {5}\r\n",
        "* 1 FETCH (BODY[(] {5}\r\n",
        "* 1 FETCH (FLAGS (a)  UID 1)\r\n",
        "* 1 FETCH (FLAGS (a) )\r\n",
        "* 1 FETCH ()\r\n",
        "* 1 FETCH (UID 1)\r\nX",
        "* 1 FETCH (UID 1)\n",
        "* 1 FETCH (X \"a\rb\")\r\n",
        "* 1 FETCH (X \"a\\b\")\r\n",
        "* 1 FETCH (X a{5}\r\n",
        "* 1 FETCH (X {5\r\n",
        "* 1 FETCH (X {}\r\n",
        "* 1 FETCH (X ~(5}\r\n",
        "* 1 FETCH (X {5} \r\n",
        "* 1 FETCH (X (a\"b\"))\r\n",
        "* 1 FETCH (X (\"a\"\"b\"))\r\n",
        "* 1 FETCH (X (\"a\"(b)))\r\n",
        "* x FETCH (UID 1)\r\n",
        "* 1 FETCHX (UID 1)\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct res r = feed(bad[i]);
        if (!r.err)
            fail_msg("not an error: %s", bad[i]);
        for (unsigned k = 0; k < r.nlits; k++)
            assert_true(r.kind[k] == FI_PART || k + 1 < r.nlits);
    }
    /* well-formed edge cases */
    static const char *good[] = {
        "* 1 FETCH (FLAGS ())\r\n",
        "* 1 FETCH (X (()) Y ((a)(b)) Z {0}\r\n)\r\n",
        "* 1 FETCH (X ~{5}\r\n Y {5+}\r\n)\r\n",
        "* 1 FETCH (BODY[] NIL)\r\n",
        "* 1 FETCH (X \"\\\\\")\r\n",
        "* 1 fetch (x y)\r\n",
        "* 1 FETCH (X \"\xc3\xa4\")\r\n",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        struct res r = feed(good[i]);
        if (r.err || !r.done)
            fail_msg("not accepted: %s", good[i]);
    }
}

/* What a relay may let go of a long line before the response is complete. */
static void test_may_release(void **state)
{
    (void)state;
    struct fetch_items f;
    static const struct {
        const char *text;
        bool ok;
    } cases[] = {
        {"* 1 FETCH (FLAGS (foo[) ENVELOPE (\"a long subj", true},
        {"* 1 FETCH (BODYSTRUCTURE ((\"text\" \"plain\" (\"name\" \"x", true},
        {"* 1 FETCH (PREVIEW \"the start of the body", false},
        {"* 1 FETCH (BODY[1] \"a part", false},
        {"* 1 FETCH (X-FOO (a \"b", false},
        {"* 1 FETCH (PREVIEW \"x\" ENVELOPE (\"a", false},
        {"* 1 FETCH (FLAGS (y() ENVELOPE (\"a", false},
        {"* 1 FETCH (PREVIEW \"\" ENVELOPE (\"a", true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fi_init(&f);
        fi_feed(&f, cases[i].text, strlen(cases[i].text));
        if (fi_may_release(&f) != cases[i].ok)
            fail_msg("fi_may_release wrong for: %s", cases[i].text);
    }
}

static void test_is_fetch(void **state)
{
    (void)state;
    uint64_t seq = 0;
    assert_int_equal(fi_is_fetch("* 12 FETCH (", 12, &seq), 1);
    assert_int_equal(seq, 12);
    assert_int_equal(fi_is_fetch("* 12 fetch (", 12, &seq), 1);
    assert_int_equal(fi_is_fetch("* 12 FET", 8, &seq), -1);
    assert_int_equal(fi_is_fetch("* 1", 3, &seq), -1);
    assert_int_equal(fi_is_fetch("* 12 EXISTS", 11, &seq), 0);
    assert_int_equal(fi_is_fetch("* OK [UIDVALIDITY 1]", 20, &seq), 0);
    assert_int_equal(fi_is_fetch("A1 OK FETCH done", 16, &seq), 0);
    assert_int_equal(fi_is_fetch("*", 1, &seq), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole),
        cmocka_unit_test(test_partial_and_parts),
        cmocka_unit_test(test_nested_headers_are_content),
        cmocka_unit_test(test_not_content),
        cmocka_unit_test(test_keywords_with_brackets),
        cmocka_unit_test(test_quoted_specials),
        cmocka_unit_test(test_envelope_bodystructure),
        cmocka_unit_test(test_header_fields_literal),
        cmocka_unit_test(test_literal8_and_binary),
        cmocka_unit_test(test_unknown_items),
        cmocka_unit_test(test_long_names),
        cmocka_unit_test(test_quoted_content_spans),
        cmocka_unit_test(test_uid_after_literal),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_may_release),
        cmocka_unit_test(test_is_fetch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
