/*
 * pop3_relay — the authenticated POP3 session (TRANSACTION state) with PIPELINING (RFC 2449).
 *
 * The client → backend filter parses every command line and appends what it will get to a
 * queue: single-line, multi-line (RETR, TOP, CAPA, LIST/UIDL without argument) or our own
 * refusal. The backend → client filter pops that queue at each response boundary to tell the
 * framer how the next response ends, so a pipelined burst is framed exactly however its bytes
 * are split — and a RETR/TOP body is always known as one unit, which is what the scanner hooks.
 *
 * Refused here, answered in order with the backend's responses: STLS (TLS is set up once, at
 * the proxy), USER/PASS/AUTH/APOP (already logged in; keeping a stray password off the backend
 * connection costs nothing), and lines the parser rejects. Everything else is forwarded as is.
 *
 * Buffer discipline as in imap_relay.c: bytes after `mark` are held until the filter releases
 * them (buf.h verbs); our own answers are queued at a response boundary as blocks on the client
 * conn (conn_queue), which go out in order with the released bytes. The login answer is in
 * ctl, which goes after all released bytes: nothing is released at a boundary while ctl is not
 * empty, and CONN_EV_DRAINED resumes the filter. `down_part_out` says whether the client is
 * inside a response that was partly sent: the farewell "-ERR" of an ending session is sent
 * only when it is not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msgscan.h"
#include "pop3.h"
#include "sess_event.h"
#include "sess_policy.h"

#define CAPA_HOLD_MAX 16384 /* a CAPA answer longer than this is passed on unfiltered */
/* A RETR/TOP status line is held whole for the scanner (it reads and may rewrite the octet
 * count). Longer than this, the message cannot be judged: the session ends (fail closed). */
#define STATUS_HOLD_MAX 8192

void pop3_relay_init(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    pop3_cmd_parser_init(&st->parser, st->store, st->store_cap, s->cfg->limits.max_line);
    /* Responses are framed without a cap on their status line (issue 15): it streams, except
     * where the scanner holds one (STATUS_HOLD_MAX). Command lines are parsed: max_line. */
    pop3_framer_init(&st->downf, POP3_LINE_UNLIMITED);
    /* The framer starts expecting a greeting; the first response is the first command's. */
    st->qhead = st->qlen = 0;
    st->cur_valid = false;
    st->up_held = st->down_held = 0;
    st->down_holding = false;
    st->down_status_hold = false;
}

static void push(struct pop3_state *st, struct pop3_qent e)
{
    st->queue[(st->qhead + st->qlen) % POP3_QUEUE_MAX] = e;
    st->qlen++;
}

static struct pop3_qent pop(struct pop3_state *st)
{
    struct pop3_qent e = st->queue[st->qhead];
    st->qhead = (st->qhead + 1) % POP3_QUEUE_MAX;
    st->qlen--;
    return e;
}

static uint32_t arg_number(const struct pop3_cmd_parser *p, unsigned i)
{
    const char *a = pop3_cmd_arg(p, i);
    if (!a)
        return 0;
    uint32_t n = 0;
    for (size_t j = 0; j < p->args[i].len && j < 10; j++) {
        if (a[j] < '0' || a[j] > '9')
            return 0;
        n = n * 10 + (uint32_t)(a[j] - '0');
    }
    return n;
}

/* What to do with one complete, parsed client line. */
static struct pop3_qent classify(const struct pop3_cmd_parser *p)
{
    struct pop3_qent e = {.kind = PQ_FORWARD, .resp = POP3_RESP_SINGLE, .cmd = PC_OTHER};
    const char *kw = p->keyword;
    if (strcmp(kw, "STLS") == 0) {
        e.kind = PQ_LOCAL;
        e.local = "TLS is already active.";
        e.why = SR_STARTTLS_AFTER_LOGIN;
    } else if (strcmp(kw, "USER") == 0 || strcmp(kw, "PASS") == 0 || strcmp(kw, "AUTH") == 0 ||
               strcmp(kw, "APOP") == 0) {
        e.kind = PQ_LOCAL;
        e.local = "Already logged in.";
        e.why = SR_ALREADY_LOGGED_IN;
    } else {
        e.resp = (uint8_t)pop3_expected_response(p);
        if (strcmp(kw, "RETR") == 0) {
            e.cmd = PC_RETR;
            e.msgno = arg_number(p, 0);
        } else if (strcmp(kw, "TOP") == 0) {
            e.cmd = PC_TOP;
            e.msgno = arg_number(p, 0);
            e.lines = arg_number(p, 1);
        } else if (strcmp(kw, "CAPA") == 0) {
            e.cmd = PC_CAPA;
        } else if (strcmp(kw, "QUIT") == 0) {
            e.cmd = PC_QUIT;
        }
    }
    return e;
}

