/*
 * backend — rendezvous selection, the process-wide backend health table and the dialer (see
 * backend.h).
 */
#include "backend.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hash64.h"
#include "log.h"
#include "proxy_proto.h"
#include "tls.h"
#include "words.h"

static struct backend_state states[BACKEND_MAX];
static size_t nstates;
static pthread_mutex_t states_lock = PTHREAD_MUTEX_INITIALIZER;

struct backend_state *backend_state_get(const char *name)
{
    struct backend_state *found = NULL;
    pthread_mutex_lock(&states_lock);
    for (size_t i = 0; i < nstates && !found; i++)
        if (strcmp(states[i].name, name) == 0)
            found = &states[i];
    if (!found && nstates < BACKEND_MAX) {
        found = &states[nstates++];
        snprintf(found->name, sizeof found->name, "%s", name);
        atomic_store(&found->up, true);
    }
    pthread_mutex_unlock(&states_lock);
    return found;
}

/* 64-bit FNV-1a over user, a 0 separator and the backend name, finished with the splitmix64
 * mixer: FNV alone clusters for inputs that differ only in their last bytes (user1, user2 …). */
static uint64_t hash64(const char *user, const char *name)
{
    uint64_t h = FNV64_OFFSET;
    for (const unsigned char *p = (const unsigned char *)user; *p; p++)
        h = fnv64_byte(h, *p);
    h = fnv64_byte(h, 0);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = fnv64_byte(h, *p);
    return mix64(h);
}

double backend_score(const char *user, const char *name, unsigned weight)
{
    /* u in (0,1): 53 random bits, offset by half a step so that log(u) is finite. */
    double u = ((double)(hash64(user ? user : "", name) >> 11) + 0.5) / 9007199254740992.0;
    return -(double)(weight ? weight : 1) / log(u);
}

size_t backend_candidates(const struct config *cfg, struct backend_state *const *st,
                          enum cfg_proto proto, const char *user, size_t *out, size_t max)
{
    double score[BACKEND_MAX];
    size_t n = 0;
    if (max > BACKEND_MAX)
        max = BACKEND_MAX;
    for (int pass = 0; pass < 2 && n == 0; pass++) {
        for (size_t i = 0; i < cfg->nbackends && i < BACKEND_MAX; i++) {
            const struct cfg_backend *b = &cfg->backends[i];
            if (b->protocol != proto || b->drain ||
                (st && st[i] && atomic_load(&st[i]->admin_drain)))
                continue;
            bool up = !st || !st[i] || atomic_load(&st[i]->up);
            if (pass == 0 && !up)
                continue;
            double sc = backend_score(user, b->server ? b->server : b->name, b->weight);
            /* insertion into the ranked list */
            size_t j = n < max ? n : max;
            while (j > 0 && score[j - 1] < sc) {
                if (j < max) {
                    score[j] = score[j - 1];
                    out[j] = out[j - 1];
                }
                j--;
            }
            if (j < max) {
                score[j] = sc;
                out[j] = i;
                if (n < max)
                    n++;
            }
        }
    }
    return n;
}

void backend_note_connect(struct backend_state *st, bool ok, unsigned fall)
{
    if (!st)
        return;
    if (ok) {
        atomic_store(&st->fails, 0);
        return;
    }
    atomic_fetch_add(&st->connect_failures, 1);
    unsigned f = atomic_fetch_add(&st->fails, 1) + 1;
    if (f >= (fall ? fall : 1) && atomic_exchange(&st->up, false))
        log_write(LOG_WARN, "event=backend_down backend=%s reason=connect_failures count=%u",
                  st->name, f);
}

void backend_set_admin_drained(const char **names, size_t n)
{
    pthread_mutex_lock(&states_lock);
    for (size_t i = 0; i < nstates; i++) {
        bool d = false;
        for (size_t k = 0; k < n && !d; k++)
            d = strcmp(states[i].name, names[k]) == 0;
        if (atomic_exchange(&states[i].admin_drain, d) != d)
            log_write(LOG_INFO, "event=backend_%s backend=%s by=portcullis-ctl",
                      d ? "drained" : "undrained", states[i].name);
    }
    pthread_mutex_unlock(&states_lock);
}

/* ---- the dialer ---- */

