/*
 * msgscan_metrics — the scanner's Prometheus series (verdicts, actions, scans, cache hits,
 * bytes, time, quarantine, reloads, the engine and the pool), rendered from msgscan's counters
 * for the admin endpoint, and the two histograms the scan path feeds.
 */
#include "msgscan_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "msgscan.h"

/* Engine time per scan, and the pool's queue as each job joins it (jobs waiting, itself
 * included): the two numbers that say whether scan.threads is enough. */
static const double scan_secs_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,  0.5,    1,     2.5,  5,     10};
static struct metrics_hist scan_secs = {
    .bounds = scan_secs_bounds, .nbounds = sizeof scan_secs_bounds / sizeof *scan_secs_bounds};
static const double queue_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
static struct metrics_hist queue_depth = {.bounds = queue_bounds,
                                          .nbounds = sizeof queue_bounds / sizeof *queue_bounds};

void msgscan_observe_scan(uint64_t elapsed_us)
{
    metrics_hist_observe(&scan_secs, (double)elapsed_us / 1e6);
}

void msgscan_observe_queue(unsigned queued)
{
    metrics_hist_observe(&queue_depth, queued);
}

void msgscan_metrics_render(struct buf *o, void *arg)
{
    (void)arg;
    struct msgscan_counters c;
    msgscan_counters_get(&c);
    buf_printf(o, "# HELP portcullis_scan_verdicts_total Messages judged, by verdict.\n"
                  "# TYPE portcullis_scan_verdicts_total counter\n");
    buf_printf(o, "portcullis_scan_verdicts_total{verdict=\"clean\"} %llu\n",
               (unsigned long long)c.clean);
    buf_printf(o, "portcullis_scan_verdicts_total{verdict=\"infected\"} %llu\n",
               (unsigned long long)c.infected);
    buf_printf(o, "portcullis_scan_verdicts_total{verdict=\"oversize\"} %llu\n",
               (unsigned long long)c.oversize);
    buf_printf(o, "portcullis_scan_verdicts_total{verdict=\"error\"} %llu\n",
               (unsigned long long)c.error);
    buf_printf(o, "portcullis_scan_verdicts_total{verdict=\"limit\"} %llu\n",
               (unsigned long long)c.limit);
    buf_printf(o,
               "# HELP portcullis_scan_notice_scans_total Notices scanned before delivery.\n"
               "# TYPE portcullis_scan_notice_scans_total counter\n"
               "portcullis_scan_notice_scans_total %llu\n"
               "# HELP portcullis_scan_notice_minimal_total Notices replaced by the minimal "
               "notice (matched a signature or could not be scanned).\n"
               "# TYPE portcullis_scan_notice_minimal_total counter\n"
               "portcullis_scan_notice_minimal_total %llu\n",
               (unsigned long long)c.notice_scans, (unsigned long long)c.notice_minimal);
    buf_printf(o, "# HELP portcullis_scan_actions_total Judged messages by what the client "
                  "got.\n# TYPE portcullis_scan_actions_total counter\n");
    buf_printf(o, "portcullis_scan_actions_total{action=\"pass\"} %llu\n",
               (unsigned long long)c.delivered);
    buf_printf(o, "portcullis_scan_actions_total{action=\"block\"} %llu\n",
               (unsigned long long)c.replaced);
    buf_printf(o,
               "# HELP portcullis_scan_scans_total Scans run by the engine.\n"
               "# TYPE portcullis_scan_scans_total counter\n"
               "portcullis_scan_scans_total %llu\n",
               (unsigned long long)c.scanned);
    buf_printf(o,
               "# HELP portcullis_scan_cache_hits_total Verdicts served from the cache.\n"
               "# TYPE portcullis_scan_cache_hits_total counter\n"
               "portcullis_scan_cache_hits_total{cache=\"any\"} %llu\n"
               "portcullis_scan_cache_hits_total{cache=\"remote\"} %llu\n",
               (unsigned long long)c.cache_hits, (unsigned long long)c.remote_hits);
    buf_printf(o,
               "# HELP portcullis_scan_bytes_total Bytes scanned by the engine.\n"
               "# TYPE portcullis_scan_bytes_total counter\n"
               "portcullis_scan_bytes_total %llu\n",
               (unsigned long long)c.scanned_bytes);
    buf_printf(o,
               "# HELP portcullis_scan_seconds_total Time spent in scans.\n"
               "# TYPE portcullis_scan_seconds_total counter\n"
               "portcullis_scan_seconds_total %.6f\n",
               (double)c.scan_us / 1e6);
    buf_printf(o,
               "# HELP portcullis_scan_quarantined_total Originals written to quarantine.\n"
               "# TYPE portcullis_scan_quarantined_total counter\n"
               "portcullis_scan_quarantined_total{result=\"ok\"} %llu\n"
               "portcullis_scan_quarantined_total{result=\"failed\"} %llu\n",
               (unsigned long long)c.quarantined, (unsigned long long)c.quarantine_failed);
    buf_printf(o,
               "# HELP portcullis_scan_reloads_total Signature reloads.\n"
               "# TYPE portcullis_scan_reloads_total counter\n"
               "portcullis_scan_reloads_total{result=\"ok\"} %llu\n"
               "portcullis_scan_reloads_total{result=\"failed\"} %llu\n",
               (unsigned long long)c.reloads, (unsigned long long)c.reload_failures);
    metrics_hist_render(o, "portcullis_scan_duration_seconds", "Engine time per scan.", &scan_secs);
    metrics_hist_render(o, "portcullis_scan_queue_depth",
                        "Scan jobs waiting in the pool when a job joins the queue (itself "
                        "included).",
                        &queue_depth);
    char v[160];
    if (msgscan_engine_version(v, sizeof v)) {
        /* "clamav-1.4.1/db-27500/sigs-8712345/fp-…" (scanner.h): the version string as an
         * info label, and the database version and signature count as numbers to alert on. */
        unsigned long long db = 0, sigs = 0;
        const char *p = strstr(v, "/db-");
        if (p)
            db = strtoull(p + 4, NULL, 10);
        p = strstr(v, "/sigs-");
        if (p)
            sigs = strtoull(p + 6, NULL, 10);
        char lv[200];
        buf_printf(o,
                   "# HELP portcullis_scan_engine_info The engine new scans use.\n"
                   "# TYPE portcullis_scan_engine_info gauge\n"
                   "portcullis_scan_engine_info{version=\"%s\"} 1\n"
                   "# HELP portcullis_scan_database_version Version of the signature database "
                   "(daily.cvd; 0 for unsigned databases only).\n"
                   "# TYPE portcullis_scan_database_version gauge\n"
                   "portcullis_scan_database_version %llu\n"
                   "# HELP portcullis_scan_signatures Signatures loaded.\n"
                   "# TYPE portcullis_scan_signatures gauge\n"
                   "portcullis_scan_signatures %llu\n",
                   metrics_label(lv, sizeof lv, v), db, sigs);
    }
    struct scanner_health h;
    if (msgscan_scanner_health(&h)) {
        buf_printf(o,
                   "# HELP portcullis_scan_canary_ok 1 while the scanner's canary is detected; "
                   "0: the scanner is broken and every verdict is an error.\n"
                   "# TYPE portcullis_scan_canary_ok gauge\n"
                   "portcullis_scan_canary_ok %d\n"
                   "# HELP portcullis_scan_canary_runs_total Canary scans (every variant).\n"
                   "# TYPE portcullis_scan_canary_runs_total counter\n"
                   "portcullis_scan_canary_runs_total %llu\n"
                   "# HELP portcullis_scan_canary_failures_total Canary runs with a variant not "
                   "detected.\n"
                   "# TYPE portcullis_scan_canary_failures_total counter\n"
                   "portcullis_scan_canary_failures_total %llu\n"
                   "# HELP portcullis_scan_faults_total Scans refused or turned into errors by a "
                   "fault: an unusable work directory, or an error libclamav reported.\n"
                   "# TYPE portcullis_scan_faults_total counter\n"
                   "portcullis_scan_faults_total{kind=\"work_dir\"} %llu\n"
                   "portcullis_scan_faults_total{kind=\"engine\"} %llu\n",
                   h.ok ? 1 : 0, (unsigned long long)h.canary_runs,
                   (unsigned long long)h.canary_failures, (unsigned long long)h.work_dir_errors,
                   (unsigned long long)h.engine_errors);
    }
    struct pool_stats st;
    if (msgscan_pool_stats(&st)) {
        buf_printf(o,
                   "# HELP portcullis_scan_queue Scan jobs waiting, running, and finished but "
                   "not yet delivered to their session's loop.\n"
                   "# TYPE portcullis_scan_queue gauge\n"
                   "portcullis_scan_queue{state=\"queued\"} %u\n"
                   "portcullis_scan_queue{state=\"running\"} %u\n"
                   "portcullis_scan_queue{state=\"done\"} %u\n",
                   st.queued, st.running, st.done);
        buf_printf(o,
                   "# HELP portcullis_scan_budget_bytes Bytes held for scanning.\n"
                   "# TYPE portcullis_scan_budget_bytes gauge\n"
                   "portcullis_scan_budget_bytes{state=\"used\"} %llu\n"
                   "portcullis_scan_budget_bytes{state=\"limit\"} %llu\n",
                   (unsigned long long)st.budget_used, (unsigned long long)st.budget);
    }
}
