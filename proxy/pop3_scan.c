/*
 * pop3_scan — a RETR/TOP response held for the scanner (the POP3 side of msgscan).
 *
 * From the +OK status line on, the response leaves s->down: the status line is copied, the
 * body is unstuffed into a message buffer (within the memory budget) and cut out of the relay
 * buffer, so the relay buffer keeps flowing from the backend however large the message is.
 * Responses after it wait in s->down, unframed (when it is full the backend is not read).
 *
 * The verdict decides what goes to the client, queued as blocks on the client conn
 * (conn_queue: after every byte released before, before every byte released after):
 *   - delivered (clean, or passed): the status line and the body stuffed again exactly as it
 *     came (a "." doubled at a line start, line ends as sent, the backend's terminator): the
 *     bytes of a conforming server, byte for byte;
 *   - replaced: the status line (a RETR's octet count rewritten to the notice's size) and the
 *     stuffed notice; for TOP n k, the notice's header and its first k body lines.
 * A TOP is asked of the backend for the whole message (pop3_relay.c) and judged whole; the
 * delivered original is cut to the client's k lines (top_cut / pop3_topcut), byte-identical to
 * the server's own TOP n k. A DELE probe (PC_PROBE) is judged the same way but outputs nothing:
 * its verdict goes to pop3_probe_done(). Every verdict is remembered per message number
 * (pop3_verdict_set) for a later DELE.
 * Over max_scan_size (from the RETR status line's octet count, or while collecting): with
 * `pass` the part held so far goes out and the rest streams as usual; with `block` the head is
 * kept for the notice's header fields and the rest is dropped.
 *
 * Output is generated in chunks, at most PS_OUT_QUEUE bytes queued at a time; the relay calls
 * the step again on CONN_EV_WRITE / CONN_EV_DRAINED of the client conn (also when the chunk
 * drained inside sess_pump()). Once the last chunk is queued the relay frames the responses
 * after this one. While a verdict is awaited or its output is under way pop3_scan_holding()
 * keeps a closing session (backend gone after a pipelined QUIT) alive until the response is
 * out (the protocol's `holding`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgscan.h"
#include "notice.h"
#include "pop3.h"
#include "scan_grant.h"
#include "worker.h"

#define PS_FEED_MAX  (16 << 10) /* framer input per collect step */
#define PS_OUT_CHUNK (16 << 10) /* output generated per block */
#define PS_OUT_QUEUE (64 << 10) /* queued toward the client before generating more */

enum ps_phase {
    PS_BUDGET,  /* waiting for memory budget; the body waits in s->down */
    PS_COLLECT, /* unstuffing the body into msg */
    PS_DROP,    /* over a limit under `block`: dropping the rest, head kept */
    PS_JUDGE,   /* the whole body is in msg; msgscan at work */
    PS_OUTPUT,  /* queueing the response for the client, chunk by chunk */
};

struct ps_seg {
    const char *p; /* not owned */
    size_t len, pos;
    bool restuff; /* dot-stuff on the way out */
};

struct pop3_scan {
    enum ps_phase phase;
    enum pop3_qcmd cmd;
    uint32_t msgno;
    uint32_t lines;            /* TOP: the client's k */
    bool top_all;              /* TOP sent for the whole message: cut to `lines` on the way out */
    bool top_pass;             /* PS_DROP of a top_all TOP under `pass`: the held head is cut */
    enum pop3_verdict probe_v; /* PC_PROBE: the verdict, given to the relay once "output" */
    char where[MSGSCAN_WHERE_MAX];
    char *status; /* owned: the status line, line end included */
    size_t status_len;
    uint64_t hint; /* RETR "+OK n octets": n; 0 unknown */
    bool hint_known, hint_over;
    struct pop3_unstuffer u;
    char *msg; /* owned: unstuffed body */
    size_t len, cap;
    size_t reserve, want;           /* budget held for msg / asked for */
    struct scan_grant grant;        /* the first reservation, while it is asked for */
    pool_owner owner;               /* the session's budget shares (msgscan_owner) */
    struct scan_held held;          /* the output (holding budget) the client does not read */
    enum msgscan_verdict give_kind; /* PS_DROP: why */
    const char *give_reason;
    char term[4];
    size_t term_len;
    struct msgscan_req *req;
    /* output */
    struct ps_seg seg[3];
    unsigned nseg, iseg;
    bool bol;        /* restuff: the next byte starts a line */
    char *out_owned; /* owned: a stuffed notice or an error line */
    bool stream_after;
    size_t pending; /* stream_after: framed bytes at mark, released after the output */
};

