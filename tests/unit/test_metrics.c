/* Unit tests for the issue-18 series: the per-worker histogram (shards summed, cumulative
 * buckets, +Inf = _count, labels before `le`) and metrics_proc (build info, the reload gauges,
 * the process_* series). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "metrics.h"
#include "metrics_proc.h"

static const double bounds[] = {0.1, 1, 10};

static void contains(const char *text, const char *want)
{
    if (!strstr(text, want))
        fail_msg("missing %s in:\n%s", want, text);
}

static void whist_sums_shards(void **state)
{
    (void)state;
    static struct metrics_whist h = {.bounds = bounds, .nbounds = 3};
    metrics_whist_observe(&h, 0, 0.05); /* le 0.1 */
    metrics_whist_observe(&h, 1, 0.1);  /* le 0.1: bounds are inclusive */
    metrics_whist_observe(&h, 1, 5);    /* le 10 */
    metrics_whist_observe(&h, 63, 100); /* +Inf */
    metrics_whist_observe(&h, 64, 0.5); /* worker ids wrap onto the shards: le 1 */
    struct buf b;
    buf_init(&b, 4096);
    metrics_whist_render(&b, "x_seconds", "protocol=\"imap\"", &h);
    buf_append(&b, "", 1);
    const char *t = buf_rptr(&b);
    contains(t, "x_seconds_bucket{protocol=\"imap\",le=\"0.1\"} 2\n");
    contains(t, "x_seconds_bucket{protocol=\"imap\",le=\"1\"} 3\n");
    contains(t, "x_seconds_bucket{protocol=\"imap\",le=\"10\"} 4\n");
    contains(t, "x_seconds_bucket{protocol=\"imap\",le=\"+Inf\"} 5\n");
    contains(t, "x_seconds_sum{protocol=\"imap\"} 105.650000\n");
    contains(t, "x_seconds_count{protocol=\"imap\"} 5\n");
    buf_free(&b);
    /* Without labels: no empty braces on _sum/_count. */
    buf_init(&b, 4096);
    metrics_whist_render(&b, "y", "", &h);
    buf_append(&b, "", 1);
    contains(buf_rptr(&b), "y_bucket{le=\"0.1\"} 2\n");
    contains(buf_rptr(&b), "y_count 5\n");
    buf_free(&b);
}

/* The sample line (after the # HELP line, which starts with the same name). */
#define TS_LINE "\nportcullis_config_last_reload_success_timestamp_seconds "

static char *render_proc(struct buf *b)
{
    buf_init(b, 8192);
    metrics_proc_render(b);
    buf_append(b, "", 1);
    return buf_rptr(b);
}

static void proc_series_and_reload_gauges(void **state)
{
    (void)state;
    metrics_proc_start("1.2.3\"x");
    struct buf b;
    const char *t = render_proc(&b);
    contains(t, "portcullis_build_info{version=\"1.2.3\\\"x\",openssl=\"");
    contains(t, "portcullis_config_last_reload_successful 1\n");
    contains(t, "# TYPE process_cpu_seconds_total counter\n");
    contains(t, "process_resident_memory_bytes ");
    contains(t, "process_open_fds ");
    contains(t, "process_max_fds ");
    contains(t, "process_start_time_seconds ");
    const char *ts = strstr(t, TS_LINE);
    assert_non_null(ts);
    double first = strtod(ts + strlen(TS_LINE), NULL);
    if (!(first > 1.7e9))
        fail_msg("timestamp %f in:\n%s", first, t);
    buf_free(&b);

    metrics_config_reloaded(false);
    t = render_proc(&b);
    contains(t, "portcullis_config_last_reload_successful 0\n");
    ts = strstr(t, TS_LINE);
    /* A failed reload keeps the time of the last one that applied. */
    assert_true(strtod(ts + strlen(TS_LINE), NULL) == first);
    buf_free(&b);

    metrics_config_reloaded(true);
    t = render_proc(&b);
    contains(t, "portcullis_config_last_reload_successful 1\n");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whist_sums_shards),
        cmocka_unit_test(proc_series_and_reload_gauges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
