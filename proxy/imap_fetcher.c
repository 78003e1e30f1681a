/*
 * imap_fetcher — the session's second backend connection, used to judge a message on its
 * whole when the client fetched only a part or a byte range of it (Thunderbird's
 * BODY.PEEK[]<0.65536> chunks, a client's BODY.PEEK[2] for one attachment).
 *
 * Script: dial the session's backend with the dialer (backend.c: same address, source bind,
 * PROXY header, TLS mode and verification, failure logging and health as the session's own
 * connection) → greeting → [STARTTLS → handshake] → log in with the user's credentials, kept
 * from the client's login for this in the IMAP state's struct creds (LOGIN with synchronising
 * literals, or AUTHENTICATE with the
 * same mechanism; no capability probing: every server takes these) → EXAMINE the client's
 * mailbox (read-only: nothing here can change flags) → per request
 * `UID FETCH uid (UID BODY.PEEK[])` or `FETCH seq (UID BODY.PEEK[])` (BODY.PEEK never sets
 * \Seen) → collect the literal (within the scan budget) → judge it (msgscan) → remember the
 * verdict (imap_scan.c's memo) → callback.
 *
 * One request at a time: the down filter waits for the answer before it frames anything else.
 * The connection stays open for the next request and closes with the session. Any failure
 * ends the request with rc -1 and drops the connection; the next request opens a new one.
 * Our tags are single letters (A login, B EXAMINE, F FETCH, S STARTTLS).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "backend.h"
#include "imap_scan.h"
#include "notice.h"
#include "worker.h"

enum ft_state {
    FT_CONNECT, /* the dialer: connect, [implicit TLS] */
    FT_GREETING,
    FT_STARTTLS,
    FT_STARTTLS_HS,
    FT_LOGIN,
    FT_EXAMINE,
    FT_READY,
    FT_SYNC, /* NOOP before a FETCH on an older view */
    FT_FETCH,
    FT_JUDGE,
    FT_DEAD,
};

struct imap_fetcher {
    struct session *s;
    struct conn c;
    struct backend_dial dial; /* opens c */
    struct buf in; /* c.rbuf: response text; literal bytes are moved out as they are framed */
    struct imap_framer f;
    size_t held; /* bytes of `in` framed, belonging to the response in progress */
    bool in_lit;
    enum ft_state state;
    int step;      /* login: which part goes next */
    char *mailbox; /* examined (owned) */
    uint32_t uidvalidity;
    ev_timer timer;

    /* the request */
    bool pending;
    char *req_mailbox; /* owned */
    uint32_t req_uidvalidity;
    uint64_t req_uid, req_seq;
    fetcher_done_fn *done;

    /* the message being collected */
    bool collecting, budget_wait, oversize, have_msg;
    char *msg;
    size_t msg_cap, msg_have, budget;
    uint64_t lit_len;
    uint64_t got_uid;
    struct msgscan_wait bwait;
    struct msgscan_req *judging; /* the scan in flight, NULL when none */
};

static void ft_input(struct imap_fetcher *f);

static struct imap_fetcher *ft_of(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    return sc ? sc->fetcher : NULL;
}

static void drop_msg(struct imap_fetcher *f)
{
    free(f->msg);
    f->msg = NULL;
    msgscan_budget_release(f->budget);
    f->budget = 0;
    f->collecting = f->have_msg = f->oversize = false;
    f->msg_cap = f->msg_have = 0;
}

static void close_conn(struct imap_fetcher *f)
{
    ev_timer_stop(f->s->worker->loop, &f->timer);
    backend_dial_cancel(&f->dial);
    conn_close(&f->c);
    buf_free(&f->in);
    free(f->mailbox);
    f->mailbox = NULL;
    f->state = FT_DEAD;
}

/* End the request in progress (if any) with rc. */
static void finish(struct imap_fetcher *f, int rc, int memo)
{
    struct session *s = f->s;
    drop_msg(f);
    if (!f->pending)
        return;
    f->pending = false;
    fetcher_done_fn *done = f->done;
    f->done = NULL;
    done(s, rc, memo);
}

static void fail(struct imap_fetcher *f, const char *why)
{
    char q[200];
    sess_log(f->s, LOG_WARN, "event=scan_fetch_failed error=%s", log_qs(q, sizeof q, why));
    close_conn(f);
    finish(f, -1, -1);
}

static void kick(struct imap_fetcher *f)
{
    if (f->c.fd < 0)
        return;
    conn_flush(&f->c);
    if (f->c.error) {
        fail(f, "backend connection error");
        return;
    }
    conn_update(&f->c);
}

