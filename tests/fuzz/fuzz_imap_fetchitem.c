/*
 * libFuzzer harness for the FETCH response tokenizer (proxy/imap_fetchitem.c).
 *
 * Input: one byte choosing how to cut (and, when odd, that the rest are choices for a response
 * built from the grammar, see generate()), then the response text as the relay feeds it
 * (literal headers "{n}\r\n" with no literal data after them).
 *
 * Properties checked, abort() on any violation:
 *  - split invariance: fed one byte at a time, whole (cut only where a literal header ends,
 *    which is where the relay asks), and in fuzzer-chosen pieces, the tokenizer gives the same
 *    literal kinds and origins, UID, quoted content spans, error state and end;
 *  - a reference: an independent recursive-descent parse of the whole text (below: names and
 *    sections copied whole into heap strings and classified with string operations, nothing
 *    bounded). When it accepts the text, the streaming tokenizer must have accepted it too
 *    (no error, response complete) with exactly the same literal kinds, origins, UID and spans;
 *    when it rejects it, the tokenizer must have an error or not be at the response's end.
 *  - an error always turns the literal kind into PART (default deny).
 */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_fetchitem.h"

/* ---- a generator: most random bytes are not a FETCH response, so half of the inputs are
 * read as choices for one built from the grammar (valid or nearly: some choices are names,
 * sections and values the tokenizer must treat as unknown or malformed) ---- */

struct gen {
    const uint8_t *d;
    size_t n, i;
    char *out;
    size_t len, cap;
};

static unsigned pick(struct gen *g, unsigned k)
{
    unsigned v = g->i < g->n ? g->d[g->i++] : 0;
    return k ? v % k : 0;
}

static void put(struct gen *g, const char *s)
{
    size_t l = strlen(s);
    if (g->len + l >= g->cap)
        return;
    memcpy(g->out + g->len, s, l);
    g->len += l;
}

static const char *const gen_names[] = {
    "BODY",        "BODY.PEEK",     "BINARY",      "BINARY.PEEK",
    "BINARY.SIZE", "RFC822",        "RFC822.TEXT", "RFC822.HEADER",
    "RFC822.SIZE", "UID",           "FLAGS",       "INTERNALDATE",
    "ENVELOPE",    "BODYSTRUCTURE", "MODSEQ",      "EMAILID",
    "THREADID",    "SAVEDATE",      "PREVIEW",     "SNIPPET",
    "X-GM-LABELS", "body",          "Uid",         "BODYSTRUCTUREXXXXXXXXXXX",
    "X",           "BODY.PEEK.X",
};
static const char *const gen_atoms[] = {
    "NIL",   "foo[",
    "x]",    "\\Seen",
    "123",   "[",
    "]",     "nil",
    "0",     "18446744073709551615",
    "a[b]c", "BODY[]",
    "$Junk", "99999999999999999999999",
    "FUZZY",
};
static const char *const gen_quoted[] = {
    "\"\"",     "\"x\"", "\"BODY[] {5}\"", "\"a\\\"b\"",
    "\"\\\\\"", "\"(\"", "\"]\"",          "\"X5O!P%@AP[4\"",
};
static const char *const gen_kw[] = {
    "",
    "HEADER",
    "HEADER.FIELDS",
    "HEADER.FIELDS.NOT",
    "TEXT",
    "MIME",
    "header.fields",
    "X",
    "HEADER.FIELDS.NOTXXXXXXXXXXXXXXXXX",
};

static void gen_value(struct gen *g, unsigned depth);

static void gen_literal(struct gen *g)
{
    static const char *const l[] = {"{0}\r\n", "{5}\r\n", "~{12}\r\n", "{3+}\r\n"};
    put(g, l[pick(g, 4)]);
}

static void gen_list(struct gen *g, unsigned depth)
{
    put(g, "(");
    unsigned n = pick(g, 4);
    bool prev_list = false;
    for (unsigned i = 0; i < n; i++) {
        bool list = depth < 4 && pick(g, 4) == 0;
        if (i > 0 && !(prev_list && list && pick(g, 2)))
            put(g, " ");
        if (list)
            gen_list(g, depth + 1);
        else
            gen_value(g, depth + 1);
        prev_list = list;
    }
    put(g, ")");
}

