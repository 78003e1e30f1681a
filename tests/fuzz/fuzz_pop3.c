/*
 * fuzz_pop3 — libFuzzer harness for pop3_parse.
 *
 * Input: byte 0 picks the framer's plan (two bits per response: single, multi, SASL), byte 1
 * picks the limits and a cut position; the rest is fed to every machine. Properties, each an
 * abort() when broken:
 *  - split invariance: the command parser and the framer give the same events at the same
 *    absolute offsets with the same results whether the input comes whole, one byte per call,
 *    or in two chunks; so does the unstuffer's output;
 *  - the framer's body/terminator accounting holds (body_len, term_len, the bytes of the
 *    terminator), and the unstuffer stops exactly where the framer's END is;
 *  - unstuff(stuff(x)) == x with line ends normalised (bare LF → CRLF, a final line end
 *    added), and the stuffed body framed as a multi-line response ends exactly at its end;
 *  - output bounds: unstuff ≤ POP3_UNSTUFF_OUT_MAX, stuff ≤ POP3_STUFF_OUT_MAX.
 *
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iproxy \
 *       tests/fuzz/fuzz_pop3.c proxy/pop3_parse.c -o fuzz_pop3
 *   ./fuzz_pop3 -dict=tests/fuzz/pop3.dict tests/fuzz/corpus/fuzz_pop3
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_parse.h"

#define MAX_INPUT  8192
#define MAX_EVENTS (MAX_INPUT + 16)

struct event {
    int type;
    size_t at;     /* absolute input offset after the event */
    uint64_t hash; /* of the results the event exposes */
};

struct trace {
    struct event ev[MAX_EVENTS];
    size_t n;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void record(struct trace *t, int type, size_t at, uint64_t hash)
{
    if (t->n >= MAX_EVENTS)
        abort(); /* more events than bytes: a parser reported something twice */
    t->ev[t->n].type = type;
    t->ev[t->n].at = at;
    t->ev[t->n].hash = hash;
    t->n++;
}

static void same_trace(const struct trace *a, const struct trace *b, const char *what)
{
    if (a->n != b->n || memcmp(a->ev, b->ev, a->n * sizeof(a->ev[0])) != 0) {
        fprintf(stderr, "fuzz_pop3: %s: traces differ (%zu vs %zu events)\n", what, a->n, b->n);
        abort();
    }
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_pop3: property broken: %s\n", what);
        abort();
    }
}

enum feed_mode { FEED_WHOLE, FEED_BYTES, FEED_SPLIT };

static size_t next_cut(enum feed_mode m, size_t split, size_t prev, size_t len)
{
    if (m == FEED_BYTES)
        return prev + 1 <= len ? prev + 1 : len;
    if (m == FEED_SPLIT)
        return prev < split ? split : len;
    return len;
}

/* ---------- command parser ---------- */

