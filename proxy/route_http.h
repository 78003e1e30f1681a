/*
 * route_http — the `type: http` routing lookup (issue 17, docs/routing.md "auth_http"): the
 * nginx mail auth_http client (authhttp.h) as a source of the routing chain (route_chain.h).
 *
 * One client per chain, i.e. per worker and configuration snapshot; its kept-alive connections
 * live as long as the chain. The query carries the login's credentials (route_query.creds),
 * sent as nginx sends them; the answer is:
 *   Auth-Status: OK     → FOUND: Auth-Server:Auth-Port, as the pool entry of the listener's
 *                         protocol with that address when there is one (its TLS settings and
 *                         health), else a dynamic backend (routing.dynamic_backend);
 *                         Auth-User/Auth-Pass, when given, are the credentials toward it;
 *   any other status    → REJECT (a wrong password: counted), after Auth-Wait seconds capped
 *                         at the lookup's max_wait;
 *   transport errors, timeouts, malformed answers → ERROR (routing.on_error).
 * Not cacheable: every answer is a decision on this password (nginx does not cache it either),
 * so the source marks its answers nocache. The password is never logged (authhttp wipes its
 * copies).
 */
#ifndef PORTCULLIS_ROUTE_HTTP_H
#define PORTCULLIS_ROUTE_HTTP_H

#include "route_chain.h"

/* The source of lookup `l` (type http) of `cfg` (borrowed: the chain holds a reference) on
 * `loop`. NULL only when out of memory; a client libcurl refuses makes a source that answers
 * ERROR with the reason (logged once here). */
struct route_source *route_http_new(struct ev_loop *loop, const struct config *cfg,
                                    const struct cfg_lookup *l);

/* The Auth-Method nginx would send for a mechanism: "plain" for LOGIN/USER+PASS and PLAIN. */
const char *route_http_method(int creds_mech);

#endif
