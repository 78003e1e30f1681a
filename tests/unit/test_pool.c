/*
 * Unit tests for scanners/pool.c: jobs run on scan threads and their callbacks on the loop
 * thread, the queue bound makes submit fail instead of blocking, slot waiters are woken, cancel
 * never runs a queued job and reports a running one as cancelled, the byte budget is FIFO and
 * wakes waiters on release from another thread, and freeing a client cancels everything.
 */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "pool.h"

#define JOB_OF(p) ((struct tjob *)((char *)(p)-offsetof(struct tjob, pj)))

static pthread_t loop_thread;

struct tjob {
    struct pool_job pj;
    int id;
    pthread_t ran_on;
    bool ran;
    bool delivered;
    bool cancelled;
    sem_t *gate; /* work waits on it when set */
};

static atomic_int running_now, max_running, delivered;
static int want_delivered;

static void work(struct pool_job *pj)
{
    struct tjob *j = JOB_OF(pj);
    int n = atomic_fetch_add(&running_now, 1) + 1;
    int m = atomic_load(&max_running);
    while (n > m && !atomic_compare_exchange_weak(&max_running, &m, n))
        ;
    if (j->gate)
        sem_wait(j->gate);
    else
        usleep(2000);
    j->ran_on = pthread_self();
    j->ran = true;
    atomic_fetch_sub(&running_now, 1);
}

static void done(struct pool_job *pj, bool cancelled)
{
    struct tjob *j = JOB_OF(pj);
    /* Callbacks only ever run on the loop thread. */
    assert_true(pthread_equal(pthread_self(), loop_thread));
    assert_false(j->delivered);
    j->delivered = true;
    j->cancelled = cancelled;
    if (atomic_fetch_add(&delivered, 1) + 1 == want_delivered)
        ev_break(EV_DEFAULT, EVBREAK_ALL);
}

/* Guard: a hung test fails instead of hanging make. */
static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void run_loop(double seconds)
{
    ev_timer t;
    ev_timer_init(&t, on_timeout, seconds, 0);
    ev_timer_start(EV_DEFAULT, &t);
    ev_run(EV_DEFAULT, 0);
    ev_timer_stop(EV_DEFAULT, &t);
}

static void reset(int want)
{
    atomic_store(&running_now, 0);
    atomic_store(&max_running, 0);
    atomic_store(&delivered, 0);
    want_delivered = want;
}

static struct pool *new_pool(unsigned threads, unsigned queue, uint64_t budget)
{
    char *err = NULL;
    struct pool *p = pool_new(threads, queue, budget, &err);
    assert_non_null(p);
    assert_null(err);
    return p;
}

static void test_hundred_jobs_four_threads(void **state)
{
    (void)state;
    struct pool *p = new_pool(4, 128, 1 << 20);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    assert_non_null(c);
    struct tjob *jobs = calloc(100, sizeof *jobs);
    assert_non_null(jobs);
    reset(100);
    for (int i = 0; i < 100; i++) {
        jobs[i].id = i;
        assert_true(pool_submit(c, &jobs[i].pj, work, done));
    }
    /* Nothing is delivered from inside submit: the loop has not run yet. */
    assert_int_equal(atomic_load(&delivered), 0);
    run_loop(20);
    assert_int_equal(atomic_load(&delivered), 100);
    for (int i = 0; i < 100; i++) {
        assert_true(jobs[i].ran);
        assert_true(jobs[i].delivered);
        assert_false(jobs[i].cancelled);
        assert_false(pthread_equal(jobs[i].ran_on, loop_thread));
    }
    assert_true(atomic_load(&max_running) <= 4);
    assert_true(atomic_load(&max_running) >= 2);
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.submitted, 100);
    assert_int_equal(st.completed, 100);
    assert_int_equal(st.queued, 0);
    pool_client_free(&c);
    assert_null(c);
    pool_free(&p);
    assert_null(p);
    free(jobs);
}

