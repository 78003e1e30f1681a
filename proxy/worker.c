/*
 * worker — see worker.h.
 *
 * Accepting: each worker has its own SO_REUSEPORT socket per listener, so the kernel spreads
 * connections across workers with no shared accept lock. On EMFILE/ENFILE the worker stops
 * accepting for a short while instead of spinning on a readable listener it cannot serve.
 */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "msgscan.h"
#include "scan_rcache.h"
#include "runtime.h"
#include "session.h"
#include "sess_event.h"
#include "route_rcache.h"
#include "sess_lookup.h"
#include "sess_policy.h"
#include "tls.h"

atomic_uint worker_connections;

#define ACCEPT_BATCH 64

static void set_listeners(struct worker *w, bool on)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd < 0)
            continue; /* closed by a drain */
        if (on)
            ev_io_start(w->loop, &w->listeners[i].io);
        else
            ev_io_stop(w->loop, &w->listeners[i].io);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    struct worker_listener *wl = (struct worker_listener *)io;
    struct worker *w = wl->w;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage peer;
        peer.ss_family = AF_UNSPEC; /* accept4 fills it; the analyzer cannot tell */
        socklen_t plen = sizeof peer;
        int fd = accept4(wl->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_write(LOG_ERROR, "event=accept_paused worker=%d error=%s", w->id,
                          LOG_QS(strerror(errno)));
                set_listeners(w, false);
                ev_timer_set(&w->accept_retry, 0.1, 0.);
                ev_timer_start(w->loop, &w->accept_retry);
            }
            return;
        }
        struct rt *rt = rt_current();
        const struct config *cfg = rt->cfg;
        const struct cfg_listener *l =
            wl->index < (int)cfg->nlisteners ? &cfg->listeners[wl->index] : NULL;
        unsigned n = atomic_fetch_add(&worker_connections, 1) + 1;
        if (!l || n > cfg->limits.max_connections) {
            atomic_fetch_sub(&worker_connections, 1);
            char ip[INET6_ADDRSTRLEN] = "?";
            if (peer.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, ip, sizeof ip);
            else if (peer.ss_family == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, ip, sizeof ip);
            /* No session yet: the event is counted and logged without the session prefix. */
            struct sess_event ev = {.kind = SEV_REFUSED,
                                    .reason = SR_MAX_CONNECTIONS,
                                    .name = ip,
                                    .n = cfg->limits.max_connections};
            char msg[256];
            sess_event_count(&ev, l ? (int)l->protocol : CFG_PROTO_IMAP);
            log_write(sess_event_level(&ev), "%s", sess_event_format(&ev, msg, sizeof msg));
            close(fd);
            rt_unref(&rt);
            continue;
        }
        if (!wl->nodelay) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        if (!sess_accept(w, fd, l, rt, (struct sockaddr *)&peer, plen))
            atomic_fetch_sub(&worker_connections, 1);
        rt_unref(&rt);
    }
}

static void accept_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = t->data;
    set_listeners(w, true);
}

static void reap_cb(struct ev_loop *loop, ev_prepare *c, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = c->data;
    w->reaped_at = ev_iteration(loop);
    while (w->graveyard) {
        struct session *s = w->graveyard;
        w->graveyard = s->next;
        sess_free(s);
    }
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    struct worker *w = a->data;
    if (atomic_load(&w->drain) && !atomic_load(&w->stop)) {
        if (!w->draining) {
            w->draining = true;
            /* Stop accepting: close the sockets, so the kernel refuses (or, behind a
             * balancer, the other instances take) new connections. */
            set_listeners(w, false);
            for (size_t i = 0; i < w->nlisteners; i++) {
                close(w->listeners[i].fd);
                w->listeners[i].fd = -1;
            }
            for (struct session *s = w->sessions, *next; s; s = next) {
                next = s->next;
                sess_drain(s);
            }
        }
        return;
    }
    if (!atomic_load(&w->stop))
        return;
    set_listeners(w, false);
    while (w->sessions)
        sess_close(w->sessions, "shutdown");
    ev_break(loop, EVBREAK_ALL);
}

void worker_drain(struct worker *w)
{
    atomic_store(&w->drain, true);
    ev_async_send(w->loop, &w->wake);
}

void worker_add_session(struct worker *w, struct session *s)
{
    s->prev = NULL;
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->nsessions++;
}

void worker_bury_session(struct worker *w, struct session *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    w->nsessions--;
    s->prev = NULL;
    s->next = w->graveyard;
    w->graveyard = s;
    atomic_fetch_sub(&worker_connections, 1);
    /* Reaped by w->reap before the loop next waits, not whenever the next event happens to
     * wake an idle loop: the protocol's destroy gives back what the session held for others
     * (scan budget and queue slots, policy handles). An ev_prepare needs no wake-up of its own
     * (the ev_check this was cost one more epoll_wait per session, issue 19) — unless this runs
     * from another prepare watcher after reap already ran in this round. */
    if (w->reaped_at == ev_iteration(w->loop))
        ev_async_send(w->loop, &w->wake);
}

