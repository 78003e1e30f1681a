/*
 * imap_fetcher — the session's second backend connection, used to judge a message on its
 * whole when the client fetched only a part or a byte range of it (Thunderbird's
 * BODY.PEEK[]<0.65536> chunks, a client's BODY.PEEK[2] for one attachment).
 *
 * Script: connect to the session's backend (same address, TLS mode and PROXY header) →
 * [implicit TLS] → greeting → [STARTTLS → handshake] → log in with the user's credentials, kept
 * from the client's login for this (LOGIN with synchronising literals, or AUTHENTICATE with the
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
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "imap_scan.h"
#include "notice.h"
#include "proxy_proto.h"
#include "sasl.h"
#include "tls.h"
#include "worker.h"

enum ft_state {
    FT_CONNECT,
    FT_TLS,
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
    struct sc_wait bwait;
    struct sc_judging judging;
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
    if (f->budget)
        sc_budget_release(f->budget);
    f->budget = 0;
    f->collecting = f->have_msg = f->oversize = false;
    f->msg_cap = f->msg_have = 0;
}

static void close_conn(struct imap_fetcher *f)
{
    ev_timer_stop(f->s->worker->loop, &f->timer);
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
    struct session *s = f->s;
    struct imap_scan *sc = imap_sc(s);
    f->state = FT_LOGIN;
    f->c.wipe_ctl = true;
    switch (sc->mech) {
    case IMAP_MECH_LOGIN:
        f->step = 1;
        sendf(f, "A LOGIN {%zu}\r\n", strlen(s->user));
        return;
    case IMAP_MECH_PLAIN:
        f->step = 20;
        sendf(f, "A AUTHENTICATE PLAIN\r\n");
        return;
    case IMAP_MECH_XOAUTH2:
        f->step = 30;
        sendf(f, "A AUTHENTICATE XOAUTH2\r\n");
        return;
    default:
        f->step = 30;
        sendf(f, "A AUTHENTICATE OAUTHBEARER\r\n");
        return;
    }
}

static void send_plain(struct imap_fetcher *f)
{
    struct session *s = f->s;
    struct imap_scan *sc = imap_sc(s);
    size_t zl = sc->authz ? strlen(sc->authz) : 0, ul = strlen(s->user);
    size_t ml = zl + 2 + ul + sc->pass_len;
    unsigned char *m = malloc(ml);
    char *b = malloc(4 * ((ml + 2) / 3) + 3);
    if (!m || !b) {
        free(m);
        free(b);
        fail(f, "out of memory");
        return;
    }
    if (zl)
        memcpy(m, sc->authz, zl);
    m[zl] = 0;
    memcpy(m + zl + 1, s->user, ul);
    m[zl + 1 + ul] = 0;
    if (sc->pass_len)
        memcpy(m + zl + 2 + ul, sc->pass, sc->pass_len);
    size_t bl = b64_encode(m, ml, b);
    b[bl++] = '\r';
    b[bl++] = '\n';
    send_raw(f, b, bl);
    OPENSSL_cleanse(m, ml);
    OPENSSL_cleanse(b, bl);
    free(m);
    free(b);
}

static void on_continuation(struct imap_fetcher *f)
{
    struct session *s = f->s;
    struct imap_scan *sc = imap_sc(s);
    switch (f->step) {
    case 1:
        f->step = 2;
        if (send_raw(f, s->user, strlen(s->user)))
            sendf(f, " {%zu}\r\n", sc->pass_len);
        return;
    case 2:
        f->step = 3;
        if (send_raw(f, sc->pass ? sc->pass : "", sc->pass_len))
            send_raw(f, "\r\n", 2);
        return;
    case 20:
        f->step = 21;
        send_plain(f);
        return;
    case 30:
        f->step = 21;
        if (send_raw(f, sc->sasl_b64 ? sc->sasl_b64 : "", sc->sasl_b64 ? strlen(sc->sasl_b64) : 0))
            send_raw(f, "\r\n", 2);
        return;
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

static void judged(struct session *s, void *arg, const struct sc_outcome *o, char *msg, size_t len,
                   size_t budget)
{
    struct imap_fetcher *f = arg;
    struct imap_scan *sc = imap_sc(s);
    (void)len;
    free(msg);
    if (budget)
        sc_budget_release(budget);
    uint64_t uid = f->got_uid ? f->got_uid : f->req_uid;
    int memo = sc_memo_store(sc, f->req_mailbox, f->req_uidvalidity, uid, f->lit_len, o);
    free(o->notice);
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
    if (f->oversize) {
        struct sc_outcome o = {0};
        if (!sc_oversize(s, where, f->msg, f->msg_have, f->lit_len, &o)) {
            fail(f, "out of memory");
            return;
        }
        int memo = sc_memo_store(sc, f->req_mailbox, f->req_uidvalidity, uid, f->lit_len, &o);
        free(o.notice);
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
    if (!sc_judge(&f->judging, s, m, len, budget, where, judged, f))
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
        f->c.reading = false;
        {
            SSL *ssl = f->s->be_ctx ? tls_client_ssl(f->s->be_ctx, f->s->be) : NULL;
            if (!ssl) {
                fail(f, "cannot set up TLS");
                return;
            }
            conn_start_tls(&f->c, ssl, false);
        }
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

static void budget_granted(struct session *s)
{
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
    int rc = sc_budget_acquire(s, need, &f->bwait, budget_granted);
    if (rc < 0) {
        fail(f, "message larger than the scan memory budget");
        return false;
    }
    f->budget = need;
    if (rc == 0) {
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
    if (events & CONN_EV_CONNECT) {
        if (c->error) {
            fail(f, c->err ? c->err : "connect failed");
            return;
        }
        if (s->be->proxy_protocol) {
            unsigned char hdr[PROXY_V2_MAX];
            size_t n = proxy_v2_build(hdr, sizeof hdr, (const struct sockaddr *)&s->client_sa,
                                      (const struct sockaddr *)&s->local_sa);
            if (n == 0 || send(c->fd, hdr, n, MSG_NOSIGNAL) != (ssize_t)n) {
                fail(f, "cannot send the PROXY header");
                return;
            }
        }
        arm(f);
        if (s->be->tls == CFG_TLS_IMPLICIT) {
            SSL *ssl = s->be_ctx ? tls_client_ssl(s->be_ctx, s->be) : NULL;
            if (!ssl) {
                fail(f, "cannot set up TLS");
                return;
            }
            f->state = FT_TLS;
            conn_start_tls(c, ssl, false);
            return;
        }
        f->state = FT_GREETING;
        c->reading = true;
        conn_update(c);
        return;
    }
    if (events & CONN_EV_HANDSHAKE) {
        if (c->error) {
            fail(f, "TLS to backend failed");
            return;
        }
        c->reading = true;
        if (f->state == FT_TLS) {
            f->state = FT_GREETING;
        } else {
            send_login(f);
            kick(f);
        }
    }
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

static bool open_conn(struct imap_fetcher *f)
{
    struct session *s = f->s;
    const struct cfg_backend *be = s->be;
    int fd = socket(be->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_init(&f->c, s->worker->loop, fd, handler, s, s->cfg->limits.max_line + 4096);
    buf_init(&f->in, s->cfg->limits.relay_buffer);
    f->c.rbuf = &f->in;
    f->c.wbuf = NULL;
    imap_framer_init(&f->f, s->cfg->limits.max_line);
    f->held = 0;
    f->in_lit = false;
    f->state = FT_CONNECT;
    if (!conn_connect(&f->c, (const struct sockaddr *)&be->addr, be->addrlen)) {
        conn_close(&f->c);
        buf_free(&f->in);
        f->state = FT_DEAD;
        return false;
    }
    arm(f);
    return true;
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
        if (!open_conn(f))
            return false;
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
    sc_judge_cancel(&f->judging);
    sc_wait_cancel(&f->bwait);
    if (f->state != FT_DEAD)
        close_conn(f);
    drop_msg(f);
    ev_timer_stop(s->worker->loop, &f->timer);
    free(f->req_mailbox);
    free(f);
    sc->fetcher = NULL;
}
