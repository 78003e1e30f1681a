/*
 * Unit tests for pop3_parse: the command-line parser, the response-kind helper, the response
 * framer, response codes and dot-(un)stuffing.
 *
 * Every parser case is run three ways and must give the identical event log: the whole input in
 * one call, one byte per call (Dovecot test_imap_parser_crlf style), and split into two chunks
 * at every position. A log records each event with its absolute input offset and the results,
 * so "identical" covers where events happen, not only which.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pop3_parse.h"

#define LOG_MAX 8192

/* ---------- log helpers ---------- */

struct log {
    char s[LOG_MAX];
    size_t len;
};

static void log_raw(struct log *l, const char *s, size_t n)
{
    for (size_t i = 0; i < n && l->len + 5 < LOG_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r')
            l->len += (size_t)snprintf(l->s + l->len, LOG_MAX - l->len, "\\r");
        else if (c == '\n')
            l->len += (size_t)snprintf(l->s + l->len, LOG_MAX - l->len, "\\n");
        else if (c < 0x20 || c >= 0x7f)
            l->len += (size_t)snprintf(l->s + l->len, LOG_MAX - l->len, "\\x%02x", c);
        else
            l->s[l->len++] = (char)c;
    }
    l->s[l->len] = '\0';
}

static void log_str(struct log *l, const char *s)
{
    size_t n = strlen(s);
    if (l->len + n + 1 < LOG_MAX) {
        memcpy(l->s + l->len, s, n + 1);
        l->len += n;
    }
}

