/*
 * pool — a bounded pool of scan threads with a bounded job queue, results handed back to the
 * event loop that submitted them, and a process-wide budget of bytes held for scanning.
 *
 * Shape: one `struct pool` per process (M threads, one FIFO queue of at most `queue_max` jobs,
 * one byte budget). Each event loop that submits work owns one `struct pool_client`, which
 * holds that loop's ev_async and its done list. A worker finishing a job appends it to its
 * client's done list and wakes the loop with ev_async_send(); the loop runs the job's `done`
 * callback. So `work` runs on a scan thread and `done` always on the submitting loop's thread,
 * never inside pool_submit() (no callback before the starter returns).
 *
 * Nothing here sleeps on a loop thread: a full queue makes pool_submit() return false and an
 * exhausted budget makes pool_budget_acquire() return POOL_BUDGET_WAIT; in both cases the
 * caller pauses its own input and is called back on its loop (pool_slot_wait(), the waiter's
 * callback) when it may go on. The only blocking calls are pool_client_free() (waits for that
 * client's jobs still running on scan threads) and pool_free() (joins the threads), both for
 * shutdown.
 *
 * Jobs and waiters are intrusive: the caller embeds `struct pool_job` / `struct pool_waiter`
 * in its own object and recovers it with container_of-style arithmetic. Their fields are
 * private to pool.c.
 */
#ifndef PORTCULLIS_POOL_H
#define PORTCULLIS_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

struct pool;
struct pool_client;
struct pool_job;
struct pool_waiter;

/* Runs on a scan thread. Must not touch the loop or the session. */
typedef void pool_work_fn(struct pool_job *job);
/* Runs on the owning client's loop thread, exactly once per accepted submit. `cancelled`: the
 * job was cancelled (pool_cancel or pool_client_free) — free the job, do not touch whatever
 * cancelled it. After `done` returns the pool never touches the job again. */
typedef void pool_done_fn(struct pool_job *job, bool cancelled);
/* Runs on the waiter's loop thread. For a budget waiter the bytes have been acquired for it
 * (release them with pool_budget_release); for a slot waiter a queue slot has freed (retry
 * pool_submit, which may fail again if another loop was faster). */
typedef void pool_waiter_fn(struct pool_waiter *w);

enum pool_job_state { POOL_JOB_IDLE, POOL_JOB_QUEUED, POOL_JOB_RUNNING, POOL_JOB_DONE };

/* Who holds budget or a queued job, for the per-user and per-session shares: the user's key
 * (a hash of the login name) in the high 32 bits, the session's in the low 32 bits. A zero half
 * is "nobody in particular": no share of that kind applies. */
typedef uint64_t pool_owner;
#define POOL_OWNER(user32, sess32) (((uint64_t)(uint32_t)(user32) << 32) | (uint32_t)(sess32))

struct pool_job {
    pool_work_fn *work;
    pool_done_fn *done;
    struct pool_client *client;   /* not owned */
    struct pool_job *next, *prev; /* queue or done list, guarded by the pool mutex */
    pool_owner owner;             /* counted in its user's queue share until it finishes */
    enum pool_job_state state;
    bool cancelled;
};

enum pool_waiter_kind { POOL_WAIT_BUDGET, POOL_WAIT_SLOT };
enum pool_waiter_state { POOL_WAITER_IDLE, POOL_WAITER_WAITING, POOL_WAITER_GRANTED };

struct pool_waiter {
    pool_waiter_fn *cb;
    size_t bytes;               /* budget waiters: what was asked for */
    pool_owner owner;           /* whose share it counts against */
    struct pool_client *client; /* not owned */
    struct pool_waiter *next, *prev;
    enum pool_waiter_kind kind;
    enum pool_waiter_state state;
};

/* The nice value scan threads give themselves (relative to the process, 0..19), read by
 * threads that pool_new() starts after the call. Set once, before the first pool_new(). */
void pool_set_thread_nice(int nice);

/* Start `threads` scan threads. queue_max >= 1 jobs may wait beyond the running ones; `budget`
 * bytes may be held for scanning at once. NULL + *error_r (malloc'd) on failure. */
struct pool *pool_new(unsigned threads, unsigned queue_max, uint64_t budget, char **error_r)
    __attribute__((warn_unused_result));
