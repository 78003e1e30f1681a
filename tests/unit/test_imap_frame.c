/*
 * Unit tests for the IMAP relay framer (proxy/imap_parse.c, imap_frame).
 *
 * Each test states an input and the exact event trace it must produce. check() runs the input
 * fed whole, one byte at a time, split in two at every position and (for short inputs) in three
 * at every pair of positions, and requires the same trace every time. Chunks are copied into
 * buffers of their exact size so ASan catches any read past what the framer was given.
 *
 * Trace syntax, one event per line:
 *   LITERAL n[+][~] "head"   (head = f->head as it stands, the first line without its CRLF)
 *   LITERAL_END
 *   END nliterals "head"
 *   ERROR why
 *   MORE                     (the input ended inside a command/response)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imap_parse.h"

#define TRACE_MAX 8192

struct trace {
    char s[TRACE_MAX];
    size_t len;
};

static void trace_add(struct trace *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, sizeof t->s - t->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof t->s - t->len);
    t->len += (size_t)n;
}

static void trace_head(struct trace *t, const struct imap_framer *f)
{
    assert_true(f->head_len <= IMAP_HEAD_MAX);
    trace_add(t, " \"");
    for (size_t i = 0; i < f->head_len; i++) {
        unsigned char c = (unsigned char)f->head[i];
        if (c == '"' || c == '\\')
            trace_add(t, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            trace_add(t, "\\x%02x", c);
        else
            trace_add(t, "%c", c);
    }
    trace_add(t, "\"");
}

/*
 * Frame `in` delivered as chunks ending at ends[0..nends-1] (the last is len), the way the relay
 * does: call until a chunk is used up, stop at ERROR. Checks the no-spin rule: a call given
 * bytes may consume none only when it returns LITERAL_END (once) or a sticky ERROR.
 */
static void run(const char *in, size_t len, size_t max_line, const size_t *ends, size_t nends,
                struct trace *t)
{
    struct imap_framer f;
    imap_framer_init(&f, max_line);
    assert_true(imap_framer_at_boundary(&f));
    t->len = 0;
    t->s[0] = '\0';
    size_t start = 0;
    bool stop = false, pending = false, last_zero = false;
    assert_int_equal(ends[nends - 1], len);
    for (size_t c = 0; c < nends && !stop; c++) {
        size_t clen = ends[c] - start;
        char *chunk = malloc(clen ? clen : 1);
        assert_non_null(chunk);
        memcpy(chunk, in + start, clen);
        size_t off = 0;
        while (off < clen) {
            size_t used = 12345;
            enum imap_frame_event ev = imap_frame(&f, chunk + off, clen - off, &used);
            assert_true(used <= clen - off);
            if (used == 0) {
                assert_true(ev == IMAP_FRAME_LITERAL_END || ev == IMAP_FRAME_ERROR);
                assert_false(last_zero);
            }
            last_zero = used == 0;
            off += used;
            if (used > 0)
                pending = true;
            assert_true(f.head_len <= IMAP_HEAD_MAX);
            switch (ev) {
            case IMAP_FRAME_MORE:
                assert_int_equal(off, clen);
                assert_false(imap_framer_at_boundary(&f));
                break;
            case IMAP_FRAME_LITERAL:
                assert_int_equal(f.literal_left, f.literal_len);
                assert_true(f.nliterals > 0);
                assert_false(imap_framer_at_boundary(&f));
                trace_add(t, "LITERAL %llu%s%s", (unsigned long long)f.literal_len,
                          f.literal_plus ? "+" : "", f.literal_binary ? "~" : "");
                trace_head(t, &f);
                trace_add(t, "\n");
                break;
            case IMAP_FRAME_LITERAL_END:
                assert_int_equal(f.literal_left, 0);
                assert_false(imap_framer_at_boundary(&f));
                trace_add(t, "LITERAL_END\n");
                break;
            case IMAP_FRAME_END:
                assert_true(imap_framer_at_boundary(&f));
                trace_add(t, "END %u", f.nliterals);
                trace_head(t, &f);
                trace_add(t, "\n");
                pending = false;
                break;
            case IMAP_FRAME_ERROR:
                assert_non_null(f.error);
                trace_add(t, "ERROR %s\n", f.error);
                stop = true;
                break;
            }
            if (stop)
                break;
        }
        free(chunk);
        start = ends[c];
    }
    if (pending && !stop)
        trace_add(t, "MORE\n");
}

