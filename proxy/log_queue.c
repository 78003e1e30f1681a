/*
 * log_queue — see log_queue.h.
 */
#include "log_queue.h"

#include <stdlib.h>
#include <string.h>

#define HDR 3

bool logq_init(struct logq *q, size_t cap)
{
    memset(q, 0, sizeof *q);
    if (cap < 4096)
        cap = 4096;
    q->ring = malloc(cap);
    if (!q->ring)
        return false;
    q->cap = cap;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    return true;
}

void logq_fini(struct logq *q)
{
    if (!q->ring)
        return;
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q->ring);
    q->ring = NULL;
}

/* Copy in / out of the ring at offset `at` (mod cap), wrapping. */
static void ring_put(struct logq *q, size_t at, const void *p, size_t n)
{
    at %= q->cap;
    size_t first = q->cap - at < n ? q->cap - at : n;
    memcpy(q->ring + at, p, first);
    memcpy(q->ring, (const unsigned char *)p + first, n - first);
}

static void ring_get(const struct logq *q, size_t at, void *p, size_t n)
{
    at %= q->cap;
    size_t first = q->cap - at < n ? q->cap - at : n;
    memcpy(p, q->ring + at, first);
    memcpy((unsigned char *)p + first, q->ring, n - first);
}

bool logq_push(struct logq *q, int level, const char *line, size_t len)
{
    if (len > LOGQ_REC_MAX)
        len = LOGQ_REC_MAX;
    unsigned char hdr[HDR] = {(unsigned char)level, (unsigned char)(len >> 8),
                              (unsigned char)(len & 0xff)};
    pthread_mutex_lock(&q->mu);
    bool ok = q->cap - q->len >= HDR + len;
    if (ok) {
        size_t tail = q->head + q->len;
        ring_put(q, tail, hdr, HDR);
        ring_put(q, tail + HDR, line, len);
        q->len += HDR + len;
        pthread_cond_signal(&q->cv);
    } else {
        q->dropped++;
        q->dropped_total++;
    }
    pthread_mutex_unlock(&q->mu);
    return ok;
}

long logq_pop_locked(struct logq *q, int *level_r, char *out, size_t cap)
{
    if (q->len == 0)
        return -1;
    unsigned char hdr[HDR];
    ring_get(q, q->head, hdr, HDR);
    size_t len = (size_t)hdr[1] << 8 | hdr[2];
    size_t n = len < cap ? len : cap;
    ring_get(q, q->head + HDR, out, n);
    q->head = (q->head + HDR + len) % q->cap;
    q->len -= HDR + len;
    if (q->len == 0)
        q->head = 0;
    *level_r = hdr[0];
    return (long)n;
}

uint64_t logq_dropped_total(struct logq *q)
{
    pthread_mutex_lock(&q->mu);
    uint64_t n = q->dropped_total;
    pthread_mutex_unlock(&q->mu);
    return n;
}
