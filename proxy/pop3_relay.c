/*
 * pop3_relay — the authenticated POP3 session (TRANSACTION state) with PIPELINING (RFC 2449).
 *
 * The client → backend filter parses every command line and appends what it will get to a
 * queue: single-line, multi-line (RETR, TOP, CAPA, LIST/UIDL without argument) or our own
 * refusal. The backend → client filter pops that queue at each response boundary to tell the
 * framer how the next response ends, so a pipelined burst is framed exactly however its bytes
 * are split — and a RETR/TOP body is always known as one unit, which is what the scanner hooks.
 *
 * Default deny: only the commands the proxy models are forwarded (the allow-list in classify(),
 * with strictly checked numbers); everything else is refused here, answered in order with the
 * backend's responses: STLS (TLS is set up once, at the proxy), USER/PASS/AUTH/APOP (already
 * logged in; keeping a stray password off the backend connection costs nothing), unknown or
 * unmodelled commands, bad arguments, and lines the parser rejects. CAPA answers keep only the
 * capabilities the proxy models (capa_filter()).
 *
 * With scanning on, two commands are sent as the proxy's own (issue 15, docs/scanning.md):
 * TOP n k goes out as "TOP n 2147483647", so the message is judged whole and pop3_scan cuts the
 * answer to k lines; DELE of a message the scanner blocked is answered "+OK Kept ..." and not
 * sent, and DELE of a message not judged yet becomes a probe (our TOP, its answer kept from the
 * client) after which the DELE is sent or answered; client lines after a probe wait for it.
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

#include "metrics.h"
#include "msgscan.h"
#include "pop3.h"
#include "sess_event.h"
#include "sess_policy.h"

/* A RETR/TOP status line is held whole for the scanner (it reads and may rewrite the octet
 * count). Longer than this, the message cannot be judged: the session ends (fail closed). */
#define STATUS_HOLD_MAX 8192
#define CAPA_LINE_MAX   4096 /* a CAPA line longer than this is a backend protocol error */

/* The answer to a withheld DELE. +OK: the client asked for the message to go and may not
 * retry; the words say what happens, as the notice does ("it is still on the mail server",
 * scanners/notice.c). */
#define DELE_KEPT "Kept on the mail server: this message was withheld by the mail security gateway."

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

/* ---- per-message verdicts: 2 bits per message number, grown to the highest one judged ---- */

enum pop3_verdict pop3_verdict_get(struct session *s, uint32_t msgno)
{
    struct pop3_state *st = pop3_st(s);
    if (msgno == 0 || msgno >= st->verdicts_n)
        return PV_UNKNOWN;
    return (enum pop3_verdict)((st->verdicts[msgno / 4] >> (2 * (msgno % 4))) & 3);
}

void pop3_verdict_set(struct session *s, uint32_t msgno, enum pop3_verdict v)
{
    struct pop3_state *st = pop3_st(s);
    if (msgno == 0 || msgno >= POP3_VERDICT_MAX)
        return; /* not remembered: a DELE of it is probed (judged again) */
    if (msgno >= st->verdicts_n) {
        uint32_t n = st->verdicts_n ? st->verdicts_n : 256;
        while (n <= msgno)
            n *= 2;
        uint8_t *nv = realloc(st->verdicts, n / 4);
        if (!nv)
            return; /* the same: forgetting costs a probe, never a wrong answer */
        memset(nv + st->verdicts_n / 4, 0, (n - st->verdicts_n) / 4);
        st->verdicts = nv;
        st->verdicts_n = n;
    }
    uint8_t *c = &st->verdicts[msgno / 4];
    unsigned sh = 2 * (msgno % 4);
    *c = (uint8_t)((*c & ~(3u << sh)) | ((unsigned)v << sh));
}

/* ---- the command allow-list (docs/protocols.md, POP3) ---- */

/* A strict decimal number: digits only, no sign, no leading zero (except "0" itself when
 * zero_ok), at most UINT32_MAX. Anything else is refused, never forwarded for the server to
 * read differently ("1x", "-1", "+1", " 1", "99999999999"). */
