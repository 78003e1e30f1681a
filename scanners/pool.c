/*
 * pool — scan threads, the bounded job queue, per-loop done lists and the byte budget.
 *
 * One mutex (`mu`) guards every list and counter here: the queue, each client's done and
 * granted lists, the waiter lists, the budget. Work itself runs outside it. Critical sections
 * are a few pointer moves, so one lock is simpler than several and costs nothing measurable
 * next to a scan (hundreds of microseconds at least).
 *
 * Delivery: a worker (or a cancel, or a budget release on any thread) puts the finished job or
 * granted waiter on its client's list and calls ev_async_send(). The client's ev_async callback
 * then pops ONE item at a time under the lock and calls it without the lock, so a callback may
 * cancel any other job or waiter (a session closing) and that item is simply not delivered.
 *
 * Invariants:
 *  - a job is in exactly one place: the queue (QUEUED), a scan thread (RUNNING, on no list),
 *    or its client's done list (DONE), until `done` is called;
 *  - used <= budget, except transiently never: grants happen only when they fit;
 *  - a client is freed only when none of its jobs is RUNNING (pool_client_free waits).
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

struct job_list {
    struct pool_job *head, *tail;
};

struct waiter_list {
    struct pool_waiter *head, *tail;
};

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* queue non-empty or stop */
    pthread_cond_t idle_cv; /* some client's running count fell to 0 */
    pthread_t *threads;     /* owned array of nthreads */
    unsigned nthreads;
    struct job_list queue;
    unsigned nqueued, queue_max, running, nclients;
    unsigned ndone; /* on some client's done list: finished, not yet handed to its loop */
    bool stop;
    uint64_t budget, used;
    struct waiter_list budget_waiters; /* FIFO */
    struct waiter_list slot_waiters;   /* FIFO */
    uint64_t submitted, rejected_full, completed, cancelled;
};

struct pool_client {
    struct pool *p;       /* not owned */
    struct ev_loop *loop; /* not owned */
    ev_async async;       /* wakes `loop` when done/granted is non-empty */
    struct job_list done; /* finished or cancelled, not yet delivered */
    struct waiter_list granted;
    unsigned running; /* this client's jobs on scan threads */
};

/* ---- lists (caller holds mu) ------------------------------------------------------------- */

static void job_push(struct job_list *l, struct pool_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
}

static void job_unlink(struct job_list *l, struct pool_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->next = j->prev = NULL;
}

static void waiter_push(struct waiter_list *l, struct pool_waiter *w)
{
    w->next = NULL;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

static void waiter_unlink(struct waiter_list *l, struct pool_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->next = w->prev = NULL;
}

/* ---- grants (caller holds mu) ------------------------------------------------------------ */

static void deliver_waiter(struct pool_waiter *w)
{
    w->state = POOL_WAITER_GRANTED;
    waiter_push(&w->client->granted, w);
    ev_async_send(w->client->loop, &w->client->async);
}

static void grant_budget(struct pool *p)
{
    struct pool_waiter *w;
    while ((w = p->budget_waiters.head) != NULL && p->used + w->bytes <= p->budget) {
        waiter_unlink(&p->budget_waiters, w);
        p->used += w->bytes;
        deliver_waiter(w);
    }
}

static void grant_slot(struct pool *p)
{
    struct pool_waiter *w = p->slot_waiters.head;
    if (w && p->nqueued < p->queue_max) {
        waiter_unlink(&p->slot_waiters, w);
        deliver_waiter(w);
    }
}

static void finish_job(struct pool_job *j)
{
    j->state = POOL_JOB_DONE;
    job_push(&j->client->done, j);
    j->client->p->ndone++;
    ev_async_send(j->client->loop, &j->client->async);
}

/* ---- scan threads ------------------------------------------------------------------------ */

static int g_thread_nice;

void pool_set_thread_nice(int nice)
{
    g_thread_nice = nice < 0 ? 0 : nice > 19 ? 19 : nice;
}

/* A scan thread is CPU-bound for milliseconds to seconds; the event loops that feed it and
 * deliver its verdicts wake for microseconds. At equal priority a loop woken by a verdict waits
 * behind the scans for its CPU, and while it waits no next message is framed and submitted:
 * the scan threads then idle in turn (`make bench`, scan scenario on 2 cores: nice 5 gave
 * 78-80 % of libclamav alone where nice 0 gave 76-78 %). So each scan thread marks itself
 * SCHED_BATCH and lowers its own priority (Linux: nice is per thread). Best effort: a refusal
 * leaves the thread as it was. */
static void lower_priority(void)
{
#ifdef SCHED_BATCH
    struct sched_param sp = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
    if (g_thread_nice > 0) {
        errno = 0;
        int cur = getpriority(PRIO_PROCESS, 0);
        if (cur != -1 || errno == 0) {
            int want = cur + g_thread_nice > 19 ? 19 : cur + g_thread_nice;
            (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), want);
        }
    }
}