static void dial_logf(struct backend_dial *d, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void dial_logf(struct backend_dial *d, enum log_level lvl, const char *fmt, ...)
{
    if (!d->log || !log_enabled(lvl))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    d->log(d, lvl, msg);
}

static void arm(struct backend_dial *d, double secs)
{
    ev_timer_stop(d->loop, &d->timer);
    ev_timer_set(&d->timer, secs > 0 ? secs : 0., 0.);
    ev_timer_start(d->loop, &d->timer);
}

/* Put the caller's handler back on the conn and stop our timer. */
static void give_back(struct backend_dial *d)
{
    ev_timer_stop(d->loop, &d->timer);
    d->conn->handler = d->handler;
    d->conn->owner = d->owner;
    d->active = false;
}

static void finish(struct backend_dial *d, enum backend_dial_result r, const char *err)
{
    d->result = r;
    d->err = err;
    give_back(d);
    if (r != BACKEND_DIAL_OK)
        conn_close(d->conn);
    d->done(d); /* last: it may start the next dial on this struct */
}

/* A failure found inside start/starttls: reported on the next loop turn, never before the
 * caller has returned (the libev "finishing before returning" trap). */
static void fail_later(struct backend_dial *d, enum backend_dial_result r, const char *err)
{
    d->result = r;
    d->err = err;
    conn_close(d->conn);
    arm(d, 0.);
}

static void connect_failed(struct backend_dial *d, const char *err)
{
    char q[160];
    dial_logf(d, LOG_WARN, "event=backend_connect_failed backend=%s error=%s", d->be->name,
              log_qs(q, sizeof q, err));
    backend_note_connect(d->state, false, d->fall);
    finish(d, BACKEND_DIAL_CONNECT, err);
}

static void tls_failed(struct backend_dial *d, const char *err)
{
    struct conn *c = d->conn;
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    char q[200];
    /* verify="…" quoted: the text has spaces */
    dial_logf(d, LOG_WARN, "event=backend_tls_failed backend=%s error=%s verify=%s", d->be->name,
              log_qs(q, sizeof q, err),
              LOG_QS(vr == X509_V_OK ? "ok" : X509_verify_cert_error_string(vr)));
    finish(d, BACKEND_DIAL_TLS, err);
}

static void start_tls(struct backend_dial *d)
{
    struct conn *c = d->conn;
    SSL *ssl = d->ctx ? tls_client_ssl(d->ctx, d->be) : NULL;
    if (!ssl) {
        dial_logf(d, LOG_ERROR, "event=backend_error backend=%s error=\"cannot set up TLS\"",
                  d->be->name);
        fail_later(d, BACKEND_DIAL_LOCAL, "cannot set up TLS to backend");
        return;
    }
    c->reading = false;
    arm(d, d->tls_timeout);
    conn_start_tls(c, ssl, false);
}

static void dial_conn_cb(struct conn *c, int events)
{
    struct backend_dial *d = c->owner;
    if (!d->active)
        return;
    if (events & CONN_EV_CONNECT) {
        if (c->error) {
            connect_failed(d, c->err ? c->err : "connect failed");
            return;
        }
        d->connected_at = ev_now(d->loop);
        if (d->be->proxy_protocol && !backend_send_proxy_v2(c->fd, d->client_sa, d->local_sa)) {
            connect_failed(d, "cannot send the PROXY header");
            return;
        }
        backend_note_connect(d->state, true, d->fall);
        if (d->be->tls == CFG_TLS_IMPLICIT) {
            start_tls(d);
            return;
        }
        finish(d, BACKEND_DIAL_OK, NULL);
        return;
    }
    if (events & CONN_EV_HANDSHAKE) {
        if (c->error) {
            tls_failed(d, c->err ? c->err : "TLS handshake failed");
            return;
        }
        finish(d, BACKEND_DIAL_OK, NULL);
    }
}

static void dial_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct backend_dial *d = t->data;
    if (!d->active)
        return;
    if (d->conn->fd < 0) { /* fail_later() */
        finish(d, d->result, d->err);
        return;
    }
    if (d->conn->connecting)
        connect_failed(d, "timeout");
    else
        tls_failed(d, "handshake timeout");
}

void backend_dial_init(struct backend_dial *d, struct ev_loop *loop, struct conn *c,
                       backend_dial_done_fn *done, backend_dial_log_fn *log, void *arg)
{
    memset(d, 0, sizeof *d);
    d->loop = loop;
    d->conn = c;
    d->done = done;
    d->log = log;
    d->arg = arg;
    ev_init(&d->timer, dial_timer_cb);
    d->timer.data = d;
}

void backend_dial_cancel(struct backend_dial *d)
{
    if (d->active)
        give_back(d);
}

/* IP_TRANSPARENT + bind to the client's address, port 0: the kernel picks a free port (the
 * client's own may be in use toward the same backend). The return traffic must be routed back
 * through the proxy (docs/deployment-transparent.md). */
socklen_t backend_addr_any_port(struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)a)->sin6_port = 0;
        return sizeof(struct sockaddr_in6);
    }
    ((struct sockaddr_in *)a)->sin_port = 0;
    return sizeof(struct sockaddr_in);
}