static void gen_value(struct gen *g, unsigned depth)
{
    switch (pick(g, 5)) {
    case 0:
        put(g, gen_atoms[pick(g, sizeof gen_atoms / sizeof *gen_atoms)]);
        break;
    case 1:
        put(g, gen_quoted[pick(g, sizeof gen_quoted / sizeof *gen_quoted)]);
        break;
    case 2:
        gen_literal(g);
        break;
    case 3:
        if (depth < 4) {
            gen_list(g, depth);
            break;
        }
        /* fall through */
    default:
        put(g, "NIL");
        break;
    }
}

static void gen_section(struct gen *g)
{
    char num[16];
    put(g, "[");
    unsigned parts = pick(g, 4) == 0 ? pick(g, 4) : 0;
    for (unsigned i = 0; i < parts; i++) {
        snprintf(num, sizeof num, "%s%u", i ? "." : "", pick(g, 4));
        put(g, num);
    }
    const char *kw = gen_kw[pick(g, sizeof gen_kw / sizeof *gen_kw)];
    if (*kw) {
        if (parts)
            put(g, ".");
        put(g, kw);
    }
    if (pick(g, 3) == 0 || strncasecmp(kw, "HEADER.FIELDS", 13) == 0) {
        put(g, " (");
        unsigned n = pick(g, 3);
        for (unsigned i = 0; i < n; i++) {
            if (i)
                put(g, " ");
            switch (pick(g, 3)) {
            case 0:
                put(g, "FROM");
                break;
            case 1:
                put(g, "\"x]\"");
                break;
            default:
                gen_literal(g);
                break;
            }
        }
        put(g, ")");
    }
    put(g, "]");
    if (pick(g, 3) == 0) {
        snprintf(num, sizeof num, "<%u>", pick(g, 256));
        put(g, num);
    }
}

static size_t generate(const uint8_t *d, size_t n, char *out, size_t cap)
{
    struct gen g = {.d = d, .n = n, .out = out, .cap = cap};
    put(&g, "* 1 FETCH (");
    unsigned items = 1 + pick(&g, 6);
    for (unsigned i = 0; i < items; i++) {
        if (i)
            put(&g, " ");
        put(&g, gen_names[pick(&g, sizeof gen_names / sizeof *gen_names)]);
        if (pick(&g, 2))
            gen_section(&g);
        put(&g, " ");
        gen_value(&g, 0);
    }
    put(&g, ")\r\n");
    return g.len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAXLIT  512
#define MAXSPAN 64

struct result {
    unsigned nlits;
    enum fi_kind kind[MAXLIT];
    uint64_t origin[MAXLIT];
    uint64_t uid;
    bool uid_late;
    bool err;
    bool done;
    unsigned nspans;
    struct fi_span spans[MAXSPAN];
};

/* ---- streaming runs ---- */

static void collect(struct result *r, const struct fetch_items *f)
{
    r->uid = f->uid;
    r->uid_late = f->uid_late;
    r->err = fi_error(f) != NULL;
    r->done = f->done;
    const struct fi_span *sp = fi_spans(f, &r->nspans);
    CHECK(r->nspans <= FI_SPANS_MAX);
    CHECK(fi_quoted_content(f) == (r->nspans > 0));
    memcpy(r->spans, sp, r->nspans * sizeof *sp);
}

/* One byte at a time; records where each literal header ended. */
static const char *run_bytes(const char *t, size_t n, struct result *r, size_t *lit_end,
                             unsigned *nle)
{
    struct fetch_items f;
    fi_init(&f);
    memset(r, 0, sizeof *r);
    *nle = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned before = f.nlits;
        fi_feed(&f, t + i, 1);
        if (f.nlits != before && r->nlits < MAXLIT) {
            CHECK(f.nlits == before + 1);
            r->kind[r->nlits] = fi_literal_kind(&f, &r->origin[r->nlits]);
            if (fi_error(&f))
                CHECK(r->kind[r->nlits] == FI_PART);
            r->nlits++;
            lit_end[(*nle)++] = i + 1;
        }
    }
    collect(r, &f);
    return fi_error(&f) ? fi_error(&f) : "ok";
}

