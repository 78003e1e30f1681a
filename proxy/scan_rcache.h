/*
 * scan_rcache — the shared verdict cache in Redis: msgscan's remote cache hook (msgscan.h)
 * over the worker's policy connection. Another instance, or this one after a restart, judges a
 * message it has already seen from the cache instead of scanning it again.
 */
#ifndef PORTCULLIS_SCAN_RCACHE_H
#define PORTCULLIS_SCAN_RCACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "msgscan.h"

struct worker;

/* On the worker's thread, after its policy and scan state exist: plugs the Redis cache in when
 * both Redis and scanning are configured. */
void scan_rcache_attach(struct worker *w);

/* The stored value, exposed for the unit test: "v1 C <date> - -" (clean) or
 * "v1 I <date> <ref> <signature>" (infected). Encode returns the length (0: does not fit);
 * decode returns false for anything malformed (a miss). */
size_t scan_rcache_encode(const struct msgscan_cached *v, char *out, size_t cap);
bool scan_rcache_decode(const char *val, size_t len, struct msgscan_cached *v);

#endif
