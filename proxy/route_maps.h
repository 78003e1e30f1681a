/*
 * route_maps — the process's current routing map of each `routing.lookups` entry of type map,
 * and their loading.
 *
 * At start-up (and for `portcullis -t`) every map is loaded on the calling thread before any
 * worker runs; a map that does not load is a start-up error ("FILE:LINE: what"). On reload
 * (SIGHUP, POST /reload) the maps are loaded again on a loader thread — never on a loop: a
 * million-entry map takes about a second — and each one that loads replaces the old table at
 * once (a pointer swap under a mutex plus a generation bump); each one that fails leaves the
 * old table in place and logs event=reload_partial.
 *
 * Workers hold a reference to the table they use and compare route_maps_generation() with the
 * one they saw at each lookup (their safe point): when it moved, they drop theirs and take the
 * new one. A table is freed by whoever drops its last reference, so a lookup never races a
 * swap.
 */
#ifndef PORTCULLIS_ROUTE_MAPS_H
#define PORTCULLIS_ROUTE_MAPS_H

#include <stdbool.h>

#include "config.h"
#include "route_map.h"

/* Load every map lookup of `cfg` now, on this thread. False and a malloc'd message otherwise;
 * nothing is published then. */
bool route_maps_load(const struct config *cfg, char **error_r) __attribute__((warn_unused_result));
/* Reload every map lookup of `cfg` on the loader thread (takes its own reference). A reload
 * asked while one runs is done after it, with the newest configuration. */
void route_maps_reload(struct config *cfg);
/* A new reference to lookup `name`'s current table, or NULL when it has none. */
struct route_map *route_maps_get(const char *name);
/* Moves at every publish. */
unsigned route_maps_generation(void);
/* At exit: wait for the loader and drop every table. */
void route_maps_stop(void);

#endif
