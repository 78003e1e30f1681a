/*
 * local — the in-memory lock-out and rate table: what decides when Redis is unavailable
 * (fail_mode open) or not configured. The same model as the Lua scripts in ratelimit.c
 * (docs/redis.md "Lock-out model"): failures per (user, network) with their limit, a per-user
 * ceiling that networks the user logged in from are exempt from, per-address failures, token
 * buckets, and attempts reserved at the check (so racing attempts cannot overrun a limit).
 *
 * One table per process (local_shared_get), shared by every worker thread behind one mutex:
 * with N workers a client gets the configured allowance, not N times it. Every call takes the
 * mutex for a few hash probes only (no I/O, no allocation). Fed on every login whether Redis is
 * up or not, so an outage does not start from a clean slate.
 *
 * What could not be written to Redis (failures, lock-outs, known networks) is marked
 * unsynced; local_take() hands those deltas out exactly once (to whichever worker asks first
 * once Redis is back), so the write-back adds each count once.
 *
 * Memory is fixed at creation: `cap` entries in an open-addressed table keyed by a 64-bit hash
 * of the scope key; when the probe window is full the least recently used entry is evicted
 * (an attacker rotating names can only push out other entries, never grow the table).
 */
#ifndef PORTCULLIS_LOCAL_H
#define PORTCULLIS_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct local_tab;
struct policy_limits;

struct local_tab *local_new(size_t cap);
void local_free(struct local_tab **t);
/* The process-wide table: the first call creates it with `cap` entries, later calls share it
 * (reference counted); NULL on out of memory. */
struct local_tab *local_shared_get(size_t cap);
void local_shared_put(struct local_tab **t);

/* The tags of one login (as in the Redis keys): escaped user, the user's network ("" = no
 * address), the address scope (NULL = none or exempt). */
struct local_login {
    const char *user;
    const char *net;
    const char *addr;
};
enum local_scope { LOCAL_SCOPE_USER, LOCAL_SCOPE_ADDR, LOCAL_SCOPE_PAIR };

/* Check and, when allowed, reserve the attempt (one step under the mutex). Returns an enum
 * rl_code; *scope_r which record refused, *detail_r the retry-after in ms. */
int local_login_check(struct local_tab *t, const struct local_login *k,
                      const struct policy_limits *l, uint64_t now, enum local_scope *scope_r,
                      uint64_t *detail_r);
enum local_outcome { LOCAL_FAILED, LOCAL_OK, LOCAL_RELEASE };
/* The result of a reserved attempt: a failure is counted (lock-outs as `fail`), a success
 * clears the (user, network) failures and remembers the network, a release only returns the
 * reservation. `synced` false: Redis did not get it, keep it for the write-back. locks_r
 * (may be NULL) gets the lock-outs a failure started here. */
struct local_locks {
    uint64_t user, pair, addr; /* lock-out started by this failure (ms), 0 = none */
};
void local_login_done(struct local_tab *t, const struct local_login *k,
                      const struct policy_limits *l, uint64_t now, enum local_outcome o,
                      bool synced, struct local_locks *locks_r);
/* A result already counted here whose Redis write was lost: keep it for the write-back. */
void local_login_unsynced(struct local_tab *t, const struct local_login *k, uint64_t now,
                          enum local_outcome o);

/* One record to write back. kind 'u' (user ceiling), 'p' (user, network), 'a' (address),
 * 'k' (known network). */
#define LOCAL_KEY_MAX 200
struct local_wb {
    char kind;
    char user[LOCAL_KEY_MAX]; /* empty for 'a' */
    char net[LOCAL_KEY_MAX];  /* network or address tag */
    unsigned add;             /* failures not in Redis */
    unsigned level;
    uint64_t left_ms; /* lock-out time left (0 = none) */
};
/* Hand out up to `max` unsynced records and mark them synced. */
size_t local_take(struct local_tab *t, uint64_t now, struct local_wb *out, size_t max);
/* Records waiting for the write-back (cheap: a counter). */
size_t local_unsynced(struct local_tab *t);

/* The primitives (single key) the login calls are made of; unit tests use them directly.
 * Lock-out and token bucket for one key: an enum rl_code; *detail_r the retry-after in ms.
 * burst 0 = no bucket, fail_limit 0 = no lock-out. */
int local_check(struct local_tab *t, const char *key, uint64_t now_ms, unsigned burst,
                uint64_t interval_ms, unsigned fail_limit, uint64_t *detail_r);
/* Count a failure; returns the lock-out length started (0 = none). */
uint64_t local_fail(struct local_tab *t, const char *key, uint64_t now_ms, unsigned limit,
                    uint64_t window_ms, uint64_t lock_ms, uint64_t lock_max_ms);
/* Forget the failures of a key (successful login). */
void local_reset(struct local_tab *t, const char *key, uint64_t now_ms);
size_t local_count(struct local_tab *t, uint64_t now_ms);

#endif
