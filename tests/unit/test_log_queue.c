/*
 * Unit tests for proxy/log_queue.c and the log writer thread (issue 16): the queue is bounded,
 * a line that does not fit is dropped whole and counted, order is kept across wraps; lines
 * written through the writer all reach the file, in order, by log_writer_stop().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "log_queue.h"

static void t_bounded_drops_counted_order_kept(void **state)
{
    (void)state;
    struct logq q;
    assert_true(logq_init(&q, 4096));
    char line[200], out[LOGQ_REC_MAX];
    int pushed = 0, level;
    memset(line, 'x', sizeof line);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(line, sizeof line, "line %03d", i);
        line[n] = 'x';
        if (logq_push(&q, i % 4, line, 100))
            pushed++;
    }
    assert_true(pushed > 0 && pushed < 100);
    assert_int_equal(logq_dropped_total(&q), 100 - pushed);
    assert_true(q.len <= q.cap);
    for (int i = 0; i < pushed; i++) {
        long n = logq_pop_locked(&q, &level, out, sizeof out);
        assert_int_equal(n, 100);
        char want[16];
        snprintf(want, sizeof want, "line %03d", i);
        assert_memory_equal(out, want, strlen(want));
        assert_int_equal(level, i % 4);
    }
    assert_int_equal(logq_pop_locked(&q, &level, out, sizeof out), -1);
    /* Wrapping: push and pop past the end of the ring many times, order intact. */
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(line, sizeof line, "w%d", i);
        assert_true(logq_push(&q, 1, line, (size_t)n + 37 * (i % 3)));
        long m = logq_pop_locked(&q, &level, out, sizeof out);
        assert_int_equal(m, n + 37 * (i % 3));
        assert_memory_equal(out, line, (size_t)n);
    }
    logq_fini(&q);
}

static void t_writer_writes_all_in_order(void **state)
{
    (void)state;
    char path[] = "/tmp/portcullis-logq-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_true(log_open(LOG_INFO, path));
    assert_true(log_writer_start(1 << 20));
    for (int i = 0; i < 5000; i++)
        log_write(LOG_INFO, "event=test n=%d", i);
    log_writer_stop();
    log_write(LOG_INFO, "event=test n=after");
    assert_true(log_open(LOG_INFO, NULL));
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[512];
    int next = 0;
    bool after = false;
    while (fgets(buf, sizeof buf, f)) {
        const char *p = strstr(buf, "event=test n=");
        assert_non_null(p);
        if (strcmp(p + 13, "after\n") == 0) {
            after = true;
            continue;
        }
        assert_int_equal(atoi(p + 13), next);
        next++;
    }
    fclose(f);
    unlink(path);
    assert_int_equal(next, 5000);
    assert_true(after);
    assert_int_equal(log_dropped_total(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_bounded_drops_counted_order_kept),
        cmocka_unit_test(t_writer_writes_all_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