static int bind_one(const struct cfg_listener *l, char **error_r)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    /* TPROXY delivers connections for foreign addresses only to IP_TRANSPARENT sockets; REDIRECT
     * needs nothing, so a failure (no CAP_NET_ADMIN) is not fatal here. */
    if (l->transparent &&
        setsockopt(fd, l->addr.ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP,
                   l->addr.ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one,
                   sizeof one) < 0)
        log_write(LOG_INFO,
                  "event=listener_note name=%s note=\"IP_TRANSPARENT unavailable "
                  "(%s): REDIRECT works, TPROXY does not\"",
                  l->name, strerror(errno));
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0)
        goto fail;
    if (listen(fd, 1024) < 0)
        goto fail;
    return fd;
fail:
    if (asprintf(error_r, "listener %s (%s): %s", l->name, l->bind, strerror(errno)) < 0)
        *error_r = NULL;
    if (fd >= 0)
        close(fd);
    return -1;
}

/* SO_REUSEPORT lets any process of the same user join a listening port and take a share of its
 * connections: a second instance started by mistake (or anything else on the port) would
 * silently split the traffic. Before the first worker binds, a plain socket (SO_REUSEADDR only:
 * TIME_WAIT leftovers are fine, a live listener is not) must be able to bind the address. */
static bool port_unused(const struct cfg_listener *l, char **error_r)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return true; /* the real bind reports it */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    bool ok = bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) == 0 || errno != EADDRINUSE;
    close(fd);
    if (!ok && asprintf(error_r,
                        "listener %s (%s): address already in use by another socket (another "
                        "instance?)",
                        l->name, l->bind) < 0)
        *error_r = NULL;
    return ok;
}

bool worker_bind(struct worker *w, const struct config *cfg, char **error_r)
{
    *error_r = NULL;
    w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!w->loop) {
        *error_r = strdup("ev_loop_new failed");
        return false;
    }
    w->listeners = calloc(cfg->nlisteners, sizeof *w->listeners);
    if (!w->listeners)
        return false;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        if (w->id == 0 && !port_unused(&cfg->listeners[i], error_r))
            return false;
        int fd = bind_one(&cfg->listeners[i], error_r);
        if (fd < 0)
            return false;
        struct worker_listener *wl = &w->listeners[i];
        wl->fd = fd;
        /* Linux copies TCP_NODELAY from the listening socket to every socket accept() returns:
         * one setsockopt per listener instead of one per connection (issue 19). */
        int one = 1;
        wl->nodelay = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
        wl->index = (int)i;
        wl->w = w;
        ev_io_init(&wl->io, accept_cb, fd, EV_READ);
        w->nlisteners++;
    }
    ev_async_init(&w->wake, wake_cb);
    w->wake.data = w;
    ev_prepare_init(&w->reap, reap_cb);
    w->reap.data = w;
    ev_init(&w->accept_retry, accept_retry_cb);
    w->accept_retry.data = w;
    return true;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    ev_async_start(w->loop, &w->wake);
    ev_prepare_start(w->loop, &w->reap);
    sess_policy_worker_start(w);
    if (!msgscan_worker_start(w))
        log_write(LOG_ERROR, "event=scan_worker_failed worker=%d note=\"scanning off here\"",
                  w->id);
    scan_rcache_attach(w); /* verdicts shared through Redis, when both are configured */
    set_listeners(w, true);
    ev_run(w->loop, 0);
    /* Free what the last iteration closed. */
    reap_cb(w->loop, &w->reap, 0);
    msgscan_worker_stop(w); /* after the sessions: their scan requests are cancelled */
    sess_policy_worker_stop(w);
    sess_lookup_worker_stop(w);
    tls_thread_done(); /* the sessions are gone: their SSL objects are on its free list */
    return NULL;
}

bool worker_start(struct worker *w)
{
    /* Before the thread runs: /metrics may be scraped as soon as the listeners are up. */
    route_rcache_start();
    return pthread_create(&w->thread, NULL, worker_main, w) == 0;
}

void worker_unbind(struct worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
    free(w->listeners);
    w->listeners = NULL;
    w->nlisteners = 0;
    if (w->loop)
        ev_loop_destroy(w->loop);
    w->loop = NULL;
}

void worker_stop(struct worker *w)
{
    atomic_store(&w->stop, true);
    ev_async_send(w->loop, &w->wake);
    pthread_join(w->thread, NULL);
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
    free(w->listeners);
    ev_loop_destroy(w->loop);
}