/* Client → backend. Returns true if it made progress. */
static bool filter_up(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    struct buf *b = &s->up;
    bool progress = false;
    while (!s->closing && s->state == SESS_RELAY) {
        size_t from = st->up_held;
        if (from >= buf_held(b))
            break;
        if (st->up_held == 0 && st->qlen >= POP3_QUEUE_MAX)
            break; /* enough outstanding: the client waits (its socket fills) */
        size_t used = 0;
        enum pop3_cmd_result r =
            pop3_cmd_parse(&st->parser, buf_mptr(b) + from, buf_held(b) - from, &used);
        st->up_held += used;
        progress = progress || used > 0;
        if (r == POP3_CMD_MORE) {
            if (st->up_held > s->cfg->limits.max_line) {
                sess_log(s, LOG_INFO, "event=bad_command error=\"line too long\"");
                pop3_relay_stop(s); /* a held response is dropped: the answer can follow */
                if (!st->down_part_out)
                    conn_ctl_printf(&s->client, "-ERR Line too long.\r\n");
                sess_close_after_flush(s, "client protocol error");
                return false;
            }
            break;
        }
        struct pop3_qent e;
        if (r == POP3_CMD_BAD) {
            e = (struct pop3_qent){.kind = PQ_LOCAL,
                                   .local =
                                       st->parser.error ? st->parser.error : "Invalid command.",
                                   .why = SR_BAD_COMMAND};
        } else {
            e = classify(&st->parser);
            /* Download volume (issue 5): refuse the next message, not the one in flight. */
            if ((e.cmd == PC_RETR || e.cmd == PC_TOP) && sess_policy_download_blocked(s))
                e = (struct pop3_qent){.kind = PQ_LOCAL,
                                       .local = "[SYS/TEMP] Download limit reached; try again "
                                                "later.",
                                       .why = SR_DOWNLOAD_LIMIT};
        }
        if (e.kind == PQ_LOCAL) {
            sess_event(
                s, &(struct sess_event){.kind = SEV_REFUSED,
                                        .reason = e.why,
                                        .answer = e.local,
                                        .command = r == POP3_CMD_BAD ? "-" : st->parser.keyword});
            buf_cut_held(b, 0, st->up_held);
        } else {
            buf_release(b, st->up_held);
        }
        st->up_held = 0;
        push(st, e);
    }
    return progress;
}

/* Drop "STLS" lines from a held CAPA answer (TLS is the proxy's business); returns the new
 * length. `r` is the whole response, status line to terminator. */
static size_t rewrite_capa(char *r, size_t len)
{
    size_t i = 0, o = 0;
    while (i < len) {
        const char *lf = memchr(r + i, '\n', len - i);
        size_t l = lf ? (size_t)(lf - (r + i)) + 1 : len - i;
        size_t ll = l;
        while (ll && (r[i + ll - 1] == '\n' || r[i + ll - 1] == '\r'))
            ll--;
        bool drop = i > 0 && ll == 4 && strncasecmp(r + i, "STLS", 4) == 0;
        if (!drop) {
            memmove(r + o, r + i, l);
            o += l;
        }
        i += l;
    }
    return o;
}

/* The backend broke framing: what was released still goes out, then our -ERR — at once, even
 * inside a response (the stream cannot be followed any further). */
static void protocol_error(struct session *s, const char *why)
{
    char e[96];
    sess_log(s, LOG_WARN, "event=backend_protocol_error error=%s", log_qs(e, sizeof e, why));
    pop3_relay_stop(s);
    static const char err[] = "-ERR [SYS/TEMP] Backend protocol error.\r\n";
    if (!conn_queue_copy(&s->client, err, sizeof err - 1)) {
        sess_close(s, "out of memory");
        return;
    }
    sess_backend_lost(s, "backend protocol error", NULL);
}

void pop3_relay_fail(struct session *s, const char *why)
{
    protocol_error(s, why);
}

void pop3_relay_stop(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (st->down_stopped)
        return;
    st->down_stopped = true;
    pop3_scan_abort(s);
    buf_drop_held(&s->down); /* a response being held (or framed) is not delivered */
    st->down_held = 0;
}

bool pop3_relay_holding(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (st->down_stopped)
        return false;
    return buf_held(&s->down) > st->down_held || pop3_scan_holding(s);
}

bool pop3_relay_client_at_boundary(struct session *s)
{
    return !pop3_st(s)->down_part_out;
}

