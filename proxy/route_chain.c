/*
 * route_chain — see route_chain.h. The chain walk, its timeout, the caches in front (the
 * worker's LRU, then the shared store), the map-file source, and the factory of the others
 * (route_ldap.c).
 *
 * A request walks the sources from `idx` on: a source that answers at once is followed
 * synchronously by the next, so a chain of map files answers within route_chain_lookup(); the
 * first pending source parks the request until its callback (or the timer) moves it on. Before
 * the first cacheable source the walk parks once on the shared store instead (a hit ends the
 * request, a miss or the shared_cache_timeout resumes the walk at that same source). The
 * chain is refcounted by the worker and by each pending request, so a configuration reload
 * never frees a chain under a request in flight.
 */
#include "route_chain.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route_cache.h"
#include "route_http.h"
#include "route_ldap.h"
#include "route_maps.h"
#include "route_shared.h"

struct route_chain {
    struct ev_loop *loop;
    struct config *cfg; /* owned reference */
    struct route_source **src;
    size_t nsrc;
    struct route_cache *cache;
    unsigned gen; /* route_maps_generation() the cache was filled under */
    unsigned refs;
    const struct route_shared_ops *sops;  /* the shared level, or NULL */
    void *sctx;                           /* its context (not owned) */
    char suffix[ROUTE_SHARED_SUFFIX_MAX]; /* the digest of cfg's lookups (route_shared.h) */
};