/* In pieces: cut at every literal end and wherever `seed` says. */
static void run_pieces(const char *t, size_t n, uint64_t seed, bool whole, const size_t *lit_end,
                       unsigned nle, struct result *r)
{
    struct fetch_items f;
    fi_init(&f);
    memset(r, 0, sizeof *r);
    size_t i = 0;
    unsigned li = 0;
    uint64_t s = seed | 1;
    while (i < n) {
        size_t j = n;
        if (!whole) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            j = i + 1 + (size_t)((s >> 33) % (seed & 0x80 ? 64 : 5));
        }
        if (li < nle && lit_end[li] < j)
            j = lit_end[li];
        if (j > n)
            j = n;
        fi_feed(&f, t + i, j - i);
        if (li < nle && j == lit_end[li]) {
            r->kind[r->nlits] = fi_literal_kind(&f, &r->origin[r->nlits]);
            r->nlits++;
            li++;
        }
        i = j;
    }
    collect(r, &f);
}

static void same(const struct result *a, const struct result *b, const char *mode)
{
    bool ok = a->nlits == b->nlits && a->uid == b->uid && a->uid_late == b->uid_late &&
              a->err == b->err && a->done == b->done && a->nspans == b->nspans;
    for (unsigned i = 0; ok && i < a->nlits; i++)
        ok = a->kind[i] == b->kind[i] && a->origin[i] == b->origin[i];
    for (unsigned i = 0; ok && i < a->nspans; i++)
        ok = a->spans[i].off == b->spans[i].off && a->spans[i].len == b->spans[i].len;
    if (!ok) {
        fprintf(stderr, "split invariance broken (%s)\n", mode);
        abort();
    }
}

/* ---- the reference parse ---- */

enum { T_ANY, T_NSTRING, T_NUMBER, T_FLAGS, T_LIST, T_QNIL };

struct ref {
    const char *t;
    size_t n, i;
    bool bad;
    struct result r;
    /* the item being read */
    int type;
    enum fi_kind kind;
    bool unknown, is_uid;
    uint64_t origin;
};

static bool at(struct ref *p, char c)
{
    if (p->i < p->n && p->t[p->i] == c) {
        p->i++;
        return true;
    }
    return false;
}

static void expect(struct ref *p, char c)
{
    if (!at(p, c))
        p->bad = true;
}

static bool is_name_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && !strchr("(){}[]\"\\%*", c);
}

static bool is_val_atom_char(unsigned char c)
{
    return c > 0x20 && c != 0x7f && !strchr("(){\"", c);
}

static bool ieq(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}

static char *take(struct ref *p, bool (*ok)(unsigned char))
{
    size_t s = p->i;
    while (p->i < p->n && ok((unsigned char)p->t[p->i]))
        p->i++;
    char *r = malloc(p->i - s + 1);
    CHECK(r != NULL);
    memcpy(r, p->t + s, p->i - s);
    r[p->i - s] = 0;
    return r;
}

static void demote(struct ref *p)
{
    p->unknown = true;
    p->type = T_ANY;
    p->kind = FI_PART;
}

static bool content_here(const struct ref *p, unsigned depth)
{
    return p->unknown || (depth == 0 && p->kind != FI_NONE);
}

/* A literal header; its data is absent. */
static void ref_literal(struct ref *p, bool content)
{
    at(p, '~');
    expect(p, '{');
    size_t d = 0;
    while (p->i < p->n && isdigit((unsigned char)p->t[p->i]))
        p->i++, d++;
    if (d == 0 || d > 20)
        p->bad = true;
    at(p, '+');
    expect(p, '}');
    expect(p, '\r');
    expect(p, '\n');
    if (p->bad)
        return;
    if (p->r.nlits < MAXLIT) {
        p->r.kind[p->r.nlits] = content ? (p->unknown ? FI_PART : p->kind) : FI_NONE;
        p->r.origin[p->r.nlits] = content ? p->origin : 0;
    }
    p->r.nlits++;
}

