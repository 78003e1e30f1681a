/*
 * admin — /metrics, /healthz, /reload and /reload-signatures over a minimal HTTP server on the
 * main loop (see admin.h).
 */
#include "admin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin_http.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "msgscan.h"
#include "runtime.h"

#define ADMIN_REQ_MAX  4096
#define ADMIN_BODY_MAX (1024 * 1024)

/* Connections are bounded (admin.max_connections) and each has admin.idle_timeout to send its
 * request and take its answer. When every slot is taken, a new connection evicts the oldest one
 * still waiting for its request (issue 16: 32 idle connections used to lock /healthz out until
 * they timed out, and a load balancer pulled the instance): a probe always gets through. */
struct admin_client {
    ev_io io;
    ev_timer timer;
    int fd;
    ev_tstamp since; /* accepted at */
    char req[ADMIN_REQ_MAX];
    size_t len;
    char *out; /* response being written (owned) */
    size_t out_len, out_off;
    bool sigs_wait; /* POST /reload-signatures: answered when the reload ends */
};

static struct ev_loop *aloop;
static ev_io listen_io;
static int listen_fd = -1;
static struct admin_client **clients;
static unsigned nclients_max;
static double idle_timeout;
static atomic_bool healthy;
static const char *health_why = "starting";
static admin_reload_fn *reload_fn;

void admin_set_reload(admin_reload_fn *fn)
{
    reload_fn = fn;
}

void admin_set_healthy(bool ok, const char *why)
{
    health_why = why;
    atomic_store(&healthy, ok);
}

static void client_free(struct admin_client *c)
{
    ev_io_stop(aloop, &c->io);
    ev_timer_stop(aloop, &c->timer);
    close(c->fd);
    free(c->out);
    for (unsigned i = 0; i < nclients_max; i++)
        if (clients[i] == c)
            clients[i] = NULL;
    free(c);
}

static void respond(struct admin_client *c, int code, const char *ctype, const char *body,
                    size_t blen)
{
    const char *reason = code == 200   ? "OK"
                         : code == 404 ? "Not Found"
                         : code == 405 ? "Method Not Allowed"
                         : code == 409 ? "Conflict"
                         : code == 500 ? "Internal Server Error"
                         : code == 503 ? "Service Unavailable"
                                       : "Bad Request";
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      code, reason, ctype, blen);
    c->out = malloc((size_t)hl + blen);
    if (!c->out) {
        client_free(c);
        return;
    }
    memcpy(c->out, head, (size_t)hl);
    memcpy(c->out + hl, body, blen);
    c->out_len = (size_t)hl + blen;
    c->out_off = 0;
    ev_io_stop(aloop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(aloop, &c->io);
}

/* The signature reload ended (main loop): answer every request waiting for it. A request
 * evicted or timed out meanwhile is simply gone; the reload itself is not cancelled. */
static void sigs_reloaded(bool ok, const char *error, const char *engine)
{
    char body[600];
    int n =
        ok ? snprintf(body, sizeof body, "signatures reloaded: engine=%s\n", engine)
           : snprintf(body, sizeof body,
                      "signature reload failed: %s (engine=%s stays in service)\n", error, engine);
    size_t len = (size_t)n < sizeof body ? (size_t)n : sizeof body - 1;
    for (unsigned i = 0; i < nclients_max; i++) {
        struct admin_client *c = clients[i];
        if (c && c->sigs_wait) {
            c->sigs_wait = false;
            ev_timer_set(&c->timer, idle_timeout, 0.);
            ev_timer_start(aloop, &c->timer);
            respond(c, ok ? 200 : 500, "text/plain", body, len);
        }
    }
}

/* POST /reload-signatures: the engine only, concurrently with scanning (as SIGHUP reloads it),
 * without reading the configuration again. The answer waits for the result; loading the
 * official databases takes tens of seconds, longer than admin.idle_timeout, so the request's
 * timer is off meanwhile (the reload always ends, on its thread). */
static void reload_signatures(struct admin_client *c)
{
    const char *why;
    switch (msgscan_reload_signatures(sigs_reloaded)) {
    case MSGSCAN_RELOAD_OFF:
        why = "scanning is not enabled (scan.enabled)\n";
        respond(c, 409, "text/plain", why, strlen(why));
        return;
    case MSGSCAN_RELOAD_BUSY:
        why = "a signature reload is already running: try again\n";
        respond(c, 503, "text/plain", why, strlen(why));
        return;
    case MSGSCAN_RELOAD_STARTED:
        break;
    }
    c->sigs_wait = true;
    ev_timer_stop(aloop, &c->timer);
}

