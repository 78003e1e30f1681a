/*
 * session — see session.h.
 *
 * Phases and their timers: TLS handshake (tls.handshake_timeout), pre-auth including STARTTLS
 * and the backend login (limits.preauth_timeout; the backend phase also has its own connect and
 * login deadlines), relay (the protocol's idle timeout, measured from the last client byte with
 * libev's "last activity" pattern: the timer is not touched per read, it re-arms itself).
 */
#include "session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "addrcap.h"
#include "backend.h"
#include "metrics.h"
#include "proxy_proto.h"
#include "sess_event.h"
#include "sess_lookup.h"
#include "sess_policy.h"
#include "tls.h"
#include "worker.h"

static _Atomic uint64_t next_session_id = 1;

/* One id per session, the same in every log line (sess=), in the Redis registry (what
 * `portcullis-ctl sessions` lists and `kick` takes) and at the backend (IMAP ID
 * x-session-ext-id, XCLIENT SESSION=): S-<process>-<n>. <process> is 32 random bits drawn once
 * per process, so ids stay unique across the instances and restarts that share one Redis (the
 * registry keys on them); <n> counts this process's sessions, so a log read in order still
 * shows S-…-1, S-…-2. */
static uint32_t process_tag;
static pthread_once_t process_tag_once = PTHREAD_ONCE_INIT;

static void process_tag_init(void)
{
    if (getrandom(&process_tag, sizeof process_tag, 0) != (ssize_t)sizeof process_tag) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        process_tag = (uint32_t)ts.tv_nsec ^ (uint32_t)ts.tv_sec ^ ((uint32_t)getpid() << 16);
    }
}

static void sess_id_init(struct session *s)
{
    pthread_once(&process_tag_once, process_tag_init);
    s->id = atomic_fetch_add(&next_session_id, 1);
    snprintf(s->sid, sizeof s->sid, "S-%08x-%llu", process_tag, (unsigned long long)s->id);
}

static void client_handler(struct conn *c, int events);
static void backend_handler(struct conn *c, int events);
static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

void sess_log(struct session *s, enum log_level lvl, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    char msg[LOG_LINE_MAX - 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char uq[300], client[LOG_HOSTPORT_MAX];
    log_hostport(client, sizeof client, s->client_ip, s->client_port);
    if (s->user)
        log_write(lvl, "sess=%s client=%s user=%s %s", s->sid[0] ? s->sid : "-", client,
                  log_qs(uq, sizeof uq, s->user), msg);
    else
        log_write(lvl, "sess=%s client=%s %s", s->sid[0] ? s->sid : "-", client, msg);
}

void sess_set_state(struct session *s, enum sess_state st)
{
    s->state = st;
    static const char *names[] = {"tls handshake", "pre-auth", "starttls",
                                  "backend login", "relay",    "closing"};
    s->action = names[st];
}

void sess_set_deadline(struct session *s, double secs)
{
    struct ev_loop *loop = s->worker->loop;
    ev_timer_stop(loop, &s->timer);
    s->idle_timeout = 0;
    if (secs <= 0) {
        s->deadline_at = 0;
        return;
    }
    s->deadline_at = ev_now(loop) + secs;
    ev_timer_set(&s->timer, secs, 0.);
    ev_timer_start(loop, &s->timer);
}

void sess_set_idle(struct session *s, double secs)
{
    struct ev_loop *loop = s->worker->loop;
    ev_timer_stop(loop, &s->timer);
    s->deadline_at = 0;
    s->idle_timeout = secs;
    s->last_activity = ev_now(loop);
    ev_timer_set(&s->timer, secs, 0.);
    ev_timer_start(loop, &s->timer);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct session *s = t->data;
    if (s->closing)
        return;
    if (s->idle_timeout > 0) {
        ev_tstamp left = s->last_activity + s->idle_timeout - ev_now(loop);
        if (left > 0.001) {
            ev_timer_set(t, left, 0.);
            ev_timer_start(loop, t);
            return;
        }
        sess_log(s, LOG_INFO, "event=timeout phase=idle");
        sess_end(s, "idle timeout", "Autologout; idle for too long");
        return;
    }
    switch (s->state) {
    case SESS_STARTTLS: /* no BYE: it could not be sent in the middle of a handshake */
    case SESS_TLS_HANDSHAKE:
        sess_log(s, LOG_INFO, "event=timeout phase=tls_handshake");
        sess_close(s, "tls handshake timeout");
        return;
    case SESS_CLOSING:
        sess_close(s, s->close_reason ? s->close_reason : "closing timeout");
        return;
    case SESS_BACKEND:
        s->proto->backend_event(s, SESS_EV_TIMEOUT);
        if (!s->closing)
            sess_pump(s);
        return;
    default:
        sess_log(s, LOG_INFO, "event=timeout phase=%s", s->action ? s->action : "");
        sess_end(s, "timeout", "Timeout; closing connection");
        return;
    }
}

static void peer_to_text(struct session *s, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, s->client_ip, sizeof s->client_ip);
        s->client_port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, s->client_ip, sizeof s->client_ip);
        s->client_port = ntohs(in6->sin6_port);
    } else {
        snprintf(s->client_ip, sizeof s->client_ip, "unix");
    }
}

