/*
 * worker — one thread, one libev loop, its own SO_REUSEPORT listening sockets. A session lives
 * its whole life on the worker that accepted it: nothing on the session path takes a lock.
 */
#ifndef PORTCULLIS_WORKER_H
#define PORTCULLIS_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "config.h"

struct session;
struct policy;
struct msgscan_worker;
struct route_chain;

struct worker_listener {
    ev_io io;
    int fd;
    int index; /* into cfg->listeners of the config the sockets were bound with */
    struct worker *w;
    bool nodelay; /* set on the listening socket: accepted sockets inherit it (Linux) */
};

struct worker {
    int id;
    pthread_t thread;
    struct ev_loop *loop;
    ev_async wake;         /* stop request from the main thread */
    ev_prepare reap;       /* frees closed sessions after callbacks unwind, before polling */
    unsigned reaped_at;    /* ev_iteration() when reap last ran */
    ev_timer accept_retry; /* re-enables accepting after EMFILE */
    struct worker_listener *listeners;
    size_t nlisteners;
    struct session *sessions;  /* live sessions (doubly linked) */
    struct session *graveyard; /* closed, to free in reap */
    unsigned nsessions;
    atomic_bool stop;
    struct policy *policy;       /* owned: Redis connections and local limits (sess_policy.c) */
    struct msgscan_worker *scan; /* owned (msgscan.c): pool client, verdict cache; NULL = off */
    struct route_chain *route;   /* owned (sess_lookup.c): routing lookups, NULL until used */
    atomic_bool drain; /* shutdown requested: stop accepting, end sessions at idle points */
    bool draining;     /* (worker thread) drain started */
};

/* Process-wide live connection count, for limits.max_connections. */
extern atomic_uint worker_connections;

/* Create the listening sockets for one worker (main thread, before privileges drop). */
bool worker_bind(struct worker *w, const struct config *cfg, char **error_r);
bool worker_start(struct worker *w);
/* Ask a worker to drain: close its listeners, end each session at its next idle point. */
void worker_drain(struct worker *w);
/* Ask a worker to stop (closes its sessions) and join it. */
void worker_stop(struct worker *w);
/* Start-up failed before worker_start(): what worker_bind() made (issue 16: no leak at exit). */
void worker_unbind(struct worker *w);

void worker_add_session(struct worker *w, struct session *s);
void worker_bury_session(struct worker *w, struct session *s);

#endif
