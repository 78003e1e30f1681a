/*
 * Unit tests for proxy/msgscan.c on a real session of the relay harness
 * (tests/unit/relay_harness.h) with the stub scanner: verdicts become actions (original back,
 * notice, error/oversize actions), callbacks never run before the starting call returns (not
 * even for a cache hit), the per-worker verdict cache and the remote cache hook, cancel, the
 * budget, and a message large enough to be hashed on a pool thread. (The byte-by-byte paths
 * into msgscan are the imap_scan / pop3_scan cases.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

struct got {
    int calls;
    enum msgscan_verdict verdict;
    bool replace, cached;
    char *msg, *notice;
    size_t len, budget, notice_len;
    pool_owner owner;
    char signature[SCAN_SIGNATURE_MAX];
    char ref[SCAN_REF_MAX];
};

static void on_done(void *arg, struct msgscan_outcome *o)
{
    struct got *g = arg;
    g->calls++;
    g->verdict = o->verdict;
    g->replace = o->replace;
    g->cached = o->cached;
    snprintf(g->signature, sizeof g->signature, "%s", o->signature);
    snprintf(g->ref, sizeof g->ref, "%s", o->ref);
    /* take both, as a relay does */
    g->msg = o->msg;
    g->len = o->len;
    g->budget = o->budget;
    g->owner = o->owner;
    o->msg = NULL;
    o->budget = 0;
    g->notice = o->notice;
    g->notice_len = o->notice_len;
    o->notice = NULL;
}

static void got_free(struct got *g)
{
    if (g->msg) {
        free(g->msg);
        msgscan_budget_release(g->owner, g->budget);
    }
    free(g->notice);
    memset(g, 0, sizeof *g);
}

static char *dup_msg(const char *m)
{
    char *d = strdup(m);
    assert_non_null(d);
    return d;
}

static const struct msgscan_item item = {.proto = "imap", .where = "mailbox=\"INBOX\" uid=1"};

/* Judge `m` on a fresh session of `h`; the callback must not run before judge returns. */
static void judge(struct rh *h, const char *m, struct got *g)
{
    struct msgscan_req *r =
        msgscan_judge(rh_session(h), &item, dup_msg(m), strlen(m), 0, on_done, g);
    assert_non_null(r);
    assert_int_equal(g->calls, 0);
    rh_settle(h);
    assert_int_equal(g->calls, 1);
}

#define CLEAN_MSG "Subject: hello\r\n\r\nnothing to see\r\n"
#define BAD_MSG   "Subject: bad\r\n" RH_MARK_INFECTED ": yes\r\n\r\nbody\r\n"
#define ERR_MSG   "Subject: err\r\n" RH_MARK_ERROR ": yes\r\n\r\nbody\r\n"
#define LIMIT_MSG "Subject: deep\r\n" RH_MARK_LIMIT ": yes\r\n\r\nbody\r\n"

static void t_clean_original_back(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got g = {0};
    judge(h, CLEAN_MSG, &g);
    assert_int_equal(g.verdict, MSGSCAN_CLEAN);
    assert_false(g.replace);
    assert_false(g.cached);
    assert_non_null(g.msg);
    assert_int_equal(g.len, strlen(CLEAN_MSG));
    assert_memory_equal(g.msg, CLEAN_MSG, g.len);
    assert_null(g.notice);
    assert_int_equal(rh_scans(h), 1);
    got_free(&g);
    rh_free(&h);
}

static void t_infected_notice(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got g = {0};
    judge(h, BAD_MSG, &g);
    assert_int_equal(g.verdict, MSGSCAN_INFECTED);
    assert_true(g.replace);
    assert_string_equal(g.signature, RH_SIGNATURE);
    assert_true(strlen(g.ref) > 0);
    assert_null(g.msg);
    assert_non_null(g.notice);
    assert_non_null(memmem(g.notice, g.notice_len, RH_SIGNATURE, strlen(RH_SIGNATURE)));
    assert_non_null(memmem(g.notice, g.notice_len, g.ref, strlen(g.ref)));
    /* the subject: our encoded-word in the header, the decoded text in the body */
    assert_non_null(memmem(g.notice, g.notice_len, "Subject: =?utf-8?B?YmFk?=", 25));
    assert_non_null(memmem(g.notice, g.notice_len, "Subject:    bad\r\n", 17));
    assert_int_equal(rh_session(h)->blocked, 1);
    got_free(&g);
    rh_free(&h);
}

