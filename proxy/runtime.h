/*
 * runtime — what a session needs from the configuration, built once per load/reload: the config
 * snapshot plus the objects derived from it that are expensive to build (TLS contexts).
 *
 * The current runtime is published by the main thread (rt_publish) and picked up by workers at
 * accept time (rt_current, which returns a new reference). A session keeps its reference to the
 * end, so a reload never changes the rules under a session in flight.
 */
#ifndef PORTCULLIS_RUNTIME_H
#define PORTCULLIS_RUNTIME_H

#include <openssl/ssl.h>
#include <stdatomic.h>

#include "config.h"
#include "tls.h"

struct backend_state;

struct rt {
    atomic_int refs;
    struct config *cfg;     /* owned reference */
    struct tls_server *tls; /* owned; NULL when no listener uses TLS */
    SSL_CTX **backend_ctx;  /* owned; [i] for cfg->backends[i], NULL when that backend is plain */
    SSL_CTX **listener_be_ctx;       /* owned; [i] for transparent listener i with backend TLS */
    struct backend_state **be_state; /* owned array; [i] for cfg->backends[i] (process-wide
                                        health records, not owned) */
    SSL_CTX *dyn_ctx; /* owned or NULL: toward backends a routing lookup names by host (issue
                         17), from routing.dynamic_backend */
};

/* Build from a loaded config (takes its own reference). NULL and *error_r on failure. */
struct rt *rt_build(struct config *cfg, char **error_r);
struct rt *rt_ref(struct rt *rt);
void rt_unref(struct rt **rt);

/* Replace the published runtime (takes over the caller's reference). */
void rt_publish(struct rt *rt);
/* A new reference to the published runtime (never NULL after the first publish). */
struct rt *rt_current(void);

#endif
