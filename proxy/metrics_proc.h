/*
 * metrics_proc — the series about the process rather than its traffic: portcullis_build_info,
 * the standard process_* series every Prometheus client library exports (so the usual
 * dashboards and alerts work unchanged), and the outcome of the last configuration reload.
 *
 * Everything is read on the main thread when /metrics is scraped (from /proc and getrusage) or
 * recorded by the main thread at start and reload: nothing runs on a worker loop.
 */
#ifndef PORTCULLIS_METRICS_PROC_H
#define PORTCULLIS_METRICS_PROC_H

#include <stdbool.h>

#include "buf.h"

/* At start, once the configuration is loaded: the version for build_info, the process start
 * time, and a first successful "reload" (Prometheus' own convention: the initial load counts). */
void metrics_proc_start(const char *version);
/* A reload (SIGHUP or POST /reload) ended: ok, or the old configuration was kept. */
void metrics_config_reloaded(bool ok);
/* Append the series. */
void metrics_proc_render(struct buf *out);

#endif