static void log_fmt(struct log *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_fmt(struct log *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->s + l->len, LOG_MAX - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n;
    if (l->len >= LOG_MAX)
        l->len = LOG_MAX - 1;
}

/* ---------- chunking ---------- */

enum feed_mode { FEED_WHOLE, FEED_BYTES, FEED_SPLIT };

/* End of the chunk that follows one ending at `prev`. */
static size_t next_cut(enum feed_mode m, size_t split, size_t prev, size_t len)
{
    switch (m) {
    case FEED_BYTES:
        return prev + 1 <= len ? prev + 1 : len;
    case FEED_SPLIT:
        return prev < split ? split : len;
    default:
        return len;
    }
}

typedef void runner(const char *in, size_t len, enum feed_mode m, size_t split, struct log *l,
                    const void *arg);

/* Run `run` whole, byte by byte and split at every position; each log must equal `want`. */
static void check_all_splits(runner *run, const char *in, size_t len, const void *arg,
                             const char *want)
{
    struct log l;
    memset(&l, 0, sizeof(l));
    run(in, len, FEED_WHOLE, 0, &l, arg);
    if (strcmp(l.s, want) != 0) {
        print_error("whole:\n  got:  %s\n  want: %s\n", l.s, want);
        fail();
    }
    memset(&l, 0, sizeof(l));
    run(in, len, FEED_BYTES, 0, &l, arg);
    if (strcmp(l.s, want) != 0) {
        print_error("byte by byte:\n  got:  %s\n  want: %s\n", l.s, want);
        fail();
    }
    for (size_t split = 0; split <= len; split++) {
        memset(&l, 0, sizeof(l));
        run(in, len, FEED_SPLIT, split, &l, arg);
        if (strcmp(l.s, want) != 0) {
            print_error("split at %zu:\n  got:  %s\n  want: %s\n", split, l.s, want);
            fail();
        }
    }
}

/* ---------- 1. command parser ---------- */

static const char *kind_name(enum pop3_resp_kind k)
{
    switch (k) {
    case POP3_RESP_MULTI:
        return "multi";
    case POP3_RESP_SASL:
        return "sasl";
    default:
        return "single";
    }
}

struct cmd_opts {
    size_t max_line;
    size_t store_cap; /* 0: max_line */
};

static void log_cmd_done(struct log *l, const struct pop3_cmd_parser *p, size_t at)
{
    if (p->sasl) {
        log_fmt(l, "SASL@%zu [", at);
        log_raw(l, pop3_cmd_arg(p, 0), p->args[0].len);
        log_fmt(l, "]%s", pop3_sasl_is_cancel(p) ? " cancel" : "");
    } else {
        log_fmt(l, "DONE@%zu %s", at, p->keyword);
        for (unsigned i = 0; i < p->nargs; i++) {
            log_str(l, " [");
            log_raw(l, pop3_cmd_arg(p, i), p->args[i].len);
            log_str(l, "]");
        }
        if (p->too_many_args)
            log_str(l, " +more");
        if (p->nargs > 1 || p->too_many_args) {
            log_str(l, " rest=[");
            log_raw(l, p->store + p->rest.off, p->rest.len);
            log_str(l, "]");
        }
    }
    log_fmt(l, " %s; ", kind_name(pop3_expected_response(p)));
}

/* Feed like a dialogue would: after "AUTH <mech>" without an initial response, the next line
 * is a SASL response. */
static void run_cmd(const char *in, size_t len, enum feed_mode m, size_t split, struct log *l,
                    const void *arg)
{
    const struct cmd_opts *o = arg;
    static char store[4096];
    struct pop3_cmd_parser p;
    size_t cap = o->store_cap ? o->store_cap : o->max_line;
    pop3_cmd_parser_init(&p, store, cap, o->max_line);

    size_t pos = 0, end = 0;
    while (end < len) {
        end = next_cut(m, split, end, len);
        while (pos < end) {
            size_t used = 99999;
            enum pop3_cmd_result r = pop3_cmd_parse(&p, in + pos, end - pos, &used);
            assert_true(used <= end - pos);
            pos += used;
            if (r == POP3_CMD_MORE) {
                assert_int_equal(pos, end); /* MORE consumes everything */
                break;
            }
            assert_true(used > 0);
            if (r == POP3_CMD_DONE) {
                log_cmd_done(l, &p, pos);
                if (pop3_keyword_is(&p, "AUTH") && p.nargs == 1)
                    pop3_cmd_parser_expect_sasl(&p);
            } else {
                assert_false(p.fatal);
                assert_string_equal(p.keyword, "");
                log_fmt(l, "BAD@%zu %s; ", pos, p.error);
            }
        }
    }
    /* A zero-length call changes nothing. */
    size_t used = 1;
    assert_int_equal(pop3_cmd_parse(&p, in, 0, &used), POP3_CMD_MORE);
    assert_int_equal(used, 0);
}

static void check_cmd_opts(const char *in, size_t len, size_t max_line, size_t cap,
                           const char *want)
{
    struct cmd_opts o = {max_line, cap};
    check_all_splits(run_cmd, in, len, &o, want);
}

#define CHECK_CMD(in, want) check_cmd_opts(in, sizeof(in) - 1, 255, 0, want)

static void test_cmd_basic(void **state)
{
    (void)state;
    CHECK_CMD("USER bob\r\n", "DONE@10 USER [bob] single; ");
    CHECK_CMD("PASS secret\r\n", "DONE@13 PASS [secret] single; ");
    CHECK_CMD("STAT\r\n", "DONE@6 STAT single; ");
    CHECK_CMD("LIST\r\n", "DONE@6 LIST multi; ");
    CHECK_CMD("LIST 1\r\n", "DONE@8 LIST [1] single; ");
    CHECK_CMD("UIDL\r\n", "DONE@6 UIDL multi; ");
    CHECK_CMD("UIDL 7\r\n", "DONE@8 UIDL [7] single; ");
    CHECK_CMD("RETR 1\r\n", "DONE@8 RETR [1] multi; ");
    CHECK_CMD("TOP 1 10\r\n", "DONE@10 TOP [1] [10] rest=[1 10] multi; ");
    CHECK_CMD("DELE 1\r\n", "DONE@8 DELE [1] single; ");
    CHECK_CMD("RSET\r\n", "DONE@6 RSET single; ");
    CHECK_CMD("NOOP\r\n", "DONE@6 NOOP single; ");
    CHECK_CMD("QUIT\r\n", "DONE@6 QUIT single; ");
    CHECK_CMD("CAPA\r\n", "DONE@6 CAPA multi; ");
    CHECK_CMD("STLS\r\n", "DONE@6 STLS single; ");
    CHECK_CMD("XFOO a\r\n", "DONE@8 XFOO [a] single; ");
}

static void test_cmd_auth(void **state)
{
    (void)state;
    /* SASL-IR: mechanism and initial response on one line. */
    CHECK_CMD("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
              "DONE@29 AUTH [PLAIN] [AGJvYgBzZWNyZXQ=] rest=[PLAIN AGJvYgBzZWNyZXQ=] sasl; ");
    /* Mechanism alone, then the response on its own line (taken whole, not upper-cased). */
    CHECK_CMD("AUTH PLAIN\r\nAGJvYgBzZWNyZXQ=\r\nNOOP\r\n",
              "DONE@12 AUTH [PLAIN] sasl; SASL@30 [AGJvYgBzZWNyZXQ=] sasl; DONE@36 NOOP single; ");
    /* RFC 5034 cancel. */
    CHECK_CMD("AUTH PLAIN\r\n*\r\n", "DONE@12 AUTH [PLAIN] sasl; SASL@15 [*] cancel sasl; ");
    /* An empty SASL response is valid; a SASL line with spaces is not split. */
    CHECK_CMD("AUTH PLAIN\r\n\r\n", "DONE@12 AUTH [PLAIN] sasl; SASL@14 [] sasl; ");
    CHECK_CMD("auth login\r\nab cd\r\n", "DONE@12 AUTH [login] sasl; SASL@19 [ab cd] sasl; ");
    /* Bare AUTH: the old mechanism listing, a multi-line answer. */
    CHECK_CMD("AUTH\r\n", "DONE@6 AUTH multi; ");
    /* The SASL mode is for one line only. */
    CHECK_CMD("AUTH PLAIN\r\nx\r\nauth\r\n",
              "DONE@12 AUTH [PLAIN] sasl; SASL@15 [x] sasl; DONE@21 AUTH multi; ");
}

static void test_cmd_lowercase(void **state)
{
    (void)state;
    CHECK_CMD("user Bob\r\n", "DONE@10 USER [Bob] single; ");
    CHECK_CMD("Retr 1\r\n", "DONE@8 RETR [1] multi; ");
    CHECK_CMD("capa\r\n", "DONE@6 CAPA multi; ");
    CHECK_CMD("sTlS\n", "DONE@5 STLS single; ");
}

static void test_cmd_pipelined(void **state)
{
    (void)state;
    CHECK_CMD("USER a\r\nPASS b\r\nSTAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n",
              "DONE@8 USER [a] single; DONE@16 PASS [b] single; DONE@22 STAT single; "
              "DONE@28 LIST multi; DONE@36 RETR [1] multi; DONE@42 QUIT single; ");
    /* A BAD line in the middle does not disturb its neighbours. */
    CHECK_CMD("NOOP\r\n\r\nSTAT\r\n",
              "DONE@6 NOOP single; BAD@8 empty command; DONE@14 STAT single; ");
}

static void test_cmd_bare_lf(void **state)
{
    (void)state;
    CHECK_CMD("STAT\nLIST 2\n", "DONE@5 STAT single; DONE@12 LIST [2] single; ");
}

static void test_cmd_too_long(void **state)
{
    (void)state;
    /* max_line 16 counts the CRLF: 14 bytes of text fit, 15 do not. */
    check_cmd_opts("USER 123456789\r\n", 16, 16, 0, "DONE@16 USER [123456789] single; ");
    check_cmd_opts("USER 1234567890\r\nNOOP\r\n", 23, 16, 0,
                   "BAD@17 line too long; DONE@23 NOOP single; ");
    /* With a bare LF the line is one byte shorter, so one more byte of text fits. */
    check_cmd_opts("USER 1234567890\n", 16, 16, 0, "DONE@16 USER [1234567890] single; ");
    /* A long line is skipped to its end whatever its length, and nothing is stored. */
    char big[3000];
    memset(big, 'x', sizeof(big));
    memcpy(big, "USER ", 5);
    memcpy(big + sizeof(big) - 8, "\r\nQUIT\r\n", 8);
    check_cmd_opts(big, sizeof(big), 255, 0, "BAD@2994 line too long; DONE@3000 QUIT single; ");
    /* The store is the other bound. */
    check_cmd_opts("USER abcdef\r\nNOOP\r\n", 19, 255, 8,
                   "BAD@13 line too long; DONE@19 NOOP single; ");
    /* A too-long SASL line is BAD, and the mode ends with it. */
    check_cmd_opts("AUTH PLAIN\r\nAAAAAAAAAAAAAAAAAAAA\r\nNOOP\r\n", 40, 16, 0,
                   "DONE@12 AUTH [PLAIN] sasl; BAD@34 line too long; DONE@40 NOOP single; ");
}

static void test_cmd_bad_lines(void **state)
{
    (void)state;
    CHECK_CMD("\r\nNOOP\r\n", "BAD@2 empty command; DONE@8 NOOP single; ");
    CHECK_CMD("\n", "BAD@1 empty command; ");
    CHECK_CMD("USER a\0b\r\nNOOP\r\n", "BAD@10 NUL in command; DONE@16 NOOP single; ");
    CHECK_CMD("USER a\rb\r\nNOOP\r\n", "BAD@10 bare CR in command; DONE@16 NOOP single; ");
    CHECK_CMD("USER a\r\r\n", "BAD@9 bare CR in command; ");
    CHECK_CMD(" USER a\r\n", "BAD@9 missing command name; ");
    CHECK_CMD("ABCDEFGH x\r\n", "DONE@12 ABCDEFGH [x] single; ");
    CHECK_CMD("ABCDEFGHI x\r\n", "BAD@13 command name too long; ");
    CHECK_CMD("US\x01R x\r\n", "BAD@8 invalid command name; ");
    CHECK_CMD("US\xc3\xa9R x\r\n", "BAD@9 invalid command name; ");
    CHECK_CMD("AUTH PLAIN\r\nab\0c\r\nNOOP\r\n",
              "DONE@12 AUTH [PLAIN] sasl; BAD@18 NUL in command; DONE@24 NOOP single; ");
}

static void test_cmd_spaces(void **state)
{
    (void)state;
    /* A trailing space is an empty argument; LIST/UIDL with only spaces still list all
     * (servers cut at the first space and see an empty argument as none). */
    CHECK_CMD("LIST \r\n", "DONE@7 LIST [] multi; ");
    CHECK_CMD("UIDL  \r\n", "DONE@8 UIDL [] [] rest=[ ] multi; ");
    CHECK_CMD("LIST  1\r\n", "DONE@9 LIST [] [1] rest=[ 1] single; ");
    CHECK_CMD("AUTH \r\n", "DONE@7 AUTH [] multi; ");
    /* PASS keeps the raw rest (RFC 1939: spaces may be part of the password). */
    CHECK_CMD("PASS correct horse battery staple x\r\n",
              "DONE@37 PASS [correct] [horse] [battery] [staple] +more "
              "rest=[correct horse battery staple x] single; ");
    CHECK_CMD("PASS  two  spaces \r\n",
              "DONE@20 PASS [] [two] [] [spaces] +more rest=[ two  spaces ] single; ");
    /* 8-bit and tabs are argument bytes. */
    CHECK_CMD("PASS p\xc3\xa4ss\tw\r\n", "DONE@14 PASS [p\\xc3\\xa4ss\\x09w] single; ");
}

static void test_cmd_helpers(void **state)
{
    (void)state;
    char store[64];
    struct pop3_cmd_parser p;
    size_t used;
    pop3_cmd_parser_init(&p, store, sizeof(store), 255);
    assert_int_equal(pop3_cmd_parse(&p, "top 3 5\r\n", 9, &used), POP3_CMD_DONE);
    assert_int_equal(used, 9);
    assert_true(pop3_keyword_is(&p, "TOP"));
    assert_true(pop3_keyword_is(&p, "top"));
    assert_false(pop3_keyword_is(&p, "TO"));
    assert_false(pop3_keyword_is(&p, "TOPS"));
    assert_false(pop3_keyword_is(&p, ""));
    assert_int_equal(p.nargs, 2);
    assert_memory_equal(pop3_cmd_arg(&p, 0), "3", 1);
    assert_memory_equal(pop3_cmd_arg(&p, 1), "5", 1);
    assert_null(pop3_cmd_arg(&p, 2));
    assert_true(pop3_cmd_arg_is(&p, 1, "5"));
    assert_false(pop3_cmd_arg_is(&p, 1, "55"));
    assert_false(pop3_cmd_arg_is(&p, 2, "5"));
    assert_false(pop3_sasl_is_cancel(&p));

    assert_int_equal(pop3_cmd_parse(&p, "AUTH xoauth2\r\n", 14, &used), POP3_CMD_DONE);
    assert_true(pop3_cmd_arg_is(&p, 0, "XOAUTH2"));
    assert_int_equal(pop3_expected_response(&p), POP3_RESP_SASL);
    pop3_cmd_parser_expect_sasl(&p);
    assert_int_equal(pop3_cmd_parse(&p, "*\r\n", 3, &used), POP3_CMD_DONE);
    assert_true(p.sasl);
    assert_true(pop3_sasl_is_cancel(&p));
    assert_false(pop3_keyword_is(&p, ""));
    assert_string_equal(p.keyword, "");
    assert_int_equal(pop3_expected_response(&p), POP3_RESP_SASL);
}

/* Credentials do not linger in the store: the next line and reset wipe what was used. */
static void test_cmd_wipes_store(void **state)
{
    (void)state;
    char store[64];
    struct pop3_cmd_parser p;
    size_t used;
    memset(store, 'Z', sizeof(store));
    pop3_cmd_parser_init(&p, store, sizeof(store), 255);
    assert_int_equal(pop3_cmd_parse(&p, "PASS hunter22\r\n", 15, &used), POP3_CMD_DONE);
    assert_memory_equal(store, "PASS hunter22", 13);
    assert_int_equal(pop3_cmd_parse(&p, "NOOP\r\n", 6, &used), POP3_CMD_DONE);
    assert_memory_equal(store, "NOOP\0\0\0\0\0\0\0\0\0ZZ", 15);

    assert_int_equal(pop3_cmd_parse(&p, "PASS abc", 8, &used), POP3_CMD_MORE);
    pop3_cmd_parser_expect_sasl(&p);
    pop3_cmd_parser_reset(&p);
    assert_memory_equal(store, "\0\0\0\0\0\0\0\0\0\0\0\0\0ZZ", 15);
    assert_int_equal(p.store_len, 0);
    /* reset dropped both the partial line and the SASL expectation. */
    assert_int_equal(pop3_cmd_parse(&p, "stat\r\n", 6, &used), POP3_CMD_DONE);
    assert_false(p.sasl);
    assert_string_equal(p.keyword, "STAT");
}

/* expect_sasl() while a line is half read applies to the line after it. */
static void test_cmd_expect_sasl_mid_line(void **state)
{
    (void)state;
    char store[64];
    struct pop3_cmd_parser p;
    size_t used;
    pop3_cmd_parser_init(&p, store, sizeof(store), 255);
    assert_int_equal(pop3_cmd_parse(&p, "NO", 2, &used), POP3_CMD_MORE);
    pop3_cmd_parser_expect_sasl(&p);
    assert_int_equal(pop3_cmd_parse(&p, "OP\r\nab c\r\n", 10, &used), POP3_CMD_DONE);
    assert_int_equal(used, 4);
    assert_true(pop3_keyword_is(&p, "NOOP"));
    assert_int_equal(pop3_cmd_parse(&p, "ab c\r\n", 6, &used), POP3_CMD_DONE);
    assert_true(p.sasl);
    assert_int_equal(p.args[0].len, 4);
}

/* ---------- 3. framer ---------- */

static const char *status_name(enum pop3_status s)
{
    switch (s) {
    case POP3_STATUS_OK:
        return "OK";
    case POP3_STATUS_ERR:
        return "ERR";
    case POP3_STATUS_CONT:
        return "CONT";
    default:
        return "NONE";
    }
}

static enum pop3_resp_kind kind_of(char c)
{
    return c == 'M' ? POP3_RESP_MULTI : c == 'A' ? POP3_RESP_SASL : POP3_RESP_SINGLE;
}

struct frame_opts {
    size_t max_line;
    const char *plan; /* one letter per response: S single, M multi, A SASL; then SINGLE */
};

static void log_head(struct log *l, const struct pop3_framer *f)
{
    log_fmt(l, "%s [", status_name(f->status));
    log_raw(l, f->head, f->head_len);
    log_str(l, "]");
    if (f->status_len != f->head_len)
        log_fmt(l, " len=%zu", f->status_len);
}

/* Frames responses; checks at each END of a body that its terminator is what term_len says, that
 * body_len matches, and that the unstuffer, fed the same body, stops at the same byte. */
static void run_frame(const char *in, size_t len, enum feed_mode m, size_t split, struct log *l,
                      const void *arg)
{
    const struct frame_opts *o = arg;
    struct pop3_framer f;
    pop3_framer_init(&f, o->max_line);
    size_t nresp = 0, plan_len = strlen(o->plan);
    assert_true(pop3_framer_at_boundary(&f));
    if (plan_len > 0)
        assert_true(pop3_framer_expect(&f, kind_of(o->plan[0])));

    size_t pos = 0, end = 0, body_start = 0;
    bool stuck = false;
    while (end < len && !stuck) {
        end = next_cut(m, split, end, len);
        while (pos < end) {
            size_t used = 99999;
            enum pop3_frame_event ev = pop3_frame(&f, in + pos, end - pos, &used);
            assert_true(used <= end - pos);
            pos += used;
            if (ev == POP3_FRAME_MORE) {
                /* At most "." or ".\r" is held back. */
                assert_true(end - pos <= 2);
                if (end - pos > 0)
                    assert_int_equal(in[pos], '.');
                break;
            }
            if (ev == POP3_FRAME_ERROR) {
                log_fmt(l, "ERROR@%zu %s; ", pos, f.error);
                size_t u2 = 1;
                assert_int_equal(pop3_frame(&f, in + pos, end - pos, &u2), POP3_FRAME_ERROR);
                assert_int_equal(u2, 0);
                assert_false(pop3_framer_expect(&f, POP3_RESP_SINGLE));
                stuck = true;
                break;
            }
            if (ev == POP3_FRAME_STATUS_LINE) {
                log_fmt(l, "STATUS@%zu ", pos);
                log_head(l, &f);
                log_str(l, "; ");
                body_start = pos;
                assert_false(pop3_framer_at_boundary(&f));
                assert_false(pop3_framer_expect(&f, POP3_RESP_SINGLE));
                continue;
            }
            /* END */
            log_fmt(l, "END@%zu ", pos);
            log_head(l, &f);
            if (f.term_len) {
                size_t body_end = pos - f.term_len;
                assert_true(body_end >= body_start);
                assert_int_equal(f.body_len, body_end - body_start);
                if (f.term_len == 3)
                    assert_memory_equal(in + body_end, ".\r\n", 3);
                else
                    assert_memory_equal(in + body_end, ".\n", 2);
                log_str(l, " body=[");
                log_raw(l, in + body_start, body_end - body_start);
                log_fmt(l, "] t=%u", f.term_len);
                /* The unstuffer agrees on where the body ends. */
                static char ubuf[POP3_UNSTUFF_OUT_MAX(LOG_MAX)];
                struct pop3_unstuffer u;
                pop3_unstuffer_init(&u);
                size_t uc;
                assert_true(len - body_start <= LOG_MAX);
                pop3_unstuff(&u, in + body_start, len - body_start, ubuf, &uc);
                assert_true(u.done);
                assert_int_equal(body_start + uc, pos);
            }
            log_str(l, "; ");
            assert_true(pop3_framer_at_boundary(&f));
            nresp++;
            if (nresp < plan_len)
                assert_true(pop3_framer_expect(&f, kind_of(o->plan[nresp])));
        }
    }
    if (!stuck && !pop3_framer_at_boundary(&f))
        log_str(l, "MORE");
}

static void check_frame_opts(const char *in, size_t len, size_t max_line, const char *plan,
                             const char *want)
{
    struct frame_opts o = {max_line, plan};
    check_all_splits(run_frame, in, len, &o, want);
}

#define CHECK_FRAME(plan, in, want) check_frame_opts(in, sizeof(in) - 1, 512, plan, want)

static void test_frame_single(void **state)
{
    (void)state;
    CHECK_FRAME("", "+OK POP3 ready\r\n", "END@16 OK [+OK POP3 ready]; ");
    CHECK_FRAME("S", "+OK\r\n", "END@5 OK [+OK]; ");
    CHECK_FRAME("S", "-ERR [IN-USE] locked\r\n", "END@22 ERR [-ERR [IN-USE] locked]; ");
    CHECK_FRAME("S", "-ERR [SYS/TEMP] try later\n", "END@26 ERR [-ERR [SYS/TEMP] try later]; ");
    CHECK_FRAME("S", "-ERR\r\n", "END@6 ERR [-ERR]; ");
    /* Sloppy case is tolerated. */
    CHECK_FRAME("S", "+ok fine\r\n", "END@10 OK [+ok fine]; ");
    /* Unfinished. */
    CHECK_FRAME("S", "+OK almost\r", "MORE");
}

static void test_frame_multi(void **state)
{
    (void)state;
    /* RETR with a stuffed line, and a line that is "." after unstuffing. */
    CHECK_FRAME("M", "+OK 30 octets\r\nSubject: x\r\n\r\n..hidden\r\n..\r\n.\r\n",
                "STATUS@15 OK [+OK 30 octets]; END@46 OK [+OK 30 octets] "
                "body=[Subject: x\\r\\n\\r\\n..hidden\\r\\n..\\r\\n] t=3; ");
    /* ".x" and ".\rX" at a line start are content. */
    CHECK_FRAME("M", "+OK\r\n.x\r\n.\rX\r\n.\r\n",
                "STATUS@5 OK [+OK]; END@17 OK [+OK] body=[.x\\r\\n.\\rX\\r\\n] t=3; ");
    /* Empty body. */
    CHECK_FRAME("M", "+OK\r\n.\r\n", "STATUS@5 OK [+OK]; END@8 OK [+OK] body=[] t=3; ");
    /* CAPA listing. */
    CHECK_FRAME("M",
                "+OK Capability list follows\r\nTOP\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n"
                "PIPELINING\r\nUIDL\r\n.\r\n",
                "STATUS@29 OK [+OK Capability list follows]; END@85 OK [+OK Capability list "
                "follows] body=[TOP\\r\\nUSER\\r\\nSASL PLAIN\\r\\nRESP-CODES\\r\\nPIPELINING\\r\\n"
                "UIDL\\r\\n] t=3; ");
    /* LIST then UIDL, pipelined. */
    CHECK_FRAME("MM", "+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n+OK\r\n1 aaa\r\n.\r\n",
                "STATUS@16 OK [+OK 2 messages]; END@33 OK [+OK 2 messages] "
                "body=[1 120\\r\\n2 200\\r\\n] t=3; STATUS@38 OK [+OK]; "
                "END@48 OK [+OK] body=[1 aaa\\r\\n] t=3; ");
    /* A body line that merely ends in "." is content. */
    CHECK_FRAME("M", "+OK\r\ntext.\r\n.\r\n",
                "STATUS@5 OK [+OK]; END@15 OK [+OK] body=[text.\\r\\n] t=3; ");
    /* An unfinished body. */
    CHECK_FRAME("M", "+OK\r\nabc\r\n.", "STATUS@5 OK [+OK]; MORE");
    CHECK_FRAME("M", "+OK\r\nabc\r\n.\r", "STATUS@5 OK [+OK]; MORE");
}

static void test_frame_err_to_multi(void **state)
{
    (void)state;
    /* -ERR to RETR is one line; the next response follows right away. */
    CHECK_FRAME("MS", "-ERR no such message\r\n+OK\r\n",
                "END@22 ERR [-ERR no such message]; END@27 OK [+OK]; ");
    CHECK_FRAME("MM", "-ERR [SYS/PERM] gone\r\n+OK\r\n.\r\n",
                "END@22 ERR [-ERR [SYS/PERM] gone]; STATUS@27 OK [+OK]; "
                "END@30 OK [+OK] body=[] t=3; ");
}

static void test_frame_lf_only(void **state)
{
    (void)state;
    /* A broken server with LF line ends. */
    CHECK_FRAME("MS", "+OK\nline\n..dot\n.\n+OK bye\n",
                "STATUS@4 OK [+OK]; END@17 OK [+OK] body=[line\\n..dot\\n] t=2; "
                "END@25 OK [+OK bye]; ");
    /* Mixed: CRLF lines then "\n.\r\n" and "\n.\n". */
    CHECK_FRAME("MM", "+OK\r\na\r\nb\n.\r\n+OK\r\nc\n.\n",
                "STATUS@5 OK [+OK]; END@13 OK [+OK] body=[a\\r\\nb\\n] t=3; "
                "STATUS@18 OK [+OK]; END@22 OK [+OK] body=[c\\n] t=2; ");
    /* Empty body with LF only right after the status line. */
    CHECK_FRAME("M", "+OK\n.\n", "STATUS@4 OK [+OK]; END@6 OK [+OK] body=[] t=2; ");
}

static void test_frame_sasl(void **state)
{
    (void)state;
    CHECK_FRAME("AA", "+ \r\n+OK logged in\r\n", "END@4 CONT [+ ]; END@19 OK [+OK logged in]; ");
    CHECK_FRAME("AA", "+\r\n-ERR [AUTH] bad\r\n", "END@3 CONT [+]; END@20 ERR [-ERR [AUTH] bad]; ");
    CHECK_FRAME("A", "+ dGVzdA==\r\n", "END@12 CONT [+ dGVzdA==]; ");
    /* Outside an AUTH exchange a challenge breaks framing. */
    CHECK_FRAME("S", "+ \r\n", "ERROR@4 continuation request outside AUTH; ");
    CHECK_FRAME("M", "+ x\r\n", "ERROR@5 continuation request outside AUTH; ");
}

static void test_frame_errors(void **state)
{
    (void)state;
    CHECK_FRAME("S", "HELLO\r\n", "ERROR@7 invalid status indicator; ");
    CHECK_FRAME("S", "\r\n", "ERROR@2 invalid status indicator; ");
    CHECK_FRAME("S", "+O\r\n", "ERROR@4 invalid status indicator; ");
    CHECK_FRAME("S", "-ER\r\n", "ERROR@5 invalid status indicator; ");
    /* max_line 16 counts the LF: 15 bytes before it fit (CR included), a 16th does not. */
    check_frame_opts("+OK 0123456789\r\n", 16, 16, "S", "END@16 OK [+OK 0123456789]; ");
    check_frame_opts("+OK 01234567890\r\n", 17, 16, "S", "ERROR@15 response line too long; ");
    check_frame_opts("+OK 0123456789ab", 16, 16, "S", "ERROR@15 response line too long; ");
    /* Body lines have no length limit. */
    char big[1200];
    memset(big, 'b', sizeof(big));
    memcpy(big, "+OK\r\n", 5);
    memcpy(big + sizeof(big) - 5, "\r\n.\r\n", 5);
    struct log l;
    memset(&l, 0, sizeof(l));
    struct frame_opts o = {16, "M"};
    run_frame(big, sizeof(big), FEED_BYTES, 0, &l, &o);
    assert_non_null(strstr(l.s, "END@1200 OK [+OK] body=[bbb"));
}

static void test_frame_head_truncated(void **state)
{
    (void)state;
    char line[300];
    memset(line, 'h', sizeof(line));
    memcpy(line, "+OK ", 4);
    memcpy(line + 298, "\r\n", 2);
    struct pop3_framer f;
    pop3_framer_init(&f, 512);
    size_t used;
    assert_int_equal(pop3_frame(&f, line, sizeof(line), &used), POP3_FRAME_END);
    assert_int_equal(used, 300);
    assert_int_equal(f.head_len, POP3_HEAD_MAX);
    assert_int_equal(f.status_len, 298);
    assert_int_equal(f.status, POP3_STATUS_OK);
    /* A CR that lands exactly at the end of head is trimmed from it. */
    char l2[POP3_HEAD_MAX + 1];
    memset(l2, 'x', sizeof(l2));
    memcpy(l2, "-ERR", 4);
    l2[POP3_HEAD_MAX - 1] = '\r';
    l2[POP3_HEAD_MAX] = '\n';
    assert_int_equal(pop3_frame(&f, l2, sizeof(l2), &used), POP3_FRAME_END);
    assert_int_equal(f.head_len, POP3_HEAD_MAX - 1);
    assert_int_equal(f.status_len, POP3_HEAD_MAX - 1);
}

/* POP3_LINE_UNLIMITED (the relay after login): a 1 MB status line, fed in random pieces, ends
 * in one END with its head and length right; a multi-line answer after it is framed as usual. */
static void test_frame_unlimited(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    const char tail[] = "\r\n+OK\r\n1 a\r\n.\r\n";
    char *in = malloc(n + sizeof tail);
    assert_non_null(in);
    memcpy(in, "-ERR Invalid message number: ", 29);
    memset(in + 29, 'z', n - 29);
    memcpy(in + n, tail, sizeof tail);
    size_t len = n + sizeof tail - 1;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        struct pop3_framer f;
        pop3_framer_init(&f, POP3_LINE_UNLIMITED);
        uint64_t x = seed * 0x9e3779b97f4a7c15ULL;
        size_t pos = 0, ends = 0;
        while (pos < len) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t piece = 1 + (size_t)(x % (seed == 1 ? 5 : 60000));
            size_t end = pos + piece < len ? pos + piece : len;
            while (pos < end) {
                size_t used = 0;
                enum pop3_frame_event ev = pop3_frame(&f, in + pos, end - pos, &used);
                assert_true(ev != POP3_FRAME_ERROR);
                pos += used;
                if (ev == POP3_FRAME_END) {
                    if (ends++ == 0) {
                        assert_int_equal(pos, n + 2);
                        assert_int_equal(f.status, POP3_STATUS_ERR);
                        assert_int_equal(f.status_len, n);
                        assert_int_equal(f.head_len, POP3_HEAD_MAX);
                        assert_memory_equal(f.head, in, POP3_HEAD_MAX);
                        assert_true(pop3_framer_expect(&f, POP3_RESP_MULTI));
                    } else {
                        assert_int_equal(f.body_len, 5);
                    }
                }
                if (ev == POP3_FRAME_MORE && used < end - pos)
                    break; /* "." held back: the next piece brings the byte after it */
            }
            if (pos < end)
                continue; /* re-feed the held bytes with the next piece */
        }
        assert_int_equal(ends, 2);
    }
    /* The same line under a limit is refused. */
    struct pop3_framer f;
    size_t used;
    pop3_framer_init(&f, 65536);
    assert_int_equal(pop3_frame(&f, in, len, &used), POP3_FRAME_ERROR);
    free(in);
}

