/*
 * local — see local.h. The arithmetic follows the Lua scripts in ratelimit.c line by line:
 * `full` (lock-out or failures + reservations at the limit), `take` (bucket), `bump` (failure,
 * doubling lock-out).
 *
 * Keys: "u:<U>" the user's ceiling and bucket, "p:<U>:<A>" the (user, network) record and the
 * bucket of a known network, "a:<A>" the address scope, "k:<U>:<A>" a known network. <U> never
 * contains ':' (rl_user_key escapes it), which is how local_take splits them again.
 */
#include "local.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "ratelimit.h"

#define PROBE        16
#define PEND_BUSY_MS 1000 /* retry-after when the attempts in flight fill the allowance */

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
    unsigned pend; /* attempts reserved, result not yet known */
    uint64_t pend_ts;
    unsigned dirty_n;        /* failures Redis has not seen */
    bool dirty;              /* waiting for the write-back */
    char key[LOCAL_KEY_MAX]; /* "" when too long to write back */
};

struct local_tab {
    pthread_mutex_t mu;
    size_t cap;
    size_t ndirty;
    struct local_ent *e;
};

struct local_tab *local_new(size_t cap)
{
    struct local_tab *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->cap = cap < PROBE ? PROBE : cap;
    t->e = calloc(t->cap, sizeof *t->e);
    if (!t->e || pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t->e);
        free(t);
        return NULL;
    }
    return t;
}

void local_free(struct local_tab **tp)
{
    if (!*tp)
        return;
    pthread_mutex_destroy(&(*tp)->mu);
    free((*tp)->e);
    free(*tp);
    *tp = NULL;
}

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static struct local_tab *shared;
static unsigned shared_refs;

struct local_tab *local_shared_get(size_t cap)
{
    pthread_mutex_lock(&shared_mu);
    if (!shared)
        shared = local_new(cap);
    if (shared)
        shared_refs++;
    struct local_tab *t = shared;
    pthread_mutex_unlock(&shared_mu);
    return t;
}

void local_shared_put(struct local_tab **tp)
{
    if (!*tp)
        return;
    pthread_mutex_lock(&shared_mu);
    if (*tp == shared && --shared_refs == 0)
        local_free(&shared);
    pthread_mutex_unlock(&shared_mu);
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

/* Find (create when `create`) the entry of `key`. Caller holds the mutex. */
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
    if (spare->dirty && t->ndirty)
        t->ndirty--; /* evicted before the write-back: bounded memory wins (docs/redis.md) */
    memset(spare, 0, sizeof *spare);
    spare->h = h;
    spare->touched = now;
    spare->expires = now + 1;
    size_t len = strlen(key);
    if (len < sizeof spare->key)
        memcpy(spare->key, key, len + 1);
    return spare;
}

static void extend(struct local_ent *e, uint64_t until)
{
    if (until > e->expires)
        e->expires = until;
}

static void mark_dirty(struct local_tab *t, struct local_ent *e, unsigned failures)
{
    e->dirty_n += failures;
    if (!e->dirty && e->key[0]) {
        e->dirty = true;
        t->ndirty++;
    }
}

/* ---- single-key primitives (mutex held by the caller) ---- */

