/*
 * route_rcache — see route_rcache.h. A thin adapter: the key's parts and the value come from
 * route_shared.h through the chain; here they only travel to Redis and back, counted for
 * /metrics (process-wide atomics: any worker adds, the main thread reads).
 */
#include "route_rcache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "buf.h"
#include "metrics.h"
#include "policy.h"
#include "route_chain.h"
#include "route_shared.h"
#include "worker.h"

/* What the shared routing cache did (docs/metrics.md portcullis_route_shared_cache_total). */
enum rr_count { RR_HIT, RR_MISS, RR_ABANDONED, RR_STORED, RR__COUNT };
static const char *const rr_names[RR__COUNT] = {"hit", "miss", "abandoned", "stored"};
static atomic_ullong rr_counts[RR__COUNT];

static void rr_count(enum rr_count c)
{
    atomic_fetch_add_explicit(&rr_counts[c], 1, memory_order_relaxed);
}

static void rr_render(struct buf *o, void *arg)
{
    (void)arg;
    buf_printf(o, "# HELP portcullis_route_shared_cache_total Shared routing cache reads in Redis "
                  "(hit: a stored answer came back; miss: none, or Redis down; abandoned: slower "
                  "than routing.shared_cache_timeout or the client left) and answers stored.\n"
                  "# TYPE portcullis_route_shared_cache_total counter\n");
    for (int i = 0; i < RR__COUNT; i++)
        buf_printf(o, "portcullis_route_shared_cache_total{result=\"%s\"} %llu\n", rr_names[i],
                   (unsigned long long)atomic_load(&rr_counts[i]));
}

static void rr_register(void)
{
    metrics_register(rr_render, NULL);
}

struct rr_get {
    struct policy_kv_req *q;
    route_shared_got_fn *cb;
    void *arg;
};

static void on_got(void *arg, const char *val, size_t len)
{
    struct rr_get *g = arg;
    route_shared_got_fn *cb = g->cb;
    void *cbarg = g->arg;
    free(g);
    rr_count(val ? RR_HIT : RR_MISS);
    cb(cbarg, val, len);
}

static void *rr_get(void *ctx, const char *tag, const char *suffix, route_shared_got_fn *cb,
                    void *arg)
{
    struct rr_get *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->cb = cb;
    g->arg = arg;
    g->q = policy_kv_get(ctx, ROUTE_SHARED_KIND, tag, suffix, on_got, g);
    if (!g->q) { /* Redis not ready or too busy: a miss now */
        free(g);
        rr_count(RR_MISS);
        return NULL;
    }
    return g;
}

static void rr_cancel(void *ctx, void *handle)
{
    (void)ctx;
    struct rr_get *g = handle;
    policy_kv_cancel(&g->q);
    free(g);
    rr_count(RR_ABANDONED);
}

static void rr_put(void *ctx, const char *tag, const char *suffix, const char *val, size_t len,
                   uint64_t ttl_ms)
{
    policy_kv_set(ctx, ROUTE_SHARED_KIND, tag, suffix, val, len, ttl_ms);
    rr_count(RR_STORED);
}

static const struct route_shared_ops ops = {.get = rr_get, .cancel = rr_cancel, .put = rr_put};

void route_rcache_start(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, rr_register);
}

void route_rcache_attach(struct route_chain *c, struct worker *w)
{
    const struct config *cfg = route_chain_config(c);
    if (cfg->routing.shared_cache && w->policy && policy_redis_configured(w->policy))
        route_chain_set_shared(c, &ops, w->policy);
}