static struct msgscan_item item_of(struct pop3_scan *ps)
{
    return (struct msgscan_item){.proto = "pop3", .where = ps->where};
}

static void ps_free(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    struct pop3_scan *ps = st->scan;
    if (!ps)
        return;
    msgscan_cancel(&ps->req);
    scan_grant_cancel(&ps->grant);
    scan_held_stop(&ps->held);
    free(ps->msg);
    msgscan_budget_release(ps->owner, ps->reserve);
    free(ps->status);
    free(ps->out_owned);
    free(ps);
    st->scan = NULL;
}

void pop3_scan_abort(struct session *s)
{
    if (s->pstate)
        ps_free(s);
}

bool pop3_scan_active(struct session *s)
{
    return pop3_st(s)->scan != NULL;
}

bool pop3_scan_holding(struct session *s)
{
    struct pop3_scan *ps = pop3_st(s)->scan;
    return ps && (ps->phase == PS_BUDGET || ps->phase == PS_JUDGE || ps->phase == PS_OUTPUT);
}

/* "+OK 1234 octets" (RFC 1939's example, what Dovecot and most servers send for RETR). */
static bool parse_octets(const char *h, size_t n, uint64_t *v_r)
{
    if (n < 5 || memcmp(h, "+OK ", 4) != 0)
        return false;
    size_t i = 4, d = 0;
    uint64_t v = 0;
    while (i < n && h[i] >= '0' && h[i] <= '9' && d < 18) {
        v = v * 10 + (uint64_t)(h[i] - '0');
        i++;
        d++;
    }
    if (d == 0 || (i < n && h[i] != ' '))
        return false;
    *v_r = v;
    return true;
}

/* Answer the command with a one-line error instead of the held response. */
static void fail_response(struct session *s, struct pop3_scan *ps, const char *text)
{
    free(ps->msg);
    ps->msg = NULL;
    msgscan_budget_release(ps->owner, ps->reserve);
    ps->reserve = 0;
    free(ps->out_owned);
    if (asprintf(&ps->out_owned, "-ERR [SYS/TEMP] %s\r\n", text) < 0) {
        ps->out_owned = NULL;
        sess_close(s, "out of memory");
        return;
    }
    ps->seg[0] = (struct ps_seg){.p = ps->out_owned, .len = strlen(ps->out_owned)};
    ps->nseg = 1;
    ps->iseg = 0;
    ps->stream_after = false;
    ps->phase = PS_OUTPUT;
}

void pop3_topcut_init(struct pop3_topcut *c, uint32_t lines)
{
    *c = (struct pop3_topcut){.left = lines, .bol = true};
}

size_t pop3_topcut_feed(struct pop3_topcut *c, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && !c->done) {
        if (!c->in_body) {
            char ch = p[i++];
            if (ch == '\n') {
                if (c->bol || c->cr_only) {
                    c->in_body = true;
                    c->done = c->left == 0;
                }
                c->bol = true;
                c->cr_only = false;
            } else {
                c->cr_only = c->bol && ch == '\r';
                c->bol = false;
            }
            continue;
        }
        const char *lf = memchr(p + i, '\n', n - i);
        if (!lf)
            return n;
        i = (size_t)(lf - p) + 1;
        c->done = --c->left == 0;
    }
    return i;
}

/* The length of the TOP answer within a whole (unstuffed) message or notice. Dovecot cuts the
 * same way (tests/integration/test_pop3_guarantee.py compares them). */
static size_t top_cut(const char *m, size_t len, uint32_t lines)
{
    struct pop3_topcut c;
    pop3_topcut_init(&c, lines);
    return pop3_topcut_feed(&c, m, len);
}

