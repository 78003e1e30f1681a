/*
 * route_cache — see route_cache.h. Chained hash buckets (a power of two, at least the
 * capacity) plus one doubly linked LRU list; both are intrusive in the entry.
 */
#include "route_cache.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cfg_map.h"

struct centry {
    struct centry *hnext;       /* bucket chain */
    struct centry *prev, *next; /* LRU: head = most recent */
    char *user;                 /* owned key (folded when fold_case) */
    size_t bucket;
    double expires;
    enum route_status status;
    char source[CFG_NAME_MAX + 1];
    char rule[32];
    struct route_target target; /* text and host owned */
};

struct route_cache {
    struct centry **buckets;
    size_t mask;
    size_t cap, n;
    bool fold_case;
    struct centry *head, *tail;
};

static size_t hash_user(const char *s, bool fold)
{
    size_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = fold && *p >= 'A' && *p <= 'Z' ? (unsigned char)(*p + 32) : *p;
        h = (h ^ c) * 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

static bool same_user(const char *stored, const char *q, bool fold)
{
    return fold ? strcasecmp(stored, q) == 0 : strcmp(stored, q) == 0;
}

struct route_cache *route_cache_new(size_t cap, bool fold_case)
{
    if (cap == 0)
        return NULL;
    struct route_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t nb = 16;
    while (nb < cap)
        nb <<= 1;
    c->buckets = calloc(nb, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->mask = nb - 1;
    c->cap = cap;
    c->fold_case = fold_case;
    return c;
}

static void lru_unlink(struct route_cache *c, struct centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(struct route_cache *c, struct centry *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void free_entry(struct centry *e)
{
    free(e->user);
    free((char *)e->target.text);
    free((char *)e->target.host);
    free(e);
}

static void drop(struct route_cache *c, struct centry *e)
{
    struct centry **pp = &c->buckets[e->bucket];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    free_entry(e);
    c->n--;
}

static struct centry *find(struct route_cache *c, const char *user)
{
    size_t b = hash_user(user, c->fold_case) & c->mask;
    for (struct centry *e = c->buckets[b]; e; e = e->hnext)
        if (same_user(e->user, user, c->fold_case))
            return e;
    return NULL;
}

bool route_cache_get(struct route_cache *c, const char *user, double now, struct route_answer *a)
{
    if (!c)
        return false;
    struct centry *e = find(c, user);
    if (!e)
        return false;
    if (now >= e->expires) {
        drop(c, e);
        return false;
    }
    lru_unlink(c, e);
    lru_front(c, e);
    *a = (struct route_answer){.status = e->status,
                               .source = e->source,
                               .rule = e->rule,
                               .target = e->status == ROUTE_FOUND ? &e->target : NULL,
                               .cached = true};
    return true;
}

void route_cache_put(struct route_cache *c, const char *user, const struct route_answer *a,
                     double now, double ttl)
{
    if (!c || (a->status == ROUTE_FOUND && !a->target) || a->status == ROUTE_ERROR)
        return;
    struct centry *old = find(c, user);
    if (old)
        drop(c, old);
    if (c->n >= c->cap && c->tail)
        drop(c, c->tail);
    struct centry *e = calloc(1, sizeof *e);
    if (!e || !(e->user = strdup(user))) {
        free(e);
        return;
    }
    if (a->status == ROUTE_FOUND) {
        e->target = *a->target;
        e->target.text = strdup(a->target->text);
        e->target.host = a->target->host ? strdup(a->target->host) : NULL;
        if (!e->target.text || (a->target->host && !e->target.host)) {
            free((char *)e->target.text);
            free((char *)e->target.host);
            free(e->user);
            free(e);
            return;
        }
    }
    e->status = a->status;
    e->expires = now + ttl;
    snprintf(e->source, sizeof e->source, "%s", a->source ? a->source : "");
    snprintf(e->rule, sizeof e->rule, "%s", a->rule ? a->rule : "");
    e->bucket = hash_user(user, c->fold_case) & c->mask;
    e->hnext = c->buckets[e->bucket];
    c->buckets[e->bucket] = e;
    lru_front(c, e);
    c->n++;
}

void route_cache_flush(struct route_cache *c)
{
    if (!c)
        return;
    for (struct centry *e = c->head, *next; e; e = next) {
        next = e->next;
        free_entry(e);
    }
    memset(c->buckets, 0, (c->mask + 1) * sizeof *c->buckets);
    c->head = c->tail = NULL;
    c->n = 0;
}

size_t route_cache_size(const struct route_cache *c)
{
    return c ? c->n : 0;
}

void route_cache_free(struct route_cache **cp)
{
    struct route_cache *c = *cp;
    *cp = NULL;
    if (!c)
        return;
    route_cache_flush(c);
    free(c->buckets);
    free(c);
}