static bool strict_number(const struct pop3_cmd_parser *p, unsigned i, bool zero_ok, uint32_t *v_r)
{
    const char *a = pop3_cmd_arg(p, i);
    if (!a || p->args[i].len == 0 || p->args[i].len > 10)
        return false;
    size_t len = p->args[i].len;
    if (a[0] == '0' && len > 1)
        return false;
    uint64_t n = 0;
    for (size_t j = 0; j < len; j++) {
        if (a[j] < '0' || a[j] > '9')
            return false;
        n = n * 10 + (uint64_t)(a[j] - '0');
    }
    if (n > UINT32_MAX || (n == 0 && !zero_ok))
        return false;
    *v_r = (uint32_t)n;
    return true;
}

static struct pop3_qent refuse(const char *text, enum sess_reason why)
{
    return (struct pop3_qent){.kind = PQ_LOCAL, .local = text, .why = (uint8_t)why};
}

/* What to do with one complete, parsed client line. After login only the TRANSACTION commands
 * of RFC 1939 and CAPA are passed on, with strictly checked arguments; everything else (other
 * extensions, UTF8/LANG, XCLIENT, a server's private commands) is refused here: the proxy
 * forwards only what it models. */
static struct pop3_qent classify(const struct pop3_cmd_parser *p)
{
    struct pop3_qent e = {.kind = PQ_FORWARD, .resp = POP3_RESP_SINGLE, .cmd = PC_OTHER};
    const char *kw = p->keyword;
    static const struct {
        const char *kw;
        uint8_t min, max; /* arguments */
        uint8_t cmd;      /* enum pop3_qcmd */
    } allowed[] = {
        {"STAT", 0, 0, PC_OTHER}, {"LIST", 0, 1, PC_OTHER}, {"UIDL", 0, 1, PC_OTHER},
        {"RETR", 1, 1, PC_RETR},  {"TOP", 2, 2, PC_TOP},    {"DELE", 1, 1, PC_DELE},
        {"NOOP", 0, 0, PC_OTHER}, {"RSET", 0, 0, PC_OTHER}, {"QUIT", 0, 0, PC_QUIT},
        {"CAPA", 0, 0, PC_CAPA},
    };
    if (strcmp(kw, "STLS") == 0)
        return refuse("TLS is already active.", SR_STARTTLS_AFTER_LOGIN);
    if (strcmp(kw, "USER") == 0 || strcmp(kw, "PASS") == 0 || strcmp(kw, "AUTH") == 0 ||
        strcmp(kw, "APOP") == 0)
        return refuse("Already logged in.", SR_ALREADY_LOGGED_IN);
    size_t i = 0;
    while (i < sizeof allowed / sizeof allowed[0] && strcmp(kw, allowed[i].kw) != 0)
        i++;
    if (i == sizeof allowed / sizeof allowed[0])
        return refuse("Command not allowed.", SR_COMMAND_NOT_ALLOWED);
    if (p->too_many_args || p->nargs < allowed[i].min || p->nargs > allowed[i].max ||
        (p->nargs == 0 && p->rest.len != 0))
        return refuse("Wrong number of arguments.", SR_BAD_COMMAND);
    e.cmd = allowed[i].cmd;
    if (p->nargs >= 1 && !strict_number(p, 0, false, &e.msgno))
        return refuse("Invalid message number.", SR_BAD_COMMAND);
    if (p->nargs == 2 && !strict_number(p, 1, true, &e.lines))
        return refuse("Invalid number of lines.", SR_BAD_COMMAND);
    e.resp = (uint8_t)pop3_expected_response(p);
    return e;
}

/* Send our own command line instead of the client's (held at s->up.mark, up_held bytes): the
 * client's is cut, ours queued on the backend conn, in order with the bytes released around
 * it. */
static bool replace_line(struct session *s, const char *fmt, uint32_t msgno)
{
    struct pop3_state *st = pop3_st(s);
    char line[64];
    int n = snprintf(line, sizeof line, fmt, msgno);
    buf_cut_held(&s->up, 0, st->up_held);
    if (n <= 0 || (size_t)n >= sizeof line || !conn_queue_copy(&s->backend, line, (size_t)n)) {
        sess_close(s, "out of memory");
        return false;
    }
    return true;
}

static void dele_withheld(struct session *s, uint32_t msgno, bool probed)
{
    sess_log(s, LOG_INFO, "event=dele_withheld msg=%u judged=%s", msgno,
             probed ? "probe" : "download");
    atomic_fetch_add(&metrics.pop3_dele_withheld, 1);
}