/* Fairness (docs/scanning.md): no user holds more than `per_user` bytes of the budget and no
 * session more than `per_session` (0: no limit), except that anyone holding nothing may take one
 * request however large (up to the whole budget), so a share never makes a message unscannable.
 * No user has more than `queue_per_user` jobs queued or running (0: no limit). A request over
 * its owner's share waits without blocking the FIFO for others. Set once, before use. */
struct pool_shares {
    uint64_t per_user, per_session;
    unsigned queue_per_user;
};
void pool_set_shares(struct pool *p, const struct pool_shares *sh);

/* Stop and join the threads. Every client must have been freed. NULL-safe; NULLs *p. */
void pool_free(struct pool **p);

/* On `loop`'s thread: create the loop's client and start its ev_async (which keeps the loop
 * alive until pool_client_free). NULL on allocation failure. */
struct pool_client *pool_client_new(struct pool *p, struct ev_loop *loop);
/* The pool a client belongs to (for pool_budget_release). */
struct pool *pool_client_pool(struct pool_client *c);
/* On the loop's thread (shutdown): cancels the client's queued jobs and waiters, waits for its
 * running jobs, then calls `done(job, true)` for every job not yet delivered. NULLs *c. */
void pool_client_free(struct pool_client **c);

/* On the client's loop thread. Queues the job; false when the queue is full (nothing queued,
 * no callback: pause and use pool_slot_wait()). `job` must stay valid until `done` ran. */
bool pool_submit(struct pool_client *c, struct pool_job *job, pool_work_fn *work,
                 pool_done_fn *done) __attribute__((warn_unused_result));
/* The same for `owner`: also false when the owner's user has its queue share in the pool. */
bool pool_submit_as(struct pool_client *c, pool_owner owner, struct pool_job *job,
                    pool_work_fn *work, pool_done_fn *done) __attribute__((warn_unused_result));
/* On the client's loop thread, for a job submitted and not yet delivered. A queued job never
 * runs; a running job finishes. Either way `done(job, true)` is called later, on the loop. */
void pool_cancel(struct pool_job *job);

enum pool_budget_rc {
    POOL_BUDGET_OK,      /* acquired now; no callback */
    POOL_BUDGET_WAIT,    /* `w` queued (FIFO); w->cb runs on the loop once acquired */
    POOL_BUDGET_TOO_BIG, /* more than the whole budget (or out of memory for the share's
                            account): never possible; nothing queued */
};
/* On the client's loop thread. Grants are FIFO: while anyone within their share waits for the
 * budget, a new request waits too, so large requests are not starved by small ones. A request
 * over its owner's share waits for the owner's own releases and holds nobody else up. */
enum pool_budget_rc pool_budget_acquire(struct pool_client *c, size_t bytes, struct pool_waiter *w,
                                        pool_waiter_fn *cb);
enum pool_budget_rc pool_budget_acquire_as(struct pool_client *c, pool_owner owner, size_t bytes,
                                           struct pool_waiter *w, pool_waiter_fn *cb);
/* Any thread. Gives back bytes `owner` holds and grants waiters that now fit. Giving back more
 * than is held is a bug: it aborts in debug builds (assert), and is clamped otherwise. */
void pool_budget_release(struct pool *p, size_t bytes);
void pool_budget_release_as(struct pool *p, pool_owner owner, size_t bytes);
/* Bytes `owner`'s user (user != 0) or session (sess != 0) holds now (tests, metrics). */
uint64_t pool_budget_held(struct pool *p, pool_owner owner);
/* On the client's loop thread: be called back when a queue slot frees. */
void pool_slot_wait(struct pool_client *c, struct pool_waiter *w, pool_waiter_fn *cb);
void pool_slot_wait_as(struct pool_client *c, pool_owner owner, struct pool_waiter *w,
                       pool_waiter_fn *cb);
/* On the waiter's loop thread. No callback afterwards; a budget grant not yet delivered is
 * given back. No-op for an idle waiter. */
void pool_waiter_cancel(struct pool_waiter *w);

struct pool_stats {
    unsigned threads, queued, running, queue_max;
    unsigned done; /* finished, verdict not yet delivered on its loop */
    uint64_t budget, budget_used;
    uint64_t submitted, rejected_full, completed, cancelled;
    unsigned accounts;       /* users and sessions holding budget, jobs or waiting */
    uint64_t share_waits;    /* budget requests that waited for their owner's share */
    uint64_t rejected_share; /* submits refused for the user's queue share */
};
void pool_get_stats(struct pool *p, struct pool_stats *st);

#endif