static void handle(struct admin_client *c)
{
    struct admin_http_req rq;
    if (admin_parse_request(c->req, c->len, &rq) != ADMIN_HTTP_OK) {
        respond(c, 400, "text/plain", "bad request\n", 12);
        return;
    }
    const char *method = rq.method, *path = rq.path;
    if (strcmp(path, "/reload-signatures") == 0) {
        if (strcmp(method, "POST") != 0)
            respond(c, 405, "text/plain", "POST only\n", 10);
        else
            reload_signatures(c);
        return;
    }
    if (strcmp(path, "/reload") == 0) {
        /* POST only: a crawler or a browser prefetch must not reload anything. */
        if (strcmp(method, "POST") != 0 || !reload_fn) {
            respond(c, 405, "text/plain", "POST only\n", 10);
            return;
        }
        char why[512], body[600];
        bool ok = reload_fn(why, sizeof why);
        int n = ok ? snprintf(body, sizeof body, "reloaded\n")
                   : snprintf(body, sizeof body, "reload failed: %s\n", why);
        respond(c, ok ? 200 : 500, "text/plain", body,
                (size_t)n < sizeof body ? (size_t)n : sizeof body - 1);
        return;
    }
    if (strcmp(method, "GET") != 0) {
        respond(c, 405, "text/plain", "GET only\n", 9);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        struct rt *rt = rt_current();
        struct buf b;
        buf_init(&b, ADMIN_BODY_MAX);
        if (rt) {
            metrics_render(rt->cfg, &b);
            rt_unref(&rt);
        }
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? buf_rptr(&b) : "",
                buf_len(&b));
        buf_free(&b);
    } else if (strcmp(path, "/healthz") == 0) {
        char body[400];
        bool ok = atomic_load(&healthy);
        struct scanner_health sh;
        int n;
        if (ok && msgscan_scanner_health(&sh) && !sh.ok) {
            /* Fail closed: a scanner that misses its canary blocks (error_action) everything:
             * the load balancer should send the traffic elsewhere. */
            ok = false;
            n = snprintf(body, sizeof body, "scanner broken: canary not detected: %.300s\n",
                         sh.why);
        } else {
            n = snprintf(body, sizeof body, "%s\n", ok ? "ok" : health_why);
        }
        respond(c, ok ? 200 : 503, "text/plain", body, (size_t)n);
    } else {
        respond(c, 404, "text/plain", "not found\n", 10);
    }
}

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct admin_client *c = w->data;
    if (revents & EV_WRITE) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0 || (c->out_off += (size_t)n) == c->out_len)
            client_free(c);
        return;
    }
    ssize_t n = recv(c->fd, c->req + c->len, sizeof c->req - 1 - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_free(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n"))
        handle(c);
    else if (c->len >= sizeof c->req - 1)
        respond(c, 400, "text/plain", "request too large\n", 18);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    client_free(t->data);
}

/* A free slot, making one when all are taken: the oldest connection still reading its request
 * goes (one being answered is about to finish); -1 only if every one is being answered. */
static int free_slot(void)
{
    int oldest = -1;
    for (unsigned i = 0; i < nclients_max; i++) {
        if (!clients[i])
            return (int)i;
        if (!clients[i]->out && (oldest < 0 || clients[i]->since < clients[oldest]->since))
            oldest = (int)i;
    }
    if (oldest >= 0) {
        log_write(LOG_DEBUG, "event=admin_evicted reason=connections_full limit=%u", nclients_max);
        client_free(clients[oldest]);
    }
    return oldest;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    /* Several per wakeup: a burst of idle connections must not keep a probe in the backlog. */
    for (int k = 0; k < 16; k++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int slot = free_slot();
        struct admin_client *c = slot >= 0 ? calloc(1, sizeof *c) : NULL;
        if (!c) {
            close(fd); /* every slot is answering a request: the scraper retries */
            continue;
        }
        clients[slot] = c;
        c->fd = fd;
        c->since = ev_now(loop);
        ev_io_init(&c->io, client_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        ev_timer_init(&c->timer, timeout_cb, idle_timeout, 0.);
        c->timer.data = c;
        ev_timer_start(loop, &c->timer);
    }
}

bool admin_start(struct ev_loop *loop, const struct config *cfg, char **error_r)
{
    *error_r = NULL;
    aloop = loop;
    if (!cfg->admin.enabled)
        return true;
    nclients_max = cfg->admin.max_connections;
    idle_timeout = (double)cfg->admin.idle_timeout_ms / 1000.0;
    clients = calloc(nclients_max, sizeof *clients);
    if (!clients) {
        *error_r = strdup("admin listener: out of memory");
        return false;
    }
    int fd = socket(cfg->admin.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)&cfg->admin.addr, cfg->admin.addrlen) < 0 ||
        listen(fd, 64) < 0) {
        if (asprintf(error_r, "admin listener %s: %s", cfg->admin.bind, strerror(errno)) < 0)
            *error_r = NULL;
        if (fd >= 0)
            close(fd);
        free(clients);
        clients = NULL;
        return false;
    }
    listen_fd = fd;
    ev_io_init(&listen_io, accept_cb, fd, EV_READ);
    ev_io_start(loop, &listen_io);
    log_write(LOG_INFO, "event=admin_listening bind=%s", cfg->admin.bind);
    return true;
}

void admin_stop(void)
{
    if (listen_fd < 0)
        return;
    ev_io_stop(aloop, &listen_io);
    close(listen_fd);
    listen_fd = -1;
    for (unsigned i = 0; i < nclients_max; i++)
        if (clients[i])
            client_free(clients[i]);
    free(clients);
    clients = NULL;
    nclients_max = 0;
}