static bool slot_called;
static void on_slot(struct pool_waiter *w)
{
    (void)w;
    assert_true(pthread_equal(pthread_self(), loop_thread));
    slot_called = true;
    ev_break(EV_DEFAULT, EVBREAK_ALL);
}

/* One thread held by a gated job, queue of 2: the 4th submit fails at once (no blocking), a
 * slot waiter is woken when the thread takes the next job. Cancel of a queued job: it never
 * runs and is delivered as cancelled; cancel of the running one: delivered as cancelled after
 * its work finished. */
static void test_queue_full_and_cancel(void **state)
{
    (void)state;
    struct pool *p = new_pool(1, 2, 1 << 20);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    sem_t gate;
    sem_init(&gate, 0, 0);
    struct tjob j[5] = {{.id = 0, .gate = &gate}, {.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}};
    reset(0);
    assert_true(pool_submit(c, &j[0].pj, work, done));
    while (atomic_load(&running_now) == 0) /* the thread has taken job 0 */
        usleep(1000);
    assert_true(pool_submit(c, &j[1].pj, work, done));
    assert_true(pool_submit(c, &j[2].pj, work, done));
    assert_false(pool_submit(c, &j[3].pj, work, done)); /* full: refused, not blocked */
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.rejected_full, 1);

    pool_cancel(&j[1].pj); /* queued: removed, frees a slot */
    assert_true(pool_submit(c, &j[3].pj, work, done));
    assert_false(pool_submit(c, &j[4].pj, work, done));
    struct pool_waiter w = {0};
    slot_called = false;
    pool_slot_wait(c, &w, on_slot);

    pool_cancel(&j[0].pj); /* running: finishes, delivered as cancelled */
    sem_post(&gate);
    run_loop(10);
    assert_true(slot_called);
    assert_true(pool_submit(c, &j[4].pj, work, done));

    reset(5); /* wait for all five deliveries, counting those already made */
    int already = 0;
    for (int i = 0; i < 5; i++)
        already += j[i].delivered;
    atomic_store(&delivered, already);
    run_loop(10);
    assert_false(j[1].ran);
    assert_true(j[1].delivered);
    assert_true(j[1].cancelled);
    assert_true(j[0].ran);
    assert_true(j[0].cancelled);
    for (int i = 2; i < 5; i++) {
        assert_true(j[i].ran);
        assert_true(j[i].delivered);
        assert_false(j[i].cancelled);
    }
    pool_client_free(&c);
    pool_free(&p);
    sem_destroy(&gate);
}

/* A job cancelled after it finished but before its delivery: delivered as cancelled. */
static void test_cancel_done_not_delivered(void **state)
{
    (void)state;
    struct pool *p = new_pool(2, 8, 1 << 20);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    struct tjob j = {.id = 1};
    reset(1);
    assert_true(pool_submit(c, &j.pj, work, done));
    struct pool_stats st = {0};
    while (st.completed == 0) { /* finished on its thread (the stats read is locked) */
        usleep(1000);
        pool_get_stats(p, &st);
    }
    /* finished but not delivered: counted as done until its loop takes it (tests settle on it) */
    assert_int_equal(st.done, 1);
    assert_int_equal(st.running, 0);
    pool_cancel(&j.pj);
    run_loop(10);
    assert_true(j.delivered);
    assert_true(j.cancelled);
    pool_get_stats(p, &st);
    assert_int_equal(st.done, 0);
    pool_client_free(&c);
    pool_free(&p);
}

static void *open_gate_later(void *gate)
{
    usleep(50000);
    sem_post(gate);
    return NULL;
}

/* Freeing a client with queued and running jobs: waits for the running one, then delivers
 * every job as cancelled, synchronously. */
