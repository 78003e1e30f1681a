/*
 * Unit tests for the scan budget's accounting and fairness through the relay harness (issue 16):
 * sessions killed at every step — waiting for budget, granted while collecting, with the scan
 * on the pool, with scanned output the client does not read, and a grant on its way to a
 * session that closes — leave the process's used budget at 0; one user holding responses
 * cannot hold up another user's fetch; output the client does not read ends the session after
 * scan.held_timeout. The pool is small here (RH_CONFIG_EXTRA): 2M budget, 900k messages, a
 * user's share 1M, so two large responses of different users fill it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define RH_CONFIG_EXTRA                                                                            \
    "  memory_budget: 2M\n"                                                                        \
    "  max_scan_size: 900k\n"                                                                      \
    "  budget_per_user: 1M\n"                                                                      \
    "  budget_per_session: \"0\"\n"                                                                \
    "  queue_per_user: \"0\"\n"                                                                    \
    "  held_timeout: 300ms\n"

#include "relay_harness.c"

#include "imap_scan.h"
#include "msgscan_metrics.h"

#define BIG (900 * 1024 - 64) /* a message under max_scan_size; two fill 2M less one */

static uint64_t used_budget(void)
{
    struct pool_stats st;
    assert_true(msgscan_pool_stats(&st));
    return st.budget_used;
}

/* Run the loop for `secs` of wall time (timers: held_timeout). */
static void run_for(double secs)
{
    ev_timer t;
    ev_timer_init(&t, guard_cb, secs, 0.);
    ev_timer_start(g_loop, &t);
    while (ev_is_active(&t))
        ev_run(g_loop, EVRUN_ONCE);
}

struct big {
    char *msg;
    size_t len;
};

static struct big big_msg(const char *extra)
{
    struct big b;
    b.msg = rh_message(BIG, extra);
    b.len = strlen(b.msg);
    assert_true(b.len < 900 * 1024);
    return b;
}

/* The client asks for message `uid` whole; the backend answers with the response's head and
 * `part` bytes of the literal (all of it, with the response's end and the tagged OK, when
 * part == len). */
static void fetch_start(struct rh *h, unsigned uid, const struct big *b, size_t part)
{
    char cmd[64];
    snprintf(cmd, sizeof cmd, "f UID FETCH %u (UID BODY.PEEK[])\r\n", uid);
    rh_client_send(h, cmd, strlen(cmd), 0);
    {
        size_t n_;
        free(rh_backend_received(h, &n_));
    }
    char *head = rh_strf("* 1 FETCH (UID %u BODY[] {%zu}\r\n", uid, b->len);
    rh_backend_send(h, head, strlen(head), 0);
    free(head);
    rh_backend_send(h, b->msg, part, 0);
    if (part == b->len)
        rh_backend_send(h, ")\r\nf OK done\r\n", 14, 0);
}

static void fetch_rest(struct rh *h, const struct big *b, size_t from)
{
    rh_backend_send(h, b->msg + from, b->len - from, 0);
    rh_backend_send(h, ")\r\nf OK done\r\n", 14, 0);
}

/* The backend's end of the rest without settling: the scan is then on its way when the test
 * kills the session. */
static void fetch_rest_raw(struct rh *h, const struct big *b, size_t from)
{
    size_t off = from;
    while (off < b->len) {
        ssize_t n = write(h->bfd, b->msg + off, b->len - off);
        if (n > 0)
            off += (size_t)n;
        else
            ev_run(g_loop, EVRUN_NOWAIT); /* let the proxy read */
    }
    assert_int_equal(write(h->bfd, ")\r\nf OK done\r\n", 14), 14);
}

/* A client that goes away: the session closes as on a reset (the relay may not be reading the
 * client while it waits, so the close is the harness's, as the conn's error path does). */
static void kill_session(struct rh *h)
{
    if (h->s && !h->s->closing)
        sess_close(h->s, "killed");
    ev_run(g_loop, EVRUN_NOWAIT);
}

static void rh_free_all(struct rh **hs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rh_free(&hs[i]);
}

/* Waiting for budget: two users fill it while collecting, a third waits; the waiter is killed,
 * then a holder, then the other holder. */