/* Without expect(), responses are single lines; expect() only works at a boundary. */
static void test_frame_expect_rules(void **state)
{
    (void)state;
    struct pop3_framer f;
    size_t used;
    pop3_framer_init(&f, 512);
    assert_int_equal(pop3_frame(&f, "", 0, &used), POP3_FRAME_MORE);
    assert_int_equal(used, 0);
    assert_true(pop3_framer_expect(&f, POP3_RESP_MULTI));
    assert_int_equal(pop3_frame(&f, "+O", 2, &used), POP3_FRAME_MORE);
    assert_false(pop3_framer_at_boundary(&f));
    assert_false(pop3_framer_expect(&f, POP3_RESP_SINGLE));
    assert_int_equal(pop3_frame(&f, "K\r\nbody\r\n.\r\n", 12, &used), POP3_FRAME_STATUS_LINE);
    assert_int_equal(used, 3);
    assert_int_equal(f.kind, POP3_RESP_MULTI);
    assert_int_equal(pop3_frame(&f, "body\r\n.\r\n", 9, &used), POP3_FRAME_END);
    assert_int_equal(f.term_len, 3);
    assert_int_equal(f.body_len, 6);
    /* The next response is SINGLE by default: an unsolicited line is one line. */
    assert_int_equal(pop3_frame(&f, "+OK x\r\n", 7, &used), POP3_FRAME_END);
    assert_int_equal(f.kind, POP3_RESP_SINGLE);
    assert_int_equal(f.term_len, 0);
}

