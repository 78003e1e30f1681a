/*
 * Unit tests for the pre-auth IMAP command parser (proxy/imap_parse.c, imap_cmd_*), plus the
 * helpers imap_cmd_arg_is, imap_split_tag and imap_is_atom_char.
 *
 * Most cases live in tests/unit/data/imap_cmd.cases (format described at its top) and each
 * becomes one cmocka test. Every case is fed whole, one byte at a time, and split in two at
 * every position; each run must give exactly the expected results. Chunks are copied into
 * buffers of their exact size, so ASan catches any read past what the parser was given.
 *
 * The cases file is found through $PORTCULLIS_TEST_DATA (default "tests/unit/data", relative
 * to the repository root where the tests run), else next to the executable's source tree.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "digits.h"
#include "imap_parse.h"

/* ---------- rendering results as text ---------- */

struct text {
    char *p;
    size_t len, cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (t->len + n + 1 > cap)
            cap *= 2;
        t->p = realloc(t->p, cap);
        assert_non_null(t->p);
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void text_str(struct text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_fmt(struct text *t, const char *fmt, ...)
{
    char b[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof b);
    text_add(t, b, (size_t)n);
}

/* Length of a valid UTF-8 sequence of 2-4 bytes at s, or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t k = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (k == 0 || s[0] > 0xf4 || k > n)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    return k;
}

/* "..." with \" \\ \r \n escaped, other control bytes and invalid UTF-8 as \xHH. */
static void text_quoted(struct text *t, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    text_str(t, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = u[i];
        size_t k;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            text_add(t, e, 2);
        } else if (c == '\r') {
            text_str(t, "\\r");
        } else if (c == '\n') {
            text_str(t, "\\n");
        } else if (c < 0x20 || c == 0x7f) {
            text_fmt(t, "\\x%02x", c);
        } else if (c < 0x80) {
            text_add(t, (const char *)&u[i], 1);
        } else if ((k = utf8_seq(u + i, n - i)) > 0) {
            text_add(t, (const char *)&u[i], k);
            i += k - 1;
        } else {
            text_fmt(t, "\\x%02x", c);
        }
    }
    text_str(t, "\"");
}

/* Check the parser's documented result invariants, then render one result line. */
static void render_result(struct text *t, const struct imap_cmd_parser *p, enum imap_cmd_result r)
{
    assert_true(strlen(p->tag) <= IMAP_TAG_MAX);
    assert_true(p->store_len <= p->store_cap);
    if (r == IMAP_CMD_CONTINUE) {
        text_str(t, "CONTINUE\n");
        return;
    }
    if (r == IMAP_CMD_BAD) {
        assert_non_null(p->error);
        text_fmt(t, "%s %s ", p->fatal ? "FATAL" : "BAD", p->tag[0] ? p->tag : "-");
        text_str(t, p->error);
        text_str(t, "\n");
        return;
    }
    assert_int_equal(r, IMAP_CMD_DONE);
    assert_true(p->tag[0] != '\0');
    assert_true(p->name[0] != '\0' && strlen(p->name) <= IMAP_NAME_MAX);
    assert_true(p->nargs <= IMAP_ARGS_MAX);
    text_fmt(t, "DONE %s %s", p->tag, p->name);
    for (unsigned i = 0; i < p->nargs; i++) {
        const struct imap_arg *a = &p->args[i];
        assert_true((size_t)a->off + a->len <= p->store_len);
        text_str(t, " ");
        switch (a->type) {
        case IMAP_ARG_ATOM:
            assert_true(a->len > 0);
            text_add(t, imap_cmd_arg(p, i), a->len);
            break;
        case IMAP_ARG_QUOTED:
            text_quoted(t, imap_cmd_arg(p, i), a->len);
            break;
        case IMAP_ARG_LITERAL:
            text_fmt(t, "{%u}", (unsigned)a->len);
            text_quoted(t, imap_cmd_arg(p, i), a->len);
            break;
        case IMAP_ARG_LIST_OPEN:
            assert_int_equal(a->len, 0);
            text_str(t, "(");
            break;
        case IMAP_ARG_LIST_CLOSE:
            assert_int_equal(a->len, 0);
            text_str(t, ")");
            break;
        }
    }
    text_str(t, "\n");
}

/* ---------- feeding ---------- */

struct limits {
    size_t max_line, max_literal, store;
};

/*
 * Parse `in` delivered as the chunks whose ends are ends[0..nends-1] (the last is len),
 * the way a session does: call until a chunk is used up, reset after DONE or non-fatal BAD,
 * stop at fatal. Appends "MORE" if the input ended inside a command.
 */
static void feed(const struct limits *lim, const char *in, size_t len, const size_t *ends,
                 size_t nends, struct text *out)
{
    char *store = malloc(lim->store ? lim->store : 1);
    assert_non_null(store);
    struct imap_cmd_parser p;
    imap_cmd_parser_init(&p, store, lim->store, lim->max_line, lim->max_literal);
    bool pending = false, stop = false;
    size_t start = 0;
    assert_int_equal(ends[nends - 1], len);
    for (size_t c = 0; c < nends && !stop; c++) {
        size_t clen = ends[c] - start;
        /* Exactly sized copy: reading past the chunk is an ASan error. */
        char *chunk = malloc(clen ? clen : 1);
        assert_non_null(chunk);
        memcpy(chunk, in + start, clen);
        size_t off = 0;
        while (off < clen) {
            size_t used = 12345;
            enum imap_cmd_result r = imap_cmd_parse(&p, chunk + off, clen - off, &used);
            assert_true(used <= clen - off);
            off += used;
            if (used > 0)
                pending = true;
            if (r == IMAP_CMD_MORE) {
                assert_int_equal(off, clen); /* MORE means everything was used */
                continue;
            }
            assert_true(used > 0); /* every result consumes at least its LF */
            render_result(out, &p, r);
            pending = false;
            if (r == IMAP_CMD_BAD && p.fatal) {
                stop = true;
                break;
            }
            if (r == IMAP_CMD_DONE || r == IMAP_CMD_BAD)
                imap_cmd_parser_reset(&p);
        }
        free(chunk);
        start = ends[c];
    }
    if (pending)
        text_str(out, "MORE\n");
    free(store);
}

/* ---------- the cases file ---------- */

struct cmd_case {
    char name[96];
    int line;
    struct limits lim;
    char *in;
    size_t in_len;
    struct text expect;
};

/* Unescape an "in" line: \r \n \t \0 \xHH; any other backslash stands for itself. */
static bool unescape_in(const char *s, struct text *t)
{
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (c == '\\') {
            char n = s[i + 1];
            if (n == 'r' || n == 'n' || n == 't' || n == '0') {
                c = n == 'r' ? '\r' : n == 'n' ? '\n' : n == 't' ? '\t' : '\0';
                i++;
            } else if (n == 'x') {
                int h = hex_digit(s[i + 2]), l = h < 0 ? -1 : hex_digit(s[i + 3]);
                if (h < 0 || l < 0)
                    return false;
                c = (char)(h * 16 + l);
                i += 3;
            }
        }
        text_add(t, &c, 1);
    }
    return true;
}