/* Output: the held status line, then the original body stuffed again, then the terminator.
 * A TOP sent for the whole message goes out cut to the client's k lines (a cut ends at a line
 * end, so the terminator follows directly). */
static bool out_holding(struct session *s)
{
    struct pop3_scan *ps = pop3_st(s)->scan;
    return ps && ps->phase == PS_OUTPUT && ps->reserve > 0;
}

/* The client has not read the scanned message for scan.held_timeout: its budget is everyone's. */
static bool out_expired(struct session *s)
{
    sess_log(s, LOG_INFO, "event=refused reason=held_timeout %s", pop3_st(s)->scan->where);
    sess_end(s, "held_timeout", "Response not read in time; closing.");
    return true;
}

static void output_original(struct session *s, struct pop3_scan *ps, bool with_term)
{
    if (ps->reserve)
        scan_held_arm(&ps->held, s, out_holding, out_expired);
    size_t len = ps->top_all ? top_cut(ps->msg, ps->len, ps->lines) : ps->len;
    ps->seg[0] = (struct ps_seg){.p = ps->status, .len = ps->status_len};
    ps->seg[1] = (struct ps_seg){.p = ps->msg, .len = len, .restuff = true};
    ps->seg[2] = (struct ps_seg){.p = ps->term, .len = with_term ? ps->term_len : 0};
    ps->nseg = 3;
    ps->iseg = 0;
    ps->bol = true;
    ps->phase = PS_OUTPUT;
}

/* A probe's answer is its verdict, for the relay; nothing goes to the client from here. */
static void output_probe(struct pop3_scan *ps, enum pop3_verdict v)
{
    free(ps->msg);
    ps->msg = NULL;
    msgscan_budget_release(ps->owner, ps->reserve);
    ps->reserve = 0;
    ps->probe_v = v;
    ps->nseg = 0;
    ps->iseg = 0;
    ps->stream_after = false;
    ps->phase = PS_OUTPUT;
}

/* Output: the status line (octet count rewritten) and the stuffed notice. Takes `notice`. */
static void output_notice(struct session *s, struct pop3_scan *ps, char *notice, size_t nlen)
{
    if (ps->cmd == PC_TOP)
        nlen = top_cut(notice, nlen, ps->lines);
    free(ps->msg);
    ps->msg = NULL;
    msgscan_budget_release(ps->owner, ps->reserve);
    ps->reserve = 0;
    char *out = malloc(POP3_STUFF_OUT_MAX(nlen) + POP3_STUFF_FINISH_MAX);
    if (!out) {
        free(notice);
        fail_response(s, ps, "Out of memory.");
        return;
    }
    struct pop3_stuffer st;
    pop3_stuffer_init(&st);
    size_t o = pop3_stuff(&st, notice, nlen, out);
    o += pop3_stuff_finish(&st, out + o);
    free(notice);
    if (ps->hint_known) {
        /* "+OK <n> octets ...": the same line with the notice's size. */
        size_t i = 4;
        while (i < ps->status_len && ps->status[i] >= '0' && ps->status[i] <= '9')
            i++;
        char *ns = NULL;
        int k = asprintf(&ns, "+OK %zu%.*s", nlen, (int)(ps->status_len - i), ps->status + i);
        if (k > 0) {
            free(ps->status);
            ps->status = ns;
            ps->status_len = (size_t)k;
        }
    }
    free(ps->out_owned);
    ps->out_owned = out;
    ps->seg[0] = (struct ps_seg){.p = ps->status, .len = ps->status_len};
    ps->seg[1] = (struct ps_seg){.p = out, .len = o};
    ps->nseg = 2;
    ps->iseg = 0;
    ps->stream_after = false;
    ps->phase = PS_OUTPUT;
}