struct route_chain_req {
    struct route_chain *chain; /* a reference */
    size_t idx;                /* the source being asked */
    struct route_req *sreq;    /* its pending request */
    void *sget;                /* a pending shared-store GET (before src[idx]) */
    ev_timer timer;
    bool cacheable;     /* a cacheable source took part */
    bool shared_asked;  /* the shared store was asked (or could not be) */
    size_t shared_from; /* the first cacheable source's index, when shared_asked */
    bool tag_ok;        /* `tag` holds the user's key tag */
    char tag[ROUTE_SHARED_TAG_MAX];
    struct route_shared_entry hit; /* a shared answer (the answer points into it) */
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

void *route_source_alloc(size_t size, const struct route_source_ops *ops, struct ev_loop *loop,
                         const struct cfg_lookup *l)
{
    struct route_source *src = calloc(1, size);
    if (src)
        *src = (struct route_source){.ops = ops, .conf = l, .loop = loop};
    return src;
}

static const struct route_source_ops map_ops = {
    .type = "map", .cacheable = false, .start = map_start, .cancel = map_cancel, .free = map_free};

static struct route_source *source_new(struct ev_loop *loop, const struct config *cfg,
                                       const struct cfg_lookup *l)
{
    switch (l->type) {
    case CFG_LOOKUP_LDAP:
        return route_ldap_new(loop, cfg, l);
    case CFG_LOOKUP_MAP:
        return route_source_alloc(sizeof(struct map_source), &map_ops, loop, l);
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
    route_shared_suffix(cfg, c->suffix);
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

void route_chain_set_shared(struct route_chain *c, const struct route_shared_ops *ops, void *ctx)
{
    c->sops = ops;
    c->sctx = ctx;
}

/* The loop's clock: libev's ev_now is wall-clock time (Unix seconds), which the shared store's
 * expiry stamps need (route_shared.h). */
static double now(const struct route_chain *c)
{
    return ev_now(c->loop);
}

/* May `a` go to the shared store? Only an answer cacheable sources alone decided: every source
 * from the first cacheable one up to the one that answered (for "not found": all to the end). */
static bool shareable(const struct route_chain_req *r, const struct route_answer *a)
{
    const struct route_chain *c = r->chain;
    if (!c->sops || !c->cfg->routing.shared_cache || !r->tag_ok || a->shared)
        return false;
    size_t last = a->status == ROUTE_FOUND ? r->idx : c->nsrc - 1;
    if (last >= c->nsrc || r->shared_from > last)
        return false;
    for (size_t i = r->shared_from; i <= last; i++)
        if (!c->src[i]->ops->cacheable)
            return false;
    return true;
}

static void share(const struct route_chain_req *r, const struct route_answer *a, double ttl)
{
    const struct route_chain *c = r->chain;
    char val[ROUTE_SHARED_VAL_MAX];
    uint64_t ttl_ms = (uint64_t)(ttl * 1000.);
    size_t n = route_shared_encode(a, (int64_t)(now(c) * 1000.) + (int64_t)ttl_ms, val, sizeof val);
    if (n && ttl_ms)
        c->sops->put(c->sctx, r->tag, c->suffix, val, n, ttl_ms);
}

/* Keep a final answer: in the worker cache (a shared hit no longer than its entry lives), and
 * in the shared store when cacheable sources alone decided it. Errors, credentials and any
 * other status (a refusal, say) are never kept. */
static void remember(struct route_chain_req *r, const struct route_answer *a)
{
    struct route_chain *c = r->chain;
    /* Answers that judged the password (auth_http, a->nocache) are never kept. */
    if (!r->cacheable || a->nocache || (a->status != ROUTE_FOUND && a->status != ROUTE_NOT_FOUND) ||
        a->user || a->pass)
        return;
    const struct cfg_routing *rt = &c->cfg->routing;
    double ttl =
        (double)(a->status == ROUTE_FOUND ? rt->cache_ttl_ms : rt->negative_ttl_ms) / 1000.;
    if (a->shared) {
        double left = (double)r->hit.expires_ms / 1000. - now(c);
        ttl = left < ttl ? left : ttl;
    }
    if (ttl > 0)
        route_cache_put(c->cache, r->user, a, now(c), ttl);
    if (shareable(r, a))
        share(r, a, ttl);
}

static void on_shared(void *arg, const char *val, size_t len);

/* Before the first cacheable source: ask the shared store. True: pending (r->sget). */
static bool shared_get(struct route_chain_req *r)
{
    struct route_chain *c = r->chain;
    r->shared_asked = true;
    r->shared_from = r->idx;
    if (!c->sops || !c->cfg->routing.shared_cache)
        return false;
    r->tag_ok = route_shared_tag(c->cfg, r->user, r->tag);
    if (r->tag_ok)
        r->sget = c->sops->get(c->sctx, r->tag, c->suffix, on_shared, r);
    return r->sget != NULL;
}

static void on_source(void *arg, const struct route_answer *a);

/* Ask sources from r->idx on until one answers FOUND/ERROR now, all said NOT_FOUND (1, *a), or
 * one — or the shared store — is pending (0, r->sreq or r->sget). */
static int walk(struct route_chain_req *r, struct route_answer *a)
{
    struct route_chain *c = r->chain;
    for (; r->idx < c->nsrc; r->idx++) {
        struct route_source *src = c->src[r->idx];
        r->cacheable = r->cacheable || src->ops->cacheable;
        if (src->ops->cacheable && !r->shared_asked && shared_get(r))
            return 0;
        struct route_req *q = src->ops->start(src, &r->q, a, on_source, r);
        if (q) {
            r->sreq = q;
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

/* Park `r` on its pending source under that lookup's timeout, or on the shared store under
 * routing.shared_cache_timeout. */
static void park(struct route_chain_req *r)
{
    const struct route_chain *c = r->chain;
    uint64_t ms =
        r->sget ? c->cfg->routing.shared_cache_timeout_ms : c->src[r->idx]->conf->timeout_ms;
    double t = (double)ms / 1000.;
    ev_timer_stop(r->chain->loop, &r->timer);
    ev_timer_set(&r->timer, t, 0.);
    ev_timer_start(r->chain->loop, &r->timer);
}

/* The request is done with answer `a`: remember it, free the request, call back last. */
static void finish(struct route_chain_req *r, const struct route_answer *a)
{
    route_answer_fn *cb = r->cb;
    void *arg = r->arg;
    remember(r, a);
    /* The answer may point into the source's memory: call back before freeing what the
     * request holds, but after it is off every list (the callback may start another). */
    r->sreq = NULL;
    ev_timer_stop(r->chain->loop, &r->timer);
    cb(arg, a);
    req_free(r);
}

/* Resume the walk at r->idx (after a source said NOT_FOUND, or a shared miss). */
static void resume(struct route_chain_req *r)
{
    struct route_answer next;
    if (walk(r, &next) == 0) {
        park(r);
        return;
    }
    finish(r, &next);
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
    resume(r);
}

/* A stored answer is used only if this configuration could have given it: its source is one
 * of the lookups (the digest says so already; this guards a collision) or, for "not found",
 * none, a pool entry is in the pool, and it has not expired by our clock. */
static bool usable(const struct route_chain *c, const struct route_shared_entry *e)
{
    const struct config *cfg = c->cfg;
    bool known = e->status == ROUTE_NOT_FOUND && e->source[0] == '\0';
    for (size_t i = 0; i < cfg->routing.nlookups; i++)
        known = known || strcmp(cfg->routing.lookups[i].name, e->source) == 0;
    if (!known || (double)e->expires_ms / 1000. <= now(c))
        return false;
    if (e->status != ROUTE_FOUND || !e->target.pool)
        return true;
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (strcmp(cfg->backends[i].name, e->text) == 0)
            return true;
    return false;
}

static void on_shared(void *arg, const char *val, size_t len)
{
    struct route_chain_req *r = arg;
    r->sget = NULL;
    ev_timer_stop(r->chain->loop, &r->timer);
    if (val && route_shared_decode(val, len, &r->hit) && usable(r->chain, &r->hit)) {
        struct route_answer a;
        route_shared_answer(&r->hit, &a);
        finish(r, &a);
        return;
    }
    resume(r); /* a miss: ask the source */
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct route_chain_req *r = t->data;
    struct route_chain *c = r->chain;
    if (r->sget) { /* the shared store is slow: a miss */
        c->sops->cancel(c->sctx, r->sget);
        r->sget = NULL;
        resume(r);
        return;
    }
    struct route_source *src = c->src[r->idx];
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
    if (walk(r, now_r) == 0) {
        park(r);
        *req_r = r;
        return 0;
    }
    remember(r, now_r);
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
    if (r->sget)
        r->chain->sops->cancel(r->chain->sctx, r->sget);
    req_free(r);
}