static void t_error_blocks(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got g = {0};
    judge(h, ERR_MSG, &g);
    assert_int_equal(g.verdict, MSGSCAN_ERROR);
    assert_true(g.replace); /* error_action: block (default) */
    assert_non_null(g.notice);
    assert_non_null(memmem(g.notice, g.notice_len, "scan-error", 10));
    got_free(&g);
    rh_free(&h);
}

/* A structural limit (recursion, files, scan time...) is its own verdict with its own action,
 * default block — never oversize_action (issue 15). */
static void t_limit_blocks_by_default(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON); /* oversize_action pass */
    struct got g = {0};
    struct msgscan_counters c0, c1;
    msgscan_counters_get(&c0);
    judge(h, LIMIT_MSG, &g);
    msgscan_counters_get(&c1);
    assert_int_equal(g.verdict, MSGSCAN_LIMIT);
    assert_true(g.replace);
    assert_null(g.msg);
    assert_non_null(g.notice);
    assert_non_null(memmem(g.notice, g.notice_len, "reason=limit", 12));
    assert_null(memmem(g.notice, g.notice_len, "oversize", 8));
    assert_int_equal(c1.limit - c0.limit, 1);
    assert_int_equal(c1.oversize - c0.oversize, 0);
    assert_int_equal(c1.replaced - c0.replaced, 1);
    got_free(&g);
    rh_free(&h);
}

/* The notice shows decoded header text, so it is scanned before it is sent; one that matches
 * (here: a Subject, RFC 2047-encoded, that decodes to the stub's marker) is replaced by the
 * minimal notice: nothing of the original, not even the encoded form. */
static void t_notice_scanned_minimal(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got g = {0};
    struct msgscan_counters c0, c1;
    msgscan_counters_get(&c0);
    /* "X-Harness-Infected" in base64: invisible to a raw scan of the original header */
    const char *m =
        "Subject: =?utf-8?B?WC1IYXJuZXNzLUluZmVjdGVk?=\r\nFrom: a@b\r\n\r\n" RH_EICAR "\r\n";
    judge(h, m, &g);
    msgscan_counters_get(&c1);
    assert_int_equal(g.verdict, MSGSCAN_INFECTED);
    assert_true(g.replace);
    assert_non_null(g.notice);
    assert_null(memmem(g.notice, g.notice_len, "WC1IYXJuZXNzLUluZmVjdGVk", 24));
    assert_null(memmem(g.notice, g.notice_len, RH_MARK_INFECTED, strlen(RH_MARK_INFECTED)));
    assert_null(memmem(g.notice, g.notice_len, "a@b", 3));
    assert_non_null(memmem(g.notice, g.notice_len, g.ref, strlen(g.ref)));
    assert_int_equal(c1.notice_scans - c0.notice_scans, 1);
    assert_int_equal(c1.notice_minimal - c0.notice_minimal, 1);
    assert_int_equal(rh_scans(h), 1); /* the message; the notice's scan is not a message scan */
    got_free(&g);

    /* an ordinary infected message: its notice is scanned and clean, sent as built */
    msgscan_counters_get(&c0);
    judge(h, BAD_MSG, &g);
    msgscan_counters_get(&c1);
    assert_int_equal(c1.notice_scans - c0.notice_scans, 1);
    assert_int_equal(c1.notice_minimal - c0.notice_minimal, 0);
    assert_non_null(memmem(g.notice, g.notice_len, "Subject:    bad", 15));
    got_free(&g);
    rh_free(&h);
}