static void sess_begin(struct session *s);

/* A dial in flight must not report into a session that ends (no-op when none). */
static void sess_dial_cancel(struct session *s)
{
    if (s->pre)
        backend_dial_cancel(&s->pre->dial);
}

struct sess_be_own *sess_be_own(struct session *s)
{
    if (!s->be_own)
        s->be_own = calloc(1, sizeof *s->be_own);
    return s->be_own;
}

static void proxy_hdr_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct session *s = io->data;
    unsigned char buf[PROXY_HDR_MAX];
    ssize_t n = recv(io->fd, buf, sizeof buf, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        ev_io_stop(loop, io);
        s->pre->proxy_hdr_pending = false;
        sess_close(s, "client disconnected");
        return;
    }
    size_t used = 0;
    struct proxy_addrs pa;
    const char *err = NULL;
    enum proxy_result r = proxy_parse(buf, (size_t)n, &used, &pa, &err);
    if (r == PROXY_MORE && (size_t)n < sizeof buf)
        return;
    ev_io_stop(loop, io);
    s->pre->proxy_hdr_pending = false;
    if (r != PROXY_DONE) {
        sess_event(s, &(struct sess_event){.kind = SEV_REFUSED,
                                           .reason = SR_BAD_PROXY_HEADER,
                                           .text = err ? err : "header too long"});
        sess_close(s, "bad PROXY header");
        return;
    }
    if (recv(io->fd, buf, used, 0) != (ssize_t)used) {
        sess_close(s, "client disconnected");
        return;
    }
    if (!pa.local) {
        char was[LOG_HOSTPORT_MAX];
        log_hostport(was, sizeof was, s->client_ip, s->client_port);
        s->pre->client_sa = pa.src;
        s->pre->local_sa = pa.dst;
        peer_to_text(s, (const struct sockaddr *)&pa.src);
        sess_log(s, LOG_DEBUG, "event=proxy_header balancer=%s", was);
    }
    sess_begin(s);
    sess_pump(s);
}

/* A connection accepted on a listener bound to one address and port has exactly that local
 * address: copy it instead of a getsockname() per connection (issue 19). Wildcard binds,
 * port 0 and transparent listeners (which accept for other destinations) must ask. */
static bool bound_address(const struct cfg_listener *l, struct sockaddr_storage *out)
{
    if (l->transparent)
        return false;
    if (l->addr.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&l->addr;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY) || in->sin_port == 0)
            return false;
    } else if (l->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&l->addr;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) || IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) ||
            in6->sin6_port == 0)
            return false;
    } else {
        return false;
    }
    memcpy(out, &l->addr, l->addrlen < sizeof *out ? l->addrlen : sizeof *out);
    return true;
}

