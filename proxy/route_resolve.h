/*
 * route_resolve — host names of routing answers resolved off the worker's loop (issue 17,
 * docs/routing.md "LDAP"). A directory names a server `imap3.corp.example[:port]`; getaddrinfo on
 * the loop would block every session of the worker for as long as DNS takes, so the name goes
 * to a small pool of resolver threads and the answer comes back to the loop through an ev_async.
 *
 * The resolution itself is route_map.c's (route_target_resolve: AF_UNSPEC, the first address),
 * the one the map file uses at load, so a name means the same whichever source gave it.
 *
 * One resolver per user (the LDAP source of one worker's chain), created on first need:
 *   - at most `threads` threads, started on demand, never joined: freeing the resolver only
 *     detaches it (a thread inside getaddrinfo finishes there, then exits; the last one out
 *     frees the memory), so neither a reload nor a worker stop ever waits for DNS;
 *   - at most `max_pending` requests at once (queued, resolving or answered but not yet
 *     delivered): beyond it a request is refused at once, never queued without bound;
 *   - a request is a handle the caller can cancel at any time: its callback then never runs.
 * There is no timer here: the caller's own deadline (the lookup's `timeout`, route_chain.c)
 * cancels a request that takes too long.
 */
#ifndef PORTCULLIS_ROUTE_RESOLVE_H
#define PORTCULLIS_ROUTE_RESOLVE_H

#include <ev.h>

#include "route_map.h"

struct route_resolver;
struct route_resolve_req;

/* Called exactly once, from the loop, unless cancelled. `t` is the bound target (t->text as
 * given; valid only during the callback) or NULL with `error` (static: getaddrinfo's text). */
typedef void route_resolve_fn(void *arg, const struct route_target *t, const char *error);

/* A resolver for `loop` (threads 1.., max_pending 1..). NULL: out of memory. Loop's thread. */
struct route_resolver *route_resolver_new(struct ev_loop *loop, unsigned threads,
                                          unsigned max_pending);
/* Drops pending requests without callbacks (their handles become invalid: cancel them first,
 * or forget them); never blocks. NULL-safe; NULLs *r. Loop's thread; allowed from inside one of
 * its callbacks. */
void route_resolver_free(struct route_resolver **r);

/* Resolve `text` (host[:port], copied). Returns the handle, or NULL with *error_r (static): too
 * many pending (max_pending), out of memory, no thread. Never calls back before returning. */
struct route_resolve_req *route_resolve_start(struct route_resolver *r, const char *text,
                                              route_resolve_fn *cb, void *arg,
                                              const char **error_r);
/* The callback will not run. Idempotent, NULL-safe; NULLs *q. Not after the callback ran. */
void route_resolve_cancel(struct route_resolve_req **q);

/* For tests: resolve with `fn` instead of route_target_resolve (e.g. one that waits, to cancel
 * or free while a name is being resolved). Before the first request. */
typedef int route_resolve_impl(struct route_target *t, int ai_flags, const char **gai_error_r);
void route_resolver_set_impl(struct route_resolver *r, route_resolve_impl *fn);

/* Resolvers whose memory is not freed yet (freed ones whose threads are still finishing
 * count): for tests, which wait for 0 to prove nothing leaks or is left behind. */
unsigned route_resolve_live(void);

#endif
