/*
 * msgscan_metrics — private to msgscan.c and msgscan_metrics.c: the Prometheus rendering of the
 * scanner's counters, split from msgscan.c by concern (what is counted stays there).
 */
#ifndef PORTCULLIS_MSGSCAN_METRICS_H
#define PORTCULLIS_MSGSCAN_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "pool.h"

/* metrics_register() collector: appends the scan series to `o`. */
void msgscan_metrics_render(struct buf *o, void *arg);
/* Histograms: engine time of one scan; jobs in the pool queue as one joins it. */
void msgscan_observe_scan(uint64_t elapsed_us);
void msgscan_observe_queue(unsigned queued);

/* msgscan.c: the engine's version string / the pool's state; false while scanning is off. */
bool msgscan_engine_version(char *buf, size_t cap);
bool msgscan_pool_stats(struct pool_stats *st);

#endif