bool sess_accept(struct worker *w, int fd, const struct cfg_listener *l, struct rt *rt,
                 const struct sockaddr *peer, socklen_t peerlen)
{
    struct session *s = calloc(1, sizeof *s);
    struct sess_pre *pre = s ? calloc(1, sizeof *pre) : NULL;
    if (!pre) {
        free(s);
        close(fd);
        return false;
    }
    s->pre = pre;
    sess_id_init(s);
    s->worker = w;
    s->rt = rt_ref(rt);
    s->cfg = rt->cfg;
    s->listener = l;
    s->proto = l->protocol == CFG_PROTO_POP3 ? &pop3_protocol : &imap_protocol;
    s->started = ev_now(w->loop);
    s->lidx = (size_t)(l - rt->cfg->listeners);
    if (s->lidx < METRICS_LISTENERS) {
        atomic_fetch_add(&metrics.listener[s->lidx].accepted, 1);
        atomic_fetch_add(&metrics.listener[s->lidx].active, 1);
    }
    memcpy(&pre->client_sa, peer,
           peerlen < sizeof pre->client_sa ? peerlen : sizeof pre->client_sa);
    if (!bound_address(l, &pre->local_sa)) {
        socklen_t ll = sizeof pre->local_sa;
        getsockname(fd, (struct sockaddr *)&pre->local_sa, &ll);
    }
    peer_to_text(s, peer);
    const struct cfg_limits *lim = &s->cfg->limits;
    buf_init(&s->up, lim->relay_buffer);
    buf_init(&s->down, lim->relay_buffer);
    conn_init(&s->client, w->loop, fd, client_handler, s, lim->max_line + 1024);
    conn_set_tls_batch(&s->client, lim->tls_write_batch);
    s->client.rbuf = &s->up;
    s->client.wbuf = &s->down;
    conn_init(&s->backend, w->loop, -1, backend_handler, s, lim->max_line * 2 + 4096);
    conn_set_tls_batch(&s->backend, lim->tls_write_batch);
    s->backend.rbuf = &s->down;
    s->backend.wbuf = NULL;
    ev_init(&s->timer, timer_cb);
    s->timer.data = s;
    worker_add_session(w, s);

    if (!s->proto->init(s)) {
        sess_close(s, "out of memory");
        return true;
    }
    if (l->proxy_protocol) {
        if (!cfg_cidr_match(s->cfg->trusted, s->cfg->ntrusted, peer)) {
            sess_event(s, &(struct sess_event){.kind = SEV_REFUSED,
                                               .reason = SR_PROXY_HEADER_FROM_UNTRUSTED,
                                               .name = l->name});
            sess_close(s, "untrusted PROXY sender");
            return true;
        }
        /* The header is read with MSG_PEEK before anything else touches the socket, so not one
         * byte of the TLS handshake or the client's first command is taken with it. */
        pre->proxy_hdr_pending = true;
        ev_io_init(&pre->pp_io, proxy_hdr_cb, fd, EV_READ);
        pre->pp_io.data = s;
        ev_io_start(w->loop, &pre->pp_io);
        sess_set_deadline(s, (double)s->cfg->tls.handshake_timeout_ms / 1000.0);
        return true;
    }
    sess_begin(s);
    return true;
}

/* The connection is ours to speak on: implicit TLS handshake or greeting. */
static void sess_begin(struct session *s)
{
    const struct cfg_listener *l = s->listener;
    const struct cfg_limits *lim = &s->cfg->limits;
    /* Counted by the real client (after a PROXY header), exempt networks aside. */
    const struct sockaddr *ca = (const struct sockaddr *)&s->pre->client_sa;
    if (!cfg_cidr_match(s->cfg->policy.exempt_nets, s->cfg->policy.nexempt, ca)) {
        if (!addrcap_acquire(ca, lim->max_connections_per_address, &s->addr_slot)) {
            sess_event(s, &(struct sess_event){.kind = SEV_REFUSED,
                                               .reason = SR_MAX_CONNECTIONS_PER_ADDRESS,
                                               .n = lim->max_connections_per_address});
            sess_close(s, "too many connections from this address");
            return;
        }
        s->addr_counted = true;
    }
    sess_log(s, LOG_INFO, "event=connect listener=%s local_tls=%s", l->name,
             l->tls == CFG_TLS_IMPLICIT   ? "implicit"
             : l->tls == CFG_TLS_STARTTLS ? "starttls"
                                          : "none");
    if (l->tls == CFG_TLS_IMPLICIT) {
        sess_set_state(s, SESS_TLS_HANDSHAKE);
        SSL *ssl = tls_server_ssl(s->rt->tls);
        if (!ssl) {
            sess_close(s, "out of memory");
            return;
        }
        sess_set_deadline(s, (double)s->cfg->tls.handshake_timeout_ms / 1000.0);
        conn_start_tls(&s->client, ssl, true);
        return;
    }
    sess_set_state(s, SESS_PREAUTH);
    sess_set_deadline(s, (double)lim->preauth_timeout_ms / 1000.0);
    s->client.reading = true;
    s->proto->greet(s);
    sess_pump(s);
}

/* Relay, closing after the backend went away: may the filters still deliver something? */
static bool sess_holding(struct session *s)
{
    return s->logged_in && s->pstate && s->proto->holding && s->proto->holding(s);
}

