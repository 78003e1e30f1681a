/*
 * buf — see buf.h. Compaction is a memmove of the live bytes to the front; it happens only when
 * a read needs room, so a steady relay of full records costs one move per buffer turn at most.
 */
#include "buf.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t cap)
{
    memset(b, 0, sizeof *b);
    b->cap = (uint32_t)cap;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->rpos = b->mark = b->wpos = 0;
}

/* The invariant every verb keeps (a no-op under NDEBUG). */
static inline void check(const struct buf *b)
{
    assert(b->rpos <= b->mark && b->mark <= b->wpos && b->wpos <= (b->data ? b->cap : 0u));
    (void)b;
}

static void compact(struct buf *b)
{
    if (b->rpos == 0)
        return;
    size_t live = b->wpos - b->rpos;
    if (live)
        memmove(b->data, b->data + b->rpos, live);
    b->mark -= b->rpos;
    b->wpos -= b->rpos;
    b->rpos = 0;
}

long buf_reserve(struct buf *b)
{
    if (!b->data) {
        b->data = malloc(b->cap);
        if (!b->data)
            return -1;
        b->rpos = b->mark = b->wpos = 0;
    }
    /* Compact when the tail is short: keeps reads large without moving bytes on every call. */
    if (b->cap - b->wpos < b->cap / 4 && b->rpos > 0)
        compact(b);
    return (long)(b->cap - b->wpos);
}

bool buf_append(struct buf *b, const void *p, size_t len)
{
    if (len > buf_room(b))
        return false;
    if (!b->data && buf_reserve(b) < 0)
        return false;
    if (b->cap - b->wpos < len)
        compact(b);
    memcpy(b->data + b->wpos, p, len);
    b->wpos += (uint32_t)len;
    return true;
}

bool buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    char tmp[4096];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return false;
    return buf_append(b, tmp, (size_t)n);
}

bool buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool ok = buf_vprintf(b, fmt, ap);
    va_end(ap);
    return ok;
}

void buf_consume(struct buf *b, size_t n)
{
    assert(n <= buf_len(b));
    b->rpos += (uint32_t)n;
    if (b->mark < b->rpos)
        b->mark = b->rpos;
    if (b->rpos == b->wpos)
        b->rpos = b->mark = b->wpos = 0;
    check(b);
}

void buf_commit(struct buf *b, size_t n)
{
    assert(b->data && n <= (size_t)(b->cap - b->wpos));
    b->wpos += (uint32_t)n;
    check(b);
}

void buf_release(struct buf *b, size_t n)
{
    assert(n <= buf_held(b));
    b->mark += (uint32_t)n;
    check(b);
}

void buf_cut_held(struct buf *b, size_t off, size_t n)
{
    assert(off + n <= buf_held(b));
    if (!n)
        return;
    char *at = b->data + b->mark + off;
    memmove(at, at + n, buf_held(b) - off - n);
    b->wpos -= (uint32_t)n;
    check(b);
}

void buf_drop_held(struct buf *b)
{
    b->wpos = b->mark;
    check(b);
}

bool buf_insert(struct buf *b, const void *p, size_t n)
{
    if (n > buf_room(b))
        return false;
    if (!b->data && buf_reserve(b) < 0)
        return false;
    if (b->cap - b->wpos < n)
        compact(b);
    memmove(b->data + b->mark + n, b->data + b->mark, buf_held(b));
    memcpy(b->data + b->mark, p, n);
    b->mark += (uint32_t)n;
    b->wpos += (uint32_t)n;
    check(b);
    return true;
}

void buf_clear(struct buf *b)
{
    b->rpos = b->mark = b->wpos = 0;
}

void buf_release_if_empty(struct buf *b)
{
    if (b->data && b->rpos == b->wpos) {
        free(b->data);
        b->data = NULL;
        b->rpos = b->mark = b->wpos = 0;
    }
}
