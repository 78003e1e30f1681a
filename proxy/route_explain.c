/*
 * route_explain — see route_explain.h. Follows the chain's rules (route_chain.h): the first
 * found answer wins, an error stops the chain, then routing.unknown / routing.on_error.
 * An LDAP lookup is made for real, with the daemon's own client (ldaplookup.c) on a private
 * loop: this is a command-line tool, so waiting for the answer is fine here.
 */
#include "route_explain.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "ldaplookup.h"
#include "route_ldap.h"
#include "route_map.h"

static struct route_map *load(const struct config *cfg, const struct cfg_lookup *l, char **err)
{
    const struct route_map_limits lim = {
        .max_size = cfg->routing.map_max_size,
        .max_entries = cfg->routing.map_max_entries,
        .max_targets = cfg->routing.map_max_backends,
        .fold_case = cfg->policy.user_case_insensitive,
    };
    struct route_map *m = route_map_load(l->file, &lim, err);
    if (m && !route_map_bind(m, cfg, err))
        route_map_unref(&m);
    return m;
}

struct ldap_wait {
    bool done;
    enum ldl_status status;
    char host[LDL_HOST_MAX + 1];
    unsigned port;
    char reason[200];
};

static void on_ldap(void *arg, const struct ldl_answer *a)
{
    struct ldap_wait *w = arg;
    w->done = true;
    w->status = a->status;
    snprintf(w->host, sizeof w->host, "%s", a->host ? a->host : "");
    w->port = a->port;
    snprintf(w->reason, sizeof w->reason, "%s", a->reason ? a->reason : "");
}

/* Ask LDAP lookup `l` about `user`: FOUND fills *t (t->host malloc'd) from buf. */
static enum ldl_status ask_ldap(const struct config *cfg, const struct cfg_lookup *l,
                                const char *user, char *buf, size_t cap, struct route_target *t,
                                char *why, size_t whycap)
{
    struct ldap_wait w = {0};
    struct ldl_config c;
    route_ldap_config(l, &c);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    const char *err = NULL;
    struct ldl_pool *p = loop ? ldl_pool_new(loop, &c, &err) : NULL;
    if (!p) {
        snprintf(why, whycap, "%s", err ? err : "out of memory");
        if (loop)
            ev_loop_destroy(loop);
        return LDL_ERROR;
    }
    struct ldl_req *r = ldl_lookup(p, user, strlen(user), on_ldap, &w);
    (void)r; /* answered (at the latest at the lookup's timeout) before the loop ends */
    while (!w.done)
        ev_run(loop, EVRUN_ONCE);
    ldl_pool_free(&p);
    ev_loop_destroy(loop);
    snprintf(why, whycap, "%s", w.reason);
    const char *bad = NULL;
    /* A host name is resolved as the daemon's resolver threads would (blocking is fine in a
     * command-line tool). */
    int rc =
        w.status == LDL_FOUND ? route_ldap_target(cfg, w.host, w.port, buf, cap, t, 0, &bad) : 0;
    if (rc == -1) {
        snprintf(why, whycap, "%s: %s", w.host, bad);
        return LDL_ERROR;
    }
    if (rc < 0) {
        snprintf(why, whycap, "cannot resolve %s: %s", w.host, bad);
        return LDL_ERROR;
    }
    return w.status;
}

static void explain_error(FILE *f, const struct cfg_routing *r)
{
    fprintf(f, "decision: %s (routing.on_error: %s)\n",
            r->on_error == CFG_ROUTE_REFUSE ? "refused with NO [UNAVAILABLE]"
                                            : "affinity, then the hash over the pool",
            r->on_error == CFG_ROUTE_REFUSE ? "refuse" : "fallback");
}

static bool addr_text(const struct route_target *t, char *out, size_t cap)
{
    const struct sockaddr *sa = (const struct sockaddr *)&t->addr;
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
        return false;
    return inet_ntop(sa->sa_family, a, out, (socklen_t)cap) != NULL;
}