static void t_limit_pass_when_configured(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_LIMITS_PASS);
    struct got g = {0};
    judge(h, LIMIT_MSG, &g);
    assert_int_equal(g.verdict, MSGSCAN_LIMIT);
    assert_false(g.replace);
    assert_non_null(g.msg);
    assert_memory_equal(g.msg, LIMIT_MSG, strlen(LIMIT_MSG));
    assert_null(g.notice);
    got_free(&g);
    rh_free(&h);
}

static void t_cache_hit_deferred_same_ref(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got a = {0}, b = {0};
    judge(h, BAD_MSG, &a);
    judge(h, BAD_MSG, &b); /* judge() asserts: no callback before it returns */
    assert_false(a.cached);
    assert_true(b.cached);
    assert_int_equal(rh_scans(h), 1);
    assert_string_equal(a.ref, b.ref); /* the same notice reference both times */
    assert_true(b.replace);
    got_free(&a);
    got_free(&b);
    rh_free(&h);
}

static void t_cache_per_worker(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got a = {0};
    judge(h, CLEAN_MSG, &a);
    got_free(&a);
    rh_free(&h);
    /* a new worker has a new cache: scanned again */
    h = rh_open(RH_IMAP, RH_SCAN_ON);
    judge(h, CLEAN_MSG, &a);
    assert_false(a.cached);
    assert_int_equal(rh_scans(h), 1);
    got_free(&a);
    rh_free(&h);
}

static void t_cancel_no_callback(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got g = {0};
    struct msgscan_req *r =
        msgscan_judge(rh_session(h), &item, dup_msg(BAD_MSG), strlen(BAD_MSG), 0, on_done, &g);
    assert_non_null(r);
    msgscan_cancel(&r);
    assert_null(r);
    rh_settle(h);
    assert_int_equal(g.calls, 0);
    msgscan_cancel(&r); /* NULL-safe */
    rh_free(&h);
}

static void t_cancel_cache_hit(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct got a = {0}, b = {0};
    judge(h, CLEAN_MSG, &a);
    struct msgscan_req *r =
        msgscan_judge(rh_session(h), &item, dup_msg(CLEAN_MSG), strlen(CLEAN_MSG), 0, on_done, &b);
    assert_non_null(r);
    msgscan_cancel(&r); /* the deferred delivery of a cache hit is cancelled too */
    rh_settle(h);
    assert_int_equal(b.calls, 0);
    got_free(&a);
    rh_free(&h);
}

static void t_oversize_pass(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct msgscan_outcome o;
    assert_true(msgscan_oversize(rh_session(h), &item, NULL, 0, 1u << 30, &o));
    assert_int_equal(o.verdict, MSGSCAN_OVERSIZE);
    assert_false(o.replace); /* oversize_action: pass (default) */
    assert_null(o.notice);
    msgscan_outcome_clear(&o);
    assert_int_equal(rh_scans(h), 0);
    rh_free(&h);
}

static void t_oversize_block_notice_from_head(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_SMALL_BLOCK);
    struct msgscan_outcome o;
    const char head[] = "From: a@example.org\r\nSubject: the big one\r\n\r\n";
    assert_true(msgscan_oversize(rh_session(h), &item, head, sizeof head - 1, 5000, &o));
    assert_int_equal(o.verdict, MSGSCAN_OVERSIZE);
    assert_true(o.replace);
    assert_non_null(o.notice);
    /* built without a scan of it: nothing of the original's text, only sizes and hashes */
    assert_null(memmem(o.notice, o.notice_len, "the big one", 11));
    assert_null(memmem(o.notice, o.notice_len, "a@example.org", 13));
    assert_non_null(
        memmem(o.notice, o.notice_len, "(14 bytes, sha256 ", 18)); /* " the big one\r\n" */
    assert_non_null(memmem(o.notice, o.notice_len, "oversize", 8));
    msgscan_outcome_clear(&o);
    assert_null(o.notice);
    rh_free(&h);
}

static void t_unjudged_error_action(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_POP3, RH_SCAN_ON);
    struct msgscan_outcome o;
    assert_true(msgscan_unjudged(rh_session(h), &item, NULL, 0, "budget", &o));
    assert_int_equal(o.verdict, MSGSCAN_ERROR);
    assert_true(o.replace);
    assert_non_null(o.notice);
    assert_string_equal(o.signature, "budget");
    msgscan_outcome_clear(&o);
    rh_free(&h);
}

