/*
 * route_resolve — see route_resolve.h.
 *
 * Everything shared with the threads is under one mutex: the two lists (todo: waiting for a
 * thread; done: answered, waiting for the loop), the counts, and `detached`. A thread touches
 * the loop (ev_async_send) only under the mutex and only while not detached, so once
 * route_resolver_free() has set `detached` the loop may go away whatever the threads are doing.
 * The memory is refcounted: one reference for the owner, one per thread; the last one out
 * frees it.
 *
 * A request is in exactly one place: the todo list (QUEUED), a thread's hands (RUNNING), the
 * done list (DONE) or the loop's hands during its callback (DELIVERING). Cancelling a RUNNING
 * one only marks it: the thread frees it when getaddrinfo returns.
 */
#include "route_resolve.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum rq_state { RQ_QUEUED, RQ_RUNNING, RQ_DONE, RQ_DELIVERING };

struct route_resolve_req {
    struct route_resolver *r; /* borrowed: the resolver outlives its requests' handles */
    struct route_resolve_req *next;
    enum rq_state state;
    bool cancelled;        /* RUNNING: the thread frees it instead of answering */
    struct route_target t; /* text and host owned */
    int rc;                /* route_target_resolve()'s */
    const char *err;       /* static */
    route_resolve_fn *cb;
    void *arg;
};

struct rq_list {
    struct route_resolve_req *head, *tail;
};

struct route_resolver {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* todo gained a request, or detached */
    struct rq_list todo, done;
    unsigned pending; /* requests alive (any state), <= max_pending */
    unsigned max_pending;
    unsigned threads, idle; /* started and not exited; of those, waiting for work */
    unsigned max_threads;
    route_resolve_impl *impl; /* route_target_resolve, or a test's */
    unsigned refs;            /* the owner's (until free) + one per thread */
    bool detached;            /* the owner freed it: never touch the loop again */
    struct ev_loop *loop;     /* borrowed */
    ev_async async;
    unsigned in_cb; /* loop thread only: inside on_async's callbacks */
    bool dead;      /* loop thread only: freed during a callback */
};

static atomic_uint live;

unsigned route_resolve_live(void)
{
    return atomic_load(&live);
}

static void rq_push(struct rq_list *l, struct route_resolve_req *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
}

static struct route_resolve_req *rq_pop(struct rq_list *l)
{
    struct route_resolve_req *q = l->head;
    if (q) {
        l->head = q->next;
        if (!l->head)
            l->tail = NULL;
        q->next = NULL;
    }
    return q;
}

/* The lists hold at most max_pending requests: a walk is cheap. */
static void rq_unlink(struct rq_list *l, struct route_resolve_req *q)
{
    struct route_resolve_req *prev = NULL;
    for (struct route_resolve_req *p = l->head; p; prev = p, p = p->next) {
        if (p != q)
            continue;
        if (prev)
            prev->next = q->next;
        else
            l->head = q->next;
        if (l->tail == q)
            l->tail = prev;
        q->next = NULL;
        return;
    }
}

static void rq_free(struct route_resolve_req *q)
{
    free((char *)q->t.text);
    free((char *)q->t.host);
    free(q);
}

static void destroy(struct route_resolver *r)
{
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    atomic_fetch_sub(&live, 1);
}

/* Drop one reference (under the mutex on entry, released here). */
static void unref_unlock(struct route_resolver *r)
{
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last)
        destroy(r);
}

static void *thread_main(void *arg)
{
    struct route_resolver *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->todo.head && !r->detached) {
            r->idle++;
            pthread_cond_wait(&r->cv, &r->mu);
            r->idle--;
        }
        if (r->detached)
            break;
        struct route_resolve_req *q = rq_pop(&r->todo);
        q->state = RQ_RUNNING;
        pthread_mutex_unlock(&r->mu);
        const char *err = NULL;
        int rc = r->impl(&q->t, 0, &err);
        pthread_mutex_lock(&r->mu);
        q->rc = rc;
        q->err = err;
        if (q->cancelled || r->detached) {
            rq_free(q);
            r->pending--;
            continue;
        }
        q->state = RQ_DONE;
        rq_push(&r->done, q);
        ev_async_send(r->loop, &r->async);
    }
    r->threads--;
    unref_unlock(r);
    return NULL;
}