static void trace_cmd(const char *in, size_t len, size_t max_line, size_t cap, enum feed_mode m,
                      size_t split, struct trace *t)
{
    static char store[512];
    struct pop3_cmd_parser p;
    pop3_cmd_parser_init(&p, store, cap < sizeof(store) ? cap : sizeof(store), max_line);
    t->n = 0;
    size_t pos = 0, end = 0;
    while (end < len) {
        end = next_cut(m, split, end, len);
        while (pos < end) {
            size_t used = 0;
            enum pop3_cmd_result r = pop3_cmd_parse(&p, in + pos, end - pos, &used);
            check(used <= end - pos, "cmd consumed more than given");
            pos += used;
            if (r == POP3_CMD_MORE) {
                check(pos == end, "cmd MORE left bytes");
                break;
            }
            check(used > 0, "cmd event without progress");
            uint64_t h = 14695981039346656037ULL;
            if (r == POP3_CMD_DONE) {
                check(p.nargs <= POP3_ARGS_MAX, "nargs bound");
                check(p.store_len < max_line || max_line == 0, "line over max_line accepted");
                h = fnv(h, &p.sasl, sizeof(p.sasl));
                h = fnv(h, p.keyword, strlen(p.keyword));
                h = fnv(h, &p.nargs, sizeof(p.nargs));
                h = fnv(h, &p.too_many_args, sizeof(p.too_many_args));
                for (unsigned i = 0; i < p.nargs; i++) {
                    check(p.args[i].off + (size_t)p.args[i].len <= p.store_len, "arg bounds");
                    h = fnv(h, pop3_cmd_arg(&p, i), p.args[i].len);
                    h = fnv(h, &p.args[i].len, sizeof(p.args[i].len));
                }
                check(p.rest.off + (size_t)p.rest.len <= p.store_len, "rest bounds");
                h = fnv(h, p.store + p.rest.off, p.rest.len);
                enum pop3_resp_kind k = pop3_expected_response(&p);
                h = fnv(h, &k, sizeof(k));
                bool flags[3] = {pop3_sasl_is_cancel(&p), pop3_cmd_arg_is(&p, 0, "plain"),
                                 pop3_cmd_arg_is(&p, 1, "=")};
                h = fnv(h, flags, sizeof(flags));
                check(pop3_cmd_arg(&p, p.nargs) == NULL, "arg past nargs");
                /* Drive the SASL mode the way the dialogue does; STLS drops what follows. */
                if (pop3_keyword_is(&p, "AUTH") && p.nargs == 1)
                    pop3_cmd_parser_expect_sasl(&p);
                if (pop3_keyword_is(&p, "STLS"))
                    pop3_cmd_parser_reset(&p);
            } else {
                check(p.error != NULL && !p.fatal, "BAD without error");
                h = fnv(h, p.error, strlen(p.error));
            }
            record(t, (int)r, pos, h);
            size_t u0 = 1;
            check(pop3_cmd_parse(&p, in, 0, &u0) == POP3_CMD_MORE && u0 == 0, "cmd len 0");
        }
    }
}

static void fuzz_cmd(const char *in, size_t len, size_t max_line, size_t cap, size_t split)
{
    static struct trace whole, bytes, cut;
    trace_cmd(in, len, max_line, cap, FEED_WHOLE, 0, &whole);
    trace_cmd(in, len, max_line, cap, FEED_BYTES, 0, &bytes);
    same_trace(&whole, &bytes, "cmd whole vs bytes");
    trace_cmd(in, len, max_line, cap, FEED_SPLIT, split, &cut);
    same_trace(&whole, &cut, "cmd whole vs split");
}

/* ---------- framer ---------- */

static enum pop3_resp_kind plan_kind(uint8_t plan, size_t i)
{
    return (enum pop3_resp_kind)(((plan >> ((i * 2) % 8)) & 3) % 3);
}

