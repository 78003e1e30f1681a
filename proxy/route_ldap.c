/*
 * route_ldap — see route_ldap.h.
 *
 * Freeing: the chain may drop its last reference from inside one of our answers (a reload
 * replaced the worker's chain while this lookup was pending, route_chain.c finish()), and
 * ldaplookup forbids ldl_pool_free() from inside its callback (it still touches the pool after
 * calling back). So a free asked during our callback only marks the source dead; the callback
 * wrapper arms a zero-delay timer that frees it once ldaplookup has unwound.
 *
 * Not blocking: ldl_pool_free() joins a connect thread still running (connect + TLS + bind, up
 * to connect_timeout each). Dropped while the loop runs (a reload), the source stops the
 * pool's reconnects and polls ldl_pool_idle() every REAP_POLL seconds, freeing it once no
 * thread is left; after the loop has ended (the worker stopping) it frees at once.
 *
 * Host names: an answer naming a server by name (not a pool entry, not an IP address) keeps its
 * request pending while the source's resolver (route_resolve.h, created at the first name)
 * resolves it off the loop; the chain's timer still bounds the whole lookup and cancels both
 * steps alike. The resolver's callback frees requests exactly as ldaplookup's does.
 */
#include "route_ldap.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "route_resolve.h"

#define REAP_POLL 0.05 /* seconds between ldl_pool_idle() polls of a dropped source */

struct ldap_source {
    struct route_source base;
    const struct config *cfg;        /* borrowed: the chain's snapshot */
    struct ldl_pool *pool;           /* owned; NULL when it could not be created */
    const char *pool_error;          /* static: why pool is NULL */
    struct route_resolver *resolver; /* owned; created at the first host name */
    unsigned in_cb;                  /* inside an answer's callback */
    bool dead;                       /* freed while in_cb: the reaper frees it */
    ev_timer reaper;
};

/* The route_req of this source (route_chain.h leaves its definition to each source). */
struct route_req {
    struct ldap_source *src;
    struct ldl_req *lreq;           /* pending search */
    struct route_resolve_req *rreq; /* pending resolution of the answer's host name */
    char name[LDL_HOST_MAX + 1];    /* that name, for the error */
    route_answer_fn *cb;
    void *arg;
};

void route_ldap_config(const struct cfg_lookup *l, struct ldl_config *c)
{
    static const enum ldl_scope scopes[] = {[CFG_LDAP_BASE] = LDL_SCOPE_BASE,
                                            [CFG_LDAP_ONE] = LDL_SCOPE_ONE,
                                            [CFG_LDAP_SUB] = LDL_SCOPE_SUB};
    const struct cfg_lookup_ldap *d = &l->ldap;
    ldl_config_init(c);
    c->uri = d->uri;
    c->starttls = d->starttls;
    c->ca_file = l->ca_file;
    c->cert_file = d->cert_file;
    c->key_file = d->key_file;
    c->sasl_external = d->sasl_external;
    c->bind_dn = d->bind_dn;
    c->bind_password = d->bind_password;
    c->base = d->base;
    c->scope = scopes[d->scope];
    c->filter = d->filter;
    c->attr = d->attribute;
    if (l->connections)
        c->max_conns = l->connections;
    if (l->connect_timeout_ms)
        c->connect_timeout = (double)l->connect_timeout_ms / 1000.;
    /* The chain's timer bounds the lookup too; the same deadline here lets ldaplookup say
     * whether it was waiting for a connection or for the search. */
    c->timeout = (double)l->timeout_ms / 1000.;
}

int route_ldap_target(const struct config *cfg, const char *host, unsigned port, char *buf,
                      size_t cap, struct route_target *t, int ai_flags, const char **why_r)
{
    int n = port == 0           ? snprintf(buf, cap, "%s", host)
            : strchr(host, ':') ? snprintf(buf, cap, "[%s]:%u", host, port)
                                : snprintf(buf, cap, "%s:%u", host, port);
    *t = (struct route_target){.text = buf};
    if (n < 0 || (size_t)n >= cap) {
        *why_r = "host attribute value too long";
        return -1;
    }
    const char *gai = NULL;
    int rc = route_target_bind(t, cfg, ai_flags, &gai);
    if (rc == -1)
        *why_r = "host attribute value is not a pool entry, host, host:port or [v6]:port";
    else if (rc < 0)
        *why_r = gai;
    return rc;
}

static void source_destroy(struct ldap_source *s)
{
    ev_timer_stop(s->base.loop, &s->reaper);
    route_resolver_free(&s->resolver);
    ldl_pool_free(&s->pool);
    free(s);
}

/* Free now when that cannot block the running loop, else poll until it cannot. */
static void source_reap(struct ldap_source *s)
{
    struct ev_loop *loop = s->base.loop;
    if (ev_depth(loop) > 0 && s->pool && !ldl_pool_idle(s->pool)) {
        ev_timer_stop(loop, &s->reaper);
        ev_timer_set(&s->reaper, REAP_POLL, 0.);
        ev_timer_start(loop, &s->reaper);
        return;
    }
    source_destroy(s);
}

static void on_reaper(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    source_reap(w->data);
}

/* The request ends with answer `a`: free it, then call back (the source may be freed from
 * inside: deferred to the reaper). */