static void ref_quoted(struct ref *p, bool content)
{
    size_t s = p->i;
    expect(p, '"');
    for (;;) {
        if (p->i >= p->n || p->t[p->i] == '\r' || p->t[p->i] == '\n' || p->t[p->i] == 0) {
            p->bad = true;
            return;
        }
        char c = p->t[p->i++];
        if (c == '"')
            break;
        if (c == '\\') {
            if (!at(p, '"') && !at(p, '\\')) {
                p->bad = true;
                return;
            }
        }
    }
    if (content && p->i - s > 2) {
        if (p->r.nspans >= FI_SPANS_MAX)
            p->bad = true; /* too many to replace */
        else
            p->r.spans[p->r.nspans++] = (struct fi_span){.off = s, .len = p->i - s};
    }
}

static void ref_value(struct ref *p, unsigned depth);

static void ref_list(struct ref *p, unsigned depth)
{
    expect(p, '(');
    if (at(p, ')'))
        return;
    for (;;) {
        if (p->bad)
            return;
        bool list = p->i < p->n && p->t[p->i] == '(';
        if (list && p->type == T_FLAGS) {
            p->bad = true; /* nested list in FLAGS */
            return;
        }
        ref_value(p, depth + 1);
        if (p->bad)
            return;
        if (at(p, ')'))
            return;
        if (list && p->i < p->n && p->t[p->i] == '(')
            continue; /* "(...)(...)" */
        expect(p, ' ');
    }
}

/* A value at list depth `depth` (0 = the item's value itself). */
static void ref_value(struct ref *p, unsigned depth)
{
    if (p->i >= p->n) {
        p->bad = true;
        return;
    }
    char c = p->t[p->i];
    char form = c == '(' ? 'L' : c == '"' ? 'Q' : (c == '{' || c == '~') ? 'T' : 'A';
    if (depth == 0) {
        switch (p->type) {
        case T_NSTRING:
            if (form == 'L')
                p->bad = true;
            break;
        case T_NUMBER:
            if (form != 'A')
                demote(p);
            break;
        case T_FLAGS:
            if (form != 'L')
                demote(p);
            break;
        case T_LIST:
            if (form != 'L' && form != 'A')
                demote(p);
            break;
        case T_QNIL:
            if (form != 'Q' && form != 'A')
                demote(p);
            break;
        }
    } else if (p->type == T_FLAGS && form != 'A') {
        demote(p);
    }
    if (p->bad)
        return;
    switch (form) {
    case 'L':
        ref_list(p, depth);
        return;
    case 'Q':
        ref_quoted(p, content_here(p, depth));
        return;
    case 'T':
        ref_literal(p, content_here(p, depth));
        return;
    }
    char *a = take(p, is_val_atom_char);
    if (!*a)
        p->bad = true;
    if (depth == 0) {
        if (p->type == T_NSTRING && !ieq(a, "NIL"))
            p->bad = true;
        size_t l = strlen(a);
        if (p->is_uid && !p->unknown && p->r.uid == 0 && l > 0 && l <= 19 &&
            strspn(a, "0123456789") == l) {
            p->r.uid = strtoull(a, NULL, 10);
            p->r.uid_late = p->r.nlits > 0;
        }
    }
    free(a);
}

static bool hl_char(unsigned char c)
{
    return c == ']' || is_name_char(c);
}

/* "[" already read: the section up to and including "]". Returns the section atom. */
static char *ref_section(struct ref *p, bool *list_r, bool *empty_list_r)
{
    char *a = take(p, is_name_char);
    *list_r = *empty_list_r = false;
    if (at(p, ' ')) {
        *list_r = true;
        expect(p, '(');
        if (at(p, ')')) {
            *empty_list_r = true;
        } else {
            for (;;) {
                if (p->bad)
                    break;
                if (p->i < p->n && p->t[p->i] == '"') {
                    ref_quoted(p, false);
                } else if (p->i < p->n && (p->t[p->i] == '{' || p->t[p->i] == '~')) {
                    ref_literal(p, false);
                } else {
                    char *s = take(p, hl_char);
                    if (!*s)
                        p->bad = true;
                    free(s);
                }
                if (p->bad || at(p, ')'))
                    break;
                expect(p, ' ');
            }
        }
    }
    expect(p, ']');
    return a;
}