static void test_resp_code(void **state)
{
    (void)state;
    const char *c;
    size_t n;
    assert_true(pop3_resp_code("-ERR [IN-USE] locked", 20, &c, &n));
    assert_int_equal(n, 6);
    assert_memory_equal(c, "IN-USE", 6);
    assert_true(pop3_resp_code_is(c, n, "IN-USE"));
    assert_true(pop3_resp_code("-ERR [SYS/TEMP] later", 21, &c, &n));
    assert_true(pop3_resp_code_is(c, n, "SYS"));
    assert_true(pop3_resp_code_is(c, n, "sys/temp"));
    assert_false(pop3_resp_code_is(c, n, "SYS/PERM"));
    assert_false(pop3_resp_code_is(c, n, "SY"));
    assert_false(pop3_resp_code_is(c, n, ""));
    assert_true(pop3_resp_code("-ERR [AUTH]", 11, &c, &n));
    assert_true(pop3_resp_code_is(c, n, "AUTH"));
    assert_true(pop3_resp_code("+OK [LOGIN-DELAY] x", 19, &c, &n));
    assert_memory_equal(c, "LOGIN-DELAY", 11);
    assert_false(pop3_resp_code("-ERR [] x", 9, &c, &n));
    assert_false(pop3_resp_code("-ERR [AUTH", 10, &c, &n));
    assert_false(pop3_resp_code("-ERR [no way] x", 15, &c, &n));
    assert_false(pop3_resp_code("-ERR  [AUTH]", 12, &c, &n));
    assert_false(pop3_resp_code("-ERR", 4, &c, &n));
    assert_false(pop3_resp_code("+ [AUTH]", 8, &c, &n));
    assert_false(pop3_resp_code("-ERR [A[B]", 10, &c, &n));
}