void sess_pump(struct session *s)
{
    if (s->closing)
        return;
    if (s->state == SESS_CLOSING && s->farewell && !sess_holding(s)) {
        /* The filters have delivered all they could: what they still hold is cut, and the
         * farewell goes after what the client got. */
        const char *f = s->farewell;
        s->farewell = NULL;
        s->proto->stop(s);
        s->proto->bye(s, f);
        if (s->closing)
            return;
    }
    if (conn_pending_out(&s->client))
        conn_flush(&s->client);
    if (s->backend.fd >= 0 && conn_pending_out(&s->backend))
        conn_flush(&s->backend);
    if (s->client.error) {
        sess_close(s, s->state == SESS_CLOSING && s->close_reason ? s->close_reason
                                                                  : "client write error");
        return;
    }
    if (s->state == SESS_CLOSING && conn_pending_out(&s->client) == 0 && !s->farewell &&
        !sess_holding(s)) {
        sess_close(s, s->close_reason);
        return;
    }
    if (s->draining && s->state != SESS_CLOSING) {
        sess_drain_check(s);
        if (s->closing || s->state == SESS_CLOSING)
            return;
    }
    conn_update(&s->client);
    if (s->backend.fd >= 0)
        conn_update(&s->backend);
}

void sess_forget_user(struct session *s)
{
    if (!s->user)
        return;
    free(s->failed_user);
    s->failed_user = s->user;
    s->user = NULL;
}

void sess_close(struct session *s, const char *reason)
{
    if (s->closing)
        return;
    s->closing = true;
    s->close_reason = reason;
    /* Scans, keep-alive timers and budget waits end now, not at free: their
     * callbacks must not find a closed session still waiting. */
    if (s->proto && s->pstate && s->proto->stop)
        s->proto->stop(s);
    sess_policy_close(s); /* cancel a policy check, unregister (issue 5) */
    if (s->pre && s->pre->proxy_hdr_pending) {
        ev_io_stop(s->worker->loop, &s->pre->pp_io);
        s->pre->proxy_hdr_pending = false;
    }
    if (s->be_counted) {
        atomic_fetch_sub(&s->be_state->active, 1);
        s->be_counted = false;
    }
    if (s->lidx < METRICS_LISTENERS)
        atomic_fetch_sub(&metrics.listener[s->lidx].active, 1);
    if (s->addr_counted) {
        addrcap_release(s->addr_slot);
        s->addr_counted = false;
    }
    int mp = s->listener->protocol == CFG_PROTO_POP3;
    double dur = ev_now(s->worker->loop) - s->started;
    atomic_fetch_add(&metrics.sessions_closed[mp], 1);
    metrics_observe_session(s->worker->id, s->listener->protocol, dur);
    if (s->logged_in) {
        atomic_fetch_add(&metrics.bytes_to_client[mp], s->client.bytes_out);
        atomic_fetch_add(&metrics.bytes_to_backend[mp], s->backend.bytes_out);
    }
    struct ev_loop *loop = s->worker->loop;
    ev_timer_stop(loop, &s->timer);
    if (!s->user && s->failed_user) { /* the close line of a session whose login failed */
        s->user = s->failed_user;
        s->failed_user = NULL;
    }
    sess_log(s, LOG_INFO,
             "event=close reason=%s duration=%.3f bytes_in=%llu bytes_out=%llu "
             "backend=%s backend_bytes_in=%llu backend_bytes_out=%llu scans=%u blocked=%u",
             LOG_QS(reason ? reason : "?"), dur, (unsigned long long)s->client.bytes_in,
             (unsigned long long)s->client.bytes_out, s->be ? s->be->name : "-",
             (unsigned long long)s->backend.bytes_in, (unsigned long long)s->backend.bytes_out,
             s->scans, s->blocked);
    conn_close(&s->client);
    sess_dial_cancel(s);
    conn_close(&s->backend);
    sess_lookup_close(s); /* after the dial: it may hold a dynamic backend (issue 17) */
    buf_free(&s->up);
    buf_free(&s->down);
    free(s->user);
    s->user = NULL;
    free(s->failed_user);
    s->failed_user = NULL;
    rt_unref(&s->rt);
    s->cfg = NULL;
    worker_bury_session(s->worker, s);
}

void sess_drain_check(struct session *s)
{
    if (s->closing || !s->draining)
        return;
    switch (s->state) {
    case SESS_TLS_HANDSHAKE:
        sess_close(s, "shutdown");
        return;
    case SESS_PREAUTH:
    case SESS_STARTTLS:
        sess_end(s, "shutdown", "Server shutting down; please reconnect.");
        return;
    case SESS_BACKEND:
    case SESS_CLOSING:
        return; /* a login in progress finishes first; a closing session is on its way */
    case SESS_RELAY:
        if (s->proto->idle && s->proto->idle(s) && conn_pending_out(&s->client) == 0)
            sess_end(s, "shutdown", "Server shutting down; please reconnect.");
        return;
    }
}

