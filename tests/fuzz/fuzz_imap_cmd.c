/*
 * libFuzzer harness for the pre-auth IMAP command parser (imap_cmd_parse).
 *
 * Properties checked, abort() on any violation:
 *  - split invariance: the input fed whole, split in two at a point derived from the data, in
 *    chunks of data-derived sizes, and one byte at a time gives the same sequence of results
 *    (result kind, tag, name, every argument's type and bytes, error and fatality);
 *  - the contract: a call never consumes more than it was given, MORE consumes everything,
 *    every other result consumes at least one byte, counts and offsets stay within limits;
 *  - agreement with the framer: when the parser finds only whole commands (no BAD), the relay
 *    framer must end each command at exactly the same byte and see the same literals.
 * Each input runs under small limits (to reach every limit path) and the defaults.
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

#define MAX_CMDS 4096

struct limits {
    size_t max_line, max_literal, store;
};

/* What one feeding produced: a hash of every result in order, plus command end offsets. */
struct outcome {
    uint64_t hash;
    unsigned nresults;
    bool any_bad;
    unsigned ndone;
    size_t done_end[MAX_CMDS]; /* input offset just past each DONE command */
    unsigned done_lits[MAX_CMDS];
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

static void record(struct outcome *o, const struct imap_cmd_parser *p, enum imap_cmd_result r,
                   size_t end)
{
    uint32_t kind = (uint32_t)r | (p->fatal ? 0x100u : 0u);
    o->hash = fnv(o->hash, &kind, sizeof kind);
    o->nresults++;
    CHECK(strlen(p->tag) <= IMAP_TAG_MAX);
    CHECK(p->store_len <= p->store_cap);
    if (r == IMAP_CMD_CONTINUE)
        return;
    o->hash = fnv(o->hash, p->tag, strlen(p->tag) + 1);
    if (r == IMAP_CMD_BAD) {
        CHECK(p->error != NULL);
        o->hash = fnv(o->hash, p->error, strlen(p->error) + 1);
        o->any_bad = true;
        return;
    }
    CHECK(r == IMAP_CMD_DONE);
    CHECK(p->tag[0] != '\0' && p->name[0] != '\0');
    CHECK(strlen(p->name) <= IMAP_NAME_MAX);
    CHECK(p->nargs <= IMAP_ARGS_MAX);
    o->hash = fnv(o->hash, p->name, strlen(p->name) + 1);
    unsigned lits = 0;
    int depth = 0;
    for (unsigned i = 0; i < p->nargs; i++) {
        const struct imap_arg *a = &p->args[i];
        CHECK((size_t)a->off + a->len <= p->store_len);
        if (a->type == IMAP_ARG_LITERAL)
            lits++;
        if (a->type == IMAP_ARG_LIST_OPEN)
            depth++;
        if (a->type == IMAP_ARG_LIST_CLOSE)
            CHECK(--depth >= 0);
        if (a->type == IMAP_ARG_ATOM)
            CHECK(a->len > 0);
        uint32_t hdr[2] = {(uint32_t)a->type, a->len};
        o->hash = fnv(o->hash, hdr, sizeof hdr);
        o->hash = fnv(o->hash, imap_cmd_arg(p, i), a->len);
    }
    CHECK(depth == 0);
    if (o->ndone < MAX_CMDS) {
        o->done_end[o->ndone] = end;
        o->done_lits[o->ndone] = lits;
    }
    o->ndone++;
}

/* Feed `data` in chunks ending at ends[] (ends[n-1] == size), as a session would. */
static void feed(const struct limits *lim, const uint8_t *data, size_t size, const size_t *ends,
                 size_t nends, char *store, struct outcome *o)
{
    struct imap_cmd_parser p;
    imap_cmd_parser_init(&p, store, lim->store, lim->max_line, lim->max_literal);
    memset(o, 0, offsetof(struct outcome, done_end));
    o->hash = 0xcbf29ce484222325ULL;
    size_t start = 0;
    bool stop = false;
    for (size_t c = 0; c < nends && !stop; c++) {
        size_t clen = ends[c] - start;
        /* An exactly sized copy: reading past the chunk is an ASan report. */
        char *chunk = malloc(clen ? clen : 1);
        CHECK(chunk != NULL);
        memcpy(chunk, data + start, clen);
        size_t off = 0;
        while (off < clen) {
            size_t used = 0;
            enum imap_cmd_result r = imap_cmd_parse(&p, chunk + off, clen - off, &used);
            CHECK(used <= clen - off);
            off += used;
            if (r == IMAP_CMD_MORE) {
                CHECK(off == clen);
                continue;
            }
            CHECK(used > 0);
            record(o, &p, r, start + off);
            if (r == IMAP_CMD_BAD && p.fatal) {
                stop = true;
                break;
            }
            if (r != IMAP_CMD_CONTINUE)
                imap_cmd_parser_reset(&p);
        }
        free(chunk);
        start = ends[c];
    }
    CHECK(stop || start == size);
}

static void same(const struct outcome *a, const struct outcome *b, const char *mode)
{
    if (a->hash != b->hash || a->nresults != b->nresults) {
        fprintf(stderr, "split invariance broken (%s): %u results vs %u\n", mode, a->nresults,
                b->nresults);
        abort();
    }
}

/* Without any BAD, the framer must end commands where the parser did and see their literals. */
static void against_framer(const uint8_t *data, size_t size, const struct outcome *o)
{
    if (o->any_bad || o->ndone > MAX_CMDS)
        return;
    struct imap_framer f;
    imap_framer_init(&f, IMAP_LINE_UNLIMITED); /* as the relay frames after login */
    size_t off = 0;
    unsigned n = 0;
    while (off < size) {
        size_t used = 0;
        enum imap_frame_event ev = imap_frame(&f, (const char *)data + off, size - off, &used);
        off += used;
        CHECK(ev != IMAP_FRAME_ERROR);
        if (ev == IMAP_FRAME_END) {
            CHECK(n < o->ndone);
            CHECK(off == o->done_end[n]);
            CHECK(f.nliterals == o->done_lits[n]);
            n++;
        }
    }
    CHECK(n == o->ndone);
}

static struct outcome whole, other;

static void run_limits(const struct limits *lim, const uint8_t *data, size_t size, uint64_t seed)
{
    char *store = malloc(lim->store ? lim->store : 1);
    CHECK(store != NULL);
    size_t one = size;
    feed(lim, data, size, &one, 1, store, &whole);

    size_t two[2] = {size ? (size_t)(seed % (size + 1)) : 0, size};
    feed(lim, data, size, two, 2, store, &other);
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
    feed(lim, data, size, ends, n, store, &other);
    same(&whole, &other, "random chunks");

    n = 0;
    for (size_t i = 1; i <= size; i++)
        ends[n++] = i;
    if (n == 0)
        ends[n++] = 0;
    feed(lim, data, size, ends, n, store, &other);
    same(&whole, &other, "one byte at a time");
    free(ends);
    free(store);

    if (lim->max_line >= 1024)
        against_framer(data, size, &whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = fnv(0xcbf29ce484222325ULL, data, size);
    const struct limits small = {24, 12, 40};
    const struct limits dflt = {8192, 8192, 24576};
    run_limits(&small, data, size, seed);
    run_limits(&dflt, data, size, seed >> 7);
    return 0;
}
