/*
 * local — see local.h. The arithmetic follows rl_lua_check / rl_lua_fail line by line.
 */
#include "local.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"

#define PROBE 16

struct local_ent {
    uint64_t h;       /* 0 = never used */
    uint64_t expires; /* ms: the entry is free after this */
    uint64_t touched;
    double tok; /* bucket tokens (valid when bucket) */
    uint64_t ts;
    bool bucket;
    unsigned n, level; /* failures in the window, lock-out level */
    uint64_t until;    /* locked out until (ms) */
    uint64_t fail_expires;
};

struct local_tab {
    size_t cap;
    struct local_ent *e;
};

struct local_tab *local_new(size_t cap)
{
    struct local_tab *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->cap = cap < PROBE ? PROBE : cap;
    t->e = calloc(t->cap, sizeof *t->e);
    if (!t->e) {
        free(t);
        return NULL;
    }
    return t;
}

void local_free(struct local_tab **tp)
{
    if (!*tp)
        return;
    free((*tp)->e);
    free(*tp);
    *tp = NULL;
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

static bool live(const struct local_ent *e, uint64_t now)
{
    return e->h && e->expires > now;
}

/* Find (create when `create`) the entry of `key`. */
static struct local_ent *lookup(struct local_tab *t, const char *key, uint64_t now, bool create)
{
    uint64_t h = hash(key);
    size_t base = (size_t)(h % t->cap);
    struct local_ent *spare = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        struct local_ent *e = &t->e[(base + i) % t->cap];
        if (e->h == h && live(e, now)) {
            e->touched = now;
            return e;
        }
        if (!live(e, now)) {
            if (!spare || live(spare, now))
                spare = e;
        } else if (!spare || (live(spare, now) && e->touched < spare->touched)) {
            spare = e;
        }
    }
    if (!create)
        return NULL;
    memset(spare, 0, sizeof *spare);
    spare->h = h;
    spare->touched = now;
    spare->expires = now + 1;
    return spare;
}

static void extend(struct local_ent *e, uint64_t until)
{
    if (until > e->expires)
        e->expires = until;
}

int local_check(struct local_tab *t, const char *key, uint64_t now, unsigned burst,
                uint64_t interval, unsigned fail_limit, uint64_t *detail_r)
{
    *detail_r = 0;
    struct local_ent *e = lookup(t, key, now, burst > 0);
    if (!e)
        return RL_OK;
    if (fail_limit > 0 && e->until > now) {
        *detail_r = e->until - now;
        return RL_LOCKED;
    }
    if (burst == 0)
        return RL_OK;
    if (interval == 0)
        interval = 1;
    double tok = e->bucket ? e->tok : burst;
    uint64_t ts = e->bucket ? e->ts : now;
    if (now > ts) {
        tok += (double)(now - ts) / (double)interval;
        if (tok > burst)
            tok = burst;
    }
    if (tok < 1) {
        *detail_r = (uint64_t)((1 - tok) * (double)interval) + 1;
        return RL_RATE;
    }
    e->bucket = true;
    e->tok = tok - 1;
    e->ts = now;
    extend(e, now + (uint64_t)(((double)burst - e->tok) * (double)interval) + 1000);
    return RL_OK;
}

uint64_t local_fail(struct local_tab *t, const char *key, uint64_t now, unsigned limit,
                    uint64_t window, uint64_t lock_ms, uint64_t lock_max)
{
    if (limit == 0)
        return 0;
    struct local_ent *e = lookup(t, key, now, true);
    if (e->fail_expires <= now) {
        e->n = 0;
        e->level = 0;
        e->fail_expires = now + window;
    }
    uint64_t lock = 0;
    if (++e->n >= limit) {
        e->level++;
        unsigned sh = e->level - 1 > 30 ? 30 : e->level - 1;
        lock = lock_ms << sh;
        if (lock > lock_max || lock >> sh != lock_ms)
            lock = lock_max;
        e->n = 0;
        e->until = now + lock;
        e->fail_expires = now + lock + window;
    }
    extend(e, e->fail_expires);
    return lock;
}

void local_reset(struct local_tab *t, const char *key, uint64_t now)
{
    struct local_ent *e = lookup(t, key, now, false);
    if (e) {
        e->n = 0;
        e->level = 0;
        e->until = 0;
        e->fail_expires = 0;
    }
}

size_t local_count(const struct local_tab *t, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++)
        n += live(&t->e[i], now);
    return n;
}