static struct cmd_case *g_cases;
static size_t g_ncases;

static char *find_cases_file(void)
{
    const char *name = "imap_cmd.cases";
    char path[4096];
    const char *env = getenv("PORTCULLIS_TEST_DATA");
    snprintf(path, sizeof path, "%s/%s", env && *env ? env : "tests/unit/data", name);
    if (access(path, R_OK) == 0)
        return strdup(path);
    /* Next to the executable: build/tests/x, build/san/tests/x, tests/unit/x. */
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    const char *rel[] = {"data", "../../tests/unit/data", "../../../tests/unit/data"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(path, sizeof path, "%s/%s/%s", exe, rel[i], name);
        if (access(path, R_OK) == 0)
            return strdup(path);
    }
    return NULL;
}

static bool parse_limits(const char *s, struct limits *lim)
{
    while (*s) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        char key[32];
        unsigned long v;
        int used = 0;
        if (sscanf(s, "%31[a-z_]=%lu%n", key, &v, &used) != 2)
            return false;
        if (strcmp(key, "max_line") == 0)
            lim->max_line = v;
        else if (strcmp(key, "max_literal") == 0)
            lim->max_literal = v;
        else if (strcmp(key, "store") == 0)
            lim->store = v;
        else
            return false;
        s += used;
    }
    return true;
}

