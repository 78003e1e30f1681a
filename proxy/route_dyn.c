/*
 * route_dyn — see route_dyn.h. A flat array of slots found by name: the set is small (64 by
 * default) and searched once per login, so a scan is cheaper than keeping an index right.
 */
#include "route_dyn.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct route_dyn *slots;
static unsigned nslots;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(struct route_dyn *d, const char *name, const struct sockaddr_storage *addr,
                 socklen_t addrlen, uint16_t port)
{
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->st.name, sizeof d->st.name, "%.71s", name);
    atomic_init(&d->st.up, true);
    memcpy(&d->addr, addr, addrlen);
    d->addrlen = addrlen;
    if (d->addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&d->addr)->sin_port = htons(port);
    else if (d->addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&d->addr)->sin6_port = htons(port);
    d->used = true;
}

struct route_dyn *route_dyn_acquire(const char *host, uint16_t port,
                                    const struct sockaddr_storage *addr, socklen_t addrlen,
                                    unsigned max, double idle)
{
    char name[sizeof slots->name];
    snprintf(name, sizeof name, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    double now = mono();
    struct route_dyn *found = NULL, *spare = NULL;
    pthread_mutex_lock(&lock);
    if (!slots && max) {
        slots = calloc(max, sizeof *slots);
        nslots = slots ? max : 0;
    }
    for (unsigned i = 0; slots && i < nslots && !found; i++) {
        struct route_dyn *d = &slots[i];
        if (d->used && d->refs == 0 && now - d->last_used > idle)
            d->used = false; /* idle too long: forgotten */
        if (d->used && strcmp(d->name, name) == 0 && d->addrlen == addrlen)
            found = d;
        else if (!d->used && (!spare || spare->used))
            spare = d;
        else if (d->used && d->refs == 0 &&
                 (!spare || (spare->used && d->last_used < spare->last_used)))
            spare = d; /* the least recently used idle one, if no free slot turns up */
    }
    if (!found && spare) {
        fill(spare, name, addr, addrlen, port);
        found = spare;
    }
    if (found) {
        found->refs++;
        /* Passive health only: a session that gets through marks it up again. */
        if (atomic_load(&found->st.fails) == 0)
            atomic_store(&found->st.up, true);
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void route_dyn_release(struct route_dyn **dp)
{
    struct route_dyn *d = *dp;
    *dp = NULL;
    if (!d)
        return;
    pthread_mutex_lock(&lock);
    if (d->refs)
        d->refs--;
    d->last_used = mono();
    pthread_mutex_unlock(&lock);
}

void route_dyn_foreach(void (*fn)(void *arg, const struct route_dyn *d), void *arg)
{
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; slots && i < nslots; i++)
        if (slots[i].used)
            fn(arg, &slots[i]);
    pthread_mutex_unlock(&lock);
}
