/*
 * metrics — process-wide counters and the Prometheus text exposition of them.
 *
 * Counters are atomics updated on the worker loops without locks; /metrics (admin.c, main
 * thread) reads them. Modules that keep their own statistics (scanner pool, policy, backends)
 * register a collector that appends their series to the exposition.
 * Names follow the Prometheus conventions: portcullis_<what>_total for counters, base units
 * (bytes, seconds).
 */
#ifndef PORTCULLIS_METRICS_H
#define PORTCULLIS_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "config.h"

#define METRICS_LISTENERS 64

enum metrics_login {
    ML_OK,          /* logged in at the backend */
    ML_AUTH_FAILED, /* the backend refused the credentials */
    ML_UNAVAILABLE, /* no backend could be reached / logged in to */
    ML_REFUSED,     /* refused by the proxy (plaintext, policy, lock-out) */
    ML__COUNT
};

struct metrics {
    struct {
        atomic_ullong accepted;
        atomic_llong active;
        atomic_ullong tls_failures;
    } listener[METRICS_LISTENERS];
    atomic_ullong logins[2][ML__COUNT];   /* [CFG_PROTO_*][result] */
    atomic_ullong bytes_to_client[2];     /* [CFG_PROTO_*] */
    atomic_ullong bytes_to_backend[2];
    atomic_ullong sessions_closed[2];
    atomic_ullong starttls_injections;
};

extern struct metrics metrics;

/* A refusal, counted by reason (copied; at most 64 distinct reasons, the rest count as
 * "other"). */
void metrics_refusal(const char *reason);
/* Count what a session log line reports (`event=refused reason=…`, `event=login …`,
 * `event=login_failed …`, `event=starttls_injection`); `proto` is CFG_PROTO_*. */
void metrics_from_event(const char *msg, int proto);

/* Appends series to the exposition; runs on the main thread with `out` to append to. */
typedef void metrics_collector(struct buf *out, void *arg);
void metrics_register(metrics_collector *fn, void *arg);

/* Render the whole exposition (for the listeners of `cfg`) into `out` (a buf with room; text
 * is truncated at its capacity). */
void metrics_render(const struct config *cfg, struct buf *out);

#endif
