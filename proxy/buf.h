/*
 * buf — a fixed-capacity byte buffer, allocated lazily and released when empty.
 *
 * Layout: data[0 .. cap) holds
 *     [0, rpos)      consumed or sent — garbage, reclaimed by compaction
 *     [rpos, mark)   ready to send to the peer (relay buffers) — the filter has passed it
 *     [mark, wpos)   received but not yet released by the filter (held, or being parsed)
 *     [wpos, cap)    free
 * Buffers used only for parsing (pre-auth input) ignore `mark`.
 *
 * Discipline: only buf.c and conn.c move rpos/mark/wpos. A filter works with the verbs below,
 * addressing held bytes by their offset after mark ("held offset"): it releases bytes
 * (buf_release), removes bytes it replaces or refuses (buf_cut_held, buf_drop_held) and puts its
 * own bytes in front of the held ones (buf_insert). conn.c reads into the free tail
 * (buf_commit) and consumes what it sent (buf_consume). Every verb keeps
 * rpos <= mark <= wpos <= cap, checked with assert() in debug builds.
 *
 * Idle sessions hold no memory: buf_release_if_empty() frees the storage, and buf_reserve()
 * allocates it again on the next read. Every buffer has a hard capacity set at init, so no
 * peer can make one grow.
 */
#ifndef PORTCULLIS_BUF_H
#define PORTCULLIS_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
    char *data;    /* owned; NULL while empty and released */
    uint32_t cap;  /* capacity once allocated */
    uint32_t rpos; /* first unconsumed byte */
    uint32_t mark; /* end of the sendable region (rpos <= mark <= wpos) */
    uint32_t wpos; /* end of data */
};

void buf_init(struct buf *b, size_t cap);
void buf_free(struct buf *b);

static inline size_t buf_len(const struct buf *b)
{
    return b->wpos - b->rpos;
}
static inline size_t buf_sendable(const struct buf *b)
{
    return b->mark - b->rpos;
}
static inline bool buf_empty(const struct buf *b)
{
    return b->wpos == b->rpos;
}
/* Bytes that can still be appended (after compaction). */
static inline size_t buf_room(const struct buf *b)
{
    return b->cap - buf_len(b);
}
static inline char *buf_rptr(const struct buf *b)
{
    return b->data + b->rpos;
}
/* Bytes after mark: held by the filter, or not yet looked at. */
static inline size_t buf_held(const struct buf *b)
{
    return b->wpos - b->mark;
}
/* The first byte after mark (valid only while the buffer has storage). */
static inline char *buf_mptr(const struct buf *b)
{
    return b->data + b->mark;
}
/* The free tail data[wpos .. cap) (after buf_reserve). */
static inline char *buf_wptr(const struct buf *b)
{
    return b->data + b->wpos;
}

/* Make at least one byte (up to all free space) writable at data+wpos; allocates or compacts.
 * Returns the number of writable bytes (0 when full) or -1 when out of memory. */
long buf_reserve(struct buf *b);
/* Append bytes; returns false (appending nothing) if they do not fit. */
bool buf_append(struct buf *b, const void *p, size_t len);
bool buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool buf_vprintf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Consume n bytes from the front (n <= buf_len); mark follows if it would fall behind. */
void buf_consume(struct buf *b, size_t n);
/* Record n bytes written at buf_wptr() (n <= what buf_reserve returned). */
void buf_commit(struct buf *b, size_t n);
/* Release n held bytes: they join the sendable region (n <= buf_held). */
void buf_release(struct buf *b, size_t n);
/* Remove n bytes at held offset `off` (off + n <= buf_held); the bytes after them move up. */
void buf_cut_held(struct buf *b, size_t off, size_t n);
/* Remove every byte after mark (held and unframed). */
void buf_drop_held(struct buf *b);
/* Put n bytes in front of the held ones, as sendable; compacts when the tail is short. False
 * (nothing inserted) when they do not fit or storage cannot be allocated. */
bool buf_insert(struct buf *b, const void *p, size_t n);
/* Drop everything. */
void buf_clear(struct buf *b);
/* Free the storage if nothing is held; keeps capacity for the next allocation. */
void buf_release_if_empty(struct buf *b);

#endif