static void expect_trace(const char *mode, const struct trace *got, const char *want)
{
    if (strcmp(got->s, want) != 0) {
        print_error("fed %s:\n--- expected\n%s--- got\n%s", mode, want, got->s);
        fail();
    }
}

static struct trace got; /* large: keep it off the stack */

static void check_n(const char *in, size_t len, size_t max_line, const char *want)
{
    char mode[64];
    size_t whole = len;
    run(in, len, max_line, &whole, 1, &got);
    expect_trace("whole", &got, want);

    size_t *ends = malloc((len ? len : 1) * sizeof *ends);
    assert_non_null(ends);
    for (size_t i = 0; i < len; i++)
        ends[i] = i + 1;
    if (len > 0) {
        run(in, len, max_line, ends, len, &got);
        expect_trace("one byte at a time", &got, want);
    }
    free(ends);

    for (size_t k = 0; k <= len; k++) {
        size_t two[2] = {k, len};
        run(in, len, max_line, two, 2, &got);
        snprintf(mode, sizeof mode, "split at %zu", k);
        expect_trace(mode, &got, want);
    }
    if (len <= 96) {
        for (size_t a = 1; a < len; a++) {
            for (size_t b = a + 1; b < len; b++) {
                size_t three[3] = {a, b, len};
                run(in, len, max_line, three, 3, &got);
                snprintf(mode, sizeof mode, "split at %zu and %zu", a, b);
                expect_trace(mode, &got, want);
            }
        }
    }
}

static void check(const char *in, size_t max_line, const char *want)
{
    check_n(in, strlen(in), max_line, want);
}

/* ---------- responses ---------- */

static void test_fetch_body_literal(void **state)
{
    (void)state;
    check("* 1 FETCH (UID 5 BODY[] {11}\r\nhello world)\r\n", 1024,
          "LITERAL 11 \"* 1 FETCH (UID 5 BODY[] {11}\"\n"
          "LITERAL_END\n"
          "END 1 \"* 1 FETCH (UID 5 BODY[] {11}\"\n");
}

static void test_tagged_untagged_continuation(void **state)
{
    (void)state;
    check("* 3 EXISTS\r\n+ Ready for literal\r\n+ \r\na1 OK [READ-WRITE] SELECT completed\r\n",
          1024,
          "END 0 \"* 3 EXISTS\"\n"
          "END 0 \"+ Ready for literal\"\n"
          "END 0 \"+ \"\n"
          "END 0 \"a1 OK [READ-WRITE] SELECT completed\"\n");
}

static void test_capability_greeting(void **state)
{
    (void)state;
    check("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR] ready\r\n", 1024,
          "END 0 \"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR] ready\"\n");
}

static void test_quoted_brace_not_literal(void **state)
{
    (void)state;
    check("* LIST () \"/\" \"{5}\"\r\n* LIST () \"/\" \"a {5}\r\n", 1024,
          "END 0 \"* LIST () \\\"/\\\" \\\"{5}\\\"\"\n"
          /* An unterminated quote still hides the brace; the line end resets quoting. */
          "END 0 \"* LIST () \\\"/\\\" \\\"a {5}\"\n");
}

static void test_escaped_quote_inside_quote(void **state)
{
    (void)state;
    /* "a\"{3}" is one quoted string: the {3} is inside it, so no literal. Then a real one. */
    check("* LIST () \"/\" \"a\\\"{3}\"\r\n* LIST () \"/\" \"a\\\\\" {3}\r\nabc\r\n", 1024,
          "END 0 \"* LIST () \\\"/\\\" \\\"a\\\\\\\"{3}\\\"\"\n"
          "LITERAL 3 \"* LIST () \\\"/\\\" \\\"a\\\\\\\\\\\" {3}\"\n"
          "LITERAL_END\n"
          "END 1 \"* LIST () \\\"/\\\" \\\"a\\\\\\\\\\\" {3}\"\n");
}