static void test_client_free_cancels(void **state)
{
    (void)state;
    struct pool *p = new_pool(1, 8, 1 << 20);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    sem_t gate;
    sem_init(&gate, 0, 0);
    struct tjob j[3] = {{.id = 0, .gate = &gate}, {.id = 1}, {.id = 2}};
    reset(-1);
    for (int i = 0; i < 3; i++)
        assert_true(pool_submit(c, &j[i].pj, work, done));
    while (atomic_load(&running_now) == 0)
        usleep(1000);
    /* Open the gate only once pool_client_free has taken jobs 1 and 2 off the queue and is
     * waiting for job 0. */
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_later, &gate), 0);
    pool_client_free(&c);
    pthread_join(opener, NULL);
    for (int i = 0; i < 3; i++) {
        assert_true(j[i].delivered);
        assert_true(j[i].cancelled);
    }
    assert_true(j[0].ran);
    assert_false(j[1].ran);
    assert_false(j[2].ran);
    pool_free(&p);
    sem_destroy(&gate);
}

struct bwait {
    struct pool_waiter w;
    int order;
};
static int grant_order;
static int grants_wanted;

static void on_budget(struct pool_waiter *w)
{
    struct bwait *b = (struct bwait *)((char *)w - offsetof(struct bwait, w));
    assert_true(pthread_equal(pthread_self(), loop_thread));
    b->order = ++grant_order;
    if (grant_order == grants_wanted)
        ev_break(EV_DEFAULT, EVBREAK_ALL);
}

struct release_arg {
    struct pool *p;
    size_t bytes;
};

static void *release_main(void *arg)
{
    struct release_arg *ra = arg;
    usleep(20000);
    pool_budget_release(ra->p, ra->bytes);
    return NULL;
}

static void test_budget(void **state)
{
    (void)state;
    struct pool *p = new_pool(1, 8, 100);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    struct bwait a = {0}, b = {0}, d = {0}, e = {0};
    assert_int_equal(pool_budget_acquire(c, 60, &a.w, on_budget), POOL_BUDGET_OK);
    assert_int_equal(pool_budget_acquire(c, 60, &b.w, on_budget), POOL_BUDGET_WAIT);
    /* 10 would fit, but b waits first: FIFO, so no starving of large requests. */
    assert_int_equal(pool_budget_acquire(c, 10, &d.w, on_budget), POOL_BUDGET_WAIT);
    assert_int_equal(pool_budget_acquire(c, 101, &e.w, on_budget), POOL_BUDGET_TOO_BIG);
    struct bwait x = {0};
    assert_int_equal(pool_budget_acquire(c, 30, &x.w, on_budget), POOL_BUDGET_WAIT);
    pool_waiter_cancel(&x.w); /* gone: never called */

    /* Released from another thread: b then d are granted, on the loop. */
    grant_order = 0;
    grants_wanted = 2;
    struct release_arg ra = {p, 60};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_main, &ra), 0);
    run_loop(10);
    pthread_join(t, NULL);
    assert_int_equal(b.order, 1);
    assert_int_equal(d.order, 2);
    assert_int_equal(x.order, 0);
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, 70);

    /* A grant cancelled before delivery gives its bytes back. */
    struct bwait g = {0};
    assert_int_equal(pool_budget_acquire(c, 40, &g.w, on_budget), POOL_BUDGET_WAIT);
    pool_budget_release(p, 10); /* 60 used: g (40) fits, granted, not yet delivered */
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, 100);
    pool_waiter_cancel(&g.w);
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, 60);
    grants_wanted = -1;
    ev_run(EV_DEFAULT, EVRUN_NOWAIT);
    assert_int_equal(g.order, 0);

    pool_budget_release(p, 60);
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, 0);
    pool_client_free(&c);
    pool_free(&p);
}

/* Shares: a user over its share waits without holding up another user; one request always
 * fits an owner holding nothing; the accounts go away with the last byte. */
