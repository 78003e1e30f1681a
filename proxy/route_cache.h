/*
 * route_cache — a worker's small LRU of routing answers with a time to live.
 *
 * Fixed capacity (routing.cache_entries): inserting into a full cache evicts the least
 * recently used entry; an expired entry is dropped when it is found. Single-threaded (one per
 * worker). Entries own copies of everything (the target's text and host), so they outlive the
 * answer and the source's table.
 */
#ifndef PORTCULLIS_ROUTE_CACHE_H
#define PORTCULLIS_ROUTE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "route_chain.h"

struct route_cache;

/* NULL: out of memory, or cap == 0 (no cache; every call below accepts NULL). */
struct route_cache *route_cache_new(size_t cap, bool fold_case);
void route_cache_free(struct route_cache **c);
/* A FOUND or NOT_FOUND answer for `user`, valid until the next call on the cache; false when
 * absent or expired at `now` (seconds, any monotonic clock). */
bool route_cache_get(struct route_cache *c, const char *user, double now, struct route_answer *a);
/* Remember a FOUND or NOT_FOUND answer until now + ttl (replacing any older one). */
void route_cache_put(struct route_cache *c, const char *user, const struct route_answer *a,
                     double now, double ttl);
void route_cache_flush(struct route_cache *c);
size_t route_cache_size(const struct route_cache *c);

#endif
