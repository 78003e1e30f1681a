/*
 * route_ldap — the LDAP source of the routing chain (routing.lookups[] of type ldap,
 * docs/routing.md): struct route_source_ops over one ldl_pool (ldaplookup.h).
 *
 * One source per chain, so one pool of `connections` LDAP connections per worker and per
 * configuration snapshot. Its answers are cacheable (route_chain.h). A found attribute value
 * becomes a struct route_target exactly as a map-file target does (route_target_bind): a pool
 * entry name, else host[:port] as a dynamic backend. A host must be an IP address there: the
 * answer is bound on the worker's loop, where a DNS query would block (names are for the
 * static pool, whose entries the directory can name instead).
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

/* Turn an LDAP answer's host[:port] into a bound target (t->text is set to `buf`, t->host is
 * malloc'd: free it). Non-blocking: AI_NUMERICHOST. False with a static reason. */
bool route_ldap_target(const struct config *cfg, const char *host, unsigned port, char *buf,
                       size_t cap, struct route_target *t, const char **why_r)
    __attribute__((warn_unused_result));

#endif
