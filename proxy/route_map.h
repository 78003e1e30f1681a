/*
 * route_map — the routing map file (docs/routing.md): who lives on which backend.
 *
 * Format, one entry a line (blank lines and lines starting with `#` are skipped):
 *
 *     alice@example.com   mail1          exact user → a pool entry name
 *     @example.org        10.0.0.7       every user of a domain → a host (template's ports)
 *     *                   10.0.0.8:1143  everyone else → host:port
 *
 * The most specific entry wins: the exact user, then `@domain` (the part after the user's last
 * `@`), then `*`. A target is the name of a pool entry (`backends:`), or `host`, `host:port`,
 * `[v6addr]:port`; which of the two is decided by route_map_bind() against the configuration.
 *
 * The table is built for a million entries: the file text is read into one buffer that becomes
 * the arena (keys and targets are NUL-terminated in place, nothing is copied), a line count
 * sizes one open-addressing slot array (12 bytes a slot, load <= 0.5), and targets are interned
 * (an entry holds a 32-bit target index). Memory is the file size plus ~24 bytes an entry,
 * bounded by routing.map_max_size and routing.map_max_entries. The table is immutable once
 * built and refcounted: workers read it without locks while a reload builds the next one.
 *
 * The parser is pure (no I/O, no DNS) and fuzzed (tests/fuzz/fuzz_routemap.c); errors read
 * "FILE:LINE: what".
 */
#ifndef PORTCULLIS_ROUTE_MAP_H
#define PORTCULLIS_ROUTE_MAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

#define ROUTE_MAP_KEY_MAX   255 /* bytes in a user, `@domain` or target */
#define ROUTE_MAP_NO_TARGET UINT32_MAX

struct route_map_limits {
    size_t max_size;    /* bytes of file text */
    size_t max_entries; /* lines with an entry */
    size_t max_targets; /* distinct targets */
    bool fold_case;     /* ASCII case-insensitive keys (policy.user_case_insensitive) */
};

struct route_target {
    const char *text; /* as written (in the arena) */
    unsigned line;    /* first line naming it, for messages */
    /* Set by route_map_bind(): */
    bool pool;                    /* names a pool entry (cfg->backends[].name) */
    const char *host;             /* !pool: the host part (owned by the map) */
    uint16_t port;                /* !pool: 0 = the template's port for the protocol */
    struct sockaddr_storage addr; /* !pool: resolved at bind (port not set) */
    socklen_t addrlen;
};

struct route_map_slot {
    uint32_t key;    /* arena offset + 1; 0 = empty */
    uint32_t hash;   /* low 32 bits of the key's hash: most probes end here */
    uint32_t target; /* index into targets */
};

struct route_map {
    atomic_int refs;
    char *name;  /* owned: the file name, for messages */
    char *arena; /* owned: the file text, split in place */
    size_t arena_len;
    struct route_map_slot *slots; /* owned; power-of-two count */
    size_t mask;
    size_t nentries;
    struct route_target *targets; /* owned */
    size_t ntargets;
    uint32_t star; /* the `*` entry's target, or ROUTE_MAP_NO_TARGET */
    bool fold_case;
};

/* Parse `len` bytes at `text` (taken over: a malloc'd buffer of at least len + 1 bytes, freed
 * on failure too). Returns a table with refs == 1, or NULL with a malloc'd "NAME:LINE: what" in
 * *error_r. Targets are not bound yet. */
struct route_map *route_map_parse(char *text, size_t len, const char *name,
                                  const struct route_map_limits *lim, char **error_r)
    __attribute__((warn_unused_result));
/* Read `path` (blocking: a loader thread or start-up, never a worker loop) and parse it. */
struct route_map *route_map_load(const char *path, const struct route_map_limits *lim,
                                 char **error_r) __attribute__((warn_unused_result));
/* Decide what each target is against `cfg` (a pool entry name of any protocol, else a host,
 * resolved here with getaddrinfo: blocking, same rule as the loader). False with "NAME:LINE:
 * what" in *error_r for a malformed host:port or a name that does not resolve. */
bool route_map_bind(struct route_map *m, const struct config *cfg, char **error_r)
    __attribute__((warn_unused_result));

/* Bind one target (t->text as written; t->host is replaced): a pool entry name of `cfg`, else
 * host[:port] resolved with getaddrinfo(ai_flags) — AI_NUMERICHOST never blocks, so a worker
 * loop may bind an answer from a remote source that way. 0: bound; -1: t->text is not host,
 * host:port or [v6]:port; -2: it does not resolve (*gai_error_r says why: static). */
int route_target_bind(struct route_target *t, const struct config *cfg, int ai_flags,
                      const char **gai_error_r) __attribute__((warn_unused_result));

/* The host part of route_target_bind() alone (no pool entry check): t->text as host[:port]
 * resolved with getaddrinfo(ai_flags), AF_UNSPEC, the first address. Blocking unless
 * AI_NUMERICHOST: route_resolve.c calls it on its threads. Same returns. */
int route_target_resolve(struct route_target *t, int ai_flags, const char **gai_error_r)
    __attribute__((warn_unused_result));

/* The target for `user`, or NULL. *rule_r (optional) says which entry matched: "user",
 * "domain" or "default". Lock-free; the map must be held for as long as the result is used. */
const struct route_target *route_map_lookup(const struct route_map *m, const char *user,
                                            const char **rule_r);

struct route_map *route_map_ref(struct route_map *m);
/* NULL-safe; frees at zero and sets *m to NULL. Thread-safe. */
void route_map_unref(struct route_map **m);

#endif
