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

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "errorf.h"

struct job_list {
    struct pool_job *head, *tail;
};

struct waiter_list {
    struct pool_waiter *head, *tail;
};

/* One user's or one session's share in use. Exists while it holds bytes or jobs or has a
 * waiter (`refs`), so a grant or a release never has to allocate. */
struct acct {
    uint64_t key; /* ACCT_USER|user32 or ACCT_SESS|sess32 */
    uint64_t used;
    unsigned jobs, refs;
    struct acct *next;
};
#define ACCT_USER    (1ull << 32)
#define ACCT_SESS    (2ull << 32)
#define ACCT_BUCKETS 256

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
    struct pool_shares shares;
    struct acct *accts[ACCT_BUCKETS];
    unsigned naccts;
    uint64_t share_waits, rejected_share;
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

/* ---- share accounts (caller holds mu) ---------------------------------------------------- */

static uint64_t user_key(pool_owner o)
{
    return (o >> 32) ? ACCT_USER | (o >> 32) : 0;
}

static uint64_t sess_key(pool_owner o)
{
    return (uint32_t)o ? ACCT_SESS | (uint32_t)o : 0;
}

static struct acct **acct_slot(struct pool *p, uint64_t key)
{
    struct acct **a = &p->accts[(key ^ (key >> 8) ^ (key >> 32)) % ACCT_BUCKETS];
    while (*a && (*a)->key != key)
        a = &(*a)->next;
    return a;
}

static struct acct *acct_find(struct pool *p, uint64_t key)
{
    return key ? *acct_slot(p, key) : NULL;
}

/* Take a reference on `key`'s account, creating it. False only when out of memory. */
static bool acct_ref(struct pool *p, uint64_t key)
{
    if (!key)
        return true;
    struct acct **a = acct_slot(p, key);
    if (!*a) {
        if (!(*a = calloc(1, sizeof **a)))
            return false;
        (*a)->key = key;
        p->naccts++;
    }
    (*a)->refs++;
    return true;
}

static void acct_unref(struct pool *p, uint64_t key)
{
    if (!key)
        return;
    struct acct **a = acct_slot(p, key), *x = *a;
    assert(x && x->refs > 0);
    if (!x || --x->refs > 0)
        return;
    assert(x->used == 0 && x->jobs == 0);
    *a = x->next;
    free(x);
    p->naccts--;
}

static bool owner_ref(struct pool *p, pool_owner o)
{
    if (!acct_ref(p, user_key(o)))
        return false;
    if (!acct_ref(p, sess_key(o))) {
        acct_unref(p, user_key(o));
        return false;
    }
    return true;
}

static void owner_unref(struct pool *p, pool_owner o)
{
    acct_unref(p, sess_key(o));
    acct_unref(p, user_key(o));
}

/* Would `bytes` more put the owner over a share? Holding nothing, one request always fits. */
static bool over_share(struct pool *p, pool_owner o, size_t bytes)
{
    struct acct *u = acct_find(p, user_key(o)), *s = acct_find(p, sess_key(o));
    if (p->shares.per_user && u && u->used > 0 && u->used + bytes > p->shares.per_user)
        return true;
    if (p->shares.per_session && s && s->used > 0 && s->used + bytes > p->shares.per_session)
        return true;
    return false;
}

/* Budget moves to (`sign` > 0) or from the owner: the pool's total and both accounts. A grant
 * takes one reference per account, which its release gives back with the last byte... so the
 * accounts count bytes only, and the reference is held by `used > 0` itself. */
static void charge(struct pool *p, pool_owner o, size_t bytes)
{
    p->used += bytes;
    uint64_t keys[2] = {user_key(o), sess_key(o)};
    for (int i = 0; i < 2; i++) {
        if (!keys[i])
            continue;
        struct acct *a = acct_find(p, keys[i]);
        assert(a); /* the caller holds a reference */
        if (a->used == 0)
            a->refs++; /* held bytes keep the account */
        a->used += bytes;
    }
}