static void on_verdict(void *arg, struct msgscan_outcome *o)
{
    struct session *s = arg;
    struct pop3_scan *ps = s->pstate ? pop3_st(s)->scan : NULL;
    if (!ps)
        return;
    ps->req = NULL; /* the request is gone once this returns */
    if (s->closing)
        return;                                 /* msgscan frees the outcome */
    s->last_activity = ev_now(s->worker->loop); /* the idle timer counts from the verdict */
    if (!o->replace || o->notice)
        pop3_verdict_set(s, ps->msgno, o->replace ? PV_BLOCKED : PV_CLEAN);
    if (ps->cmd == PC_PROBE && (!o->replace || o->notice)) {
        output_probe(ps, o->replace ? PV_BLOCKED : PV_CLEAN);
    } else if (o->replace) {
        if (!o->notice) {
            fail_response(s, ps, "This message cannot be checked now; try again later.");
        } else {
            char *n = o->notice;
            o->notice = NULL;
            output_notice(s, ps, n, o->notice_len);
        }
    } else {
        ps->msg = o->msg;
        ps->len = o->len;
        ps->reserve = o->budget;
        o->msg = NULL;
        o->budget = 0;
        output_original(s, ps, true);
    }
    pop3_relay_kick(s);
}

/* The grant arrived; a closing session gives it back at once (scan_grant releases it). */
static bool budget_granted(void *arg, struct scan_grant *g)
{
    struct session *s = arg;
    struct pop3_scan *ps = pop3_st(s)->scan;
    if (s->closing || !ps || ps->phase != PS_BUDGET)
        return false;
    ps->reserve = scan_grant_take(g);
    ps->phase = PS_COLLECT;
    pop3_relay_kick(s);
    return true;
}

bool pop3_scan_begin(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct cfg_scan *cs = &s->cfg->scan;
    struct pop3_scan *ps = calloc(1, sizeof *ps);
    if (!ps) {
        sess_close(s, "out of memory"); /* never deliver unscanned for lack of memory */
        return true;
    }
    st->scan = ps;
    ps->cmd = (enum pop3_qcmd)st->cur.cmd;
    ps->msgno = st->cur.msgno;
    ps->lines = st->cur.lines;
    ps->top_all = st->cur.top_all;
    if (ps->cmd == PC_PROBE)
        snprintf(ps->where, sizeof ps->where, "msg=%u command=DELE", st->cur.msgno);
    else if (ps->cmd == PC_TOP)
        snprintf(ps->where, sizeof ps->where, "msg=%u command=TOP lines=%u", st->cur.msgno,
                 st->cur.lines);
    else
        snprintf(ps->where, sizeof ps->where, "msg=%u command=RETR", st->cur.msgno);
    if (ps->cmd == PC_RETR)
        ps->hint_known = parse_octets(st->downf.head, st->downf.head_len, &ps->hint);
    ps->hint_over = ps->hint_known && ps->hint > cs->max_scan_size;
    struct msgscan_item it = item_of(ps);
    if (ps->hint_over && cs->oversize_action == CFG_SCAN_PASS) {
        struct msgscan_outcome o;
        if (msgscan_oversize(s, &it, NULL, 0, ps->hint, &o))
            msgscan_outcome_clear(&o);
        free(ps);
        st->scan = NULL;
        return false; /* streams as usual */
    }
    struct buf *b = &s->down;
    ps->status = malloc(st->down_held);
    if (!ps->status) {
        free(ps);
        st->scan = NULL;
        sess_close(s, "out of memory");
        return true;
    }
    memcpy(ps->status, buf_mptr(b), st->down_held);
    ps->status_len = st->down_held;
    buf_cut_held(b, 0, st->down_held);
    st->down_held = 0;
    pop3_unstuffer_init(&ps->u);
    size_t limit = cs->max_scan_size;
    if (ps->hint_over)
        ps->want = NOTICE_HEADER_SCAN < limit ? NOTICE_HEADER_SCAN : limit;
    else if (ps->hint_known && ps->hint < limit)
        ps->want =
            ps->hint + ps->hint / 16 + 4096 < limit ? ps->hint + ps->hint / 16 + 4096 : limit;
    else
        ps->want = limit;
    ps->owner = msgscan_owner(s);
    switch (scan_grant_acquire(&ps->grant, s, ps->want, budget_granted, s)) {
    case MSGSCAN_BUDGET_OK:
        ps->reserve = scan_grant_take(&ps->grant);
        ps->phase = PS_COLLECT;
        break;
    case MSGSCAN_BUDGET_WAIT:
        ps->phase = PS_BUDGET;
        sess_log(s, LOG_DEBUG, "event=scan_budget_wait %s bytes=%zu", ps->where, ps->want);
        break;
    case MSGSCAN_BUDGET_TOO_BIG:
        fail_response(s, ps, "Message cannot be checked (memory budget).");
        break;
    }
    return true;
}