static bool load_cases(void)
{
    char *path = find_cases_file();
    if (!path) {
        fprintf(stderr, "imap_cmd.cases not found (set PORTCULLIS_TEST_DATA)\n");
        return false;
    }
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "%s: cannot open\n", path);
        free(path);
        return false;
    }
    char line[4096];
    int lineno = 0;
    struct cmd_case *cur = NULL;
    struct text in = {0};
    bool ok = true;
    while (ok && fgets(line, sizeof line, fp)) {
        lineno++;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        if (strncmp(line, "case ", 5) == 0) {
            g_cases = realloc(g_cases, (g_ncases + 1) * sizeof *g_cases);
            if (!g_cases)
                abort();
            cur = &g_cases[g_ncases++];
            memset(cur, 0, sizeof *cur);
            size_t nl = strnlen(line + 5, sizeof cur->name - 1);
            memcpy(cur->name, line + 5, nl);
            cur->name[nl] = '\0';
            cur->line = lineno;
            cur->lim = (struct limits){8192, 8192, 24576};
        } else if (!cur) {
            ok = false;
        } else if (strncmp(line, "limits ", 7) == 0) {
            ok = parse_limits(line + 7, &cur->lim);
        } else if (strncmp(line, "in ", 3) == 0) {
            in.len = 0;
            ok = unescape_in(line + 3, &in);
            size_t old = cur->in_len;
            cur->in = realloc(cur->in, old + in.len + 1);
            if (!cur->in)
                abort();
            memcpy(cur->in + old, in.p ? in.p : "", in.len);
            cur->in_len = old + in.len;
        } else if (strncmp(line, "out ", 4) == 0) {
            text_str(&cur->expect, line + 4);
            text_str(&cur->expect, "\n");
        } else {
            ok = false;
        }
        if (!ok)
            fprintf(stderr, "%s:%d: cannot parse: %s\n", path, lineno, line);
    }
    fclose(fp);
    free(in.p);
    free(path);
    return ok && g_ncases > 0;
}

static void expect_same(const struct cmd_case *c, const char *mode, const struct text *got)
{
    const char *exp = c->expect.p ? c->expect.p : "";
    const char *g = got->p ? got->p : "";
    if (strcmp(exp, g) != 0) {
        print_error("case %s (imap_cmd.cases:%d), fed %s:\n--- expected\n%s--- got\n%s", c->name,
                    c->line, mode, exp, g);
        fail();
    }
}

/* Results of the run in progress; file-level so that a failing assertion (a longjmp) does not
 * leak it. Freed in main. */
static struct text got;

static void run_case(void **state)
{
    const struct cmd_case *c = *state;
    size_t len = c->in_len;
    char mode[64];

    size_t whole = len;
    got.len = 0;
    feed(&c->lim, c->in, len, &whole, 1, &got);
    expect_same(c, "whole", &got);

    size_t ends[4096];
    assert_true(len <= sizeof ends / sizeof ends[0]);
    for (size_t i = 0; i < len; i++)
        ends[i] = i + 1;
    got.len = 0;
    if (len > 0) {
        feed(&c->lim, c->in, len, ends, len, &got);
        expect_same(c, "one byte at a time", &got);
    }

    for (size_t k = 0; k <= len; k++) {
        size_t two[2] = {k, len};
        got.len = 0;
        feed(&c->lim, c->in, len, two, 2, &got);
        snprintf(mode, sizeof mode, "split at %zu", k);
        expect_same(c, mode, &got);
    }
}

/* ---------- direct tests of the API ---------- */

struct fixture {
    char store[256];
    struct imap_cmd_parser p;
};

static enum imap_cmd_result parse_str(struct imap_cmd_parser *p, const char *s, size_t *used)
{
    return imap_cmd_parse(p, s, strlen(s), used);
}

static void test_arg_is(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    assert_int_equal(parse_str(&f.p, "a AUTHENTICATE plain \"NIL\" (x) {3+}\r\nNiL\r\n", &used),
                     IMAP_CMD_DONE);
    assert_int_equal(f.p.nargs, 6);
    assert_true(imap_cmd_arg_is(&f.p, 0, "PLAIN"));
    assert_true(imap_cmd_arg_is(&f.p, 0, "plain"));
    assert_false(imap_cmd_arg_is(&f.p, 0, "PLAI"));
    assert_false(imap_cmd_arg_is(&f.p, 0, "PLAINX"));
    assert_true(imap_cmd_arg_is(&f.p, 1, "nil")); /* quoted counts as a string */
    assert_false(imap_cmd_arg_is(&f.p, 2, "("));  /* list tokens are not strings */
    assert_false(imap_cmd_arg_is(&f.p, 4, ")"));
    assert_true(imap_cmd_arg_is(&f.p, 5, "NIL"));  /* literal */
    assert_false(imap_cmd_arg_is(&f.p, 6, "NIL")); /* out of range */
    assert_false(imap_cmd_arg_is(&f.p, 99, ""));
}