void sess_drain(struct session *s)
{
    s->draining = true;
    sess_drain_check(s);
}

void sess_free(struct session *s)
{
    /* Memory only (proto->stop ran in sess_close). Here, not in sess_close(): the protocol
     * code that closed the session may still be running on its state (e.g. wiping its parser
     * after a command that closed). */
    if (s->proto && s->pstate)
        s->proto->destroy(s);
    sess_lookup_free(s);
    free(s->pre);
    free(s->be_own);
    free(s);
}

void sess_end(struct session *s, const char *reason, const char *farewell)
{
    if (s->closing)
        return;
    /* Nothing more comes through the filters: what they hold is dropped; what they released
     * (it ends at a response boundary, or the farewell is not sent) still goes out. */
    if (s->pstate)
        s->proto->stop(s);
    s->client.reading = false;
    sess_dial_cancel(s); /* a dial in flight must not report into a closing session */
    if (s->backend.fd >= 0) {
        conn_close(&s->backend);
        s->backend.rbuf = &s->down;
    }
    buf_drop_held(&s->down);
    sess_set_state(s, SESS_CLOSING);
    s->close_reason = reason;
    s->farewell = NULL;
    if (farewell) {
        s->proto->bye(s, farewell);
        if (s->closing)
            return;
    }
    sess_set_deadline(s, (double)s->cfg->limits.closing_timeout_ms / 1000.0);
    sess_pump(s);
}

void sess_close_after_flush(struct session *s, const char *reason)
{
    sess_end(s, reason, NULL);
}

void sess_backend_lost(struct session *s, const char *reason, const char *farewell)
{
    if (s->closing || s->state == SESS_CLOSING)
        return;
    sess_set_state(s, SESS_CLOSING);
    s->close_reason = reason;
    s->farewell = farewell;
    s->client.reading = false;
    sess_dial_cancel(s);
    conn_close(&s->backend);
    s->backend.rbuf = &s->down;
    sess_set_deadline(s, (double)s->cfg->limits.backend_lost_timeout_ms / 1000.0);
    sess_pump(s);
}

void sess_client_start_tls(struct session *s)
{
    SSL *ssl = tls_server_ssl(s->rt->tls);
    if (!ssl) {
        sess_close(s, "out of memory");
        return;
    }
    sess_set_state(s, SESS_STARTTLS);
    /* The same handshake deadline as on implicit-TLS ports; pre-auth restarts after it. */
    sess_set_deadline(s, (double)s->cfg->tls.handshake_timeout_ms / 1000.0);
    conn_start_tls(&s->client, ssl, true);
}

/* ---- backend ---- */

void sess_backend_drop(struct session *s)
{
    sess_dial_cancel(s);
    conn_close(&s->backend);
    s->backend.rbuf = &s->down;
    buf_clear(&s->down);
    buf_release_if_empty(&s->down);
}

void sess_start_relay(struct session *s)
{
    sess_set_state(s, SESS_RELAY);
    s->logged_in = true;
    if (s->be_state && !s->be_counted) {
        atomic_fetch_add(&s->be_state->active, 1);
        s->be_counted = true;
    }
    s->client.wbuf = &s->down;
    s->backend.wbuf = &s->up;
    s->client.reading = true;
    s->backend.reading = true;
    /* The login is over: the addresses, the dialer (idle once it reported: its done callback
     * is the last thing it runs, and nothing dials after the login) and the PROXY watcher
     * (stopped before the handshake) are not needed again. */
    if (s->pre) {
        sess_dial_cancel(s);
        free(s->pre);
        s->pre = NULL;
    }
    sess_policy_relay(s);
    double idle =
        (double)(s->listener->protocol == CFG_PROTO_POP3 ? s->cfg->limits.pop3_idle_timeout_ms
                                                         : s->cfg->limits.imap_idle_timeout_ms) /
        1000.0;
    sess_set_idle(s, idle);
    /* Pipelined client bytes that arrived during login, then whatever the backend sent. */
    s->proto->relay_up(s);
    if (!s->closing)
        s->proto->relay_down(s);
    sess_pump(s);
}

/* ---- I/O handlers ---- */