static void test_envelope_multiple_literals(void **state)
{
    (void)state;
    check("* 2 FETCH (ENVELOPE (\"date\" {7}\r\nsubject ((\"n\" NIL {3}\r\nbob \"x.org\")) "
          "NIL) BODY[HEADER] {0}\r\n)\r\n* 3 EXPUNGE\r\n",
          1024,
          "LITERAL 7 \"* 2 FETCH (ENVELOPE (\\\"date\\\" {7}\"\n"
          "LITERAL_END\n"
          "LITERAL 3 \"* 2 FETCH (ENVELOPE (\\\"date\\\" {7}\"\n"
          "LITERAL_END\n"
          "LITERAL 0 \"* 2 FETCH (ENVELOPE (\\\"date\\\" {7}\"\n"
          "LITERAL_END\n"
          "END 3 \"* 2 FETCH (ENVELOPE (\\\"date\\\" {7}\"\n"
          "END 0 \"* 3 EXPUNGE\"\n");
}

/* {0}: LITERAL, then LITERAL_END consuming nothing, exactly once, then the line goes on. */
static void test_zero_literal(void **state)
{
    (void)state;
    check("* 1 FETCH (BODY[] {0}\r\n)\r\n", 1024,
          "LITERAL 0 \"* 1 FETCH (BODY[] {0}\"\n"
          "LITERAL_END\n"
          "END 1 \"* 1 FETCH (BODY[] {0}\"\n");

    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, 1024);
    const char *s = "* 1 FETCH (BODY[] {0}\r\n)\r\n";
    assert_int_equal(imap_frame(&f, s, strlen(s), &used), IMAP_FRAME_LITERAL);
    assert_int_equal(used, 23);
    assert_int_equal(f.literal_len, 0);
    /* Due even when the caller has no bytes at all (it may flush at the end of its buffer). */
    assert_int_equal(imap_frame(&f, s + 23, 0, &used), IMAP_FRAME_LITERAL_END);
    assert_int_equal(used, 0);
    assert_int_equal(imap_frame(&f, s + 23, 3, &used), IMAP_FRAME_END);
    assert_int_equal(used, 3);
}

static void test_binary_literal_n(void **state)
{
    (void)state;
    const char in[] = "* 1 FETCH (BINARY[] ~{3}\r\n\0\1\2)\r\n";
    check_n(in, sizeof in - 1, 1024,
            "LITERAL 3~ \"* 1 FETCH (BINARY[] ~{3}\"\n"
            "LITERAL_END\n"
            "END 1 \"* 1 FETCH (BINARY[] ~{3}\"\n");
}

/* ---------- commands ---------- */

static void test_append_literal_plus(void **state)
{
    (void)state;
    check("a1 APPEND INBOX (\\Seen) {5+}\r\nhello\r\na2 NOOP\r\n", 1024,
          "LITERAL 5+ \"a1 APPEND INBOX (\\\\Seen) {5+}\"\n"
          "LITERAL_END\n"
          "END 1 \"a1 APPEND INBOX (\\\\Seen) {5+}\"\n"
          "END 0 \"a2 NOOP\"\n");
}

static void test_append_binary_plus(void **state)
{
    (void)state;
    check("a1 APPEND INBOX ~{2+}\r\n\r\n {1}\r\nx\r\n", 1024,
          "LITERAL 2+~ \"a1 APPEND INBOX ~{2+}\"\n"
          "LITERAL_END\n"
          "LITERAL 1 \"a1 APPEND INBOX ~{2+}\"\n"
          "LITERAL_END\n"
          "END 2 \"a1 APPEND INBOX ~{2+}\"\n");
}

/* Literal contents that look like lines, quotes and literal headers are skipped blindly. */
static void test_literal_contents_opaque(void **state)
{
    (void)state;
    check("a1 APPEND x {14}\r\n\"{5}\r\na {3}\r\n\r\n", 1024,
          "LITERAL 14 \"a1 APPEND x {14}\"\n"
          "LITERAL_END\n"
          "END 1 \"a1 APPEND x {14}\"\n");
}