/* The message does not fit (over max_scan_size, or no budget to grow): `pending` bytes at
 * s->down.mark are framed but not taken. */
static void overflow(struct session *s, struct pop3_scan *ps, enum msgscan_verdict kind,
                     const char *reason, size_t pending)
{
    const struct cfg_scan *cs = &s->cfg->scan;
    bool pass =
        (kind == MSGSCAN_OVERSIZE ? cs->oversize_action : cs->error_action) == CFG_SCAN_PASS;
    struct pop3_topcut tc;
    if (ps->top_all) {
        pop3_topcut_init(&tc, ps->lines);
        pop3_topcut_feed(&tc, ps->msg, ps->len);
    }
    if (pass && (ps->cmd == PC_PROBE || (ps->top_all && tc.done))) {
        /* A probe delivers nothing; a TOP whose k lines are all held is cut from them
         * (drop_step), the rest of the message dropped. */
        ps->phase = PS_DROP;
        ps->give_kind = kind;
        ps->give_reason = reason;
        ps->top_pass = true;
        buf_cut_held(&s->down, 0, pending);
        return;
    }
    if (pass) {
        struct msgscan_item it = item_of(ps);
        struct msgscan_outcome o;
        bool ok = kind == MSGSCAN_OVERSIZE
                      ? msgscan_oversize(s, &it, NULL, 0, ps->hint ? ps->hint : ps->len, &o)
                      : msgscan_unjudged(s, &it, NULL, 0, reason, &o);
        if (ok)
            msgscan_outcome_clear(&o);
        output_original(s, ps, false); /* the pending bytes follow it */
        ps->stream_after = true;
        ps->pending = pending;
        if (ps->top_all) {
            /* The rest streams, cut to the client's k lines by the relay. */
            pop3_st(s)->topcut = tc;
            pop3_st(s)->top_streaming = true;
        }
        return;
    }
    ps->phase = PS_DROP;
    ps->give_kind = kind;
    ps->give_reason = reason;
    buf_cut_held(&s->down, 0, pending);
    if (ps->len > NOTICE_HEADER_SCAN)
        ps->len = NOTICE_HEADER_SCAN; /* the notice needs the header only */
}

/* The body has ended and is all in msg: judge it. */
static void collected(struct session *s, struct pop3_scan *ps)
{
    size_t budget = ps->len;
    if (ps->reserve > budget)
        msgscan_budget_release(ps->owner, ps->reserve - budget);
    else
        budget = ps->reserve;
    ps->reserve = 0;
    char *m = ps->msg;
    if (ps->len && ps->len < ps->cap) {
        char *r = realloc(m, ps->len);
        if (r)
            m = r;
    }
    ps->msg = NULL;
    ps->cap = 0;
    struct msgscan_item it = item_of(ps);
    ps->phase = PS_JUDGE;
    ps->req = msgscan_judge(s, &it, m, ps->len, budget, on_verdict, s);
    if (!ps->req)
        fail_response(s, ps, "Out of memory.");
}

static bool grow(struct pop3_scan *ps, size_t need)
{
    if (ps->cap >= need)
        return true;
    size_t nc = ps->cap ? ps->cap * 2 : 64 << 10;
    if (nc < need)
        nc = need;
    if (nc > ps->reserve + 8 && need <= ps->reserve + 8)
        nc = ps->reserve + 8;
    char *m = realloc(ps->msg, nc);
    if (!m)
        return false;
    ps->msg = m;
    ps->cap = nc;
    return true;
}

/* Make room in the reservation: more budget now (never a wait: holding some and waiting for
 * more could deadlock sessions against each other), or the message does not fit. */