/* Backend → client. Returns true if it made progress. */
static bool filter_down(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    struct buf *b = &s->down;
    bool progress = false;
    while (!s->closing && (s->state == SESS_RELAY || s->state == SESS_CLOSING) &&
           !st->down_stopped) {
        if (st->scan && pop3_scan_active(s)) {
            /* A RETR/TOP response is held for the scanner: nothing else moves meanwhile. */
            int r = pop3_scan_step(s);
            if (r < 0)
                return false;
            if (r == 0)
                break;
            progress = true;
            continue;
        }
        if (!st->cur_valid && st->down_held == 0) {
            /* At a response boundary: our own answers that are due go out now, in order. */
            while (st->qlen && st->queue[st->qhead].kind == PQ_LOCAL) {
                struct pop3_qent e = pop(st);
                char line[256];
                int n = snprintf(line, sizeof line, "-ERR %s\r\n", e.local);
                if (n < 0 || (size_t)n >= sizeof line ||
                    !conn_queue_copy(&s->client, line, (size_t)n)) {
                    sess_close(s, "client output overflow"); /* or out of memory */
                    return false;
                }
                progress = true;
            }
            if (!buf_empty(&s->client.ctl))
                break; /* the login answer goes out first (ctl follows every released byte) */
            if (buf_held(b) == 0)
                break; /* nothing from the backend yet: the next response is decided then */
            if (st->qlen) {
                st->cur = pop(st);
            } else {
                /* Unsolicited (e.g. Dovecot's "-ERR Disconnected for inactivity."). */
                st->cur = (struct pop3_qent){.kind = PQ_FORWARD, .resp = POP3_RESP_SINGLE};
            }
            st->cur_valid = true;
            st->down_holding = st->cur.cmd == PC_CAPA;
            st->down_status_hold =
                (st->cur.cmd == PC_RETR || st->cur.cmd == PC_TOP) && msgscan_on(s);
            pop3_framer_expect(&st->downf, (enum pop3_resp_kind)st->cur.resp);
            progress = true;
        }
        size_t from = st->down_held;
        if (from >= buf_held(b))
            break;
        size_t used = 0;
        enum pop3_frame_event ev =
            pop3_frame(&st->downf, buf_mptr(b) + from, buf_held(b) - from, &used);
        st->down_held += used;
        if (ev == POP3_FRAME_ERROR) {
            protocol_error(s, st->downf.error);
            return false;
        }
        progress = progress || used > 0;
        /* The bound is on the line's text (terminator excluded), decided the same way however
         * the bytes arrive: while it is incomplete (one byte may be its CR) and once it is. */
        if (st->down_status_hold &&
            (ev == POP3_FRAME_MORE ? st->down_held > STATUS_HOLD_MAX + 1
                                   : st->downf.status_len > STATUS_HOLD_MAX)) {
            /* Never streamed unjudged: the message behind it would go out unscanned. */
            sess_log(s, LOG_WARN, "event=refused reason=status_line_too_long limit=%d",
                     STATUS_HOLD_MAX);
            protocol_error(s, "RETR/TOP status line too long to scan");
            return false;
        }
        if (ev == POP3_FRAME_STATUS_LINE && st->down_status_hold) {
            st->down_status_hold = false;
            if (pop3_scan_begin(s)) {
                if (s->closing)
                    return false;
                progress = true;
                continue;
            }
        }
        /* A status line the scanner takes (and may rewrite) is held until it is complete:
         * released piecemeal, its start would go out as it came and the scanner would get
         * only its tail (found by the relay harness, feeding bytes one at a time). */
        if (st->down_status_hold && ev == POP3_FRAME_MORE)
            continue;
        if (st->down_holding && ev != POP3_FRAME_END) {
            if (st->down_held <= CAPA_HOLD_MAX) {
                if (used == 0)
                    break;
                continue;
            }
            st->down_holding = false; /* too long to be a real CAPA: pass it on as it is */
        }
        if (st->down_holding && ev == POP3_FRAME_END && st->downf.status == POP3_STATUS_OK) {
            size_t nl = rewrite_capa(buf_mptr(b), st->down_held);
            if (nl < st->down_held) {
                buf_cut_held(b, nl, st->down_held - nl);
                st->down_held = nl;
            }
        }
        buf_release(b, st->down_held);
        st->down_held = 0;
        st->down_part_out = ev != POP3_FRAME_END;
        if (ev == POP3_FRAME_END) {
            if (st->cur.cmd == PC_QUIT && st->downf.status == POP3_STATUS_OK) {
                s->close_reason = "logout";
                st->quit_done = true; /* the client has its goodbye: no farewell after it */
            }
            st->cur_valid = false;
            st->down_holding = false;
        } else if (used == 0) {
            break; /* the framer waits for the byte after a "." at a line start */
        }
    }
    return progress;
}

/* Both filters until neither moves: a refusal queued by the up filter may be due at once, and
 * responses popped by the down filter free queue room for more client commands. */
static void relay_run(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (st->relay_running)
        return;
    st->relay_running = true;
    for (int guard = 0; guard < 10000 && !s->closing; guard++) {
        bool p = s->state == SESS_RELAY && filter_up(s);
        if (s->closing)
            break;
        p = filter_down(s) || p;
        if (!p)
            break;
    }
    st->relay_running = false;
}

void pop3_relay_up(struct session *s)
{
    relay_run(s);
}

void pop3_relay_down(struct session *s)
{
    relay_run(s);
}

void pop3_relay_kick(struct session *s)
{
    if (s->closing)
        return;
    relay_run(s);
    if (!s->closing)
        sess_pump(s);
}

bool pop3_relay_idle(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    return !st->cur_valid && st->qlen == 0 && st->up_held == 0 && st->down_held == 0 &&
           buf_empty(&s->up) && buf_empty(&s->down);
}