static void test_split_tag(void **state)
{
    (void)state;
    const char *tag, *rest;
    size_t tl, rl;
    const char l1[] = "a01 LOGIN x y";
    assert_true(imap_split_tag(l1, sizeof l1 - 1, &tag, &tl, &rest, &rl));
    assert_ptr_equal(tag, l1);
    assert_int_equal(tl, 3);
    assert_ptr_equal(rest, l1 + 4);
    assert_int_equal(rl, sizeof l1 - 1 - 4);
    /* "tag SP" with nothing after is still a split (the rest is empty). */
    assert_true(imap_split_tag("a1 ", 3, &tag, &tl, &rest, &rl));
    assert_int_equal(rl, 0);
    /* Not NUL-terminated: only len bytes are looked at. */
    assert_false(imap_split_tag("a1 NOOP", 2, &tag, &tl, &rest, &rl));
    assert_false(imap_split_tag("", 0, &tag, &tl, &rest, &rl));
    assert_false(imap_split_tag(" a1", 3, &tag, &tl, &rest, &rl));
    assert_false(imap_split_tag("* OK", 4, &tag, &tl, &rest, &rl)); /* "*" is not a tag */
    assert_false(imap_split_tag("+ go", 4, &tag, &tl, &rest, &rl)); /* nor is "+" */
    assert_false(imap_split_tag("a+1 X", 5, &tag, &tl, &rest, &rl));
    assert_false(imap_split_tag("a\"1 X", 5, &tag, &tl, &rest, &rl));
    assert_true(imap_split_tag("x]y Z", 5, &tag, &tl, &rest, &rl)); /* "]" is ASTRING-CHAR */
    assert_int_equal(tl, 3);
}

static void test_is_atom_char(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        bool want = c > 0x20 && c < 0x7f && !strchr("(){%*\"\\]", c);
        assert_int_equal(imap_is_atom_char((unsigned char)c), want);
    }
}

/* Dovecot test_imap_parser_crlf style: MORE until the very last byte. */
static void test_bytewise_more_until_lf(void **state)
{
    (void)state;
    struct fixture f;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    const char *s = "a1 LOGIN \"us er\" pw\r\n";
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        size_t used = 0;
        enum imap_cmd_result r = imap_cmd_parse(&f.p, s + i, 1, &used);
        assert_int_equal(used, 1);
        assert_int_equal(r, i + 1 == n ? IMAP_CMD_DONE : IMAP_CMD_MORE);
    }
    assert_int_equal(f.p.nargs, 2);
}

/* Pipelined input: each result consumes exactly its own command. */
static void test_consumed_exact(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    const char *s = "a1 NOOP\r\na2 LOGIN {2}\r\nxy z\r\na3 STARTTLS\r\nJUNK";
    assert_int_equal(parse_str(&f.p, s, &used), IMAP_CMD_DONE);
    assert_int_equal(used, 9);
    imap_cmd_parser_reset(&f.p);
    s += used;
    assert_int_equal(parse_str(&f.p, s, &used), IMAP_CMD_CONTINUE);
    assert_int_equal(used, 14); /* through the LF of "{2}\r\n", not one byte more */
    s += used;
    assert_int_equal(parse_str(&f.p, s, &used), IMAP_CMD_DONE);
    assert_int_equal(used, 6);
    assert_true(imap_cmd_arg_is(&f.p, 0, "xy"));
    imap_cmd_parser_reset(&f.p);
    s += used;
    /* STARTTLS: the dialogue must know exactly where its line ends (bytes after are refused). */
    assert_int_equal(parse_str(&f.p, s, &used), IMAP_CMD_DONE);
    assert_int_equal(used, 13);
    assert_string_equal(f.p.name, "STARTTLS");
}

/* Results stick until reset; fatal sticks forever; nothing is consumed meanwhile. */
static void test_sticky_results(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 4);
    assert_int_equal(parse_str(&f.p, "a NOOP\r\n", &used), IMAP_CMD_DONE);
    assert_int_equal(parse_str(&f.p, "b NOOP\r\n", &used), IMAP_CMD_DONE);
    assert_int_equal(used, 0);
    assert_string_equal(f.p.tag, "a");
    imap_cmd_parser_reset(&f.p);
    assert_int_equal(parse_str(&f.p, "c X {5+}\r\n", &used), IMAP_CMD_BAD);
    assert_true(f.p.fatal);
    assert_int_equal(parse_str(&f.p, "d NOOP\r\n", &used), IMAP_CMD_BAD);
    assert_int_equal(used, 0);
    assert_true(f.p.fatal);
}