/* Split a section atom into nz-number parts and a keyword; false if malformed. */
static bool section_shape(const char *a, unsigned *parts_r, const char **kw_r)
{
    unsigned parts = 0;
    const char *s = a;
    *kw_r = "";
    while (*s) {
        size_t seg = strcspn(s, ".");
        size_t dig = strspn(s, "0123456789");
        if (seg == 0)
            return false;
        if (dig == seg) {
            if (s[0] == '0')
                return false;
            parts++;
            s += seg;
            if (*s == '.') {
                s++;
                if (!*s)
                    return false;
            }
            continue;
        }
        if (dig > 0)
            return false;
        *kw_r = s;
        break;
    }
    *parts_r = parts;
    return true;
}

static void ref_classify(struct ref *p, const char *name, bool has_sec, const char *sec, bool list,
                         bool empty_list, bool has_origin)
{
    p->type = T_ANY;
    p->kind = FI_NONE;
    p->unknown = p->is_uid = false;
    if (!has_sec) {
        static const struct {
            const char *n;
            int type;
            enum fi_kind kind;
        } known[] = {
            {"RFC822", T_NSTRING, FI_WHOLE},
            {"RFC822.TEXT", T_NSTRING, FI_PART},
            {"RFC822.HEADER", T_NSTRING, FI_NONE},
            {"UID", T_NUMBER, FI_NONE},
            {"RFC822.SIZE", T_NUMBER, FI_NONE},
            {"FLAGS", T_FLAGS, FI_NONE},
            {"INTERNALDATE", T_QNIL, FI_NONE},
            {"SAVEDATE", T_QNIL, FI_NONE},
            {"ENVELOPE", T_LIST, FI_NONE},
            {"BODYSTRUCTURE", T_LIST, FI_NONE},
            {"BODY", T_LIST, FI_NONE},
            {"MODSEQ", T_LIST, FI_NONE},
            {"EMAILID", T_LIST, FI_NONE},
            {"THREADID", T_LIST, FI_NONE},
        };
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (ieq(name, known[i].n)) {
                p->type = known[i].type;
                p->kind = known[i].kind;
                p->is_uid = ieq(name, "UID");
                return;
            }
        demote(p);
        return;
    }
    unsigned parts;
    const char *kw;
    bool body = ieq(name, "BODY") || ieq(name, "BODY.PEEK");
    bool bin = ieq(name, "BINARY") || ieq(name, "BINARY.PEEK");
    bool binsize = ieq(name, "BINARY.SIZE");
    bool fields = ieq(kw = "", "x");
    if (!section_shape(sec, &parts, &kw) || empty_list || (!body && !bin && !binsize)) {
        demote(p);
        return;
    }
    fields = ieq(kw, "HEADER.FIELDS") || ieq(kw, "HEADER.FIELDS.NOT");
    bool valid = !*kw || fields || ieq(kw, "HEADER") || ieq(kw, "TEXT") || ieq(kw, "MIME");
    if (!valid || list != fields) {
        demote(p);
        return;
    }
    if (bin || binsize) {
        if (*kw)
            demote(p);
        else if (binsize)
            p->type = T_NUMBER;
        else {
            /* BINARY[] is the server's decoding: judged on BODY[] like a part, never as the
             * whole message (a whole-file hash would not match the decoded bytes). */
            p->type = T_NSTRING;
            p->kind = FI_PART;
        }
        return;
    }
    p->type = T_NSTRING;
    if (parts)
        p->kind = FI_PART;
    else if (!*kw)
        p->kind = has_origin ? FI_PARTIAL : FI_WHOLE;
    else if (ieq(kw, "HEADER") || fields)
        p->kind = FI_NONE;
    else if (ieq(kw, "TEXT"))
        p->kind = FI_PART;
    else
        demote(p); /* top-level MIME */
}