/* ---------- 4. dot-stuffing ---------- */

static void run_unstuff(const char *in, size_t len, enum feed_mode m, size_t split, struct log *l,
                        const void *arg)
{
    (void)arg;
    static char out[POP3_UNSTUFF_OUT_MAX(LOG_MAX)];
    struct pop3_unstuffer u;
    pop3_unstuffer_init(&u);
    size_t pos = 0, end = 0, olen = 0;
    while (end < len && !u.done) {
        end = next_cut(m, split, end, len);
        size_t used;
        char tmp[POP3_UNSTUFF_OUT_MAX(LOG_MAX)];
        size_t n = pop3_unstuff(&u, in + pos, end - pos, tmp, &used);
        assert_true(n <= POP3_UNSTUFF_OUT_MAX(end - pos));
        if (!u.done)
            assert_int_equal(used, end - pos);
        memcpy(out + olen, tmp, n);
        olen += n;
        pos += used;
    }
    log_str(l, "[");
    log_raw(l, out, olen);
    log_fmt(l, "] %s@%zu", u.done ? "done" : "more", pos);
    assert_int_equal(u.in, pos);
}

#define CHECK_UNSTUFF(in, want) check_all_splits(run_unstuff, in, sizeof(in) - 1, NULL, want)

static void test_unstuff(void **state)
{
    (void)state;
    CHECK_UNSTUFF("line1\r\n..dot\r\n.x\r\n..\r\n.\r\nNEXT",
                  "[line1\\r\\n.dot\\r\\nx\\r\\n.\\r\\n] done@25");
    CHECK_UNSTUFF(".\r\n", "[] done@3");
    CHECK_UNSTUFF(".\n+OK", "[] done@2");
    CHECK_UNSTUFF(".\rX\r\n.\r\n", "[\\rX\\r\\n] done@8");
    CHECK_UNSTUFF(".\r\r\n.\n", "[\\r\\r\\n] done@6");
    CHECK_UNSTUFF("a\nb\n.\n", "[a\\nb\\n] done@6");
    CHECK_UNSTUFF("a\r\n.", "[a\\r\\n] more@4");
    CHECK_UNSTUFF("a\r\n.\r", "[a\\r\\n] more@5");
    CHECK_UNSTUFF("abc", "[abc] more@3");
    CHECK_UNSTUFF("", "[] more@0");
    /* After done, nothing more is taken. */
    struct pop3_unstuffer u;
    char out[8];
    size_t used;
    pop3_unstuffer_init(&u);
    assert_int_equal(pop3_unstuff(&u, ".\r\n", 3, out, &used), 0);
    assert_true(u.done);
    assert_int_equal(pop3_unstuff(&u, "abc", 3, out, &used), 0);
    assert_int_equal(used, 0);
}