static void test_lf_only(void **state)
{
    (void)state;
    check("* OK hi\na1 LOGIN {2}\nab\n* BYE\n", 1024,
          "END 0 \"* OK hi\"\n"
          "LITERAL 2 \"a1 LOGIN {2}\"\n"
          "LITERAL_END\n"
          "END 1 \"a1 LOGIN {2}\"\n"
          "END 0 \"* BYE\"\n");
}

static void test_not_literal_headers(void **state)
{
    (void)state;
    /* Not at the line end, empty, a lone "+", text after "}", CR not directly before LF. */
    check("* OK {5} x\r\n* OK {}\r\n* OK {+}\r\n* OK {5}x\r\n* OK {5}\r\r\n* OK ~5}\r\n", 1024,
          "END 0 \"* OK {5} x\"\n"
          "END 0 \"* OK {}\"\n"
          "END 0 \"* OK {+}\"\n"
          "END 0 \"* OK {5}x\"\n"
          "END 0 \"* OK {5}\\x0d\"\n"
          "END 0 \"* OK ~5}\"\n");
}

static void test_leading_zeros(void **state)
{
    (void)state;
    check("* 1 FETCH (BODY[] {00000000000000000002}\r\nab)\r\n", 1024,
          "LITERAL 2 \"* 1 FETCH (BODY[] {00000000000000000002}\"\n"
          "LITERAL_END\n"
          "END 1 \"* 1 FETCH (BODY[] {00000000000000000002}\"\n");
}

/* ---------- limits and errors ---------- */

static void test_literal_21_digits(void **state)
{
    (void)state;
    check("* 1 FETCH (BODY[] {000000000000000000002}\r\nab)\r\n", 1024,
          "ERROR literal length too large\n");
    check("* 1 FETCH (BODY[] {18446744073709551616}\r\n", 1024, "ERROR literal length too large\n");
    /* 2^64-1 itself is a valid length (the relay applies its own size limits). */
    check("* 1 FETCH (BODY[] {18446744073709551615}\r\nab", 1024,
          "LITERAL 18446744073709551615 \"* 1 FETCH (BODY[] {18446744073709551615}\"\n"
          "MORE\n");
    /* Too many digits are harmless when they are not a literal header. */
    check("* OK {000000000000000000000000000002} x\r\n", 1024,
          "END 0 \"* OK {000000000000000000000000000002} x\"\n");
}

static void test_line_too_long(void **state)
{
    (void)state;
    /* max_line 8: 8 bytes of text plus CRLF or LF pass, 9 do not. */
    check("a1 NOOPX\r\na1 NOOPX\n", 8, "END 0 \"a1 NOOPX\"\nEND 0 \"a1 NOOPX\"\n");
    check("a1 NOOPXY\r\n", 8, "ERROR line too long\n");
    check("a1 NOOPXY\n", 8, "ERROR line too long\n");
    check("a1 NOOPXYZZZZZZZZZZZZZZZ", 8, "ERROR line too long\n");
    check("a1 \"OOPXYZZZZZZZZZZZZZZZ", 8, "ERROR line too long\n");
    check("a1 {OOPXYZZZZZZZZZZZZZZZ", 8, "ERROR line too long\n");
    /* The count starts again after each literal. */
    check("a1 X {1}\r\nz 1234567\r\n", 8,
          "LITERAL 1 \"a1 X {1}\"\nLITERAL_END\nEND 1 \"a1 X {1}\"\n");
    check("a1 X {1}\r\nz 12345678\r\n", 8,
          "LITERAL 1 \"a1 X {1}\"\nLITERAL_END\n"
          "ERROR line too long\n");
}

/* After ERROR the framer is stuck and consumes nothing. */
static void test_error_sticky(void **state)
{
    (void)state;
    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, 4);
    assert_int_equal(imap_frame(&f, "abcdefgh", 8, &used), IMAP_FRAME_ERROR);
    assert_int_equal(imap_frame(&f, "\r\n", 2, &used), IMAP_FRAME_ERROR);
    assert_int_equal(used, 0);
    assert_string_equal(f.error, "line too long");
}

/* ---------- head ---------- */

