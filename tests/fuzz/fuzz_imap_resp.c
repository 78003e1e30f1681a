/*
 * libFuzzer harness for the IMAP relay framer (imap_frame), used on backend responses and on
 * client commands after login.
 *
 * Properties checked, abort() on any violation:
 *  - split invariance: fed whole, split in two at a data-derived point, in data-derived chunk
 *    sizes and one byte at a time, the framer gives the same events with the same literal
 *    descriptions, heads and literal counts;
 *  - no spin: a call given bytes consumes none only when it returns LITERAL_END (the {0} case)
 *    or a sticky ERROR, and never twice in a row;
 *  - the contract: MORE consumes everything, head_len <= IMAP_HEAD_MAX, literal_left counts
 *    down to 0 at LITERAL_END, at_boundary exactly after END.
 * Each input runs with a small max_line (to reach the limit), a large one and IMAP_LINE_UNLIMITED
 * (the relay after login), which must never report a line as too long.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct outcome {
    uint64_t hash;
    unsigned nevents;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void record(struct outcome *o, const struct imap_framer *f, enum imap_frame_event ev)
{
    uint32_t kind = (uint32_t)ev;
    o->hash = fnv(o->hash, &kind, sizeof kind);
    o->nevents++;
    switch (ev) {
    case IMAP_FRAME_LITERAL: {
        CHECK(f->literal_left == f->literal_len);
        CHECK(f->nliterals > 0);
        uint64_t d[2] = {f->literal_len,
                         (uint64_t)f->literal_plus | (uint64_t)f->literal_binary << 1};
        o->hash = fnv(o->hash, d, sizeof d);
        o->hash = fnv(o->hash, f->head, f->head_len);
        break;
    }
    case IMAP_FRAME_LITERAL_END:
        CHECK(f->literal_left == 0);
        break;
    case IMAP_FRAME_END:
        CHECK(imap_framer_at_boundary(f));
        o->hash = fnv(o->hash, &f->nliterals, sizeof f->nliterals);
        o->hash = fnv(o->hash, f->head, f->head_len);
        /* The head never holds the line end itself. */
        if (f->head_len > 0 && f->nliterals == 0)
            CHECK(memchr(f->head, '\n', f->head_len) == NULL);
        break;
    case IMAP_FRAME_ERROR:
        CHECK(f->error != NULL);
        o->hash = fnv(o->hash, f->error, strlen(f->error));
        break;
    case IMAP_FRAME_MORE:
        break;
    }
}

static void feed(size_t max_line, const uint8_t *data, size_t size, const size_t *ends,
                 size_t nends, struct outcome *o)
{
    struct imap_framer f;
    imap_framer_init(&f, max_line);
    CHECK(imap_framer_at_boundary(&f));
    o->hash = 0xcbf29ce484222325ULL;
    o->nevents = 0;
    size_t start = 0;
    bool stop = false, last_zero = false;
    CHECK(nends > 0 && ends[nends - 1] == size);
    for (size_t c = 0; c < nends && !stop; c++) {
        size_t clen = ends[c] - start;
        char *chunk = malloc(clen ? clen : 1);
        CHECK(chunk != NULL);
        memcpy(chunk, data + start, clen);
        size_t off = 0;
        while (off < clen) {
            size_t used = 0;
            enum imap_frame_event ev = imap_frame(&f, chunk + off, clen - off, &used);
            CHECK(used <= clen - off);
            CHECK(f.head_len <= IMAP_HEAD_MAX);
            if (used == 0) {
                CHECK(ev == IMAP_FRAME_LITERAL_END || ev == IMAP_FRAME_ERROR);
                CHECK(!last_zero);
            }
            last_zero = used == 0;
            off += used;
            if (ev == IMAP_FRAME_MORE) {
                CHECK(off == clen);
                CHECK(!imap_framer_at_boundary(&f));
                continue;
            }
            if (ev != IMAP_FRAME_END)
                CHECK(!imap_framer_at_boundary(&f));
            record(o, &f, ev);
            if (ev == IMAP_FRAME_ERROR && max_line == IMAP_LINE_UNLIMITED)
                CHECK(strcmp(f.error, "line too long") != 0);
            if (ev == IMAP_FRAME_ERROR) {
                stop = true;
                break;
            }
        }
        free(chunk);
        start = ends[c];
    }
}

static void same(const struct outcome *a, const struct outcome *b, const char *mode)
{
    if (a->hash != b->hash || a->nevents != b->nevents) {
        fprintf(stderr, "split invariance broken (%s): %u events vs %u\n", mode, a->nevents,
                b->nevents);
        abort();
    }
}

static void run_limit(size_t max_line, const uint8_t *data, size_t size, uint64_t seed)
{
    struct outcome whole, other;
    size_t one = size;
    feed(max_line, data, size, &one, 1, &whole);

    size_t two[2] = {size ? (size_t)(seed % (size + 1)) : 0, size};
    feed(max_line, data, size, two, 2, &other);
    same(&whole, &other, "two chunks");

    size_t *ends = malloc((size + 1) * sizeof *ends);
    CHECK(ends != NULL);
    size_t n = 0, pos = 0;
    uint64_t s = seed;
    while (pos < size) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t step = 1 + (size_t)((s >> 33) % 7);
        pos = pos + step > size ? size : pos + step;
        ends[n++] = pos;
    }
    if (n == 0)
        ends[n++] = 0;
    feed(max_line, data, size, ends, n, &other);
    same(&whole, &other, "random chunks");

    n = 0;
    for (size_t i = 1; i <= size; i++)
        ends[n++] = i;
    if (n == 0)
        ends[n++] = 0;
    feed(max_line, data, size, ends, n, &other);
    same(&whole, &other, "one byte at a time");
    free(ends);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = fnv(0xcbf29ce484222325ULL, data, size);
    run_limit(20, data, size, seed);
    run_limit(8192, data, size, seed >> 9);
    run_limit(IMAP_LINE_UNLIMITED, data, size, seed >> 17);
    return 0;
}
