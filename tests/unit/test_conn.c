/* Unit tests for conn's output side over a socketpair: the order of released relay bytes, ctl
 * output and queued blocks; block release callbacks (sent or dropped); CONN_EV_DRAINED after a
 * synchronous flush and after a partial one completed by the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "conn.h"

struct fx {
    struct ev_loop *loop;
    int peer;
    struct conn c;
    struct buf rbuf, wbuf;
    int drained, writes;
    size_t done_sum;
    int done_calls;
};

static void handler(struct conn *c, int events)
{
    struct fx *f = c->owner;
    if (events & CONN_EV_DRAINED)
        f->drained++;
    if (events & CONN_EV_WRITE)
        f->writes++;
}

static void done_cb(void *arg, size_t val)
{
    struct fx *f = arg;
    f->done_sum += val;
    f->done_calls++;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    f->loop = ev_loop_new(0);
    f->peer = sv[1];
    buf_init(&f->rbuf, 4096);
    buf_init(&f->wbuf, 1 << 20);
    conn_init(&f->c, f->loop, sv[0], handler, f, 4096);
    f->c.rbuf = &f->rbuf;
    f->c.wbuf = &f->wbuf;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    conn_close(&f->c);
    buf_free(&f->rbuf);
    buf_free(&f->wbuf);
    close(f->peer);
    ev_loop_destroy(f->loop);
    free(f);
    return 0;
}

static void release(struct fx *f, const char *s)
{
    assert_true(buf_append(&f->wbuf, s, strlen(s)));
    buf_release(&f->wbuf, strlen(s));
}

static void queue(struct fx *f, const char *s, size_t val)
{
    assert_true(conn_queue(&f->c, strdup(s), strlen(s), done_cb, f, val));
}

static size_t peer_read(struct fx *f, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t k = recv(f->peer, out + n, cap - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    return n;
}

static void test_order(void **state)
{
    struct fx *f = *state;
    release(f, "r1.");
    assert_true(conn_ctl_append(&f->c, "c1.", 3));
    queue(f, "k1.", 1);
    release(f, "r2.");
    assert_true(conn_ctl_append(&f->c, "c2.", 3));
    queue(f, "k2.", 2);
    release(f, "r3.");
    assert_int_equal(conn_queued_blocks(&f->c), 2);
    assert_int_equal(conn_queued_bytes(&f->c), 6);
    assert_int_equal(conn_pending_out(&f->c), 21);
    assert_int_equal(conn_flush(&f->c), 21);
    char out[64];
    size_t n = peer_read(f, out, sizeof out);
    assert_int_equal(n, 21);
    assert_memory_equal(out, "r1.c1.k1.r2.c2.k2.r3.", 21);
    assert_int_equal(f->done_calls, 2);
    assert_int_equal(f->done_sum, 3);
    assert_int_equal(conn_pending_out(&f->c), 0);
}

static void test_drained_after_sync_flush(void **state)
{
    struct fx *f = *state;
    queue(f, "notice", 0);
    conn_flush(&f->c); /* as sess_pump() does: no I/O callback involved */
    conn_update(&f->c);
    assert_int_equal(f->drained, 0); /* never from inside the flush */
    ev_run(f->loop, EVRUN_NOWAIT);
    assert_int_equal(f->drained, 1);
    ev_run(f->loop, EVRUN_NOWAIT);
    assert_int_equal(f->drained, 1); /* once */
    char out[16];
    assert_int_equal(peer_read(f, out, sizeof out), 6);
}

static void test_drained_survives_interest_change(void **state)
{
    struct fx *f = *state;
    release(f, "abc");
    assert_true(conn_ctl_append(&f->c, "* OK\r\n", 6));
    conn_flush(&f->c);
    conn_update(&f->c); /* feeds the event */
    f->c.reading = true;
    conn_update(&f->c); /* interest changes: the watcher restarts, the event is fed again */
    ev_run(f->loop, EVRUN_NOWAIT);
    assert_int_equal(f->drained, 1);
}