static int bucket_take(struct local_ent *e, uint64_t now, unsigned burst, uint64_t interval,
                       uint64_t *detail_r)
{
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

static void pend_expire(struct local_ent *e, uint64_t now, uint64_t pend_ttl)
{
    if (e->pend && now > e->pend_ts + pend_ttl)
        e->pend = 0;
}

/* Locked out, or failures + attempts in flight at the limit: the retry-after; else 0. */
static uint64_t full(struct local_ent *e, uint64_t now, unsigned limit, uint64_t pend_ttl)
{
    if (limit == 0 || !e)
        return 0;
    if (e->until > now)
        return e->until - now;
    pend_expire(e, now, pend_ttl);
    unsigned n = e->fail_expires > now ? e->n : 0;
    return n + e->pend >= limit ? PEND_BUSY_MS : 0;
}

static void reserve(struct local_ent *e, uint64_t now, uint64_t pend_ttl)
{
    e->pend++;
    e->pend_ts = now;
    extend(e, now + pend_ttl);
}

static void release(struct local_ent *e)
{
    if (e && e->pend)
        e->pend--;
}

static uint64_t bump(struct local_ent *e, uint64_t now, unsigned limit, uint64_t window,
                     uint64_t lock_ms, uint64_t lock_max)
{
    if (limit == 0)
        return 0;
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

int local_check(struct local_tab *t, const char *key, uint64_t now, unsigned burst,
                uint64_t interval, unsigned fail_limit, uint64_t *detail_r)
{
    *detail_r = 0;
    pthread_mutex_lock(&t->mu);
    int rc = RL_OK;
    struct local_ent *e = lookup(t, key, now, burst > 0);
    if (e && fail_limit > 0 && e->until > now) {
        *detail_r = e->until - now;
        rc = RL_LOCKED;
    } else if (e) {
        rc = bucket_take(e, now, burst, interval, detail_r);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

uint64_t local_fail(struct local_tab *t, const char *key, uint64_t now, unsigned limit,
                    uint64_t window, uint64_t lock_ms, uint64_t lock_max)
{
    if (limit == 0)
        return 0;
    pthread_mutex_lock(&t->mu);
    uint64_t lock = bump(lookup(t, key, now, true), now, limit, window, lock_ms, lock_max);
    pthread_mutex_unlock(&t->mu);
    return lock;
}

void local_reset(struct local_tab *t, const char *key, uint64_t now)
{
    pthread_mutex_lock(&t->mu);
    struct local_ent *e = lookup(t, key, now, false);
    if (e) {
        e->n = 0;
        e->level = 0;
        e->until = 0;
        e->fail_expires = 0;
    }
    pthread_mutex_unlock(&t->mu);
}

size_t local_count(struct local_tab *t, uint64_t now)
{
    size_t n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->cap; i++)
        n += live(&t->e[i], now);
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* ---- one login ---- */

struct keys {
    char u[3 * RL_USER_MAX + 4];
    char p[3 * RL_USER_MAX + RL_ADDR_MAX + 8];
    char k[3 * RL_USER_MAX + RL_ADDR_MAX + 8];
    char a[RL_ADDR_MAX + 4];
    bool has_net, has_addr;
};

static void make_keys(const struct local_login *k, struct keys *o)
{
    snprintf(o->u, sizeof o->u, "u:%s", k->user ? k->user : "");
    o->has_net = k->net && k->net[0];
    o->has_addr = k->addr && k->addr[0];
    snprintf(o->p, sizeof o->p, "p:%s:%s", k->user, o->has_net ? k->net : "");
    snprintf(o->k, sizeof o->k, "k:%s:%s", k->user, o->has_net ? k->net : "");
    snprintf(o->a, sizeof o->a, "a:%s", o->has_addr ? k->addr : "");
}

int local_login_check(struct local_tab *t, const struct local_login *k,
                      const struct policy_limits *l, uint64_t now, enum local_scope *scope_r,
                      uint64_t *detail_r)
{
    struct keys ks;
    make_keys(k, &ks);
    *detail_r = 0;
    *scope_r = LOCAL_SCOPE_USER;
    uint64_t pttl = l->pend_ttl_ms ? l->pend_ttl_ms : 60000;
    unsigned plimit = ks.has_net ? l->pair_fail_limit : 0;
    int rc = RL_OK;
    pthread_mutex_lock(&t->mu);
    bool known = ks.has_net && lookup(t, ks.k, now, false) != NULL;
    struct local_ent *u = lookup(t, ks.u, now, true);
    struct local_ent *p = ks.has_net ? lookup(t, ks.p, now, true) : NULL;
    struct local_ent *a = ks.has_addr ? lookup(t, ks.a, now, true) : NULL;
    uint64_t d;
    if ((d = full(p, now, plimit, pttl))) {
        *scope_r = LOCAL_SCOPE_PAIR;
        rc = RL_LOCKED;
    } else if (!known && (d = full(u, now, l->user_fail_limit, pttl))) {
        rc = RL_LOCKED;
    } else if ((d = full(a, now, l->addr_fail_limit, pttl))) {
        *scope_r = LOCAL_SCOPE_ADDR;
        rc = RL_LOCKED;
    } else if ((rc = bucket_take(known ? p : u, now, l->user_burst, l->user_interval_ms, &d)) !=
               RL_OK) {
        *scope_r = known ? LOCAL_SCOPE_PAIR : LOCAL_SCOPE_USER;
    } else if (a && (rc = bucket_take(a, now, l->addr_burst, l->addr_interval_ms, &d)) != RL_OK) {
        *scope_r = LOCAL_SCOPE_ADDR;
    } else {
        if (p && plimit)
            reserve(p, now, pttl);
        if (!known && l->user_fail_limit)
            reserve(u, now, pttl);
        if (a && l->addr_fail_limit)
            reserve(a, now, pttl);
    }
    *detail_r = rc == RL_OK ? 0 : d;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

void local_login_done(struct local_tab *t, const struct local_login *k,
                      const struct policy_limits *l, uint64_t now, enum local_outcome o,
                      bool synced, struct local_locks *locks_r)
{
    struct local_locks none;
    if (!locks_r)
        locks_r = &none;
    *locks_r = (struct local_locks){0};
    struct keys ks;
    make_keys(k, &ks);
    pthread_mutex_lock(&t->mu);
    struct local_ent *u = lookup(t, ks.u, now, o == LOCAL_FAILED);
    struct local_ent *p = ks.has_net ? lookup(t, ks.p, now, o == LOCAL_FAILED) : NULL;
    struct local_ent *a = ks.has_addr ? lookup(t, ks.a, now, o == LOCAL_FAILED) : NULL;
    /* Saturating: a reservation the check did not make (the network became known in
     * between) can only release another attempt's early, never underflow. */
    release(u);
    release(p);
    release(a);
    if (o == LOCAL_FAILED) {
        struct local_ent *all[] = {u, p, a};
        unsigned lim[] = {l->user_fail_limit, ks.has_net ? l->pair_fail_limit : 0,
                          l->addr_fail_limit};
        uint64_t *lock[] = {&locks_r->user, &locks_r->pair, &locks_r->addr};
        for (int i = 0; i < 3; i++) {
            if (!all[i] || !lim[i])
                continue;
            *lock[i] =
                bump(all[i], now, lim[i], l->fail_window_ms, l->lockout_ms, l->lockout_max_ms);
            if (!synced)
                mark_dirty(t, all[i], 1);
        }
    } else if (o == LOCAL_OK && ks.has_net) {
        if (p) {
            p->n = 0;
            p->level = 0;
            p->until = 0;
            p->fail_expires = 0;
        }
        if (l->known_max) {
            struct local_ent *kn = lookup(t, ks.k, now, true);
            extend(kn, now + (l->known_ttl_ms ? l->known_ttl_ms : 30ULL * 86400000));
            if (!synced)
                mark_dirty(t, kn, 0);
        }
    }
    pthread_mutex_unlock(&t->mu);
}

void local_login_unsynced(struct local_tab *t, const struct local_login *k, uint64_t now,
                          enum local_outcome o)
{
    struct keys ks;
    make_keys(k, &ks);
    pthread_mutex_lock(&t->mu);
    if (o == LOCAL_FAILED) {
        const char *names[] = {k->user ? ks.u : NULL, k->user && ks.has_net ? ks.p : NULL,
                               ks.has_addr ? ks.a : NULL};
        for (int i = 0; i < 3; i++) {
            struct local_ent *e = names[i] ? lookup(t, names[i], now, false) : NULL;
            if (e)
                mark_dirty(t, e, 1);
        }
    } else if (o == LOCAL_OK && ks.has_net) {
        struct local_ent *e = lookup(t, ks.k, now, false);
        if (e)
            mark_dirty(t, e, 0);
    }
    pthread_mutex_unlock(&t->mu);
}

static bool split(const struct local_ent *e, struct local_wb *w)
{
    w->kind = e->key[0];
    w->user[0] = w->net[0] = '\0';
    const char *rest = e->key + 2;
    if (w->kind == 'a') {
        snprintf(w->net, sizeof w->net, "%s", rest);
        return true;
    }
    const char *c = strchr(rest, ':');
    if (w->kind == 'u') {
        snprintf(w->user, sizeof w->user, "%s", rest);
        return true;
    }
    if ((w->kind != 'p' && w->kind != 'k') || !c)
        return false;
    snprintf(w->user, sizeof w->user, "%.*s", (int)(c - rest), rest);
    snprintf(w->net, sizeof w->net, "%s", c + 1);
    return true;
}

size_t local_take(struct local_tab *t, uint64_t now, struct local_wb *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->cap && n < max && t->ndirty; i++) {
        struct local_ent *e = &t->e[i];
        if (!e->dirty)
            continue;
        e->dirty = false;
        t->ndirty--;
        if (!live(e, now) || !split(e, &out[n]))
            continue;
        out[n].add = e->dirty_n;
        out[n].level = e->level;
        out[n].left_ms = e->until > now ? e->until - now : 0;
        e->dirty_n = 0;
        n++;
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

size_t local_unsynced(struct local_tab *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->ndirty;
    pthread_mutex_unlock(&t->mu);
    return n;
}