static void t_kill_waiting(void **state)
{
    (void)state;
    struct big b = big_msg(NULL);
    struct rh *h[3] = {rh_open_as(RH_IMAP, RH_SCAN_ON, "u1"), rh_open_as(RH_IMAP, RH_SCAN_ON, "u2"),
                       rh_open_as(RH_IMAP, RH_SCAN_ON, "u3")};
    fetch_start(h[0], 1, &b, 1000);
    fetch_start(h[1], 2, &b, 1000);
    assert_int_equal(used_budget(), 2 * b.len);
    fetch_start(h[2], 3, &b, 1000); /* waits: no budget */
    assert_int_equal(used_budget(), 2 * b.len);
    assert_int_equal(imap_sc(h[2]->s)->phase, SC_BUDGET);
    kill_session(h[2]);
    rh_settle(h[0]);
    assert_int_equal(used_budget(), 2 * b.len);
    kill_session(h[0]); /* granted, collecting */
    rh_settle(h[1]);
    assert_int_equal(used_budget(), b.len);
    kill_session(h[1]);
    rh_settle(h[1]);
    assert_int_equal(used_budget(), 0);
    rh_free_all(h, 3);
    assert_int_equal(used_budget(), 0);
    free(b.msg);
}

/* The grant is handed over while the waiter closes: the holder and the waiter are killed in
 * one loop turn, in both orders (the issue 16 leak: a grant delivered to a closing session). */
static void kill_grant_race(bool waiter_first)
{
    struct big b = big_msg(NULL);
    struct rh *h[3] = {rh_open_as(RH_IMAP, RH_SCAN_ON, "u1"), rh_open_as(RH_IMAP, RH_SCAN_ON, "u2"),
                       rh_open_as(RH_IMAP, RH_SCAN_ON, "u3")};
    fetch_start(h[0], 1, &b, 1000);
    fetch_start(h[1], 2, &b, 1000);
    fetch_start(h[2], 3, &b, 1000);
    assert_int_equal(imap_sc(h[2]->s)->phase, SC_BUDGET);
    if (waiter_first) {
        /* the grant reaches the pool's granted list first, then the waiter closes */
        sess_close(h[0]->s, "killed");
        sess_close(h[2]->s, "killed");
    } else {
        /* closing first: the grant arrives for a session already closing */
        h[2]->s->closing = true;
        sess_close(h[0]->s, "killed");
        ev_run(g_loop, EVRUN_NOWAIT); /* the grant is delivered to the closing session */
        h[2]->s->closing = false;
        sess_close(h[2]->s, "killed");
    }
    rh_settle(h[1]);
    assert_int_equal(used_budget(), b.len);
    kill_session(h[1]);
    rh_settle(h[1]);
    assert_int_equal(used_budget(), 0);
    rh_free_all(h, 3);
    assert_int_equal(used_budget(), 0);
    free(b.msg);
}

static void t_kill_grant_race_holder_first(void **state)
{
    (void)state;
    kill_grant_race(true);
}

static void t_kill_grant_to_closing(void **state)
{
    (void)state;
    kill_grant_race(false);
}

/* With the scan on the pool, and with the verdict on its way. */
static void t_kill_scanning(void **state)
{
    (void)state;
    struct big b = big_msg(NULL);
    for (int k = 0; k < 3; k++) {
        struct rh *h = rh_open_as(RH_IMAP, RH_SCAN_ON, "u1");
        fetch_start(h, 1, &b, 1000);
        fetch_rest_raw(h, &b, 1000);
        for (int i = 0; i < k; i++)
            ev_run(g_loop, EVRUN_NOWAIT); /* the scan submitted / running / done */
        kill_session(h);
        rh_settle(h);
        rh_free(&h);
        assert_int_equal(used_budget(), 0);
    }
    free(b.msg);
}

/* Scanned output held because the client does not read (clean: the original; infected: the
 * notice), killed; and the same with the whole response queued. */
static void t_kill_output_held(void **state)
{
    (void)state;
    struct big clean = big_msg(NULL), bad = big_msg(RH_MARK_INFECTED ": 1");
    struct big *m[2] = {&clean, &bad};
    for (int i = 0; i < 2; i++) {
        struct rh *h = rh_open_as(RH_IMAP, RH_SCAN_ON, "u1");
        rh_client_deaf(h, true);
        fetch_start(h, 1, m[i], m[i]->len);
        assert_true(conn_queued_blocks(&h->s->client) > 0 || i == 1);
        kill_session(h);
        rh_settle(h);
        rh_free(&h);
        assert_int_equal(used_budget(), 0);
    }
    free(clean.msg);
    free(bad.msg);
}

