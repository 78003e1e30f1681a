/*
 * route_fake — a scripted asynchronous routing source for the chain's unit tests
 * (test_route.c, test_route_shared.c): it answers from the real libev loop after `delay`
 * seconds with whatever `status` says at that moment (FOUND: backend "b1" of the pool), and
 * counts its starts and cancels so that a test can tell the chain (or a cache in front of it)
 * from the source; and the map file their configurations name. Include route_fake.c (not this
 * header alone) from a tests/unit/test_*.c, as relay_harness.c is: the Makefile builds each of
 * those as its own binary.
 */
#ifndef PORTCULLIS_TEST_ROUTE_FAKE_H
#define PORTCULLIS_TEST_ROUTE_FAKE_H

#include <stdbool.h>
#include <stddef.h>

#include "route_chain.h"

struct fake_source {
    struct route_source base;
    int started, cancelled;
    double delay;             /* answer after this long */
    enum route_status status; /* what it answers */
    struct route_target target;
    bool nocache; /* answers marked nocache (as auth_http's) */
    bool creds;   /* FOUND with credentials toward the backend */
};

/* type "fake", cacheable (as LDAP) / type "fake-http", not cacheable (as auth_http). */
extern const struct route_source_ops fake_cacheable_ops;
extern const struct route_source_ops fake_uncached_ops;

/* A fake source at position `i` of chain `c` (cfg: the chain's configuration), on the default
 * loop; the chain owns it. */
struct fake_source *fake_at(struct route_chain *c, const struct config *cfg, size_t i,
                            const struct route_source_ops *ops, double delay, enum route_status st);

/* The map file the tests' map lookups name: fake_map_create() names it after the test and the
 * process and writes `text` into it; fake_map_teardown (a cmocka teardown) removes it. */
extern char map_path[64];
void fake_map_create(const char *test, const char *text);
int fake_map_teardown(void **state);

#endif