static void client_handler(struct conn *c, int events)
{
    struct session *s = c->owner;
    if (s->closing)
        return;
    if (events & CONN_EV_HANDSHAKE) {
        if (c->error) {
            char e[160];
            sess_log(s, LOG_INFO, "event=tls_failed error=%s", log_qs(e, sizeof e, c->err));
            if (s->lidx < METRICS_LISTENERS)
                atomic_fetch_add(&metrics.listener[s->lidx].tls_failures, 1);
            sess_close(s, "tls handshake failed");
            return;
        }
        s->client_tls = true;
        char d[96];
        if (log_enabled(LOG_DEBUG)) /* not formatted for nothing at every handshake */
            sess_log(s, LOG_DEBUG, "event=tls_established tls=%s",
                     tls_describe(c->ssl, d, sizeof d));
        c->reading = true;
        if (s->state == SESS_TLS_HANDSHAKE) {
            sess_set_state(s, SESS_PREAUTH);
            sess_set_deadline(s, (double)s->cfg->limits.preauth_timeout_ms / 1000.0);
            s->proto->greet(s);
        } else {
            sess_set_state(s, SESS_PREAUTH);
            sess_set_deadline(s, (double)s->cfg->limits.preauth_timeout_ms / 1000.0);
            s->proto->starttls_done(s);
        }
        sess_pump(s);
        return;
    }
    if (events & CONN_EV_READ)
        s->last_activity = ev_now(c->loop);
    switch (s->state) {
    case SESS_PREAUTH:
        if (events & CONN_EV_READ)
            s->proto->client_input(s);
        if (!s->closing && (c->eof || c->error) && buf_empty(&s->up)) {
            sess_close(s, c->error ? "client error" : "client disconnected");
            return;
        }
        break;
    case SESS_RELAY:
        if (events & CONN_EV_READ) {
            s->proto->relay_up(s);
            if (s->closing)
                return;
        }
        if (events & (CONN_EV_WRITE | CONN_EV_DRAINED)) {
            s->proto->relay_down(s); /* output went out: a paused down filter goes on */
            if (s->closing)
                return;
        }
        if (c->eof || c->error) {
            sess_close(s, c->error ? "client error" : "client disconnected");
            return;
        }
        break;
    case SESS_STARTTLS:
        /* The STARTTLS answer is out: start the handshake on the same socket. */
        if (!c->ssl && conn_pending_out(c) == 0)
            sess_client_start_tls(s);
        break;
    case SESS_TLS_HANDSHAKE:
        break;
    case SESS_BACKEND:
        /* The client is paused while we log in; only a hang-up matters now. */
        if (c->eof || c->error) {
            sess_close(s, "client disconnected during login");
            return;
        }
        break;
    case SESS_CLOSING:
        /* The backend is gone, but the down filter still has something for the client. */
        if ((events & (CONN_EV_WRITE | CONN_EV_DRAINED)) && sess_holding(s)) {
            s->proto->relay_down(s);
            if (s->closing)
                return;
        }
        if (c->error || (c->eof && conn_pending_out(c) == 0)) {
            sess_close(s, s->close_reason ? s->close_reason : "client disconnected");
            return;
        }
        break;
    }
    if (!s->closing)
        sess_pump(s);
}

static void backend_handler(struct conn *c, int events)
{
    struct session *s = c->owner;
    if (s->closing)
        return;
    if (s->state == SESS_BACKEND) {
        s->proto->backend_event(s, events);
        if (!s->closing)
            sess_pump(s);
        return;
    }
    if (s->state != SESS_RELAY)
        return;
    if (events & CONN_EV_READ) {
        s->proto->relay_down(s);
        if (s->closing)
            return;
    }
    if (events & (CONN_EV_WRITE | CONN_EV_DRAINED)) {
        s->proto->relay_up(s);
        if (s->closing)
            return;
    }
    if (c->eof || c->error) {
        /* Deliver what the backend said (its BYE and tagged OK on LOGOUT) before closing. */
        if (c->error) {
            char e[160];
            sess_log(s, LOG_WARN, "event=backend_error backend=%s error=%s", s->be->name,
                     log_qs(e, sizeof e, c->err));
        }
        s->proto->relay_down(s);
        if (s->closing || s->state != SESS_RELAY)
            return;
        /* An unexpected end gets a farewell; after LOGOUT (the protocol set the reason) none. */
        const char *reason = c->error          ? "backend error"
                             : s->close_reason ? s->close_reason
                                               : "backend closed";
        sess_backend_lost(s, reason, s->close_reason ? NULL : "Backend connection lost.");
        return;
    }
    sess_pump(s);
}