/* The one case where output exceeds input: ".\r" held from the previous chunk. */
static void test_unstuff_out_max(void **state)
{
    (void)state;
    struct pop3_unstuffer u;
    char out[4];
    size_t used;
    pop3_unstuffer_init(&u);
    assert_int_equal(pop3_unstuff(&u, ".\r", 2, out, &used), 0);
    assert_int_equal(used, 2);
    assert_int_equal(pop3_unstuff(&u, "X", 1, out, &used), 2);
    assert_memory_equal(out, "\rX", 2);
}

static void run_stuff(const char *in, size_t len, enum feed_mode m, size_t split, struct log *l,
                      const void *arg)
{
    (void)arg;
    static char out[2 * LOG_MAX];
    struct pop3_stuffer s;
    pop3_stuffer_init(&s);
    size_t pos = 0, olen = 0;
    while (pos < len) {
        size_t end = next_cut(m, split, pos, len);
        size_t n = pop3_stuff(&s, in + pos, end - pos, out + olen);
        assert_true(n <= POP3_STUFF_OUT_MAX(end - pos));
        olen += n;
        pos = end;
    }
    size_t n = pop3_stuff_finish(&s, out + olen);
    assert_true(n <= POP3_STUFF_FINISH_MAX);
    olen += n;
    log_raw(l, out, olen);
}