static void trace_frame(const char *in, size_t len, size_t max_line, uint8_t plan, enum feed_mode m,
                        size_t split, struct trace *t)
{
    static char ubuf[POP3_UNSTUFF_OUT_MAX(MAX_INPUT)];
    struct pop3_framer f;
    pop3_framer_init(&f, max_line);
    t->n = 0;
    size_t nresp = 0, pos = 0, end = 0, body_start = 0;
    check(pop3_framer_expect(&f, plan_kind(plan, 0)), "expect at start");
    while (end < len) {
        end = next_cut(m, split, end, len);
        while (pos < end) {
            size_t used = 0;
            enum pop3_frame_event ev = pop3_frame(&f, in + pos, end - pos, &used);
            check(used <= end - pos, "frame consumed more than given");
            pos += used;
            if (ev == POP3_FRAME_MORE) {
                check(end - pos <= 2, "framer held more than 2 bytes");
                check(end == pos || in[pos] == '.', "framer held a byte that is not '.'");
                break;
            }
            uint64_t h = 14695981039346656037ULL;
            h = fnv(h, &f.status, sizeof(f.status));
            h = fnv(h, f.head, f.head_len);
            h = fnv(h, &f.status_len, sizeof(f.status_len));
            h = fnv(h, &f.term_len, sizeof(f.term_len));
            check(f.head_len <= POP3_HEAD_MAX && f.head_len <= f.status_len, "head bounds");
            if (ev == POP3_FRAME_ERROR) {
                check(f.error != NULL, "ERROR without error");
                check(max_line != POP3_LINE_UNLIMITED || strcmp(f.error, "response line too long"),
                      "unlimited framer refused a long line");
                record(t, (int)ev, pos, fnv(h, f.error, strlen(f.error)));
                size_t u2 = 1;
                check(pop3_frame(&f, in, len, &u2) == POP3_FRAME_ERROR && u2 == 0, "stuck");
                return;
            }
            const char *code = NULL;
            size_t code_len = 0;
            if (pop3_resp_code(f.head, f.head_len, &code, &code_len)) {
                check(code > f.head && code + code_len < f.head + f.head_len, "code bounds");
                bool sys = pop3_resp_code_is(code, code_len, "SYS");
                h = fnv(fnv(h, code, code_len), &sys, sizeof(sys));
            }
            record(t, (int)ev, pos, h);
            if (ev == POP3_FRAME_STATUS_LINE) {
                check(f.status == POP3_STATUS_OK && f.kind == POP3_RESP_MULTI, "status line");
                check(!pop3_framer_expect(&f, POP3_RESP_SINGLE), "expect inside a response");
                body_start = pos;
                continue;
            }
            /* END */
            check(pop3_framer_at_boundary(&f), "boundary after END");
            if (f.term_len) {
                check(f.kind == POP3_RESP_MULTI && f.status == POP3_STATUS_OK, "body kind");
                size_t body_end = pos - f.term_len;
                check(body_end >= body_start && f.body_len == body_end - body_start, "body_len");
                check((f.term_len == 3 && memcmp(in + body_end, ".\r\n", 3) == 0) ||
                          (f.term_len == 2 && memcmp(in + body_end, ".\n", 2) == 0),
                      "terminator bytes");
                check(body_end == body_start || in[body_end - 1] == '\n', "terminator at bol");
                struct pop3_unstuffer u;
                pop3_unstuffer_init(&u);
                size_t uc = 0;
                size_t on = pop3_unstuff(&u, in + body_start, len - body_start, ubuf, &uc);
                check(u.done && body_start + uc == pos, "unstuffer disagrees with framer");
                check(on <= f.body_len, "unstuffed body longer than body");
            } else {
                check(f.status != POP3_STATUS_OK || f.kind != POP3_RESP_MULTI, "multi w/o body");
            }
            nresp++;
            check(pop3_framer_expect(&f, plan_kind(plan, nresp)), "expect at boundary");
        }
    }
}

static void fuzz_frame(const char *in, size_t len, size_t max_line, uint8_t plan, size_t split)
{
    static struct trace whole, bytes, cut;
    trace_frame(in, len, max_line, plan, FEED_WHOLE, 0, &whole);
    trace_frame(in, len, max_line, plan, FEED_BYTES, 0, &bytes);
    same_trace(&whole, &bytes, "frame whole vs bytes");
    trace_frame(in, len, max_line, plan, FEED_SPLIT, split, &cut);
    same_trace(&whole, &cut, "frame whole vs split");
}

/* ---------- dot-stuffing ---------- */

static size_t unstuff_chunks(const char *in, size_t len, enum feed_mode m, size_t split, char *out,
                             size_t *consumed_r, int *done_r)
{
    struct pop3_unstuffer u;
    pop3_unstuffer_init(&u);
    size_t pos = 0, end = 0, o = 0;
    while (end < len && !u.done) {
        end = next_cut(m, split, end, len);
        size_t used = 0;
        size_t n = pop3_unstuff(&u, in + pos, end - pos, out + o, &used);
        check(n <= POP3_UNSTUFF_OUT_MAX(end - pos), "unstuff output bound");
        check(used == end - pos || u.done, "unstuff stopped early");
        o += n;
        pos += used;
    }
    check(u.in == pos, "unstuffer in counter");
    *consumed_r = pos;
    *done_r = u.done;
    return o;
}

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

