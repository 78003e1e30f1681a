/*
 * route_chain — the routing lookup chain (docs/routing.md): the sources of `routing.lookups`,
 * asked in order for a user until one knows them, with a per-worker cache in front.
 *
 * A source is anything that can answer "where does this user live" asynchronously: the map
 * file (route_maps.h), LDAP (route_ldap.h) and nginx-style auth_http (route_http.h). It implements
 * struct route_source_ops:
 *   - start(src, query, now_r, cb, arg) either answers at once (returns NULL after filling
 *     *now_r: the map file, a memory lookup) or returns a request handle and later calls
 *     cb(arg, answer) exactly once, from the worker's loop, never from inside start();
 *   - cancel(req) stops a pending request: its callback will not run.
 * An answer is FOUND (a backend, optionally credentials to use toward it), NOT_FOUND (ask the
 * next source), ERROR (a reason: the chain stops there, so that a lower source — a `*`
 * catch-all, say — never routes a user whose real source is down; routing.on_error decides)
 * or REJECT (a source that judges the password refused it: stops, refused as a wrong one).
 *
 * The chain bounds every asynchronous source with its lookup's `timeout` (an ERROR "timeout"
 * after cancelling it). Answers of sources marked cacheable are kept per worker for
 * routing.cache_ttl (not found: routing.negative_ttl); errors and rejections never are, nor
 * answers with credentials or marked nocache (auth_http: a decision on the password). The map
 * source is not cacheable: its table is a memory lookup already, and a SIGHUP must move users at
 * once. Every map publish (route_maps_generation) flushes the cache.
 *
 * Behind the worker cache, a shared level (route_chain_set_shared; Redis through
 * route_rcache.c, key and value in route_shared.h) lets instances and workers reuse each other's
 * answers: when the walk reaches the first cacheable source, the chain first asks the shared
 * store (bounded by routing.shared_cache_timeout: a slow or absent store is a miss) and, on a
 * miss, asks the sources; an answer decided by cacheable sources alone (every source from the
 * first cacheable one to the one that answered; for "not found", to the end) is then written
 * to the store, fire and forget, with the same TTLs. A worker-cache hit costs nothing: the
 * shared store is consulted only after a worker miss. An answer a non-cacheable source took
 * part in (a map's `*` after the directory, say) stays in the worker cache only, because a map
 * publish on one instance could not flush it from the others.
 *
 * One chain per worker, for one configuration snapshot; everything runs on that worker's loop.
 */
#ifndef PORTCULLIS_ROUTE_CHAIN_H
#define PORTCULLIS_ROUTE_CHAIN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "route_map.h"

/* ROUTE_REJECT: the source judged the credentials and refused them (auth_http's Auth-Status
 * other than OK): the chain stops, the login is refused as a wrong password (counted), never
 * cached. */
enum route_status { ROUTE_FOUND, ROUTE_NOT_FOUND, ROUTE_ERROR, ROUTE_REJECT };

struct creds;

struct route_query {
    const char *user;     /* as the client logged in */
    enum cfg_proto proto; /* the listener's */
    const char *client_ip;
    /* For sources that judge the login itself (auth_http, route_http.c); borrowed from the
     * session, valid until the request ends or is cancelled. NULL: none (tests, explain). */
    const struct creds *creds;
    unsigned login_attempt; /* logins started in this session, 1 for the first */
    bool client_tls;        /* the client side is encrypted */
};

/* Valid only during the callback (or until the next call on the chain for an answer given at
 * once). */
struct route_answer {
    enum route_status status;
    const char *source;                /* the lookup's name that answered ("" = none knew) */
    const char *rule;                  /* FOUND / NOT_FOUND: which entry, for logs */
    const struct route_target *target; /* FOUND: the backend (route_map.h, bound) */
    const char *user, *pass;           /* FOUND: credentials toward the backend, or NULL */
    const char *reason;                /* ERROR: for logs; REJECT: the source's text (raw) */
    unsigned wait_ms;                  /* REJECT: answer the refusal after this long */
    bool cached;                       /* came from a cache (the worker's or the shared one) */
    bool shared;                       /* came from the shared cache (Redis) */
    bool nocache; /* never cache it, whatever other source took part (auth_http's answers
                     are a password decision) */
};

typedef void route_answer_fn(void *arg, const struct route_answer *a);

struct route_source;
struct route_req; /* a source's pending lookup; defined by the source */

struct route_source_ops {
    const char *type;
    bool cacheable;
    struct route_req *(*start)(struct route_source *src, const struct route_query *q,
                               struct route_answer *now_r, route_answer_fn *cb, void *arg);
    void (*cancel)(struct route_req *req);
    void (*free)(struct route_source *src);
};

struct route_source {
    const struct route_source_ops *ops;
    const struct cfg_lookup *conf; /* in the chain's configuration */
    struct ev_loop *loop;
};

/* For the sources' constructors: a zeroed source of `size` bytes (a struct that starts with its
 * struct route_source) whose base is filled in, or NULL: out of memory. */
void *route_source_alloc(size_t size, const struct route_source_ops *ops, struct ev_loop *loop,
                         const struct cfg_lookup *l);

struct route_chain;
struct route_chain_req;

/* Build the chain of `cfg` (takes a reference) for a worker's loop. NULL: out of memory. */
struct route_chain *route_chain_new(struct ev_loop *loop, struct config *cfg);
/* Drop the worker's reference; the chain goes when its last pending request has ended. */
void route_chain_release(struct route_chain **c);
const struct config *route_chain_config(const struct route_chain *c);

/* Look `q->user` up. Returns 1: answered now in *now_r (valid until the next call on the
 * chain); 0: pending, *req_r set, cb(arg, answer) runs exactly once from the loop unless
 * route_chain_cancel(); -1: out of memory. */
int route_chain_lookup(struct route_chain *c, const struct route_query *q,
                       struct route_answer *now_r, struct route_chain_req **req_r,
                       route_answer_fn *cb, void *arg);
/* Idempotent; NULLs *req. */
void route_chain_cancel(struct route_chain_req **req);

/* The shared cache level. get() starts a lookup of the value under (tag, suffix) and returns a
 * handle, or NULL = a miss now (no callback); cb(arg, val, len) runs once from the loop unless
 * cancel(), val NULL = miss (absent, store down, error). put() is fire and forget. Keys and
 * values: route_shared.h. */
typedef void route_shared_got_fn(void *arg, const char *val, size_t len);
struct route_shared_ops {
    void *(*get)(void *ctx, const char *tag, const char *suffix, route_shared_got_fn *cb,
                 void *arg);
    void (*cancel)(void *ctx, void *handle);
    void (*put)(void *ctx, const char *tag, const char *suffix, const char *val, size_t len,
                uint64_t ttl_ms);
};
/* Plug the shared level in (NULL ops: none); `ctx` must outlive the chain's requests. Only
 * effective with routing.shared_cache and a cacheable source in the chain. */
void route_chain_set_shared(struct route_chain *c, const struct route_shared_ops *ops, void *ctx);

/* For tests (and the next sources): put a source of one's own at position `i` (replacing the
 * one built from the configuration, which is freed). */
void route_chain_set_source(struct route_chain *c, size_t i, struct route_source *src);

#endif
