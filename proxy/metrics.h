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

/* Policy decisions, as sess_policy.c receives them (the order of enum policy_result). */
enum metrics_policy { MP_ALLOW, MP_LOCKED, MP_RATE, MP_SESSIONS, MP_UNAVAILABLE, MP__COUNT };

struct metrics {
    struct {
        atomic_ullong accepted;
        atomic_llong active;
        atomic_ullong tls_failures;
    } listener[METRICS_LISTENERS];
    atomic_ullong logins[2][ML__COUNT]; /* [CFG_PROTO_*][result] */
    atomic_ullong bytes_to_client[2];   /* [CFG_PROTO_*] */
    atomic_ullong bytes_to_backend[2];
    atomic_ullong sessions_closed[2];
    atomic_ullong starttls_injections;
    atomic_ullong pop3_dele_withheld;   /* DELE of a blocked message answered, not passed on */
    atomic_ullong policy[MP__COUNT][2]; /* [decision][scope: 0 user, 1 address] */
    atomic_ullong policy_degraded;      /* decisions taken without Redis (local limits) */
};

/* A Prometheus histogram with fixed upper bounds (ascending; +Inf is implicit). Observations
 * are lock-free from any thread; the exposition reads the atomics. Buckets are stored
 * non-cumulative and summed when rendered. */
#define METRICS_HIST_MAX 16
struct metrics_hist {
    const double *bounds;
    size_t nbounds; /* <= METRICS_HIST_MAX */
    atomic_ullong bucket[METRICS_HIST_MAX + 1];
    atomic_ullong count;
    atomic_ullong sum_micro; /* sum of observations ×1e6 (values are small, non-negative) */
};
/* A histogram kept per worker (METRICS_WORKERS shards, one cache line apart): each shard has
 * one writer, its worker thread, so an observation is a plain relaxed load and store, no locked
 * instruction and no line shared between workers; the exposition sums the shards. */
#define METRICS_WORKERS 64
struct metrics_whist_shard {
    _Alignas(64) atomic_ullong bucket[METRICS_HIST_MAX + 1]; /* non-cumulative */
    atomic_ullong sum_micro;
};
struct metrics_whist {
    const double *bounds;
    size_t nbounds; /* <= METRICS_HIST_MAX */
    struct metrics_whist_shard shard[METRICS_WORKERS];
};
void metrics_whist_observe(struct metrics_whist *h, int worker, double v);
/* The _bucket/_sum/_count lines (no # HELP/TYPE) of the shards' sum; `labels` ("k=\"v\"", may
 * be "") go before `le`. */
void metrics_whist_render(struct buf *o, const char *name, const char *labels,
                          struct metrics_whist *h);

/* A login command answered (the backend logged the user in, refused, or could not be reached):
 * seconds since the client's command arrived. `proto` is CFG_PROTO_*; `worker` the caller's. */
void metrics_observe_login(int worker, int proto, double secs);
/* A session closed, `secs` after it was accepted. */
void metrics_observe_session(int worker, int proto, double secs);

/* `v` escaped for a label value (\\, \", \n), truncated to fit `cap`; returns `out`. */
const char *metrics_label(char *out, size_t cap, const char *v);

void metrics_hist_observe(struct metrics_hist *h, double v);
/* `name` without the _bucket/_sum/_count suffixes. */
void metrics_hist_render(struct buf *o, const char *name, const char *help, struct metrics_hist *h);

extern struct metrics metrics;

/* A refusal, counted by reason (copied; at most 64 distinct reasons, the rest count as
 * "other"). Session events count theirs through sess_event.c. */
void metrics_refusal(const char *reason);
/* How many refusals `reason` has counted so far (0 if none). */
unsigned long long metrics_refusal_count(const char *reason);

/* Appends series to the exposition; runs on the main thread with `out` to append to. */
typedef void metrics_collector(struct buf *out, void *arg);
void metrics_register(metrics_collector *fn, void *arg);

/* Render the whole exposition (for the listeners of `cfg`) into `out` (a buf with room; text
 * is truncated at its capacity). */
void metrics_render(const struct config *cfg, struct buf *out);

#endif