static void test_head_capped(void **state)
{
    (void)state;
    char in[400], want[600];
    memset(in, 'x', 300);
    memcpy(in, "* 1 FETCH ", 10);
    memcpy(in + 300, "\r\n", 3);
    int n = snprintf(want, sizeof want, "END 0 \"%.*s\"\n", IMAP_HEAD_MAX, in);
    assert_true(n > 0);
    check_n(in, 302, 1024, want);
}

/* A CR that is the 128th byte of a longer line stays in the head; one before LF does not. */
static void test_head_cr_edge(void **state)
{
    (void)state;
    char in[200], want[400];
    memset(in, 'y', IMAP_HEAD_MAX - 1);
    memcpy(in + IMAP_HEAD_MAX - 1, "\r\n", 2);
    snprintf(want, sizeof want, "END 0 \"%.*s\"\n", IMAP_HEAD_MAX - 1, in);
    check_n(in, IMAP_HEAD_MAX + 1, 1024, want);

    memset(in, 'y', IMAP_HEAD_MAX);
    memcpy(in + IMAP_HEAD_MAX, "\r\n", 2);
    snprintf(want, sizeof want, "END 0 \"%.*s\"\n", IMAP_HEAD_MAX, in);
    check_n(in, IMAP_HEAD_MAX + 2, 1024, want);
}

/* The head is there while the first line is still arriving (the relay classifies on it). */
static void test_head_incremental(void **state)
{
    (void)state;
    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, 1024);
    assert_int_equal(imap_frame(&f, "a1 COMPR", 8, &used), IMAP_FRAME_MORE);
    assert_int_equal(f.head_len, 8);
    assert_memory_equal(f.head, "a1 COMPR", 8);
    assert_false(imap_framer_at_boundary(&f));
    assert_int_equal(imap_frame(&f, "ESS DEFLATE\r", 12, &used), IMAP_FRAME_MORE);
    assert_int_equal(imap_frame(&f, "\na2", 3, &used), IMAP_FRAME_END);
    assert_int_equal(used, 1);
    assert_int_equal(f.head_len, 19);
    assert_memory_equal(f.head, "a1 COMPRESS DEFLATE", 19);
    /* The head stays valid until the next command's first byte. */
    assert_true(imap_framer_at_boundary(&f));
    assert_int_equal(imap_frame(&f, "a2", 2, &used), IMAP_FRAME_MORE);
    assert_int_equal(f.head_len, 2);
    assert_int_equal(f.nliterals, 0);
}

/* Literal skipping takes one call whatever the size. */
static void test_literal_skip_one_step(void **state)
{
    (void)state;
    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, 1024);
    const char *h = "* 9 FETCH (RFC822 {1000000}\r\n";
    assert_int_equal(imap_frame(&f, h, strlen(h), &used), IMAP_FRAME_LITERAL);
    char *big = calloc(1, 1000000 + 3);
    assert_non_null(big);
    memcpy(big + 1000000, ")\r\n", 3);
    assert_int_equal(imap_frame(&f, big, 999999, &used), IMAP_FRAME_MORE);
    assert_int_equal(used, 999999);
    assert_int_equal(f.literal_left, 1);
    assert_int_equal(imap_frame(&f, big + 999999, 4, &used), IMAP_FRAME_LITERAL_END);
    assert_int_equal(used, 1);
    assert_int_equal(imap_frame(&f, big + 1000000, 3, &used), IMAP_FRAME_END);
    free(big);
}

/* ---------- unlimited mode (after login: issue 15) ---------- */

/* Feed `in` in random pieces (xorshift, fixed seed: reproducible) to an unlimited framer; the
 * events must be exactly `want` (LITERAL n, LITERAL_END, END), and every byte must be consumed
 * by the framer without anything being held: the relay streams what each call consumed. */