static void test_no_drained_without_output(void **state)
{
    struct fx *f = *state;
    conn_flush(&f->c);
    conn_update(&f->c);
    ev_run(f->loop, EVRUN_NOWAIT);
    assert_int_equal(f->drained, 0);
    /* relayed bytes alone: CONN_EV_WRITE's business, no DRAINED */
    release(f, "relayed");
    conn_flush(&f->c);
    conn_update(&f->c);
    ev_run(f->loop, EVRUN_NOWAIT);
    assert_int_equal(f->drained, 0);
}

static void test_partial_then_loop(void **state)
{
    struct fx *f = *state;
    int small = 4096;
    setsockopt(f->c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    size_t big = 1 << 20;
    char *blk = malloc(big);
    for (size_t i = 0; i < big; i++)
        blk[i] = (char)('a' + i % 26);
    release(f, "head.");
    assert_true(conn_queue(&f->c, blk, big, done_cb, f, 7));
    conn_flush(&f->c);
    assert_true(conn_pending_out(&f->c) > 0);
    release(f, "tail."); /* after the block, though queued while it is half sent */
    conn_update(&f->c);
    char *out = malloc(big + 64);
    size_t n = 0;
    for (int i = 0; i < 100000 && f->drained == 0; i++) {
        ssize_t k = recv(f->peer, out + n, big + 64 - n, 0);
        if (k > 0)
            n += (size_t)k;
        ev_run(f->loop, EVRUN_NOWAIT);
    }
    n += peer_read(f, out + n, big + 64 - n);
    assert_int_equal(f->drained, 1);
    assert_true(f->writes > 0);
    assert_int_equal(n, big + 10);
    assert_memory_equal(out, "head.", 5);
    assert_memory_equal(out + 5, "abcdefghij", 10);
    assert_memory_equal(out + 5 + big, "tail.", 5);
    assert_int_equal(f->done_sum, 7);
    free(out);
}

static void test_dropped_bytes_do_not_hold_a_block(void **state)
{
    struct fx *f = *state;
    release(f, "gone");
    queue(f, "block", 0);
    buf_clear(&f->wbuf); /* a close path dropped the relay buffer */
    conn_flush(&f->c);
    char out[16];
    size_t n = peer_read(f, out, sizeof out);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "block", 5);
    release(f, "next");
    conn_flush(&f->c);
    assert_int_equal(peer_read(f, out, sizeof out), 4);
}

/* Released bytes dropped under a queued block (a close path): the blocks still go, in their
 * order, and nothing underflows (conn.h: order against later releases is not kept then). */
static void test_block_after_drop_keeps_block_order(void **state)
{
    struct fx *f = *state;
    release(f, "0123456789");
    queue(f, "A", 0);
    buf_clear(&f->wbuf); /* the ten bytes before A are gone */
    release(f, "xy");
    queue(f, "B", 0);
    conn_flush(&f->c);
    char out[16];
    size_t n = peer_read(f, out, sizeof out);
    assert_int_equal(n, 4);
    const char *a = memchr(out, 'A', n), *b = memchr(out, 'B', n);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    assert_int_equal(conn_pending_out(&f->c), 0);
}

static void test_close_releases_blocks(void **state)
{
    struct fx *f = *state;
    queue(f, "one", 10);
    queue(f, "two", 20);
    conn_close(&f->c);
    assert_int_equal(f->done_calls, 2);
    assert_int_equal(f->done_sum, 30);
    assert_int_equal(conn_queued_blocks(&f->c), 0);
}

static void test_queue_copy_and_empty(void **state)
{
    struct fx *f = *state;
    assert_true(conn_queue_copy(&f->c, "xyz", 3));
    assert_true(conn_queue(&f->c, malloc(1), 0, NULL, NULL, 0)); /* an empty block */
    assert_true(conn_queue_copy(&f->c, "!", 1));
    conn_flush(&f->c);
    char out[8];
    assert_int_equal(peer_read(f, out, sizeof out), 4);
    assert_memory_equal(out, "xyz!", 4);
    assert_int_equal(conn_queued_blocks(&f->c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drained_after_sync_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drained_survives_interest_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_drained_without_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_then_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_bytes_do_not_hold_a_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_after_drop_keeps_block_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_releases_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_copy_and_empty, setup, teardown),
    };
    return cmocka_run_group_tests_name("conn", tests, NULL, NULL);
}