static void t_budget(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct msgscan_wait w;
    memset(&w, 0, sizeof w);
    assert_int_equal(msgscan_budget_acquire(rh_session(h), 4096, &w, NULL, NULL),
                     MSGSCAN_BUDGET_OK);
    msgscan_budget_release(msgscan_owner(rh_session(h)), 4096);
    /* more than the whole scan.memory_budget (256M) can never be granted */
    assert_int_equal(msgscan_budget_acquire(rh_session(h), (size_t)1 << 40, &w, NULL, NULL),
                     MSGSCAN_BUDGET_TOO_BIG);
    msgscan_wait_cancel(&w); /* idle: no-op */
    rh_free(&h);
}

static void t_large_hashed_on_pool(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    size_t n = MSGSCAN_INLINE_HASH_MAX + 1000;
    char *m = malloc(n + 1);
    assert_non_null(m);
    memcpy(m, "Subject: big\r\n\r\n", 16);
    for (size_t i = 16; i < n; i++)
        m[i] = (char)('a' + i % 26);
    m[n] = '\0';
    char *copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, m, n);
    struct got g = {0};
    struct msgscan_req *r = msgscan_judge(rh_session(h), &item, m, n, 0, on_done, &g);
    assert_non_null(r);
    assert_int_equal(g.calls, 0);
    rh_settle(h);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.verdict, MSGSCAN_CLEAN);
    assert_int_equal(g.len, n);
    assert_memory_equal(g.msg, copy, n);
    size_t sl = 0;
    char *scanned = rh_last_scanned(&sl);
    assert_int_equal(sl, n);
    free(scanned);
    free(copy);
    got_free(&g);
    rh_free(&h);
}

static void t_counters(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct msgscan_counters c0, c1;
    msgscan_counters_get(&c0);
    struct got a = {0}, b = {0};
    judge(h, CLEAN_MSG "x", &a);
    judge(h, BAD_MSG "x", &b);
    msgscan_counters_get(&c1);
    assert_int_equal(c1.judged - c0.judged, 2);
    assert_int_equal(c1.scanned - c0.scanned, 2);
    assert_int_equal(c1.clean - c0.clean, 1);
    assert_int_equal(c1.infected - c0.infected, 1);
    assert_int_equal(c1.delivered - c0.delivered, 1);
    assert_int_equal(c1.replaced - c0.replaced, 1);
    assert_int_equal(rh_session(h)->scans, 2);
    got_free(&a);
    got_free(&b);
    rh_free(&h);
}

/* ---- the remote cache hook ---- */

struct fake_remote {
    struct ev_loop *loop;
    ev_timer t;
    bool hit;
    msgscan_cache_got_fn *cb;
    void *arg;
    int gets, puts, cancels;
    struct msgscan_cached put_v;
    char put_engine[SCAN_VERSION_MAX];
};

static void remote_fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct fake_remote *f = t->data;
    struct msgscan_cached v = {.verdict = MSGSCAN_INFECTED, .date = 1700000000};
    snprintf(v.signature, sizeof v.signature, "Remote.Sig");
    snprintf(v.ref, sizeof v.ref, "20260101-abcdef012345");
    f->cb(f->arg, f->hit ? &v : NULL);
}

static void *remote_get(void *ctx, const struct msgscan_cache_key *k, msgscan_cache_got_fn *cb,
                        void *arg)
{
    struct fake_remote *f = ctx;
    f->gets++;
    assert_string_equal(k->engine, "harness-stub-1");
    f->cb = cb;
    f->arg = arg;
    ev_timer_init(&f->t, remote_fire, 0., 0.);
    f->t.data = f;
    ev_timer_start(f->loop, &f->t); /* never before get returns */
    return f;
}

static void remote_cancel(void *ctx, void *handle)
{
    struct fake_remote *f = ctx;
    assert_ptr_equal(handle, f);
    f->cancels++;
    ev_timer_stop(f->loop, &f->t);
}

