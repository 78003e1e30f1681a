/*
 * route_rcache — see route_rcache.h. A thin adapter: the key's parts and the value come from
 * route_shared.h through the chain; here they only travel to Redis and back.
 */
#include "route_rcache.h"

#include <stdlib.h>

#include "policy.h"
#include "route_chain.h"
#include "route_shared.h"
#include "worker.h"

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
    if (!g->q) {
        free(g);
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
}

static void rr_put(void *ctx, const char *tag, const char *suffix, const char *val, size_t len,
                   uint64_t ttl_ms)
{
    policy_kv_set(ctx, ROUTE_SHARED_KIND, tag, suffix, val, len, ttl_ms);
}

static const struct route_shared_ops ops = {.get = rr_get, .cancel = rr_cancel, .put = rr_put};

void route_rcache_attach(struct route_chain *c, struct worker *w)
{
    const struct config *cfg = route_chain_config(c);
    if (cfg->routing.shared_cache && w->policy && policy_redis_configured(w->policy))
        route_chain_set_shared(c, &ops, w->policy);
}
