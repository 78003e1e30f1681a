/*
 * local — the in-memory limits a worker applies when Redis is unavailable (fail_mode open):
 * the same token buckets and failure lock-outs as the Lua scripts in ratelimit.c, kept per
 * worker (no locks on the session path), so with N workers a client can get up to N times the
 * configured allowance while Redis is down. Fed on every login whether Redis is up or not, so
 * an outage does not start from a clean slate.
 *
 * Memory is fixed at creation: `cap` entries in an open-addressed table keyed by a 64-bit hash
 * of the scope key; when the probe window is full the least recently used entry is evicted
 * (an attacker rotating names can only push out other entries, never grow the table).
 */
#ifndef PORTCULLIS_LOCAL_H
#define PORTCULLIS_LOCAL_H

#include <stddef.h>
#include <stdint.h>

struct local_tab;

struct local_tab *local_new(size_t cap);
void local_free(struct local_tab **t);

/* Lock-out and token bucket for one scope key at `now_ms`. Returns an enum rl_code; *detail_r
 * gets the retry-after in ms. burst 0 = no bucket, fail_limit 0 = no lock-out. */
int local_check(struct local_tab *t, const char *key, uint64_t now_ms, unsigned burst,
                uint64_t interval_ms, unsigned fail_limit, uint64_t *detail_r);
/* Count a failure; returns the lock-out length started (0 = none). */
uint64_t local_fail(struct local_tab *t, const char *key, uint64_t now_ms, unsigned limit,
                    uint64_t window_ms, uint64_t lock_ms, uint64_t lock_max_ms);
/* Forget the failures of a key (successful login). */
void local_reset(struct local_tab *t, const char *key, uint64_t now_ms);
size_t local_count(const struct local_tab *t, uint64_t now_ms);

#endif