#define CHECK_STUFF(in, want) check_all_splits(run_stuff, in, sizeof(in) - 1, NULL, want)

static void test_stuff(void **state)
{
    (void)state;
    CHECK_STUFF("a\r\n.\r\n..\r\n.x\r\nend", "a\\r\\n..\\r\\n...\\r\\n..x\\r\\nend\\r\\n.\\r\\n");
    CHECK_STUFF("", ".\\r\\n");
    CHECK_STUFF(".", "..\\r\\n.\\r\\n");
    CHECK_STUFF("a\nb", "a\\r\\nb\\r\\n.\\r\\n");
    CHECK_STUFF("a\r", "a\\r\\n.\\r\\n");
    CHECK_STUFF("a\r\n", "a\\r\\n.\\r\\n");
    CHECK_STUFF("\n.\n", "\\r\\n..\\r\\n.\\r\\n");
    CHECK_STUFF("a\r.b\r\n", "a\\r.b\\r\\n.\\r\\n");
}

/* norm(x): bare LF → CRLF; a last line without LF completed (CR → CRLF, else + CRLF). */
static size_t normalise(const char *x, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (x[i] == '\n' && (i == 0 || x[i - 1] != '\r'))
            out[o++] = '\r';
        out[o++] = x[i];
    }
    if (n > 0 && x[n - 1] != '\n') {
        if (x[n - 1] != '\r')
            out[o++] = '\r';
        out[o++] = '\n';
    }
    return o;
}

