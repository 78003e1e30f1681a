/*
 * route_rcache — the routing chain's shared cache level (route_chain_set_shared) over the
 * worker's Redis command connection of the policy module (policy_kv_*: GET, and SET PX fire
 * and forget). Redis not configured, not ready or too busy is a miss at once, never a wait;
 * the chain bounds a slow GET with routing.shared_cache_timeout.
 */
#ifndef PORTCULLIS_ROUTE_RCACHE_H
#define PORTCULLIS_ROUTE_RCACHE_H

struct route_chain;
struct worker;

/* Before a worker starts (main thread, idempotent): its /metrics series exist from the
 * start, with or without routing lookups. */
void route_rcache_start(void);

/* On the worker's thread, for a chain it just built: plugs Redis in when the configuration has
 * routing.shared_cache and a `redis:` section. The chain must not outlive w->policy. */
void route_rcache_attach(struct route_chain *c, struct worker *w);

#endif
