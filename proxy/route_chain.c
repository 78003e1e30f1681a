/*
 * route_chain — see route_chain.h. The chain walk, its timeout, the cache in front, the
 * map-file source, and the factory of the others (route_ldap.c).
 *
 * A request walks the sources from `idx` on: a source that answers at once is followed
 * synchronously by the next, so a chain of map files answers within route_chain_lookup(); the
 * first pending source parks the request until its callback (or the timer) moves it on. The
 * chain is refcounted by the worker and by each pending request, so a configuration reload
 * never frees a chain under a request in flight.
 */
#include "route_chain.h"

#include <stdlib.h>
#include <string.h>

#include "route_cache.h"
#include "route_http.h"
#include "route_ldap.h"
#include "route_maps.h"

struct route_chain {
    struct ev_loop *loop;
    struct config *cfg; /* owned reference */
    struct route_source **src;
    size_t nsrc;
    struct route_cache *cache;
    unsigned gen; /* route_maps_generation() the cache was filled under */
    unsigned refs;
};

struct route_chain_req {
    struct route_chain *chain; /* a reference */
    size_t idx;                /* the source being asked */
    struct route_req *sreq;    /* its pending request */
    ev_timer timer;
    bool cacheable; /* a cacheable source took part */
    route_answer_fn *cb;
    void *arg;
    char *user; /* owned copy of the query's */
    struct route_query q;
};

/* ---- the map-file source ----------------------------------------------------------------- */

struct map_source {
    struct route_source base;
    struct route_map *map; /* a reference to the published table, or NULL */
    unsigned gen;          /* route_maps_generation() it was taken at */
    bool taken;
};

static struct route_req *map_start(struct route_source *src, const struct route_query *q,
                                   struct route_answer *now_r, route_answer_fn *cb, void *arg)
{
    (void)cb;
    (void)arg;
    struct map_source *ms = (struct map_source *)src;
    /* The safe point: between lookups, pick up a table a reload published. */
    unsigned gen = route_maps_generation();
    if (!ms->taken || gen != ms->gen) {
        route_map_unref(&ms->map);
        ms->map = route_maps_get(src->conf->name);
        ms->gen = gen;
        ms->taken = true;
    }
    *now_r = (struct route_answer){.source = src->conf->name};
    if (!ms->map) {
        now_r->status = ROUTE_ERROR;
        now_r->reason = "map not loaded";
        return NULL;
    }
    const char *rule = NULL;
    now_r->target = route_map_lookup(ms->map, q->user, &rule);
    now_r->status = now_r->target ? ROUTE_FOUND : ROUTE_NOT_FOUND;
    now_r->rule = rule ? rule : "none";
    return NULL;
}

static void map_cancel(struct route_req *req)
{
    (void)req; /* never pending */
}

static void map_free(struct route_source *src)
{
    struct map_source *ms = (struct map_source *)src;
    route_map_unref(&ms->map);
    free(ms);
}

static const struct route_source_ops map_ops = {
    .type = "map", .cacheable = false, .start = map_start, .cancel = map_cancel, .free = map_free};

static struct route_source *source_new(struct ev_loop *loop, const struct config *cfg,
                                       const struct cfg_lookup *l)
{
    switch (l->type) {
    case CFG_LOOKUP_LDAP:
        return route_ldap_new(loop, cfg, l);
    case CFG_LOOKUP_MAP: {
        struct map_source *ms = calloc(1, sizeof *ms);
        if (!ms)
            return NULL;
        ms->base = (struct route_source){.ops = &map_ops, .conf = l, .loop = loop};
        return &ms->base;
    }
    case CFG_LOOKUP_HTTP:
        return route_http_new(loop, cfg, l);
    }
    return NULL;
}

/* ---- the chain --------------------------------------------------------------------------- */

static void chain_free(struct route_chain *c)
{
    for (size_t i = 0; i < c->nsrc; i++)
        if (c->src[i])
            c->src[i]->ops->free(c->src[i]);
    free(c->src);
    route_cache_free(&c->cache);
    cfg_unref(&c->cfg);
    free(c);
}

struct route_chain *route_chain_new(struct ev_loop *loop, struct config *cfg)
{
    struct route_chain *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->cfg = cfg_ref(cfg);
    c->refs = 1;
    c->gen = route_maps_generation();
    const struct cfg_routing *r = &cfg->routing;
    c->src = calloc(r->nlookups ? r->nlookups : 1, sizeof *c->src);
    if (!c->src)
        goto fail;
    for (; c->nsrc < r->nlookups; c->nsrc++)
        if (!(c->src[c->nsrc] = source_new(loop, cfg, &r->lookups[c->nsrc])))
            goto fail;
    c->cache = route_cache_new(r->cache_entries, cfg->policy.user_case_insensitive);
    if (r->cache_entries && !c->cache)
        goto fail;
    return c;
fail:
    chain_free(c);
    return NULL;
}

void route_chain_release(struct route_chain **cp)
{
    struct route_chain *c = *cp;
    *cp = NULL;
    if (c && --c->refs == 0)
        chain_free(c);
}

const struct config *route_chain_config(const struct route_chain *c)
{
    return c->cfg;
}