static void arm(struct imap_fetcher *f)
{
    struct ev_loop *loop = f->s->worker->loop;
    ev_timer_stop(loop, &f->timer);
    ev_timer_set(&f->timer, (double)f->s->cfg->limits.backend_login_timeout_ms / 1000.0, 0.);
    ev_timer_start(loop, &f->timer);
}

static bool sendf(struct imap_fetcher *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool sendf(struct imap_fetcher *f, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    bool ok = n >= 0 && (size_t)n < sizeof tmp && conn_ctl_append(&f->c, tmp, (size_t)n);
    OPENSSL_cleanse(tmp, sizeof tmp);
    if (!ok)
        fail(f, "command too long");
    return ok;
}

static bool send_raw(struct imap_fetcher *f, const void *p, size_t len)
{
    if (!conn_ctl_append(&f->c, p, len)) {
        fail(f, "command too long");
        return false;
    }
    return true;
}

/* ---- script ---- */

static void send_examine(struct imap_fetcher *f)
{
    char q[2 * SC_MAILBOX_MAX + 3];
    size_t o = 0;
    q[o++] = '"';
    for (const char *p = f->req_mailbox; *p && o < sizeof q - 3; p++) {
        if (*p == '"' || *p == '\\')
            q[o++] = '\\';
        q[o++] = *p;
    }
    q[o++] = '"';
    q[o] = '\0';
    f->state = FT_EXAMINE;
    f->uidvalidity = 0;
    sendf(f, "B EXAMINE %s\r\n", q);
}

static void send_fetch(struct imap_fetcher *f, bool sync)
{
    f->state = FT_FETCH;
    f->got_uid = 0;
    /* A view opened earlier does not show messages delivered since: a NOOP first makes the
     * server report them (RFC 3501 6.1.2), so a new message's UID is found. Not pipelined:
     * Dovecot runs a FETCH in parallel with a NOOP, on the view from before the NOOP. */
    if (sync) {
        f->state = FT_SYNC;
        sendf(f, "N NOOP\r\n");
        return;
    }
    if (f->req_uid)
        sendf(f, "F UID FETCH %llu (UID BODY.PEEK[])\r\n", (unsigned long long)f->req_uid);
    else
        sendf(f, "F FETCH %llu (UID BODY.PEEK[])\r\n", (unsigned long long)f->req_seq);
}

/* Logged in, or a new request on an idle connection. */
static void next_step(struct imap_fetcher *f)
{
    if (!f->pending) {
        f->state = FT_READY;
        ev_timer_stop(f->s->worker->loop, &f->timer);
        return;
    }
    arm(f);
    if (!f->mailbox || strcmp(f->mailbox, f->req_mailbox) != 0)
        send_examine(f);
    else
        send_fetch(f, true);
}

static void send_login(struct imap_fetcher *f)
{
    const struct creds *c = &imap_st(f->s)->creds;
    f->state = FT_LOGIN;
    f->c.wipe_ctl = true;
    switch (c->mech) {
    case CREDS_LOGIN:
        f->step = 1;
        sendf(f, "A LOGIN {%zu}\r\n", c->user_len);
        return;
    case CREDS_PLAIN:
    case CREDS_XOAUTH2:
    case CREDS_OAUTHBEARER:
        f->step = 20;
        sendf(f, "A AUTHENTICATE %s\r\n", creds_sasl_name(c->mech));
        return;
    }
}

static void on_continuation(struct imap_fetcher *f)
{
    struct creds *c = &imap_st(f->s)->creds;
    switch (f->step) {
    case 1:
        f->step = 2;
        if (send_raw(f, c->user, c->user_len))
            sendf(f, " {%zu}\r\n", c->pass_len);
        return;
    case 2:
        f->step = 3;
        if (send_raw(f, c->pass, c->pass_len))
            send_raw(f, "\r\n", 2);
        return;
    case 20: {
        f->step = 21;
        size_t bl;
        const char *b64 = creds_response(c, &bl);
        if (!b64) {
            fail(f, "out of memory");
            return;
        }
        if (send_raw(f, b64, bl))
            send_raw(f, "\r\n", 2);
        return;
    }
    case 21:
        send_raw(f, "*\r\n", 3); /* an error challenge: cancel, the NO follows */
        return;
    default:
        fail(f, "unexpected continuation");
        return;
    }
}

static bool tagged(const char *line, size_t len, char tag, bool *ok_r)
{
    if (len < 4 || line[0] != tag || line[1] != ' ')
        return false;
    *ok_r = strncasecmp(line + 2, "OK", 2) == 0;
    return true;
}

/* Only the verdict is kept (in the memo); msgscan frees the message and its budget. */
static void judged(void *arg, struct msgscan_outcome *o)
{
    struct imap_fetcher *f = arg;
    struct session *s = f->s;
    struct imap_scan *sc = imap_sc(s);
    f->judging = NULL;
    uint64_t uid = f->got_uid ? f->got_uid : f->req_uid;
    int memo = sc_memo_store(sc, f->req_mailbox, f->req_uidvalidity, uid, f->lit_len, o);
    if (f->state == FT_JUDGE)
        f->state = FT_READY;
    finish(f, memo >= 0 ? 1 : -1, memo);
    if (f->state == FT_READY)
        ev_timer_stop(s->worker->loop, &f->timer);
}

/* "F OK" with the message in hand: judge it. */
static void judge(struct imap_fetcher *f)
{
    struct session *s = f->s;
    struct imap_scan *sc = imap_sc(s);
    ev_timer_stop(s->worker->loop, &f->timer);
    char where[MSGSCAN_WHERE_MAX];
    uint64_t uid = f->got_uid ? f->got_uid : f->req_uid;
    sc_where(where, sizeof where, f->req_mailbox, uid, f->req_seq);
    struct msgscan_item item = {.proto = "imap", .where = where};
    if (f->oversize) {
        struct msgscan_outcome o = {0};
        if (!msgscan_oversize(s, &item, f->msg, f->msg_have, f->lit_len, &o)) {
            fail(f, "out of memory");
            return;
        }
        int memo = sc_memo_store(sc, f->req_mailbox, f->req_uidvalidity, uid, f->lit_len, &o);
        msgscan_outcome_clear(&o);
        f->state = FT_READY;
        finish(f, memo >= 0 ? 1 : -1, memo);
        return;
    }
    char *m = f->msg;
    size_t len = f->msg_have, budget = f->budget;
    f->msg = NULL;
    f->budget = 0;
    f->have_msg = false;
    f->state = FT_JUDGE;
    f->judging = msgscan_judge(s, &item, m, len, budget, judged, f);
    if (!f->judging)
        fail(f, "cannot submit scan");
}

/* One whole response (literal bytes already taken out), without its CRLF. */
static void on_response(struct imap_fetcher *f, const char *line, size_t len)
{
    bool ok;
    bool untagged = len >= 2 && line[0] == '*' && line[1] == ' ';
    if (untagged && len >= 5 && strncasecmp(line + 2, "BYE", 3) == 0)
        return; /* the close that follows ends it */
    switch (f->state) {
    case FT_GREETING:
        if (!untagged || strncasecmp(line + 2, "OK", 2) != 0) {
            fail(f, "bad greeting");
            return;
        }
        if (f->s->be->tls == CFG_TLS_STARTTLS) {
            f->state = FT_STARTTLS;
            sendf(f, "S STARTTLS\r\n");
        } else {
            send_login(f);
        }
        return;
    case FT_STARTTLS:
        if (!tagged(line, len, 'S', &ok))
            return;
        if (!ok || buf_len(&f->in) != f->held) {
            fail(f, "STARTTLS refused");
            return;
        }
        f->state = FT_STARTTLS_HS;
        backend_dial_starttls(&f->dial); /* on to dialed() */
        return;
    case FT_LOGIN:
        if (len >= 1 && line[0] == '+') {
            on_continuation(f);
            return;
        }
        if (!tagged(line, len, 'A', &ok))
            return;
        if (!ok) {
            fail(f, "login refused");
            return;
        }
        f->c.wipe_ctl = false;
        next_step(f);
        return;
    case FT_EXAMINE:
        if (untagged && len > 18 && strncasecmp(line, "* OK [UIDVALIDITY ", 18) == 0) {
            f->uidvalidity = (uint32_t)strtoul(line + 18, NULL, 10);
            return;
        }
        if (!tagged(line, len, 'B', &ok))
            return;
        if (!ok) {
            fail(f, "EXAMINE refused");
            return;
        }
        if (f->req_uidvalidity && f->uidvalidity && f->req_uidvalidity != f->uidvalidity) {
            fail(f, "UIDVALIDITY changed");
            return;
        }
        free(f->mailbox);
        f->mailbox = strdup(f->req_mailbox);
        if (!f->mailbox) {
            fail(f, "out of memory");
            return;
        }
        send_fetch(f, false);
        return;
    case FT_SYNC:
        if (!tagged(line, len, 'N', &ok))
            return;
        if (!ok) {
            fail(f, "NOOP refused");
            return;
        }
        send_fetch(f, false);
        return;
    case FT_FETCH:
        if (untagged) {
            struct fetch_items fi;
            uint64_t seq;
            if (fi_is_fetch(line, len, &seq) == 1) {
                fi_init(&fi);
                fi_feed(&fi, line, len);
                if (fi.uid)
                    f->got_uid = fi.uid;
            }
            return;
        }
        if (!tagged(line, len, 'F', &ok))
            return;
        if (!ok || !f->have_msg) {
            /* expunged meanwhile, or no such UID: nothing to judge */
            drop_msg(f);
            f->state = FT_READY;
            finish(f, ok ? 0 : -1, -1);
            return;
        }
        judge(f);
        return;
    default:
        return;
    }
}

static void budget_granted(void *arg)
{
    struct session *s = arg;
    struct imap_fetcher *f = ft_of(s);
    if (!f || !f->budget_wait || s->closing)
        return;
    f->budget_wait = false;
    f->collecting = true;
    f->c.reading = true;
    ft_input(f);
}

/* A literal was announced: is it the message we asked for? */
static bool start_literal(struct imap_fetcher *f)
{
    struct session *s = f->s;
    const char *text = buf_rptr(&f->in);
    uint64_t seq, origin;
    struct fetch_items fi;
    if (f->state != FT_FETCH || fi_is_fetch(text, f->held, &seq) != 1)
        return true; /* some other literal: skipped */
    fi_init(&fi);
    fi_feed(&fi, text, f->held);
    if (fi_literal_kind(&fi, &origin) != FI_WHOLE || f->have_msg)
        return true;
    if (fi.uid)
        f->got_uid = fi.uid;
    f->lit_len = f->f.literal_len;
    f->oversize = f->lit_len > s->cfg->scan.max_scan_size;
    size_t need = f->oversize ? NOTICE_HEADER_SCAN : (size_t)f->lit_len;
    if (need > f->lit_len)
        need = (size_t)f->lit_len;
    f->msg = malloc(need ? need : 1);
    if (!f->msg) {
        fail(f, "out of memory");
        return false;
    }
    f->msg_cap = need;
    f->msg_have = 0;
    f->have_msg = true;
    enum msgscan_budget_rc rc = msgscan_budget_acquire(s, need, &f->bwait, budget_granted, s);
    if (rc == MSGSCAN_BUDGET_TOO_BIG) {
        fail(f, "message larger than the scan memory budget");
        return false;
    }
    f->budget = need;
    if (rc == MSGSCAN_BUDGET_WAIT) {
        f->budget_wait = true; /* the socket is not read until the grant */
        f->c.reading = false;
        return false;
    }
    f->collecting = true;
    return true;
}

static void ft_input(struct imap_fetcher *f)
{
    struct buf *b = &f->in;
    while (f->state != FT_DEAD && !f->budget_wait) {
        /* (nothing is ever released in `in`: mark stays at rpos, held offsets start there) */
        size_t from = f->held;
        if (from >= buf_held(b) && !(f->in_lit && f->f.literal_left == 0))
            break;
        size_t used = 0;
        enum imap_frame_event ev =
            imap_frame(&f->f, b->data ? buf_mptr(b) + from : "", buf_held(b) - from, &used);
        if (ev == IMAP_FRAME_ERROR) {
            fail(f, "backend protocol error");
            return;
        }
        if (f->in_lit) {
            if (f->collecting) {
                size_t room = f->msg_cap - f->msg_have;
                size_t n = used < room ? used : room;
                memcpy(f->msg + f->msg_have, buf_mptr(b) + from, n);
                f->msg_have += n;
            }
            if (used)
                buf_cut_held(b, from, used);
            if (ev == IMAP_FRAME_LITERAL_END) {
                f->in_lit = false;
                f->collecting = false;
            }
            continue;
        }
        f->held += used;
        if (ev == IMAP_FRAME_LITERAL) {
            f->in_lit = true;
            if (!start_literal(f))
                return;
            continue;
        }
        if (ev == IMAP_FRAME_END) {
            size_t len = f->held;
            char *line = malloc(len + 1);
            if (!line) {
                fail(f, "out of memory");
                return;
            }
            memcpy(line, buf_rptr(b), len);
            buf_consume(b, len);
            f->held = 0;
            size_t l = len;
            while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
                l--;
            on_response(f, line, l);
            free(line);
            if (f->state != FT_DEAD && f->state != FT_STARTTLS_HS)
                kick(f);
            continue;
        }
        if (buf_room(b) == 0) {
            fail(f, "backend response too long");
            return;
        }
    }
    if (f->state != FT_DEAD)
        kick(f);
}

static void handler(struct conn *c, int events)
{
    struct session *s = c->owner;
    struct imap_fetcher *f = ft_of(s);
    if (s->closing || !f || f->state == FT_DEAD)
        return;
    if (events & CONN_EV_READ) {
        if (f->state != FT_READY)
            arm(f);
        ft_input(f);
        f = ft_of(s);
        if (!f || f->state == FT_DEAD)
            return;
    }
    if (c->eof || c->error) {
        fail(f, c->eof ? "backend closed the connection" : "backend connection error");
        return;
    }
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct imap_fetcher *f = t->data;
    if (f->s->closing)
        return;
    fail(f, "timeout");
}

/* The dialer finished: connected (TLS done if implicit), or the STARTTLS handshake done. */
static void dialed(struct backend_dial *d)
{
    struct imap_fetcher *f = d->arg;
    if (f->s->closing)
        return;
    if (d->result != BACKEND_DIAL_OK) {
        fail(f, backend_dial_why(d));
        return;
    }
    f->c.reading = true;
    if (d->starttls) {
        send_login(f);
        kick(f);
        return;
    }
    f->state = FT_GREETING;
    conn_update(&f->c);
}

/* Its log lines carry the session's prefix and say which connection it was. */
static void dial_log(struct backend_dial *d, enum log_level lvl, const char *msg)
{
    struct imap_fetcher *f = d->arg;
    sess_log(f->s, lvl, "%s conn=scan_fetch", msg);
}

static void open_conn(struct imap_fetcher *f)
{
    struct session *s = f->s;
    const struct config *cfg = s->cfg;
    conn_init(&f->c, s->worker->loop, -1, handler, s, cfg->limits.max_line + 4096);
    buf_init(&f->in, cfg->limits.relay_buffer);
    f->c.rbuf = &f->in;
    f->c.wbuf = NULL;
    imap_framer_init(&f->f, cfg->limits.max_line);
    f->held = 0;
    f->in_lit = false;
    f->state = FT_CONNECT;
    struct backend_dial *d = &f->dial;
    d->be = s->be;
    d->state = s->be_state;
    d->fall = cfg->health.fall;
    d->ctx = s->be_ctx;
    d->client_sa = &s->client_sa;
    d->local_sa = &s->local_sa;
    d->bind_client = s->listener->transparent_source;
    d->connect_timeout = (double)cfg->limits.backend_connect_timeout_ms / 1000.0;
    d->tls_timeout = (double)cfg->limits.backend_login_timeout_ms / 1000.0;
    backend_dial_start(d); /* on to dialed() */
    arm(f);
}

bool imap_fetcher_request(struct session *s, const char *mailbox, uint32_t uidvalidity,
                          uint64_t uid, uint64_t seq, fetcher_done_fn *done)
{
    struct imap_scan *sc = imap_sc(s);
    struct imap_fetcher *f = sc->fetcher;
    if (f && f->pending)
        return false;
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f)
            return false;
        f->s = s;
        f->c.fd = -1;
        f->state = FT_DEAD;
        ev_init(&f->timer, timeout_cb);
        f->timer.data = f;
        backend_dial_init(&f->dial, s->worker->loop, &f->c, dialed, dial_log, f);
        sc->fetcher = f;
    }
    free(f->req_mailbox);
    f->req_mailbox = strdup(mailbox);
    if (!f->req_mailbox)
        return false;
    f->req_uidvalidity = uidvalidity;
    f->req_uid = uid;
    f->req_seq = seq;
    f->done = done;
    if (f->state == FT_DEAD) {
        open_conn(f);
        f->pending = true;
        sess_log(s, LOG_DEBUG, "event=scan_fetch_connect backend=%s", s->be->name);
        return true;
    }
    f->pending = true;
    if (f->state == FT_READY) {
        next_step(f);
        kick(f);
    }
    return true;
}

void imap_fetcher_free(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    struct imap_fetcher *f = sc ? sc->fetcher : NULL;
    if (!f)
        return;
    f->pending = false;
    msgscan_cancel(&f->judging);
    msgscan_wait_cancel(&f->bwait);
    if (f->state != FT_DEAD)
        close_conn(f);
    backend_dial_cancel(&f->dial);
    drop_msg(f);
    ev_timer_stop(s->worker->loop, &f->timer);
    free(f->req_mailbox);
    free(f);
    sc->fetcher = NULL;
}