/* DELE of a message the notice replaced must not remove the original (the notice says it is
 * still on the server). With a quarantine the original is kept there: DELE goes through. */
static bool dele_guarded(struct session *s)
{
    return msgscan_on(s) && !s->cfg->scan.quarantine_dir;
}

void pop3_probe_done(struct session *s, uint32_t msgno, enum pop3_verdict v, const char *err,
                     size_t err_len)
{
    struct pop3_state *st = pop3_st(s);
    st->probe_wait = false;
    /* The probe was the last command queued (the client's later lines wait): what we add now
     * is in order. */
    if (err) {
        if (!conn_queue_copy(&s->client, err, err_len))
            sess_close(s, "client output overflow");
    } else if (v == PV_BLOCKED) {
        dele_withheld(s, msgno, true);
        push(st, refuse(DELE_KEPT, SR_NONE));
        st->queue[(st->qhead + st->qlen - 1) % POP3_QUEUE_MAX].ok = true;
    } else if (v == PV_CLEAN) {
        char line[32];
        int n = snprintf(line, sizeof line, "DELE %u\r\n", msgno);
        if (!conn_queue_copy(&s->backend, line, (size_t)n)) {
            sess_close(s, "out of memory");
            return;
        }
        push(st, (struct pop3_qent){
                     .kind = PQ_FORWARD, .resp = POP3_RESP_SINGLE, .cmd = PC_DELE, .msgno = msgno});
    }
    /* PV_UNKNOWN without err: the scanner already answered (-ERR [SYS/TEMP] ...). */
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
        if (st->probe_wait)
            break; /* a DELE is being judged: what follows it waits (its answer may depend) */
        if (st->up_held == 0 && st->qlen >= POP3_QUEUE_MAX - 1)
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
        if (e.kind == PQ_FORWARD && e.cmd == PC_DELE && dele_guarded(s)) {
            enum pop3_verdict v = pop3_verdict_get(s, e.msgno);
            if (v == PV_BLOCKED) {
                dele_withheld(s, e.msgno, false);
                e = refuse(DELE_KEPT, SR_NONE);
                e.ok = true;
                buf_cut_held(b, 0, st->up_held);
                st->up_held = 0;
                push(st, e);
                continue;
            }
            if (v == PV_UNKNOWN) {
                /* Not judged in this session (the client may delete without downloading):
                 * judge it first with our own TOP, whose answer the client never sees. */
                e.cmd = PC_PROBE;
                e.resp = POP3_RESP_MULTI;
                if (!replace_line(s, "TOP %u " POP3_TOP_ALL "\r\n", e.msgno))
                    return false;
                st->up_held = 0;
                st->probe_wait = true;
                push(st, e);
                continue;
            }
        }
        if (e.kind == PQ_FORWARD && e.cmd == PC_TOP && msgscan_on(s)) {
            /* Judged whole: the backend sends the whole message, the proxy cuts it. */
            e.top_all = true;
            e.resp = POP3_RESP_MULTI;
            if (!replace_line(s, "TOP %u " POP3_TOP_ALL "\r\n", e.msgno))
                return false;
            st->up_held = 0;
            push(st, e);
            continue;
        }
        if (e.kind == PQ_LOCAL) {
            if (e.why == SR_COMMAND_NOT_ALLOWED)
                sess_event(s, &(struct sess_event){.kind = SEV_REFUSED,
                                                   .reason = e.why,
                                                   .command = st->parser.keyword});
            else
                sess_event(s, &(struct sess_event){
                                  .kind = SEV_REFUSED,
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

/* CAPA after login: a capability line is passed on only when the proxy models what it
 * announces (docs/protocols.md, POP3). Dropped: STLS and SASL/USER (TLS and login are the
 * proxy's business, and over by now; AUTH-RESP-CODE with them), UTF8 and LANG (their commands
 * are refused), and every capability the proxy does not know. CAPA (Dovecot lists it) stays.
 * PIPELINING stays: the relay queues and frames pipelined commands. Informational ones (EXPIRE,
 * LOGIN-DELAY, IMPLEMENTATION) stay. */
static bool capa_allowed(const char *l, size_t len)
{
    static const char *const keep[] = {"CAPA",       "TOP",    "UIDL",        "RESP-CODES",
                                       "PIPELINING", "EXPIRE", "LOGIN-DELAY", "IMPLEMENTATION"};
    size_t n = 0;
    while (n < len && l[n] != ' ' && l[n] != '\r' && l[n] != '\n')
        n++;
    if (n == 1 && l[0] == '.' && (len == 2 || (len == 3 && l[1] == '\r')))
        return true; /* the terminator */
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (strlen(keep[i]) == n && strncasecmp(l, keep[i], n) == 0)
            return true;
    return false;
}

/* Decide every complete line of the CAPA answer held so far: release it or cut it. The status
 * line goes as it is. Returns -1 when a line grows past CAPA_LINE_MAX, else the bytes released. */
static long capa_filter(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    struct buf *b = &s->down;
    long out = 0;
    for (;;) {
        const char *m = buf_mptr(b);
        const char *lf = memchr(m, '\n', st->down_held);
        if (!lf)
            return st->down_held > CAPA_LINE_MAX ? -1 : out;
        size_t l = (size_t)(lf - m) + 1;
        if (st->capa_first || capa_allowed(m, l)) {
            buf_release(b, l);
            out += (long)l;
        } else {
            buf_cut_held(b, 0, l);
        }
        st->capa_first = false;
        st->down_held -= l;
    }
}

/* The backend broke framing: what was released still goes out, then our -ERR — at once if the
 * client is between responses (the stream cannot be followed any further). */
static void protocol_error(struct session *s, const char *why)
{
    struct pop3_state *st = pop3_st(s);
    char e[96];
    sess_log(s, LOG_WARN, "event=backend_protocol_error error=%s", log_qs(e, sizeof e, why));
    pop3_relay_stop(s);
    /* Inside a multi-line answer that was partly sent the -ERR would read as one of its lines
     * (issue 16): the close says it alone. */
    static const char err[] = "-ERR [SYS/TEMP] Backend protocol error.\r\n";
    if (!st->down_part_out && !conn_queue_copy(&s->client, err, sizeof err - 1)) {
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
                int n = snprintf(line, sizeof line, "%s %s\r\n", e.ok ? "+OK" : "-ERR", e.local);
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
            st->capa_first = st->cur.cmd == PC_CAPA;
            st->down_status_hold =
                (st->cur.cmd == PC_RETR || st->cur.cmd == PC_TOP || st->cur.cmd == PC_PROBE) &&
                msgscan_on(s);
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
        if (st->cur.cmd == PC_PROBE && ev == POP3_FRAME_END) {
            /* The probe was refused (-ERR: no such message, deleted, TOP unknown): that line
             * is the client's answer to its DELE, which is not sent. */
            char line[POP3_HEAD_MAX + 3];
            size_t n = st->downf.head_len;
            memcpy(line, st->downf.head, n);
            line[n] = '\r';
            line[n + 1] = '\n';
            buf_cut_held(b, 0, st->down_held);
            st->down_held = 0;
            st->cur_valid = false;
            pop3_probe_done(s, st->cur.msgno, PV_UNKNOWN, line, n + 2);
            if (s->closing)
                return false;
            progress = true;
            continue;
        }
        if (st->cur.cmd == PC_CAPA) {
            long r = capa_filter(s);
            if (r < 0) {
                protocol_error(s, "CAPA line too long");
                return false;
            }
            if (ev == POP3_FRAME_END) {
                st->cur_valid = false;
                st->down_part_out = false;
            } else {
                st->down_part_out = st->down_part_out || r > 0;
                if (used == 0)
                    break;
            }
            continue;
        }
        if (st->top_streaming) {
            /* A TOP over max_scan_size under `pass` (pop3_scan.c): the body streams, cut
             * after the client's k lines; the backend's terminator ends it. */
            size_t body = st->down_held - (ev == POP3_FRAME_END ? st->downf.term_len : 0);
            size_t keep = st->topcut.done ? 0 : pop3_topcut_feed(&st->topcut, buf_mptr(b), body);
            if (keep < body) {
                buf_cut_held(b, keep, body - keep);
                st->down_held -= body - keep;
            }
            if (ev == POP3_FRAME_END)
                st->top_streaming = false;
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