void route_chain_set_source(struct route_chain *c, size_t i, struct route_source *src)
{
    if (i >= c->nsrc)
        return;
    if (c->src[i])
        c->src[i]->ops->free(c->src[i]);
    c->src[i] = src;
}

static double now(const struct route_chain *c)
{
    return ev_now(c->loop);
}

static void remember(struct route_chain *c, const char *user, bool cacheable,
                     const struct route_answer *a)
{
    /* Answers that judged the password (auth_http, a->nocache) are never kept. */
    if (!cacheable || a->nocache || a->status == ROUTE_ERROR || a->status == ROUTE_REJECT ||
        a->user || a->pass)
        return;
    const struct cfg_routing *r = &c->cfg->routing;
    double ttl = (double)(a->status == ROUTE_FOUND ? r->cache_ttl_ms : r->negative_ttl_ms) / 1000.;
    route_cache_put(c->cache, user, a, now(c), ttl);
}

/* Ask sources from *idx on until one answers FOUND/ERROR now, all said NOT_FOUND (1, *a), or
 * one is pending (0, *sreq_r). */
static int walk(struct route_chain *c, const struct route_query *q, size_t *idx, bool *cacheable,
                struct route_answer *a, struct route_req **sreq_r, route_answer_fn *cb, void *arg)
{
    for (; *idx < c->nsrc; (*idx)++) {
        struct route_source *src = c->src[*idx];
        *cacheable = *cacheable || src->ops->cacheable;
        struct route_req *r = src->ops->start(src, q, a, cb, arg);
        if (r) {
            *sreq_r = r;
            return 0;
        }
        if (a->status != ROUTE_NOT_FOUND)
            return 1;
    }
    *a = (struct route_answer){.status = ROUTE_NOT_FOUND, .source = "", .rule = "none"};
    return 1;
}

static void req_free(struct route_chain_req *r)
{
    ev_timer_stop(r->chain->loop, &r->timer);
    route_chain_release(&r->chain);
    free(r->user);
    free(r);
}

static void on_source(void *arg, const struct route_answer *a);

/* Park `r` on its pending source under that lookup's timeout. */
static void park(struct route_chain_req *r)
{
    double t = (double)r->chain->src[r->idx]->conf->timeout_ms / 1000.;
    ev_timer_stop(r->chain->loop, &r->timer);
    ev_timer_set(&r->timer, t, 0.);
    ev_timer_start(r->chain->loop, &r->timer);
}

/* The request is done with answer `a`: remember it, free the request, call back last. */
static void finish(struct route_chain_req *r, const struct route_answer *a)
{
    route_answer_fn *cb = r->cb;
    void *arg = r->arg;
    remember(r->chain, r->user, r->cacheable, a);
    /* The answer may point into the source's memory: call back before freeing what the
     * request holds, but after it is off every list (the callback may start another). */
    r->sreq = NULL;
    ev_timer_stop(r->chain->loop, &r->timer);
    cb(arg, a);
    req_free(r);
}

static void on_source(void *arg, const struct route_answer *a)
{
    struct route_chain_req *r = arg;
    r->sreq = NULL;
    if (a->status != ROUTE_NOT_FOUND) {
        finish(r, a);
        return;
    }
    r->idx++;
    struct route_answer next;
    struct route_req *sreq = NULL;
    if (walk(r->chain, &r->q, &r->idx, &r->cacheable, &next, &sreq, on_source, r) == 0) {
        r->sreq = sreq;
        park(r);
        return;
    }
    finish(r, &next);
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct route_chain_req *r = t->data;
    struct route_source *src = r->chain->src[r->idx];
    if (r->sreq)
        src->ops->cancel(r->sreq);
    r->sreq = NULL;
    struct route_answer a = {.status = ROUTE_ERROR, .source = src->conf->name, .reason = "timeout"};
    finish(r, &a);
}

int route_chain_lookup(struct route_chain *c, const struct route_query *q,
                       struct route_answer *now_r, struct route_chain_req **req_r,
                       route_answer_fn *cb, void *arg)
{
    *req_r = NULL;
    unsigned gen = route_maps_generation();
    if (gen != c->gen) {
        route_cache_flush(c->cache);
        c->gen = gen;
    }
    if (route_cache_get(c->cache, q->user, now(c), now_r))
        return 1;
    struct route_chain_req *r = calloc(1, sizeof *r);
    if (!r || !(r->user = strdup(q->user))) {
        free(r);
        return -1;
    }
    r->q = *q;
    r->q.user = r->user;
    r->cb = cb;
    r->arg = arg;
    r->chain = c;
    c->refs++;
    ev_init(&r->timer, on_timeout);
    r->timer.data = r;
    struct route_req *sreq = NULL;
    if (walk(c, &r->q, &r->idx, &r->cacheable, now_r, &sreq, on_source, r) == 0) {
        r->sreq = sreq;
        park(r);
        *req_r = r;
        return 0;
    }
    remember(c, r->user, r->cacheable, now_r);
    req_free(r);
    return 1;
}

void route_chain_cancel(struct route_chain_req **rp)
{
    struct route_chain_req *r = *rp;
    *rp = NULL;
    if (!r)
        return;
    if (r->sreq)
        r->chain->src[r->idx]->ops->cancel(r->sreq);
    req_free(r);
}