static void uncharge(struct pool *p, pool_owner o, size_t bytes)
{
    assert(bytes <= p->used); /* a release of budget never acquired */
    p->used = bytes > p->used ? 0 : p->used - bytes;
    uint64_t keys[2] = {user_key(o), sess_key(o)};
    for (int i = 0; i < 2; i++) {
        struct acct *a = acct_find(p, keys[i]);
        if (!keys[i])
            continue;
        assert(a && a->used >= bytes); /* more than this owner holds */
        if (!a || a->used == 0)
            continue;
        a->used = bytes > a->used ? 0 : a->used - bytes;
        if (a->used == 0)
            acct_unref(p, keys[i]);
    }
}

/* Queue share: the user's jobs queued or running. */
static bool over_queue_share(struct pool *p, pool_owner o)
{
    struct acct *u = acct_find(p, user_key(o));
    return p->shares.queue_per_user && u && u->jobs >= p->shares.queue_per_user;
}

static void job_count(struct pool *p, struct pool_job *j, int delta)
{
    uint64_t k = user_key(j->owner);
    if (!k)
        return;
    if (delta > 0) {
        acct_ref(p, k); /* cannot fail: the submitter holds a reference */
        acct_find(p, k)->jobs++;
    } else {
        struct acct *a = acct_find(p, k);
        assert(a && a->jobs > 0);
        if (a && a->jobs > 0) {
            a->jobs--;
            acct_unref(p, k);
        }
    }
}

/* ---- grants (caller holds mu) ------------------------------------------------------------ */

static void deliver_waiter(struct pool_waiter *w)
{
    w->state = POOL_WAITER_GRANTED;
    waiter_push(&w->client->granted, w);
    ev_async_send(w->client->loop, &w->client->async);
}

/* FIFO among the waiters within their share: the first one that does not fit the budget stops
 * the grants (large requests are not starved); one over its owner's share is skipped (it waits
 * for its owner's own releases, and holds nobody up). */
static void grant_budget(struct pool *p)
{
    for (struct pool_waiter *w = p->budget_waiters.head, *next; w; w = next) {
        next = w->next;
        if (over_share(p, w->owner, w->bytes))
            continue;
        if (p->used + w->bytes > p->budget)
            break;
        waiter_unlink(&p->budget_waiters, w);
        charge(p, w->owner, w->bytes);
        owner_unref(p, w->owner); /* the waiter's reference; the bytes hold their own */
        deliver_waiter(w);
    }
}

/* The first slot waiter whose user is within its queue share. */
static void grant_slot(struct pool *p)
{
    if (p->nqueued >= p->queue_max)
        return;
    for (struct pool_waiter *w = p->slot_waiters.head; w; w = w->next) {
        if (over_queue_share(p, w->owner))
            continue;
        waiter_unlink(&p->slot_waiters, w);
        owner_unref(p, w->owner);
        deliver_waiter(w);
        return;
    }
}

static void finish_job(struct pool_job *j)
{
    struct pool *p = j->client->p;
    if (j->state == POOL_JOB_QUEUED || j->state == POOL_JOB_RUNNING) {
        job_count(p, j, -1);
        if (p->shares.queue_per_user && user_key(j->owner))
            grant_slot(p); /* the user's queue share may have room again */
    }
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
    for (unsigned b = 0; b < ACCT_BUCKETS; b++) { /* none left when every client was freed */
        while (p->accts[b]) {
            struct acct *a = p->accts[b];
            p->accts[b] = a->next;
            free(a);
        }
    }
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
            owner_unref(p, w->owner);
            w->state = POOL_WAITER_IDLE;
        }
    }
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
            job_count(p, j, -1);
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
            uncharge(p, w->owner, w->bytes);
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
    return pool_submit_as(c, 0, j, work, done);
}