/* 1: the user was placed (decision printed), 0: not found, -1: error (decision printed). */
static int explain_ldap(FILE *f, const struct config *cfg, const struct cfg_lookup *l,
                        const char *user)
{
    char buf[LDL_HOST_MAX + 16], why[300];
    struct route_target t = {0};
    enum ldl_status st = ask_ldap(cfg, l, user, buf, sizeof buf, &t, why, sizeof why);
    const char *uri = l->ldap.uri;
    if (st == LDL_ERROR) {
        fprintf(f, "lookup %s (ldap %s): error: %s\n", l->name, uri, why);
        explain_error(f, &cfg->routing);
        return -1;
    }
    if (st == LDL_NOT_FOUND) {
        fprintf(f, "lookup %s (ldap %s): not found%s%s\n", l->name, uri, why[0] ? ": " : "", why);
        return 0;
    }
    /* A name: show the address it resolved to (the one the daemon would dial). */
    char addr[INET6_ADDRSTRLEN] = "";
    if (t.pool || !t.host || !addr_text(&t, addr, sizeof addr) || strcmp(addr, t.host) == 0)
        addr[0] = '\0';
    fprintf(f, "lookup %s (ldap %s): found %s=%s backend=%s (%s%s%s)\n", l->name, uri,
            l->ldap.attribute, buf, t.text,
            t.pool ? "pool entry" : "dynamic backend, routing.dynamic_backend",
            addr[0] ? "; resolved to " : "", addr);
    fprintf(f,
            "decision: backend %s (lookup %s, the user's directory entry; pinned, before "
            "affinity; cached per worker for routing.cache_ttl)\n",
            t.text, l->name);
    free((char *)t.host);
    return 1;
}

void route_explain(FILE *f, const struct config *cfg, const char *user, const char *override)
{
    const struct cfg_routing *r = &cfg->routing;
    if (override) {
        fprintf(f, "decision: backend %s (the administrator's override; no lookup is made)\n",
                override);
        return;
    }
    if (r->nlookups == 0) {
        fprintf(f, "decision: no routing.lookups: affinity, then the hash over the pool\n");
        return;
    }
    for (size_t i = 0; i < r->nlookups; i++) {
        const struct cfg_lookup *l = &r->lookups[i];
        if (l->type == CFG_LOOKUP_LDAP) {
            int rc = explain_ldap(f, cfg, l, user);
            if (rc != 0)
                return;
            continue;
        }
        if (l->type == CFG_LOOKUP_HTTP) {
            /* auth_http judges the password: it cannot be asked without one, and its answer
             * holds for one login only (never cached). It answers OK or a refusal, never "not
             * found", so no later lookup is reached. */
            fprintf(f,
                    "lookup %s (http %s): asked at each login with the password; not asked "
                    "here\n",
                    l->name, l->url);
            fprintf(f,
                    "decision: the auth service's answer at login (Auth-Server:Auth-Port, or "
                    "a refusal); if it fails: %s (routing.on_error: %s)\n",
                    r->on_error == CFG_ROUTE_REFUSE ? "refused with NO [UNAVAILABLE]"
                                                    : "affinity, then the hash over the pool",
                    r->on_error == CFG_ROUTE_REFUSE ? "refuse" : "fallback");
            return;
        }
        char *err = NULL;
        struct route_map *m = load(cfg, l, &err);
        if (!m) {
            fprintf(f, "lookup %s (map %s): error: %s\n", l->name, l->file,
                    err ? err : "out of memory");
            explain_error(f, r);
            free(err);
            return;
        }
        const char *rule = NULL;
        const struct route_target *t = route_map_lookup(m, user, &rule);
        if (!t) {
            fprintf(f, "lookup %s (map %s): not found\n", l->name, l->file);
            route_map_unref(&m);
            continue;
        }
        fprintf(f, "lookup %s (map %s): found rule=%s backend=%s (%s)\n", l->name, l->file, rule,
                t->text, t->pool ? "pool entry" : "dynamic backend, routing.dynamic_backend");
        fprintf(f, "decision: backend %s (lookup %s, the %s entry; pinned, before affinity)\n",
                t->text, l->name,
                strcmp(rule, "user") == 0     ? "user's own"
                : strcmp(rule, "domain") == 0 ? "@domain"
                                              : "*");
        route_map_unref(&m);
        return;
    }
    fprintf(f, "decision: no lookup knows the user: %s (routing.unknown: %s)\n",
            r->unknown == CFG_ROUTE_REFUSE ? "refused as a wrong password would be"
                                           : "affinity, then the hash over the pool",
            r->unknown == CFG_ROUTE_REFUSE ? "refuse" : "hash");
}