static void on_async(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    struct route_resolver *r = w->data;
    r->in_cb++;
    while (!r->dead) {
        pthread_mutex_lock(&r->mu);
        struct route_resolve_req *q = rq_pop(&r->done);
        if (q) {
            q->state = RQ_DELIVERING;
            r->pending--;
        }
        pthread_mutex_unlock(&r->mu);
        if (!q)
            break;
        q->cb(q->arg, q->rc == 0 ? &q->t : NULL, q->rc == 0 ? NULL : q->err);
        rq_free(q);
    }
    if (--r->in_cb == 0 && r->dead) {
        pthread_mutex_lock(&r->mu);
        unref_unlock(r);
    }
}

struct route_resolver *route_resolver_new(struct ev_loop *loop, unsigned threads,
                                          unsigned max_pending)
{
    struct route_resolver *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return NULL;
    }
    if (pthread_cond_init(&r->cv, NULL) != 0) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->impl = route_target_resolve;
    r->max_threads = threads ? threads : 1;
    r->max_pending = max_pending ? max_pending : 1;
    r->refs = 1;
    ev_async_init(&r->async, on_async);
    r->async.data = r;
    ev_async_start(loop, &r->async);
    /* The watcher alone must not keep the loop running (a worker's loop ends when its
     * sessions and timers do); a pending request is always under its caller's timer. */
    ev_unref(loop);
    atomic_fetch_add(&live, 1);
    return r;
}

void route_resolver_set_impl(struct route_resolver *r, route_resolve_impl *fn)
{
    r->impl = fn;
}

static void drop_list(struct route_resolver *r, struct rq_list *l)
{
    for (struct route_resolve_req *q; (q = rq_pop(l));) {
        rq_free(q);
        r->pending--;
    }
}

void route_resolver_free(struct route_resolver **rp)
{
    struct route_resolver *r = *rp;
    *rp = NULL;
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->detached = true;
    drop_list(r, &r->todo);
    drop_list(r, &r->done); /* RUNNING ones: the threads free them (detached) */
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    ev_ref(r->loop);
    ev_async_stop(r->loop, &r->async);
    if (r->in_cb) {
        r->dead = true; /* on_async drops the owner's reference once it has unwound */
        return;
    }
    pthread_mutex_lock(&r->mu);
    unref_unlock(r);
}

/* Under the mutex: a thread for a new request, unless an idle one will take it. */
static bool ensure_thread(struct route_resolver *r)
{
    if (r->idle > 0 || r->threads >= r->max_threads)
        return r->threads > 0;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return r->threads > 0;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    bool ok = pthread_create(&th, &attr, thread_main, r) == 0;
    pthread_attr_destroy(&attr);
    if (ok) {
        r->threads++;
        r->refs++;
    }
    return r->threads > 0;
}

struct route_resolve_req *route_resolve_start(struct route_resolver *r, const char *text,
                                              route_resolve_fn *cb, void *arg, const char **error_r)
{
    struct route_resolve_req *q = calloc(1, sizeof *q);
    if (!q || !(q->t.text = strdup(text))) {
        free(q);
        *error_r = "out of memory";
        return NULL;
    }
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->state = RQ_QUEUED;
    pthread_mutex_lock(&r->mu);
    const char *err = NULL;
    if (r->pending >= r->max_pending)
        err = "too many names being resolved (routing.resolve_max_pending)";
    else if (!ensure_thread(r))
        err = "cannot start a resolver thread";
    if (!err) {
        r->pending++;
        rq_push(&r->todo, q);
        pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (err) {
        rq_free(q);
        *error_r = err;
        return NULL;
    }
    return q;
}

void route_resolve_cancel(struct route_resolve_req **qp)
{
    struct route_resolve_req *q = *qp;
    *qp = NULL;
    if (!q)
        return;
    struct route_resolver *r = q->r;
    pthread_mutex_lock(&r->mu);
    switch (q->state) {
    case RQ_QUEUED:
        rq_unlink(&r->todo, q);
        break;
    case RQ_DONE:
        rq_unlink(&r->done, q);
        break;
    case RQ_RUNNING:
        q->cancelled = true; /* the thread frees it */
        q = NULL;
        break;
    case RQ_DELIVERING:
        q = NULL; /* its callback is running: on_async frees it */
        break;
    }
    if (q)
        r->pending--;
    pthread_mutex_unlock(&r->mu);
    if (q)
        rq_free(q);
}