static void answer(struct route_req *r, const struct route_answer *a)
{
    struct ldap_source *s = r->src;
    route_answer_fn *cb = r->cb;
    void *cb_arg = r->arg;
    free(r);
    s->in_cb++;
    cb(cb_arg, a);
    s->in_cb--;
    if (s->dead && s->in_cb == 0) {
        ev_timer_set(&s->reaper, 0., 0.);
        ev_timer_start(s->base.loop, &s->reaper);
    }
}

static void on_resolved(void *arg, const struct route_target *t, const char *error)
{
    struct route_req *r = arg;
    r->rreq = NULL;
    char why[LDL_HOST_MAX + 160];
    struct route_answer a = {.source = r->src->base.conf->name};
    if (t) {
        a.status = ROUTE_FOUND;
        a.rule = "entry";
        a.target = t;
    } else {
        snprintf(why, sizeof why, "cannot resolve %s: %s", r->name, error);
        a.status = ROUTE_ERROR;
        a.reason = why;
    }
    answer(r, &a);
}

/* Hand the answer's host name `text` (host[:port]) to the resolver. False: *why_r says why. */
static bool resolve(struct route_req *r, const char *name, const char *text, const char **why_r)
{
    struct ldap_source *s = r->src;
    const struct cfg_routing *rt = &s->cfg->routing;
    if (!s->resolver)
        s->resolver =
            route_resolver_new(s->base.loop, rt->resolve_threads, rt->resolve_max_pending);
    if (!s->resolver) {
        *why_r = "out of memory";
        return false;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    r->rreq = route_resolve_start(s->resolver, text, on_resolved, r, why_r);
    return r->rreq != NULL;
}

static void on_ldl(void *arg, const struct ldl_answer *la)
{
    struct route_req *r = arg;
    r->lreq = NULL;
    char text[LDL_HOST_MAX + 16], why[LDL_HOST_MAX + 160];
    struct route_target t = {0};
    struct route_answer a = {.source = r->src->base.conf->name};
    switch (la->status) {
    case LDL_FOUND: {
        /* AI_NUMERICHOST never blocks: a pool entry or an address is bound here and now. */
        int rc = route_ldap_target(r->src->cfg, la->host, la->port, text, sizeof text, &t,
                                   AI_NUMERICHOST, &a.reason);
        if (rc == 0) {
            a.status = ROUTE_FOUND;
            a.rule = "entry";
            a.target = &t;
            break;
        }
        a.status = ROUTE_ERROR;
        if (rc == -1)
            break;
        const char *err = NULL;
        if (resolve(r, la->host, text, &err))
            return; /* a host name: answered by on_resolved() */
        snprintf(why, sizeof why, "cannot resolve %s: %s", la->host, err);
        a.reason = why;
        break;
    }
    case LDL_NOT_FOUND:
        a.status = ROUTE_NOT_FOUND;
        a.rule = la->reason ? "no-host" : "none"; /* an entry without the attribute */
        break;
    case LDL_ERROR:
        a.status = ROUTE_ERROR;
        a.reason = la->reason ? la->reason : "LDAP error";
        break;
    }
    answer(r, &a);
    free((char *)t.host);
}

static struct route_req *ldap_start(struct route_source *src, const struct route_query *q,
                                    struct route_answer *now_r, route_answer_fn *cb, void *arg)
{
    struct ldap_source *s = (struct ldap_source *)src;
    if (!s->pool) {
        *now_r = (struct route_answer){
            .status = ROUTE_ERROR, .source = src->conf->name, .reason = s->pool_error};
        return NULL;
    }
    struct route_req *r = calloc(1, sizeof *r);
    if (!r) {
        *now_r = (struct route_answer){
            .status = ROUTE_ERROR, .source = src->conf->name, .reason = "out of memory"};
        return NULL;
    }
    *r = (struct route_req){.src = s, .cb = cb, .arg = arg};
    r->lreq = ldl_lookup(s->pool, q->user, strlen(q->user), on_ldl, r);
    return r;
}

static void ldap_cancel(struct route_req *r)
{
    ldl_cancel(&r->lreq);
    route_resolve_cancel(&r->rreq);
    free(r);
}

static void ldap_free(struct route_source *src)
{
    struct ldap_source *s = (struct ldap_source *)src;
    if (s->in_cb) {
        s->dead = true;
        return;
    }
    source_reap(s);
}

static const struct route_source_ops ldap_ops = {.type = "ldap",
                                                 .cacheable = true,
                                                 .start = ldap_start,
                                                 .cancel = ldap_cancel,
                                                 .free = ldap_free};

struct route_source *route_ldap_new(struct ev_loop *loop, const struct config *cfg,
                                    const struct cfg_lookup *l)
{
    struct ldap_source *s = route_source_alloc(sizeof *s, &ldap_ops, loop, l);
    if (!s)
        return NULL;
    s->cfg = cfg;
    ev_init(&s->reaper, on_reaper);
    s->reaper.data = s;
    struct ldl_config c;
    route_ldap_config(l, &c);
    s->pool = ldl_pool_new(loop, &c, &s->pool_error);
    if (!s->pool) {
        /* The configuration check accepted it, so this is memory or threads: every lookup
         * answers an error (routing.on_error) rather than the worker losing its chain. */
        log_write(LOG_ERROR, "event=route_lookup_broken lookup=%s reason=\"%s\"", l->name,
                  s->pool_error ? s->pool_error : "unknown");
        if (!s->pool_error)
            s->pool_error = "LDAP pool not created";
    }
    return &s->base;
}