static void remote_put(void *ctx, const struct msgscan_cache_key *k, const struct msgscan_cached *v,
                       uint64_t ttl_ms)
{
    struct fake_remote *f = ctx;
    (void)ttl_ms;
    f->puts++;
    f->put_v = *v;
    snprintf(f->put_engine, sizeof f->put_engine, "%s", k->engine);
}

static const struct msgscan_cache_ops remote_ops = {remote_get, remote_cancel, remote_put};

static void t_remote_hit(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct fake_remote f = {.loop = g_loop, .hit = true};
    msgscan_set_remote_cache(rh_session(h)->worker, &remote_ops, &f);
    struct got g = {0};
    judge(h, CLEAN_MSG "remote", &g);
    assert_int_equal(f.gets, 1);
    assert_int_equal(rh_scans(h), 0); /* the remote verdict stands: no scan */
    assert_true(g.cached);
    assert_int_equal(g.verdict, MSGSCAN_INFECTED);
    assert_string_equal(g.signature, "Remote.Sig");
    assert_string_equal(g.ref, "20260101-abcdef012345");
    assert_non_null(memmem(g.notice, g.notice_len, "20260101-abcdef012345", 21));
    got_free(&g);
    /* now in the local cache too: no second remote lookup */
    judge(h, CLEAN_MSG "remote", &g);
    assert_int_equal(f.gets, 1);
    assert_true(g.cached);
    got_free(&g);
    msgscan_set_remote_cache(rh_session(h)->worker, NULL, NULL);
    rh_free(&h);
}

static void t_remote_miss_put(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct fake_remote f = {.loop = g_loop, .hit = false};
    msgscan_set_remote_cache(rh_session(h)->worker, &remote_ops, &f);
    struct got g = {0};
    judge(h, BAD_MSG "miss", &g);
    assert_int_equal(f.gets, 1);
    assert_int_equal(rh_scans(h), 1);
    assert_int_equal(f.puts, 1);
    assert_int_equal(f.put_v.verdict, MSGSCAN_INFECTED);
    assert_string_equal(f.put_v.ref, g.ref);
    assert_string_equal(f.put_engine, "harness-stub-1");
    got_free(&g);
    msgscan_set_remote_cache(rh_session(h)->worker, NULL, NULL);
    rh_free(&h);
}

static void t_remote_cancel(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct fake_remote f = {.loop = g_loop, .hit = true};
    msgscan_set_remote_cache(rh_session(h)->worker, &remote_ops, &f);
    struct got g = {0};
    struct msgscan_req *r = msgscan_judge(rh_session(h), &item, dup_msg(CLEAN_MSG "cancel"),
                                          strlen(CLEAN_MSG "cancel"), 0, on_done, &g);
    assert_non_null(r);
    assert_int_equal(f.gets, 1);
    msgscan_cancel(&r);
    assert_int_equal(f.cancels, 1);
    rh_settle(h);
    assert_int_equal(g.calls, 0);
    msgscan_set_remote_cache(rh_session(h)->worker, NULL, NULL);
    rh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_clean_original_back),
        cmocka_unit_test(t_infected_notice),
        cmocka_unit_test(t_error_blocks),
        cmocka_unit_test(t_limit_blocks_by_default),
        cmocka_unit_test(t_limit_pass_when_configured),
        cmocka_unit_test(t_notice_scanned_minimal),
        cmocka_unit_test(t_cache_hit_deferred_same_ref),
        cmocka_unit_test(t_cache_per_worker),
        cmocka_unit_test(t_cancel_no_callback),
        cmocka_unit_test(t_cancel_cache_hit),
        cmocka_unit_test(t_oversize_pass),
        cmocka_unit_test(t_oversize_block_notice_from_head),
        cmocka_unit_test(t_unjudged_error_action),
        cmocka_unit_test(t_budget),
        cmocka_unit_test(t_large_hashed_on_pool),
        cmocka_unit_test(t_counters),
        cmocka_unit_test(t_remote_hit),
        cmocka_unit_test(t_remote_miss_put),
        cmocka_unit_test(t_remote_cancel),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