static void ref_item(struct ref *p)
{
    char *name = take(p, is_name_char);
    char *sec = NULL;
    bool has_sec = false, list = false, empty_list = false, has_origin = false;
    uint64_t origin = 0;
    if (!*name)
        p->bad = true;
    if (!p->bad && at(p, '[')) {
        has_sec = true;
        sec = ref_section(p, &list, &empty_list);
        if (!p->bad && at(p, '<')) {
            has_origin = true;
            size_t d = 0;
            while (p->i < p->n && isdigit((unsigned char)p->t[p->i]) && d < 19) {
                origin = origin * 10 + (uint64_t)(p->t[p->i] - '0');
                p->i++, d++;
            }
            if (d == 0)
                p->bad = true;
            expect(p, '>');
        }
    }
    expect(p, ' ');
    if (!p->bad) {
        ref_classify(p, name, has_sec, sec ? sec : "", list, empty_list, has_origin);
        p->origin = has_origin ? origin : 0;
        ref_value(p, 0);
    }
    free(name);
    free(sec);
}

static bool ref_parse(const char *t, size_t n, struct result *r)
{
    struct ref p = {.t = t, .n = n};
    expect(&p, '*');
    expect(&p, ' ');
    size_t d = 0;
    while (p.i < n && isdigit((unsigned char)t[p.i]))
        p.i++, d++;
    if (d == 0 || d > 10)
        p.bad = true;
    expect(&p, ' ');
    if (p.i + 5 > n || strncasecmp(t + p.i, "FETCH", 5) != 0)
        p.bad = true;
    p.i += 5;
    expect(&p, ' ');
    expect(&p, '(');
    while (!p.bad) {
        ref_item(&p);
        if (p.bad || at(&p, ')'))
            break;
        expect(&p, ' ');
    }
    expect(&p, '\r');
    expect(&p, '\n');
    if (p.i != n)
        p.bad = true;
    *r = p.r;
    return !p.bad && p.r.nlits <= MAXLIT;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    uint64_t seed = data[0] * 0x9E3779B97F4A7C15ULL + size;
    const char *t = (const char *)data + 1;
    size_t n = size - 1;
    static char built[8192];
    if (data[0] & 1) {
        n = generate(data + 1, size - 1, built, sizeof built);
        t = built;
    }
    static size_t lit_end[8192];
    unsigned nle;
    static struct result a, b, ref;
    const char *fi_error_text = run_bytes(t, n, &a, lit_end, &nle);
    if (a.nlits > MAXLIT)
        return 0;
    run_pieces(t, n, seed, true, lit_end, nle, &b);
    same(&a, &b, "whole");
    run_pieces(t, n, seed ^ data[0], false, lit_end, nle, &b);
    same(&a, &b, "pieces");

    bool accepted = ref_parse(t, n, &ref);
    if (getenv("FI_FUZZ_VERBOSE")) /* to see which seeds the reference accepts */
        fprintf(stderr, "reference %s, tokenizer %s\n", accepted ? "accepts" : "rejects",
                a.err    ? fi_error_text
                : a.done ? "done"
                         : "not done");
    if (accepted) {
        if (a.err || !a.done) {
            fprintf(stderr, "reference accepts, tokenizer %s\n",
                    a.err ? "reports an error" : "is not done");
            abort();
        }
        CHECK(ref.nlits == a.nlits);
        for (unsigned i = 0; i < a.nlits; i++) {
            CHECK(ref.kind[i] == a.kind[i]);
            CHECK(ref.origin[i] == a.origin[i]);
        }
        CHECK(ref.uid == a.uid);
        CHECK(ref.uid_late == a.uid_late);
        CHECK(ref.nspans == a.nspans);
        for (unsigned i = 0; i < a.nspans; i++) {
            CHECK(ref.spans[i].off == a.spans[i].off);
            CHECK(ref.spans[i].len == a.spans[i].len);
        }
    } else if (!a.err && a.done) {
        fprintf(stderr, "reference rejects, tokenizer accepts\n");
        abort();
    }
    return 0;
}
