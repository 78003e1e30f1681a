/*
 * route_maps — see route_maps.h.
 *
 * One loader thread at a time: a reload asked while it runs replaces `pending`, and the thread
 * takes it when it is done with the current one, so a burst of SIGHUPs costs at most two
 * loads. The registry is a small array (routing.lookups has at most 16 entries) under one
 * mutex, held only for pointer swaps and reference counting, never for a load.
 */
#include "route_maps.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfg_map.h"
#include "log.h"

#define MAPS_MAX 16 /* routing.lookups entries */

struct entry {
    char name[CFG_NAME_MAX + 1];
    struct route_map *map; /* owned reference */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry entries[MAPS_MAX];
static atomic_uint generation;

static pthread_t loader;
static bool loader_running, loader_joinable;
static struct config *pending; /* owned reference: the next configuration to load */

static struct route_map_limits limits_of(const struct config *cfg)
{
    return (struct route_map_limits){
        .max_size = cfg->routing.map_max_size,
        .max_entries = cfg->routing.map_max_entries,
        .max_targets = cfg->routing.map_max_backends,
        .fold_case = cfg->policy.user_case_insensitive,
    };
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static struct route_map *load_one(const struct config *cfg, const struct cfg_lookup *l,
                                  char **error_r)
{
    struct route_map_limits lim = limits_of(cfg);
    double t0 = now_ms();
    struct route_map *m = route_map_load(l->file, &lim, error_r);
    if (m && !route_map_bind(m, cfg, error_r))
        route_map_unref(&m);
    if (m)
        log_write(LOG_INFO,
                  "event=route_map_loaded lookup=%s file=%s entries=%zu backends=%zu "
                  "default=%s ms=%.0f",
                  l->name, l->file, m->nentries, m->ntargets,
                  m->star != ROUTE_MAP_NO_TARGET ? "yes" : "no", now_ms() - t0);
    return m;
}

/* Swap `m` in as `name`'s table (taking over the reference). */
static void publish(const char *name, struct route_map *m)
{
    struct route_map *old = NULL;
    pthread_mutex_lock(&lock);
    struct entry *e = NULL, *free_slot = NULL;
    for (size_t i = 0; i < MAPS_MAX && !e; i++) {
        if (entries[i].map && strcmp(entries[i].name, name) == 0)
            e = &entries[i];
        else if (!entries[i].map && !free_slot)
            free_slot = &entries[i];
    }
    if (!e && free_slot) {
        e = free_slot;
        snprintf(e->name, sizeof e->name, "%s", name);
    }
    if (e) {
        old = e->map;
        e->map = m;
        m = NULL;
    }
    atomic_fetch_add(&generation, 1);
    pthread_mutex_unlock(&lock);
    route_map_unref(&old);
    route_map_unref(&m);
}

/* Drop the tables of lookups `cfg` no longer has. */
static void prune(const struct config *cfg)
{
    struct route_map *gone[MAPS_MAX] = {0};
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < MAPS_MAX; i++) {
        bool keep = false;
        for (size_t j = 0; j < cfg->routing.nlookups && !keep; j++)
            keep = cfg->routing.lookups[j].type == CFG_LOOKUP_MAP &&
                   strcmp(cfg->routing.lookups[j].name, entries[i].name) == 0;
        if (!keep && entries[i].map) {
            gone[i] = entries[i].map;
            entries[i].map = NULL;
        }
    }
    atomic_fetch_add(&generation, 1);
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < MAPS_MAX; i++)
        route_map_unref(&gone[i]);
}

bool route_maps_load(const struct config *cfg, char **error_r)
{
    *error_r = NULL;
    struct route_map *maps[MAPS_MAX] = {0};
    size_t n = 0;
    for (size_t i = 0; i < cfg->routing.nlookups && n < MAPS_MAX; i++) {
        const struct cfg_lookup *l = &cfg->routing.lookups[i];
        if (l->type != CFG_LOOKUP_MAP)
            continue;
        maps[n] = load_one(cfg, l, error_r);
        if (!maps[n]) {
            for (size_t k = 0; k < n; k++)
                route_map_unref(&maps[k]);
            return false;
        }
        n++;
    }
    prune(cfg);
    n = 0;
    for (size_t i = 0; i < cfg->routing.nlookups && n < MAPS_MAX; i++)
        if (cfg->routing.lookups[i].type == CFG_LOOKUP_MAP)
            publish(cfg->routing.lookups[i].name, maps[n++]);
    return true;
}

static void reload_with(const struct config *cfg)
{
    for (size_t i = 0; i < cfg->routing.nlookups; i++) {
        const struct cfg_lookup *l = &cfg->routing.lookups[i];
        if (l->type != CFG_LOOKUP_MAP)
            continue;
        char *err = NULL;
        struct route_map *m = load_one(cfg, l, &err);
        if (m) {
            publish(l->name, m);
            continue;
        }
        struct route_map *old = route_maps_get(l->name);
        char q[512];
        log_write(LOG_ERROR, "event=reload_partial what=route_map lookup=%s error=%s note=\"%s\"",
                  l->name, log_qs(q, sizeof q, err ? err : "out of memory"),
                  old ? "old map kept" : "no map: this lookup answers an error");
        route_map_unref(&old);
        free(err);
    }
    prune(cfg);
}

static void *loader_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        struct config *cfg = pending;
        pending = NULL;
        if (!cfg)
            loader_running = false;
        pthread_mutex_unlock(&lock);
        if (!cfg)
            return NULL;
        reload_with(cfg);
        cfg_unref(&cfg);
    }
}

void route_maps_reload(struct config *cfg)
{
    pthread_mutex_lock(&lock);
    struct config *old = pending;
    pending = cfg_ref(cfg);
    bool start = !loader_running;
    bool join = start && loader_joinable;
    if (start)
        loader_running = true;
    pthread_mutex_unlock(&lock);
    cfg_unref(&old);
    if (!start)
        return;
    if (join) /* the previous loader has returned (loader_running was false) */
        pthread_join(loader, NULL);
    loader_joinable = pthread_create(&loader, NULL, loader_main, NULL) == 0;
    if (!loader_joinable) {
        log_write(LOG_ERROR, "event=reload_partial what=route_map error=\"cannot start the "
                             "loader thread\" note=\"old maps kept\"");
        pthread_mutex_lock(&lock);
        loader_running = false;
        old = pending;
        pending = NULL;
        pthread_mutex_unlock(&lock);
        cfg_unref(&old);
    }
}

struct route_map *route_maps_get(const char *name)
{
    struct route_map *m = NULL;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < MAPS_MAX && !m; i++)
        if (entries[i].map && strcmp(entries[i].name, name) == 0)
            m = route_map_ref(entries[i].map);
    pthread_mutex_unlock(&lock);
    return m;
}

unsigned route_maps_generation(void)
{
    return atomic_load(&generation);
}

void route_maps_stop(void)
{
    if (loader_joinable) {
        pthread_join(loader, NULL);
        loader_joinable = false;
    }
    struct config *cfg = pending;
    pending = NULL;
    cfg_unref(&cfg);
    for (size_t i = 0; i < MAPS_MAX; i++) {
        pthread_mutex_lock(&lock);
        struct route_map *m = entries[i].map;
        entries[i].map = NULL;
        pthread_mutex_unlock(&lock);
        route_map_unref(&m);
    }
}