static void fuzz_stuff(const char *in, size_t len, size_t split)
{
    static char a[POP3_UNSTUFF_OUT_MAX(MAX_INPUT) + 8], b[POP3_UNSTUFF_OUT_MAX(MAX_INPUT) + 8];
    static char st[POP3_STUFF_OUT_MAX(MAX_INPUT) + POP3_STUFF_FINISH_MAX + 8];
    static char want[2 * MAX_INPUT + 8];
    size_t ca, cb;
    int da, db;

    /* Unstuffing arbitrary input: whole, bytes and split agree. */
    size_t na = unstuff_chunks(in, len, FEED_WHOLE, 0, a, &ca, &da);
    size_t nb = unstuff_chunks(in, len, FEED_BYTES, 0, b, &cb, &db);
    check(na == nb && ca == cb && da == db && memcmp(a, b, na) == 0, "unstuff whole vs bytes");
    nb = unstuff_chunks(in, len, FEED_SPLIT, split, b, &cb, &db);
    check(na == nb && ca == cb && da == db && memcmp(a, b, na) == 0, "unstuff whole vs split");

    /* Stuff in two chunks, then unstuff: the normalised input comes back, exactly at the end. */
    struct pop3_stuffer s;
    pop3_stuffer_init(&s);
    memcpy(st, "+OK\r\n", 5);
    size_t sl = 5;
    size_t n1 = pop3_stuff(&s, in, split, st + sl);
    check(n1 <= POP3_STUFF_OUT_MAX(split), "stuff output bound");
    sl += n1;
    size_t n2 = pop3_stuff(&s, in + split, len - split, st + sl);
    check(n2 <= POP3_STUFF_OUT_MAX(len - split), "stuff output bound");
    sl += n2;
    size_t n3 = pop3_stuff_finish(&s, st + sl);
    check(n3 <= POP3_STUFF_FINISH_MAX, "stuff finish bound");
    sl += n3;

    size_t nu = unstuff_chunks(st + 5, sl - 5, FEED_WHOLE, 0, a, &ca, &da);
    size_t nw = normalise(in, len, want);
    check(da && ca == sl - 5, "unstuff(stuff(x)) did not end at the terminator");
    check(nu == nw && memcmp(a, want, nw) == 0, "unstuff(stuff(x)) != norm(x)");

    struct pop3_framer f;
    pop3_framer_init(&f, 64);
    check(pop3_framer_expect(&f, POP3_RESP_MULTI), "expect");
    size_t used = 0;
    check(pop3_frame(&f, st, sl, &used) == POP3_FRAME_STATUS_LINE && used == 5, "stuffed status");
    size_t used2 = 0;
    check(pop3_frame(&f, st + 5, sl - 5, &used2) == POP3_FRAME_END && used2 == sl - 5,
          "stuffed body framing");
    check(f.term_len == 3, "stuffed terminator is CRLF");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size - 2 > MAX_INPUT)
        return 0;
    uint8_t plan = data[0];
    uint8_t ctl = data[1];
    const char *in = (const char *)data + 2;
    size_t len = size - 2;
    /* Small limits so that the over-limit paths are reached often; 0..3 probe the edges. */
    size_t max_line = (ctl & 0x3f) < 4 ? (size_t)(ctl & 0x3f) : 8 + (size_t)(ctl & 0x3f) * 4;
    size_t split = len ? ((size_t)(ctl >> 6) * 7919 + len / 2 + plan) % (len + 1) : 0;

    /* The store is sometimes smaller than max_line, to reach its own limit. */
    size_t cap = (plan & 0x80) ? max_line / 2 : max_line;

    fuzz_cmd(in, len, max_line, cap, split);
    fuzz_frame(in, len, max_line, plan, split);
    fuzz_frame(in, len, POP3_LINE_UNLIMITED, plan, split); /* the relay after login */
    fuzz_stuff(in, len, split);
    return 0;
}