static void frame_random_pieces(const char *in, size_t len, uint64_t seed, size_t maxpiece,
                                const char *want)
{
    struct imap_framer f;
    imap_framer_init(&f, IMAP_LINE_UNLIMITED);
    struct trace *t = &got;
    t->len = 0;
    t->s[0] = '\0';
    size_t off = 0;
    uint64_t x = seed;
    while (off < len) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t piece = 1 + (size_t)(x % maxpiece);
        if (piece > len - off)
            piece = len - off;
        char *chunk = malloc(piece);
        assert_non_null(chunk);
        memcpy(chunk, in + off, piece);
        size_t coff = 0;
        while (coff < piece) {
            size_t used = 0;
            enum imap_frame_event ev = imap_frame(&f, chunk + coff, piece - coff, &used);
            assert_true(ev != IMAP_FRAME_ERROR);
            coff += used;
            if (ev == IMAP_FRAME_LITERAL)
                trace_add(t, "LITERAL %llu\n", (unsigned long long)f.literal_len);
            else if (ev == IMAP_FRAME_LITERAL_END)
                trace_add(t, "LITERAL_END\n");
            else if (ev == IMAP_FRAME_END)
                trace_add(t, "END %u\n", f.nliterals);
            else
                assert_int_equal(coff, piece);
        }
        free(chunk);
        off += piece;
    }
    expect_trace("random pieces", t, want);
}

/* A 1 MB line (a SEARCH answer, a UID STORE set) is framed whole, however it is split; its head
 * is its first IMAP_HEAD_MAX bytes. A limited framer refuses the same line. */
static void test_unlimited_1mb_line(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *in = malloc(n + 32);
    assert_non_null(in);
    memcpy(in, "* SEARCH", 8);
    for (size_t i = 8; i < n; i += 2)
        memcpy(in + i, " 7", 2);
    memcpy(in + n, "\r\na OK done\r\n", 13);
    for (uint64_t seed = 1; seed <= 4; seed++)
        frame_random_pieces(in, n + 13, seed * 0x9e3779b97f4a7c15ULL, 70000 / seed,
                            "END 0\nEND 0\n");
    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, IMAP_LINE_UNLIMITED);
    assert_int_equal(imap_frame(&f, in, n + 2, &used), IMAP_FRAME_END);
    assert_int_equal(used, n + 2);
    assert_int_equal(f.head_len, IMAP_HEAD_MAX);
    assert_memory_equal(f.head, "* SEARCH 7 7", 12);
    imap_framer_init(&f, 65536);
    assert_int_equal(imap_frame(&f, in, n + 2, &used), IMAP_FRAME_ERROR);
    free(in);
}

/* A literal header at the end of a long line is found however the line is split, also with
 * "{", the digits and "}" split across reads, and quoted braces before it do not count. */
static void test_unlimited_literal_after_long_line(void **state)
{
    (void)state;
    size_t n = 300000;
    char *in = malloc(n + 64);
    assert_non_null(in);
    memcpy(in, "* 1 FETCH (BODYSTRUCTURE (\"", 27);
    memset(in + 27, 'q', n - 27);
    memcpy(in + n - 6, "{9}x\" ", 6); /* a brace inside a quoted string: not a literal */
    int k = snprintf(in + n, 64, "BODY[] {12345}\r\n");
    size_t tot = n + (size_t)k;
    char *all = malloc(tot + 12345 + 3);
    assert_non_null(all);
    memcpy(all, in, tot);
    memset(all + tot, 'L', 12345);
    memcpy(all + tot + 12345, ")\r\n", 3);
    tot += 12345 + 3;
    for (uint64_t seed = 1; seed <= 6; seed++)
        frame_random_pieces(all, tot, seed * 0x2545f4914f6cdd1dULL, seed < 4 ? 7 : 50000,
                            "LITERAL 12345\nLITERAL_END\nEND 1\n");
    /* every split point of the header "{12345}\r\n" itself */
    for (size_t cut = n; cut < n + (size_t)k; cut++) {
        struct imap_framer f;
        size_t used, u2;
        imap_framer_init(&f, IMAP_LINE_UNLIMITED);
        assert_int_equal(imap_frame(&f, all, cut, &used), IMAP_FRAME_MORE);
        assert_int_equal(used, cut);
        enum imap_frame_event ev = imap_frame(&f, all + cut, tot - cut, &u2);
        assert_int_equal(ev, IMAP_FRAME_LITERAL);
        assert_int_equal(f.literal_len, 12345);
        assert_int_equal(cut + u2, n + (size_t)k);
    }
    free(all);
    free(in);
}

