/*
 * route_explain — see route_explain.h. Follows the chain's rules (route_chain.h): the first
 * found answer wins, an error stops the chain, then routing.unknown / routing.on_error.
 */
#include "route_explain.h"

#include <stdlib.h>
#include <string.h>

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
            fprintf(f, "decision: %s (routing.on_error: %s)\n",
                    r->on_error == CFG_ROUTE_REFUSE ? "refused with NO [UNAVAILABLE]"
                                                    : "affinity, then the hash over the pool",
                    r->on_error == CFG_ROUTE_REFUSE ? "refuse" : "fallback");
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