/* POP3: waiting for budget, collecting, and output held, each killed. */
static void t_kill_pop3(void **state)
{
    (void)state;
    struct big b = big_msg(NULL);
    char *stuffed = rh_stuff(b.msg);
    char *status = rh_strf("+OK %zu octets\r\n", b.len);
    struct rh *h[3] = {rh_open_as(RH_POP3, RH_SCAN_ON, "u1"), rh_open_as(RH_POP3, RH_SCAN_ON, "u2"),
                       rh_open_as(RH_POP3, RH_SCAN_ON, "u3")};
    for (int i = 0; i < 3; i++) {
        rh_client_send(h[i], "RETR 1\r\n", 8, 0);
        {
            size_t n_;
            free(rh_backend_received(h[i], &n_));
        }
        rh_backend_send(h[i], status, strlen(status), 0);
        rh_backend_send(h[i], stuffed, 1000, 0);
    }
    assert_true(used_budget() > 0);
    kill_session(h[2]); /* waiting (or holding: then the others wait) */
    rh_settle(h[0]);
    kill_session(h[0]);
    rh_settle(h[1]);
    /* the last one gets its whole message and holds its output: the client does not read */
    rh_client_deaf(h[1], true);
    rh_backend_send(h[1], stuffed + 1000, strlen(stuffed) - 1000, 0);
    rh_backend_send(h[1], ".\r\n", 3, 0);
    kill_session(h[1]);
    rh_settle(h[1]);
    rh_free_all(h, 3);
    assert_int_equal(used_budget(), 0);
    free(status);
    free(stuffed);
    free(b.msg);
}

/* Fairness: one user with three large fetches holds its share (one message; the others wait for
 * its own releases); another user's small fetch is not held up behind them. */
static void t_other_user_not_starved(void **state)
{
    (void)state;
    struct big b = big_msg(NULL);
    struct rh *a[3];
    for (int i = 0; i < 3; i++) {
        a[i] = rh_open_as(RH_IMAP, RH_SCAN_ON, "greedy");
        fetch_start(a[i], (unsigned)i + 1, &b, 1000);
    }
    assert_int_equal(used_budget(), b.len); /* its share: one message */
    assert_int_equal(imap_sc(a[1]->s)->phase, SC_BUDGET);
    assert_int_equal(imap_sc(a[2]->s)->phase, SC_BUDGET);

    struct rh *o = rh_open_as(RH_IMAP, RH_SCAN_ON, "other");
    struct big small = {.msg = rh_message(20000, NULL)};
    small.len = strlen(small.msg);
    fetch_start(o, 9, &small, small.len);
    size_t n = 0;
    char *got = rh_client_received(o, &n);
    char *want =
        rh_strf("* 1 FETCH (UID 9 BODY[] {%zu}\r\n%s)\r\nf OK done\r\n", small.len, small.msg);
    assert_string_equal(got, want);
    free(got);
    free(want);

    /* the greedy user's first response completes: its next one is granted */
    fetch_rest(a[0], &b, 1000);
    {
        size_t n_;
        free(rh_client_received(a[0], &n_));
    }
    rh_settle(a[1]);
    assert_int_equal(imap_sc(a[1]->s)->phase, SC_COLLECT);
    assert_int_equal(imap_sc(a[2]->s)->phase, SC_BUDGET);
    rh_free(&o);
    rh_free_all(a, 3);
    assert_int_equal(used_budget(), 0);
    free(small.msg);
    free(b.msg);
}

/* Output the client does not read ends the session after held_timeout (300ms here), with the
 * budget given back; a client that reads is not ended. */
static void t_held_timeout(void **state)
{
    (void)state;
    struct big b = big_msg(NULL);
    struct rh *h = rh_open_as(RH_IMAP, RH_SCAN_ON, "u1");
    rh_client_deaf(h, true);
    fetch_start(h, 1, &b, b.len);
    assert_true(conn_queued_blocks(&h->s->client) > 0); /* more than the socket takes */
    assert_true(used_budget() > 0);
    run_for(1.0);
    rh_settle(h);
    /* ended (reason=held_timeout): closing, its BYE after what the client has not read, for
     * limits.closing_timeout at most; freed then with its output and budget */
    assert_true(!h->s || (h->s->state == SESS_CLOSING && h->s->close_reason &&
                          strcmp(h->s->close_reason, "held_timeout") == 0));
    rh_free(&h);
    assert_int_equal(used_budget(), 0);

    /* the same response read by the client: never ended */
    h = rh_open_as(RH_IMAP, RH_SCAN_ON, "u1");
    fetch_start(h, 1, &b, b.len);
    for (int i = 0; i < 10; i++) {
        {
            size_t n_;
            free(rh_client_received(h, &n_));
        }
        run_for(0.1);
    }
    {
        size_t n_;
        free(rh_client_received(h, &n_));
    }
    assert_non_null(h->s);
    assert_false(h->s->closing);
    rh_free(&h);
    assert_int_equal(used_budget(), 0);
    free(b.msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_kill_waiting),
        cmocka_unit_test(t_kill_grant_race_holder_first),
        cmocka_unit_test(t_kill_grant_to_closing),
        cmocka_unit_test(t_kill_scanning),
        cmocka_unit_test(t_kill_output_held),
        cmocka_unit_test(t_kill_pop3),
        cmocka_unit_test(t_other_user_not_starved),
        cmocka_unit_test(t_held_timeout),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