/* Command direction: a 100 KB UID STORE set and a {n+} literal at the end of a long APPEND line. */
static void test_unlimited_command_lines(void **state)
{
    (void)state;
    size_t n = 100000;
    char *in = malloc(n + 64);
    assert_non_null(in);
    memcpy(in, "a1 UID STORE 1", 14);
    for (size_t i = 14; i < n; i += 2)
        memcpy(in + i, ",9", 2);
    int k = snprintf(in + n, 64, " +FLAGS (\\Flagged)\r\na2 X ~{3+}\r\nabc\r\n");
    frame_random_pieces(in, n + (size_t)k, 77, 999, "END 0\nLITERAL 3\nLITERAL_END\nEND 1\n");
    free(in);
}

/* The server refused a sync literal: the client's next bytes are a new command, not data. */
static void test_cancel_literal(void **state)
{
    (void)state;
    struct imap_framer f;
    size_t used;
    imap_framer_init(&f, 1024);
    const char *s = "a1 APPEND INBOX {999999}\r\na2 COMPRESS DEFLATE\r\n";
    assert_int_equal(imap_frame(&f, s, strlen(s), &used), IMAP_FRAME_LITERAL);
    assert_true(imap_framer_cancel_literal(&f));
    assert_true(imap_framer_at_boundary(&f));
    assert_false(imap_framer_cancel_literal(&f)); /* nothing to cancel any more */
    s += used;
    assert_int_equal(imap_frame(&f, s, strlen(s), &used), IMAP_FRAME_END);
    assert_int_equal(used, strlen(s));
    assert_int_equal(f.nliterals, 0);
    assert_memory_equal(f.head, "a2 COMPRESS DEFLATE", f.head_len);

    /* Not once literal bytes have been consumed, and never for {n+}. */
    imap_framer_init(&f, 1024);
    assert_int_equal(imap_frame(&f, "a {3}\r\nx", 9, &used), IMAP_FRAME_LITERAL);
    assert_int_equal(imap_frame(&f, "x", 1, &used), IMAP_FRAME_MORE);
    assert_false(imap_framer_cancel_literal(&f));
    imap_framer_init(&f, 1024);
    assert_int_equal(imap_frame(&f, "a {3+}\r\n", 8, &used), IMAP_FRAME_LITERAL);
    assert_false(imap_framer_cancel_literal(&f));
    imap_framer_init(&f, 1024);
    assert_false(imap_framer_cancel_literal(&f)); /* text state */
    /* {0}: cancelling is fine too (LITERAL_END is then not reported). */
    assert_int_equal(imap_frame(&f, "a {0}\r\n", 7, &used), IMAP_FRAME_LITERAL);
    assert_true(imap_framer_cancel_literal(&f));
    assert_int_equal(imap_frame(&f, "b\r\n", 3, &used), IMAP_FRAME_END);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_body_literal),
        cmocka_unit_test(test_tagged_untagged_continuation),
        cmocka_unit_test(test_capability_greeting),
        cmocka_unit_test(test_quoted_brace_not_literal),
        cmocka_unit_test(test_escaped_quote_inside_quote),
        cmocka_unit_test(test_envelope_multiple_literals),
        cmocka_unit_test(test_zero_literal),
        cmocka_unit_test(test_binary_literal_n),
        cmocka_unit_test(test_append_literal_plus),
        cmocka_unit_test(test_append_binary_plus),
        cmocka_unit_test(test_literal_contents_opaque),
        cmocka_unit_test(test_lf_only),
        cmocka_unit_test(test_not_literal_headers),
        cmocka_unit_test(test_leading_zeros),
        cmocka_unit_test(test_literal_21_digits),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_error_sticky),
        cmocka_unit_test(test_head_capped),
        cmocka_unit_test(test_head_cr_edge),
        cmocka_unit_test(test_head_incremental),
        cmocka_unit_test(test_literal_skip_one_step),
        cmocka_unit_test(test_cancel_literal),
        cmocka_unit_test(test_unlimited_1mb_line),
        cmocka_unit_test(test_unlimited_literal_after_long_line),
        cmocka_unit_test(test_unlimited_command_lines),
    };
    return cmocka_run_group_tests_name("imap_frame", tests, NULL, NULL);
}