bool pool_submit_as(struct pool_client *c, pool_owner owner, struct pool_job *j, pool_work_fn *work,
                    pool_done_fn *done)
{
    struct pool *p = c->p;
    pthread_mutex_lock(&p->mu);
    if (p->stop || p->nqueued >= p->queue_max) {
        p->rejected_full++;
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    if (over_queue_share(p, owner) || !acct_ref(p, user_key(owner))) {
        p->rejected_share++;
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    j->owner = owner;
    job_count(p, j, +1);
    acct_unref(p, user_key(owner)); /* the job's count holds its own reference */
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

void pool_set_shares(struct pool *p, const struct pool_shares *sh)
{
    pthread_mutex_lock(&p->mu);
    p->shares = *sh;
    pthread_mutex_unlock(&p->mu);
}

enum pool_budget_rc pool_budget_acquire(struct pool_client *c, size_t bytes, struct pool_waiter *w,
                                        pool_waiter_fn *cb)
{
    return pool_budget_acquire_as(c, 0, bytes, w, cb);
}

/* Queue the request behind the others and run the grant rule once: granted at once means OK
 * (taken back off the client's granted list: no callback), else it waits. One rule for both. */
enum pool_budget_rc pool_budget_acquire_as(struct pool_client *c, pool_owner owner, size_t bytes,
                                           struct pool_waiter *w, pool_waiter_fn *cb)
{
    struct pool *p = c->p;
    if (bytes > p->budget)
        return POOL_BUDGET_TOO_BIG;
    assert(w->state == POOL_WAITER_IDLE); /* one request per waiter at a time */
    pthread_mutex_lock(&p->mu);
    if (!owner_ref(p, owner)) {
        pthread_mutex_unlock(&p->mu);
        return POOL_BUDGET_TOO_BIG;
    }
    w->cb = cb;
    w->bytes = bytes;
    w->owner = owner;
    w->client = c;
    w->kind = POOL_WAIT_BUDGET;
    w->state = POOL_WAITER_WAITING;
    waiter_push(&p->budget_waiters, w);
    grant_budget(p);
    enum pool_budget_rc rc = POOL_BUDGET_WAIT;
    if (w->state == POOL_WAITER_GRANTED) {
        waiter_unlink(&c->granted, w); /* (the async wake-up finds nothing for it) */
        w->state = POOL_WAITER_IDLE;
        rc = POOL_BUDGET_OK;
    } else if (over_share(p, owner, bytes)) {
        p->share_waits++;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void pool_budget_release(struct pool *p, size_t bytes)
{
    pool_budget_release_as(p, 0, bytes);
}

void pool_budget_release_as(struct pool *p, pool_owner owner, size_t bytes)
{
    if (bytes == 0)
        return;
    pthread_mutex_lock(&p->mu);
    uncharge(p, owner, bytes);
    grant_budget(p);
    pthread_mutex_unlock(&p->mu);
}

uint64_t pool_budget_held(struct pool *p, pool_owner owner)
{
    pthread_mutex_lock(&p->mu);
    struct acct *a = acct_find(p, user_key(owner));
    if (!a)
        a = acct_find(p, sess_key(owner));
    uint64_t n = a ? a->used : 0;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void pool_slot_wait(struct pool_client *c, struct pool_waiter *w, pool_waiter_fn *cb)
{
    pool_slot_wait_as(c, 0, w, cb);
}

void pool_slot_wait_as(struct pool_client *c, pool_owner owner, struct pool_waiter *w,
                       pool_waiter_fn *cb)
{
    struct pool *p = c->p;
    pthread_mutex_lock(&p->mu);
    w->cb = cb;
    w->bytes = 0;
    w->owner = 0;
    w->client = c;
    w->kind = POOL_WAIT_SLOT;
    if (owner_ref(p, owner))
        w->owner = owner; /* else: no queue share for it (out of memory), still a slot */
    /* A slot may have freed between the failed submit and this call: then answer at once
     * (still through the loop, never from inside this call). */
    w->state = POOL_WAITER_WAITING;
    waiter_push(&p->slot_waiters, w);
    grant_slot(p);
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
        owner_unref(p, w->owner);
        /* The waiters behind this one may fit now. */
        if (budget)
            grant_budget(p);
        else
            grant_slot(p);
    } else if (w->state == POOL_WAITER_GRANTED) {
        waiter_unlink(&w->client->granted, w);
        if (w->kind == POOL_WAIT_BUDGET) {
            uncharge(p, w->owner, w->bytes);
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
    st->accounts = p->naccts;
    st->share_waits = p->share_waits;
    st->rejected_share = p->rejected_share;
    pthread_mutex_unlock(&p->mu);
}