static bool reserve_more(struct session *s, struct pop3_scan *ps)
{
    size_t limit = s->cfg->scan.max_scan_size;
    if (ps->hint_over || ps->reserve >= limit)
        return false;
    size_t nr =
        ps->reserve * 2 > ps->reserve + (1 << 20) ? ps->reserve * 2 : ps->reserve + (1 << 20);
    if (nr > limit)
        nr = limit;
    struct scan_grant g = {0};
    enum msgscan_budget_rc rc = scan_grant_acquire(&g, s, nr - ps->reserve, NULL, NULL);
    if (rc == MSGSCAN_BUDGET_OK) {
        ps->reserve += scan_grant_take(&g);
        return true;
    }
    scan_grant_cancel(&g); /* a wait is not kept: no callback ever runs for it */
    return false;
}

static int collect_step(struct session *s, struct pop3_scan *ps)
{
    struct pop3_state *st = pop3_st(s);
    struct buf *b = &s->down;
    size_t avail = buf_held(b);
    if (avail == 0)
        return 0;
    size_t allow = ps->reserve > ps->len ? ps->reserve - ps->len : 0;
    if (allow < 3 && reserve_more(s, ps))
        return 1;
    /* Under 3 bytes left: feed 3 anyway; only the terminator may end in them. */
    size_t feed = allow < 3 ? 3 : allow;
    if (feed > avail)
        feed = avail;
    if (feed > PS_FEED_MAX)
        feed = PS_FEED_MAX;
    if (!grow(ps, ps->len + feed + 1)) {
        fail_response(s, ps, "Out of memory.");
        return 1;
    }
    size_t used = 0;
    enum pop3_frame_event ev = pop3_frame(&st->downf, buf_mptr(b), feed, &used);
    if (ev == POP3_FRAME_ERROR) {
        pop3_relay_fail(s, st->downf.error);
        return -1;
    }
    bool end = ev == POP3_FRAME_END;
    if (allow < 3 && !end) {
        bool over = ps->hint_over || ps->reserve >= s->cfg->scan.max_scan_size;
        overflow(s, ps, over ? MSGSCAN_OVERSIZE : MSGSCAN_ERROR, "memory budget", used);
        return 1;
    }
    size_t consumed = 0;
    size_t n = pop3_unstuff(&ps->u, buf_mptr(b), used, ps->msg + ps->len, &consumed);
    if (end && st->downf.term_len <= used) {
        ps->term_len = st->downf.term_len;
        memcpy(ps->term, buf_mptr(b) + used - ps->term_len, ps->term_len);
    }
    ps->len += n;
    buf_cut_held(b, 0, used);
    if (end) {
        collected(s, ps);
        return 1;
    }
    return used > 0 ? 1 : 0;
}

static int drop_step(struct session *s, struct pop3_scan *ps)
{
    struct pop3_state *st = pop3_st(s);
    struct buf *b = &s->down;
    size_t avail = buf_held(b);
    if (avail == 0)
        return 0;
    size_t used = 0;
    enum pop3_frame_event ev = pop3_frame(&st->downf, buf_mptr(b), avail, &used);
    if (ev == POP3_FRAME_ERROR) {
        pop3_relay_fail(s, st->downf.error);
        return -1;
    }
    buf_cut_held(b, 0, used);
    if (ev != POP3_FRAME_END)
        return used > 0 ? 1 : 0;
    struct msgscan_item it = item_of(ps);
    struct msgscan_outcome o;
    uint64_t size = ps->hint_known ? ps->hint : st->downf.body_len;
    bool ok = ps->give_kind == MSGSCAN_OVERSIZE
                  ? msgscan_oversize(s, &it, ps->msg, ps->len, size, &o)
                  : msgscan_unjudged(s, &it, ps->msg, ps->len, ps->give_reason, &o);
    if (ps->top_pass) {
        /* `pass`: what RETR would deliver unscanned. A probe lets the DELE through; a TOP
         * gets its k lines, all in the held head (overflow()). */
        msgscan_outcome_clear(&o);
        pop3_verdict_set(s, ps->msgno, PV_CLEAN);
        if (ps->cmd == PC_PROBE) {
            output_probe(ps, PV_CLEAN);
            return 1;
        }
        size_t cut = top_cut(ps->msg, ps->len, ps->lines);
        while (cut > 0 && ps->msg[cut - 1] != '\n')
            cut--;
        ps->len = cut;
        ps->top_all = false;
        memcpy(ps->term, ".\r\n", 3);
        ps->term_len = 3;
        output_original(s, ps, true);
        return 1;
    }
    if (ok && o.notice)
        pop3_verdict_set(s, ps->msgno, PV_BLOCKED);
    if (ok && o.notice && ps->cmd == PC_PROBE) {
        msgscan_outcome_clear(&o);
        output_probe(ps, PV_BLOCKED);
        return 1;
    }
    if (!ok || !o.notice) {
        msgscan_outcome_clear(&o);
        fail_response(s, ps, "Out of memory.");
        return 1;
    }
    char *n = o.notice;
    o.notice = NULL;
    output_notice(s, ps, n, o.notice_len);
    msgscan_outcome_clear(&o);
    return 1;
}

