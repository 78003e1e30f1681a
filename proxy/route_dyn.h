/*
 * route_dyn — backends a routing lookup named by host[:port] that are not in the static pool.
 *
 * They are dialled like pool members (the same dialer, TLS settings and verification from
 * routing.dynamic_backend) and keep the same per-backend accounting: a struct backend_state for
 * passive health (connect failures mark one down; there are no active checks — nothing to
 * fail over to, the user's mailbox lives there) and live-session counts, and they appear in
 * /metrics with the host:port as the backend label.
 *
 * The set is bounded (routing.max_dynamic_backends, process-wide): a record is held by each
 * session using it; one nobody holds is forgotten after routing.dynamic_idle_timeout, or
 * earlier when its slot is needed. Thread-safe (one mutex, taken once per login).
 */
#ifndef PORTCULLIS_ROUTE_DYN_H
#define PORTCULLIS_ROUTE_DYN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "backend.h"

struct route_dyn {
    char name[300];               /* "host:port": logs and metrics */
    struct sockaddr_storage addr; /* with the port */
    socklen_t addrlen;
    struct backend_state st; /* health and live sessions */
    unsigned refs;           /* sessions holding it (under the mutex) */
    double last_used;        /* monotonic seconds of the last release */
    bool used;               /* the slot holds a backend */
};

/* The record of host:port (addr: resolved, its port ignored), created if needed. `max` and
 * `idle` (seconds) come from the configuration; the first call sizes the table for good. NULL
 * when every slot is held by live sessions (or out of memory). */
struct route_dyn *route_dyn_acquire(const char *host, uint16_t port,
                                    const struct sockaddr_storage *addr, socklen_t addrlen,
                                    unsigned max, double idle);
/* NULL-safe; NULLs *d. */
void route_dyn_release(struct route_dyn **d);

/* Call fn for each backend in the set (metrics), under the mutex: fn must not call back. */
void route_dyn_foreach(void (*fn)(void *arg, const struct route_dyn *d), void *arg);

#endif
