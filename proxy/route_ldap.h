/*
 * route_ldap — the LDAP source of the routing chain (routing.lookups[] of type ldap,
 * docs/routing.md): struct route_source_ops over one ldl_pool (ldaplookup.h).
 *
 * One source per chain, so one pool of `connections` LDAP connections per worker and per
 * configuration snapshot. Its answers are cacheable (route_chain.h). A found attribute value
 * becomes a struct route_target exactly as a map-file target does (route_target_bind): a pool
 * entry name, else host[:port] as a dynamic backend. An IP address is bound on the loop; a host
 * name is resolved off it (route_resolve.h) while the lookup stays pending, and the answer —
 * cached per worker and in the shared store — holds the address, so a cache hit never resolves.
 * A name that does not resolve is an error ("cannot resolve NAME: why"), never cached.
 *
 * Not here: the search itself, the connection pool, TLS and binds (ldaplookup.c).
 */
#ifndef PORTCULLIS_ROUTE_LDAP_H
#define PORTCULLIS_ROUTE_LDAP_H

#include <stdbool.h>

#include "ldaplookup.h"
#include "route_chain.h"

/* The ldaplookup settings of lookup `l` (strings borrowed from it). */
void route_ldap_config(const struct cfg_lookup *l, struct ldl_config *c_r);

/* A source for lookup `l` of `cfg` (borrowed: the chain holds the snapshot). Starts
 * connecting. NULL: out of memory. Call on the loop's thread. */
struct route_source *route_ldap_new(struct ev_loop *loop, const struct config *cfg,
                                    const struct cfg_lookup *l);

/* Turn an LDAP answer's host[:port] into a target bound with getaddrinfo(ai_flags) (t->text is
 * set to `buf`, t->host is malloc'd: free it). AI_NUMERICHOST never blocks (the loop); 0 blocks
 * (route show). 0: bound; -1: malformed (*why_r static); -2: the host did not resolve with
 * ai_flags — with AI_NUMERICHOST, it is a name (*why_r: getaddrinfo's text, static). */
int route_ldap_target(const struct config *cfg, const char *host, unsigned port, char *buf,
                      size_t cap, struct route_target *t, int ai_flags, const char **why_r)
    __attribute__((warn_unused_result));

#endif