static void *worker_main(void *arg)
{
    struct pool *p = arg;
    lower_priority();
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->queue.head)
            pthread_cond_wait(&p->work_cv, &p->mu);
        struct pool_job *j = p->queue.head;
        if (!j)
            break; /* stop, and nothing left */
        job_unlink(&p->queue, j);
        p->nqueued--;
        p->running++;
        j->client->running++;
        j->state = POOL_JOB_RUNNING;
        grant_slot(p);
        pthread_mutex_unlock(&p->mu);

        j->work(j);

        pthread_mutex_lock(&p->mu);
        struct pool_client *c = j->client;
        p->running--;
        p->completed++;
        finish_job(j);
        if (--c->running == 0)
            pthread_cond_broadcast(&p->idle_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static char *errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *errorf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

struct pool *pool_new(unsigned threads, unsigned queue_max, uint64_t budget, char **error_r)
{
    *error_r = NULL;
    if (threads == 0 || queue_max == 0 || budget == 0) {
        *error_r = errorf("pool: threads, queue and budget must be > 0");
        return NULL;
    }
    struct pool *p = calloc(1, sizeof *p);
    if (!p || !(p->threads = calloc(threads, sizeof *p->threads))) {
        free(p);
        *error_r = errorf("out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->idle_cv, NULL);
    p->queue_max = queue_max;
    p->budget = budget;
    for (unsigned i = 0; i < threads; i++) {
        int rc = pthread_create(&p->threads[i], NULL, worker_main, p);
        if (rc != 0) {
            *error_r = errorf("pool: cannot start scan thread %u: %s", i, strerror(rc));
            pool_free(&p);
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

void pool_free(struct pool **pp)
{
    if (!pp || !*pp)
        return;
    struct pool *p = *pp;
    *pp = NULL;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->idle_cv);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- the loop side ----------------------------------------------------------------------- */

/* Deliver everything pending for this client, one item per lock round (see the file header). */
static void client_drain(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pool_client *c = w->data;
    struct pool *p = c->p;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        struct pool_job *j = c->done.head;
        struct pool_waiter *wt = j ? NULL : c->granted.head;
        if (j) {
            job_unlink(&c->done, j);
            p->ndone--;
        } else if (wt) {
            waiter_unlink(&c->granted, wt);
            wt->state = POOL_WAITER_IDLE;
        }
        pthread_mutex_unlock(&p->mu);
        if (j) {
            j->state = POOL_JOB_IDLE;
            j->done(j, j->cancelled);
        } else if (wt) {
            wt->cb(wt);
        } else {
            break;
        }
    }
}

struct pool_client *pool_client_new(struct pool *p, struct ev_loop *loop)
{
    struct pool_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->p = p;
    c->loop = loop;
    ev_async_init(&c->async, client_drain);
    c->async.data = c;
    ev_async_start(loop, &c->async);
    pthread_mutex_lock(&p->mu);
    p->nclients++;
    pthread_mutex_unlock(&p->mu);
    return c;
}

struct pool *pool_client_pool(struct pool_client *c)
{
    return c->p;
}

static void drop_waiters_of(struct pool *p, struct waiter_list *l, struct pool_client *c)
{
    for (struct pool_waiter *w = l->head, *next; w; w = next) {
        next = w->next;
        if (w->client == c) {
            waiter_unlink(l, w);
            w->state = POOL_WAITER_IDLE;
        }
    }
    (void)p;
}

void pool_client_free(struct pool_client **cp)
{
    if (!cp || !*cp)
        return;
    struct pool_client *c = *cp;
    *cp = NULL;
    struct pool *p = c->p;
    pthread_mutex_lock(&p->mu);
    bool freed_slots = false;
    for (struct pool_job *j = p->queue.head, *next; j; j = next) {
        next = j->next;
        if (j->client == c) {
            job_unlink(&p->queue, j);
            p->nqueued--;
            j->cancelled = true;
            p->cancelled++;
            j->state = POOL_JOB_DONE;
            job_push(&c->done, j);
            p->ndone++;
            freed_slots = true;
        }
    }
    drop_waiters_of(p, &p->budget_waiters, c);
    drop_waiters_of(p, &p->slot_waiters, c);
    while (c->granted.head) {
        struct pool_waiter *w = c->granted.head;
        waiter_unlink(&c->granted, w);
        if (w->kind == POOL_WAIT_BUDGET)
            p->used -= w->bytes;
        w->state = POOL_WAITER_IDLE;
    }
    grant_budget(p);
    if (freed_slots)
        grant_slot(p);
    while (c->running > 0)
        pthread_cond_wait(&p->idle_cv, &p->mu);
    for (struct pool_job *j = c->done.head; j; j = j->next)
        j->cancelled = true;
    pthread_mutex_unlock(&p->mu);

    for (;;) {
        pthread_mutex_lock(&p->mu);
        struct pool_job *j = c->done.head;
        if (j) {
            job_unlink(&c->done, j);
            p->ndone--;
        }
        pthread_mutex_unlock(&p->mu);
        if (!j)
            break;
        j->state = POOL_JOB_IDLE;
        j->done(j, true);
    }
    ev_async_stop(c->loop, &c->async);
    pthread_mutex_lock(&p->mu);
    p->nclients--;
    pthread_mutex_unlock(&p->mu);
    free(c);
}

bool pool_submit(struct pool_client *c, struct pool_job *j, pool_work_fn *work, pool_done_fn *done)
{
    struct pool *p = c->p;
    pthread_mutex_lock(&p->mu);
    if (p->stop || p->nqueued >= p->queue_max) {
        p->rejected_full++;
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    j->work = work;
    j->done = done;
    j->client = c;
    j->cancelled = false;
    j->state = POOL_JOB_QUEUED;
    job_push(&p->queue, j);
    p->nqueued++;
    p->submitted++;
    pthread_cond_signal(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    return true;
}

void pool_cancel(struct pool_job *j)
{
    struct pool *p = j->client->p;
    pthread_mutex_lock(&p->mu);
    if (!j->cancelled && j->state != POOL_JOB_IDLE)
        p->cancelled++;
    switch (j->state) {
    case POOL_JOB_QUEUED:
        job_unlink(&p->queue, j);
        p->nqueued--;
        j->cancelled = true;
        finish_job(j);
        grant_slot(p);
        break;
    case POOL_JOB_RUNNING:
    case POOL_JOB_DONE:
        j->cancelled = true;
        break;
    case POOL_JOB_IDLE:
        break; /* already delivered: nothing to cancel */
    }
    pthread_mutex_unlock(&p->mu);
}

/* ---- budget and slot waiters ------------------------------------------------------------- */

enum pool_budget_rc pool_budget_acquire(struct pool_client *c, size_t bytes, struct pool_waiter *w,
                                        pool_waiter_fn *cb)
{
    struct pool *p = c->p;
    if (bytes > p->budget)
        return POOL_BUDGET_TOO_BIG;
    pthread_mutex_lock(&p->mu);
    if (!p->budget_waiters.head && p->used + bytes <= p->budget) {
        p->used += bytes;
        pthread_mutex_unlock(&p->mu);
        return POOL_BUDGET_OK;
    }
    w->cb = cb;
    w->bytes = bytes;
    w->client = c;
    w->kind = POOL_WAIT_BUDGET;
    w->state = POOL_WAITER_WAITING;
    waiter_push(&p->budget_waiters, w);
    pthread_mutex_unlock(&p->mu);
    return POOL_BUDGET_WAIT;
}

void pool_budget_release(struct pool *p, size_t bytes)
{
    if (bytes == 0)
        return;
    pthread_mutex_lock(&p->mu);
    p->used = bytes > p->used ? 0 : p->used - bytes;
    grant_budget(p);
    pthread_mutex_unlock(&p->mu);
}

void pool_slot_wait(struct pool_client *c, struct pool_waiter *w, pool_waiter_fn *cb)
{
    struct pool *p = c->p;
    pthread_mutex_lock(&p->mu);
    w->cb = cb;
    w->bytes = 0;
    w->client = c;
    w->kind = POOL_WAIT_SLOT;
    /* A slot may have freed between the failed submit and this call: then answer at once
     * (still through the loop, never from inside this call). */
    if (p->nqueued < p->queue_max && !p->slot_waiters.head) {
        deliver_waiter(w);
    } else {
        w->state = POOL_WAITER_WAITING;
        waiter_push(&p->slot_waiters, w);
    }
    pthread_mutex_unlock(&p->mu);
}

void pool_waiter_cancel(struct pool_waiter *w)
{
    if (!w->client) /* never used */
        return;
    struct pool *p = w->client->p;
    pthread_mutex_lock(&p->mu);
    if (w->state == POOL_WAITER_WAITING) {
        bool budget = w->kind == POOL_WAIT_BUDGET;
        waiter_unlink(budget ? &p->budget_waiters : &p->slot_waiters, w);
        /* The waiters behind this one may fit now. */
        if (budget)
            grant_budget(p);
        else
            grant_slot(p);
    } else if (w->state == POOL_WAITER_GRANTED) {
        waiter_unlink(&w->client->granted, w);
        if (w->kind == POOL_WAIT_BUDGET) {
            p->used -= w->bytes;
            grant_budget(p);
        } else {
            grant_slot(p);
        }
    }
    w->state = POOL_WAITER_IDLE;
    pthread_mutex_unlock(&p->mu);
}

void pool_get_stats(struct pool *p, struct pool_stats *st)
{
    pthread_mutex_lock(&p->mu);
    st->threads = p->nthreads;
    st->queued = p->nqueued;
    st->running = p->running;
    st->done = p->ndone;
    st->queue_max = p->queue_max;
    st->budget = p->budget;
    st->budget_used = p->used;
    st->submitted = p->submitted;
    st->rejected_full = p->rejected_full;
    st->completed = p->completed;
    st->cancelled = p->cancelled;
    pthread_mutex_unlock(&p->mu);
}
