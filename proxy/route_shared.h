/*
 * route_shared — the shared level of the routing cache (issue 17): how a routing answer is
 * stored in Redis, and under which key, so that the daemon (route_chain.c through
 * route_rcache.c) and portcullis-ctl (`route show`, `route flush-cache`) agree byte for byte.
 *
 * Key:   P rt:{U}:<digest>
 *   U       the user as in every per-user key (rl_user_key: folded with
 *           policy.user_case_insensitive, escaped); users longer than RL_USER_MAX bytes are
 *           not shared (the key would cut them and two users could meet);
 *   digest  16 hex digits of SHA-256 over a format tag, the case-folding flag and every
 *           non-secret setting of every `routing.lookups` entry, in order (walked from the
 *           config schema, cfg_lookup_table(), so keys added for new lookup types count too).
 *           A changed lookup configuration therefore never reads an answer stored under the
 *           old one: the old entries are unreachable and expire with their TTL.
 * Value: one line of space-separated fields, text escaped as %XX (space, '%', controls):
 *   v1 F <expires ms> <source> <rule> p <pool entry name>
 *   v1 F <expires ms> <source> <rule> d <target text> <host> <port> <numeric address>
 *   v1 N <expires ms> <source> <rule>
 * `expires` is the writer's wall clock (Unix ms) at which the entry ends, so that a reader's
 * worker cache never keeps it longer than Redis does. A dynamic backend carries the address it
 * was resolved to, so a reader never resolves anything on its loop.
 *
 * What is never stored (the chain decides, see route_chain.h): errors, answers with
 * credentials, answers a non-cacheable source took part in. Decoding is strict: anything odd is
 * a miss and the sources are asked, never trusted.
 *
 * Pure: no I/O, no allocation.
 */
#ifndef PORTCULLIS_ROUTE_SHARED_H
#define PORTCULLIS_ROUTE_SHARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cfg_map.h"
#include "config.h"
#include "route_chain.h"
#include "route_map.h"

#define ROUTE_SHARED_KIND       "rt"
#define ROUTE_SHARED_DIGEST_HEX 16
#define ROUTE_SHARED_RULE_MAX   64
#define ROUTE_SHARED_VAL_MAX                                                                       \
    (3 * (CFG_NAME_MAX + ROUTE_SHARED_RULE_MAX + 2 * ROUTE_MAP_KEY_MAX) + 128)
/* The tag and suffix of a key (rl_key(out, cap, prefix, ROUTE_SHARED_KIND, tag, suffix)). */
#define ROUTE_SHARED_TAG_MAX    (3 * 256 + 1)
#define ROUTE_SHARED_SUFFIX_MAX (ROUTE_SHARED_DIGEST_HEX + 2)

/* The digest of cfg's lookups, as ":<16 hex>" (the key's suffix). */
void route_shared_suffix(const struct config *cfg, char out[ROUTE_SHARED_SUFFIX_MAX]);
/* The key's tag for `user`; false when the user is not shared (too long). */
bool route_shared_tag(const struct config *cfg, const char *user, char out[ROUTE_SHARED_TAG_MAX]);

/* A decoded value. Strings are NUL-terminated copies. */
struct route_shared_entry {
    enum route_status status; /* ROUTE_FOUND or ROUTE_NOT_FOUND */
    int64_t expires_ms;       /* Unix ms */
    char source[CFG_NAME_MAX + 1];
    char rule[ROUTE_SHARED_RULE_MAX];
    struct route_target target; /* FOUND: points into text/host below */
    char text[ROUTE_MAP_KEY_MAX + 1];
    char host[ROUTE_MAP_KEY_MAX + 1];
};

/* Encode answer `a` (FOUND with a bound target, or NOT_FOUND) ending at `expires_ms`. Returns
 * the length, 0 when it cannot be stored (error, credentials, an unresolved dynamic target, a
 * field too long). */
size_t route_shared_encode(const struct route_answer *a, int64_t expires_ms, char *out, size_t cap);
/* False for anything malformed. */
bool route_shared_decode(const char *val, size_t len, struct route_shared_entry *e);
/* The entry as an answer (pointing into `e`), flagged cached and shared. */
void route_shared_answer(const struct route_shared_entry *e, struct route_answer *a);

#endif