static void test_budget_shares(void **state)
{
    (void)state;
    struct pool *p = new_pool(1, 8, 100);
    pool_set_shares(p, &(struct pool_shares){.per_user = 30, .per_session = 0});
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    pool_owner a1 = POOL_OWNER(1, 1), a2 = POOL_OWNER(1, 2), b1 = POOL_OWNER(2, 3);
    struct bwait x = {0}, y = {0}, z = {0}, big = {0};
    assert_int_equal(pool_budget_acquire_as(c, a1, 20, &x.w, on_budget), POOL_BUDGET_OK);
    /* user 1 at 20 of 30: another 20 is over its share */
    assert_int_equal(pool_budget_acquire_as(c, a2, 20, &y.w, on_budget), POOL_BUDGET_WAIT);
    /* user 2 is not held up behind it */
    assert_int_equal(pool_budget_acquire_as(c, b1, 50, &z.w, on_budget), POOL_BUDGET_OK);
    assert_int_equal(pool_budget_held(p, a1), 20);
    assert_int_equal(pool_budget_held(p, b1), 50);
    /* user 1 gives back: its waiter is granted (on the loop) */
    grant_order = 0;
    grants_wanted = 1;
    pool_budget_release_as(p, a1, 20);
    run_loop(10);
    assert_int_equal(y.order, 1);
    assert_int_equal(pool_budget_held(p, a2), 20);
    pool_budget_release_as(p, a2, 20);
    pool_budget_release_as(p, b1, 50);
    /* one request larger than the share fits an owner that holds nothing */
    assert_int_equal(pool_budget_acquire_as(c, a1, 90, &big.w, on_budget), POOL_BUDGET_OK);
    pool_budget_release_as(p, a1, 90);
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, 0);
    assert_int_equal(st.accounts, 0);
    assert_true(st.share_waits >= 1);
    pool_client_free(&c);
    pool_free(&p);
}

static void noop_work(struct pool_job *j)
{
    (void)j;
    usleep(50000);
}

static void noop_done(struct pool_job *j, bool cancelled)
{
    (void)j, (void)cancelled;
}

/* Queue share: a user with its share of jobs queued or running is refused (it waits for a
 * slot); another user is not. */
static void test_queue_share(void **state)
{
    (void)state;
    struct pool *p = new_pool(1, 8, 100);
    pool_set_shares(p, &(struct pool_shares){.queue_per_user = 1});
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    struct pool_job j[3];
    memset(j, 0, sizeof j);
    assert_true(pool_submit_as(c, POOL_OWNER(1, 1), &j[0], noop_work, noop_done));
    assert_false(pool_submit_as(c, POOL_OWNER(1, 2), &j[1], noop_work, noop_done));
    assert_true(pool_submit_as(c, POOL_OWNER(2, 3), &j[2], noop_work, noop_done));
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.rejected_share, 1);
    pool_client_free(&c); /* waits for the running ones */
    pool_get_stats(p, &st);
    assert_int_equal(st.accounts, 0);
    pool_free(&p);
}

/* Releasing budget never acquired (or twice) aborts debug builds: the tests catch it. */
static void test_double_release_aborts(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct pool *p = new_pool(1, 8, 100);
        struct pool_client *c = pool_client_new(p, EV_DEFAULT);
        struct bwait x = {0};
        if (pool_budget_acquire_as(c, POOL_OWNER(1, 1), 10, &x.w, on_budget) != POOL_BUDGET_OK)
            _exit(2);
        pool_budget_release_as(p, POOL_OWNER(1, 1), 10);
        pool_budget_release_as(p, POOL_OWNER(1, 1), 10); /* the second time */
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

static int setup(void **state)
{
    (void)state;
    loop_thread = pthread_self();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hundred_jobs_four_threads),
        cmocka_unit_test(test_queue_full_and_cancel),
        cmocka_unit_test(test_cancel_done_not_delivered),
        cmocka_unit_test(test_client_free_cancels),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_budget_shares),
        cmocka_unit_test(test_queue_share),
        cmocka_unit_test(test_double_release_aborts),
    };
    return cmocka_run_group_tests_name("pool", tests, setup, NULL);
}