/* A refused 100 MB literal leaves the fixed store untouched and the parser ready. */
static void test_huge_literal_no_growth(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    memset(f.store, 0x55, sizeof f.store);
    imap_cmd_parser_init(&f.p, f.store, 64, 1024, 8192);
    assert_int_equal(parse_str(&f.p, "a01 LOGIN {104857600}\r\n", &used), IMAP_CMD_BAD);
    assert_false(f.p.fatal);
    assert_string_equal(f.p.tag, "a01");
    assert_true(f.p.store_len <= 64);
    for (size_t i = 64; i < sizeof f.store; i++)
        assert_int_equal((unsigned char)f.store[i], 0x55);
    imap_cmd_parser_reset(&f.p);
    assert_int_equal(parse_str(&f.p, "a02 NOOP\r\n", &used), IMAP_CMD_DONE);
}

/* A sync {0}: CONTINUE, then the command goes on with an empty literal. */
static void test_zero_sync_literal(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    assert_int_equal(parse_str(&f.p, "a LOGIN {0}\r\n", &used), IMAP_CMD_CONTINUE);
    assert_int_equal(imap_cmd_parse(&f.p, "", 0, &used), IMAP_CMD_MORE);
    assert_int_equal(used, 0);
    assert_int_equal(parse_str(&f.p, " x\r\n", &used), IMAP_CMD_DONE);
    assert_int_equal(f.p.nargs, 2);
    assert_int_equal(f.p.args[0].type, IMAP_ARG_LITERAL);
    assert_int_equal(f.p.args[0].len, 0);
}

/* Reset forgets everything, including a half-read command. */
static void test_reset_mid_command(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    assert_int_equal(parse_str(&f.p, "a LOGIN \"half", &used), IMAP_CMD_MORE);
    imap_cmd_parser_reset(&f.p);
    assert_int_equal(parse_str(&f.p, "b NOOP\r\n", &used), IMAP_CMD_DONE);
    assert_string_equal(f.p.tag, "b");
    assert_int_equal(f.p.nargs, 0);
    assert_int_equal(f.p.store_len, 0);
}

static void test_literal_types(void **state)
{
    (void)state;
    struct fixture f;
    size_t used;
    imap_cmd_parser_init(&f.p, f.store, sizeof f.store, 1024, 64);
    assert_int_equal(parse_str(&f.p, "a X \"q\" at ~{1+}\r\nb ~c\r\n", &used), IMAP_CMD_DONE);
    assert_int_equal(f.p.nargs, 4);
    assert_int_equal(f.p.args[0].type, IMAP_ARG_QUOTED);
    assert_int_equal(f.p.args[1].type, IMAP_ARG_ATOM);
    assert_int_equal(f.p.args[2].type, IMAP_ARG_LITERAL);
    assert_int_equal(f.p.args[3].type, IMAP_ARG_ATOM);
    assert_memory_equal(imap_cmd_arg(&f.p, 2), "b", 1);
    assert_memory_equal(imap_cmd_arg(&f.p, 3), "~c", 2);
}

int main(void)
{
    const struct CMUnitTest api[] = {
        cmocka_unit_test(test_arg_is),
        cmocka_unit_test(test_split_tag),
        cmocka_unit_test(test_is_atom_char),
        cmocka_unit_test(test_bytewise_more_until_lf),
        cmocka_unit_test(test_consumed_exact),
        cmocka_unit_test(test_sticky_results),
        cmocka_unit_test(test_huge_literal_no_growth),
        cmocka_unit_test(test_zero_sync_literal),
        cmocka_unit_test(test_reset_mid_command),
        cmocka_unit_test(test_literal_types),
    };
    int failed = cmocka_run_group_tests_name("imap_cmd_api", api, NULL, NULL);

    if (!load_cases())
        return 1;
    struct CMUnitTest *cases = calloc(g_ncases, sizeof *cases);
    assert_non_null(cases);
    for (size_t i = 0; i < g_ncases; i++) {
        cases[i].name = g_cases[i].name;
        cases[i].test_func = run_case;
        cases[i].initial_state = &g_cases[i];
    }
    failed += _cmocka_run_group_tests("imap_cmd_cases", cases, g_ncases, NULL, NULL);

    for (size_t i = 0; i < g_ncases; i++) {
        free(g_cases[i].in);
        free(g_cases[i].expect.p);
    }
    free(g_cases);
    free(cases);
    free(got.p);
    return failed;
}