/* unstuff(stuff(x)) == norm(x), and framing "+OK\r\n" stuff(x) as MULTI ends exactly at the
 * end, with the body the stuffer made. */
static void round_trip(const char *x, size_t n)
{
    char st[256], un[POP3_UNSTUFF_OUT_MAX(256)], want[256];
    struct pop3_stuffer s;
    pop3_stuffer_init(&s);
    assert_true(POP3_STUFF_OUT_MAX(n) + POP3_STUFF_FINISH_MAX + 5 <= sizeof(st));
    memcpy(st, "+OK\r\n", 5);
    size_t sl = 5 + pop3_stuff(&s, x, n, st + 5);
    sl += pop3_stuff_finish(&s, st + sl);

    struct pop3_unstuffer u;
    pop3_unstuffer_init(&u);
    size_t used;
    size_t ul = pop3_unstuff(&u, st + 5, sl - 5, un, &used);
    assert_true(u.done);
    assert_int_equal(used, sl - 5);
    size_t wl = normalise(x, n, want);
    assert_int_equal(ul, wl);
    assert_memory_equal(un, want, wl);

    struct pop3_framer f;
    pop3_framer_init(&f, 512);
    assert_true(pop3_framer_expect(&f, POP3_RESP_MULTI));
    assert_int_equal(pop3_frame(&f, st, sl, &used), POP3_FRAME_STATUS_LINE);
    assert_int_equal(used, 5);
    size_t total = used;
    assert_int_equal(pop3_frame(&f, st + total, sl - total, &used), POP3_FRAME_END);
    total += used;
    assert_int_equal(total, sl);
    assert_int_equal(f.term_len, 3);
    assert_int_equal(f.body_len, sl - 5 - 3);
}

static void test_round_trip(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "",       ".",         "..",          ".x",          "\r\n",      "\n",
        ".\r\n",  "..\r\n",    ".x\r\n.\r\n", "a\r\n.\r\nb", "a\n.\nb\n", "text.\r\n",
        "a\r",    "\r",        ".\r",         ".\rX",        "\r\r\n.",   "x\r\n\r\n.\r\n.",
        "no eol", "..\n...\n",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        round_trip(bodies[i], strlen(bodies[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmd_basic),
        cmocka_unit_test(test_cmd_auth),
        cmocka_unit_test(test_cmd_lowercase),
        cmocka_unit_test(test_cmd_pipelined),
        cmocka_unit_test(test_cmd_bare_lf),
        cmocka_unit_test(test_cmd_too_long),
        cmocka_unit_test(test_cmd_bad_lines),
        cmocka_unit_test(test_cmd_spaces),
        cmocka_unit_test(test_cmd_helpers),
        cmocka_unit_test(test_cmd_wipes_store),
        cmocka_unit_test(test_cmd_expect_sasl_mid_line),
        cmocka_unit_test(test_frame_single),
        cmocka_unit_test(test_frame_multi),
        cmocka_unit_test(test_frame_err_to_multi),
        cmocka_unit_test(test_frame_lf_only),
        cmocka_unit_test(test_frame_sasl),
        cmocka_unit_test(test_frame_errors),
        cmocka_unit_test(test_frame_head_truncated),
        cmocka_unit_test(test_frame_expect_rules),
        cmocka_unit_test(test_frame_unlimited),
        cmocka_unit_test(test_resp_code),
        cmocka_unit_test(test_unstuff),
        cmocka_unit_test(test_unstuff_out_max),
        cmocka_unit_test(test_stuff),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