static bool bind_client(struct backend_dial *d, int fd)
{
    const struct sockaddr_storage *ca = d->client_sa;
    int one = 1;
    int level = ca->ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP;
    int opt = ca->ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT;
    if (setsockopt(fd, level, opt, &one, sizeof one) < 0) {
        dial_logf(d, LOG_ERROR,
                  "event=backend_error backend=%s error=\"IP_TRANSPARENT: %s (needs "
                  "CAP_NET_ADMIN)\"",
                  d->be->name, strerror(errno));
        return false;
    }
    struct sockaddr_storage src = *ca;
    socklen_t len = backend_addr_any_port(&src);
    if (bind(fd, (struct sockaddr *)&src, len) < 0) {
        dial_logf(d, LOG_ERROR,
                  "event=backend_error backend=%s error=\"bind to client address: %s\"",
                  d->be->name, strerror(errno));
        return false;
    }
    return true;
}

void backend_dial_start(struct backend_dial *d)
{
    struct conn *c = d->conn;
    const struct cfg_backend *be = d->be;
    backend_dial_cancel(d);
    /* Reopen the conn in place, keeping what the caller put on it. */
    d->handler = c->handler;
    d->owner = c->owner;
    struct buf *rbuf = c->rbuf, *wbuf = c->wbuf;
    size_t ctl_cap = c->ctl.cap, tls_batch = c->tls_batch;
    conn_close(c);
    int fd = socket(be->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = errno;
    conn_init(c, d->loop, fd, dial_conn_cb, d, ctl_cap);
    conn_set_tls_batch(c, tls_batch);
    c->rbuf = rbuf;
    c->wbuf = wbuf;
    d->active = true;
    d->starttls = false;
    d->result = BACKEND_DIAL_OK;
    d->err = NULL;
    d->connected_at = 0;
    if (fd < 0) {
        dial_logf(d, LOG_ERROR, "event=backend_error backend=%s error=%s", be->name,
                  LOG_QS(strerror(err)));
        fail_later(d, BACKEND_DIAL_LOCAL, "cannot open a socket");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (d->bind_client && !bind_client(d, fd)) {
        fail_later(d, BACKEND_DIAL_LOCAL, "cannot bind to the client's address");
        return;
    }
    if (!conn_connect(c, (const struct sockaddr *)&be->addr, be->addrlen)) {
        const char *e = c->err ? c->err : "connect failed";
        char q[160];
        dial_logf(d, LOG_WARN, "event=backend_connect_failed backend=%s error=%s", be->name,
                  log_qs(q, sizeof q, e));
        backend_note_connect(d->state, false, d->fall);
        fail_later(d, BACKEND_DIAL_CONNECT, e);
        return;
    }
    arm(d, d->connect_timeout);
}

void backend_dial_starttls(struct backend_dial *d)
{
    struct conn *c = d->conn;
    backend_dial_cancel(d);
    d->handler = c->handler;
    d->owner = c->owner;
    c->handler = dial_conn_cb;
    c->owner = d;
    d->active = true;
    d->starttls = true;
    d->result = BACKEND_DIAL_OK;
    d->err = NULL;
    if (c->fd < 0) {
        fail_later(d, BACKEND_DIAL_LOCAL, "not connected");
        return;
    }
    start_tls(d);
}

void backend_dial_fail(struct backend_dial *d, enum backend_dial_result r, const char *err)
{
    backend_dial_cancel(d);
    d->handler = d->conn->handler;
    d->owner = d->conn->owner;
    d->active = true;
    d->starttls = false;
    fail_later(d, r, err);
}

const char *backend_dial_why(const struct backend_dial *d)
{
    switch (d->result) {
    case BACKEND_DIAL_OK:
        return NULL;
    case BACKEND_DIAL_CONNECT:
        return "cannot connect to backend";
    case BACKEND_DIAL_TLS:
        return "TLS to backend failed";
    case BACKEND_DIAL_LOCAL:
    case BACKEND_DIAL_REFUSED:
        break;
    }
    return d->err ? d->err : "cannot set up the backend connection";
}

bool backend_send_proxy_v2(int fd, const struct sockaddr_storage *client_sa,
                           const struct sockaddr_storage *local_sa)
{
    unsigned char hdr[PROXY_V2_MAX];
    size_t n = proxy_v2_build(hdr, sizeof hdr, (const struct sockaddr *)client_sa,
                              (const struct sockaddr *)local_sa);
    if (n == 0)
        return false;
    return send(fd, hdr, n, MSG_NOSIGNAL) == (ssize_t)n;
}

bool backend_cap_has(const char *list, size_t len, const char *want)
{
    size_t wl = strlen(want);
    struct words it = words_of(list, len);
    const char *w;
    size_t n;
    while (words_next(&it, &w, &n))
        if (n == wl && strncasecmp(w, want, wl) == 0)
            return true;
    return false;
}