/* Fill `out` (cap bytes) with the next output bytes; returns how many. */
static size_t generate(struct pop3_scan *ps, char *out, size_t cap)
{
    size_t o = 0;
    while (ps->iseg < ps->nseg && o < cap) {
        struct ps_seg *g = &ps->seg[ps->iseg];
        if (g->pos >= g->len) {
            ps->iseg++;
            continue;
        }
        if (!g->restuff) {
            size_t k = g->len - g->pos < cap - o ? g->len - g->pos : cap - o;
            memcpy(out + o, g->p + g->pos, k);
            g->pos += k;
            o += k;
            continue;
        }
        /* One line (or what fits) at a time: a "." starting a line is doubled. */
        if (cap - o < 2)
            break;
        if (ps->bol && g->p[g->pos] == '.')
            out[o++] = '.';
        size_t k = g->len - g->pos < cap - o ? g->len - g->pos : cap - o;
        const char *lf = memchr(g->p + g->pos, '\n', k);
        if (lf)
            k = (size_t)(lf - (g->p + g->pos)) + 1;
        memcpy(out + o, g->p + g->pos, k);
        g->pos += k;
        o += k;
        ps->bol = lf != NULL;
    }
    return o;
}

static void output_done(struct session *s, struct pop3_scan *ps)
{
    struct pop3_state *st = pop3_st(s);
    bool stream = ps->stream_after;
    size_t pending = ps->pending;
    bool probe = ps->cmd == PC_PROBE;
    uint32_t msgno = ps->msgno;
    enum pop3_verdict v = ps->probe_v;
    ps_free(s);
    if (stream) {
        st->down_held = pending; /* the framer is mid-body: the rest streams */
    } else {
        st->cur_valid = false;
        st->down_held = 0;
        st->down_part_out = false;
    }
    if (probe)
        pop3_probe_done(s, msgno, v, NULL, 0); /* PV_UNKNOWN: the -ERR went out instead */
}

/* Queue the next chunks of output, up to PS_OUT_QUEUE bytes toward the client. */
static int output_step(struct session *s, struct pop3_scan *ps)
{
    while (conn_queued_bytes(&s->client) < PS_OUT_QUEUE) {
        if (ps->iseg >= ps->nseg ||
            (ps->iseg == ps->nseg - 1 && ps->seg[ps->iseg].pos >= ps->seg[ps->iseg].len)) {
            output_done(s, ps);
            return 1;
        }
        char *blk = malloc(PS_OUT_CHUNK);
        if (!blk) {
            sess_close(s, "out of memory");
            return -1;
        }
        size_t n = generate(ps, blk, PS_OUT_CHUNK);
        if (n == 0) {
            free(blk);
            continue;
        }
        if (!conn_queue(&s->client, blk, n, NULL, NULL, 0)) {
            sess_close(s, "out of memory");
            return -1;
        }
        pop3_st(s)->down_part_out = true;
    }
    return 0; /* CONN_EV_WRITE / CONN_EV_DRAINED bring the relay back */
}

int pop3_scan_step(struct session *s)
{
    struct pop3_scan *ps = pop3_st(s)->scan;
    switch (ps->phase) {
    case PS_BUDGET:
    case PS_JUDGE:
        return 0;
    case PS_COLLECT:
        return collect_step(s, ps);
    case PS_DROP:
        return drop_step(s, ps);
    case PS_OUTPUT:
        return output_step(s, ps);
    }
    return 0;
}
