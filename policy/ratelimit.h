/*
 * ratelimit — the Redis key scheme and the Lua scripts of the policy (docs/redis.md).
 *
 * Pure functions and constant text: no I/O, no allocation, so the unit test and the admin tool
 * (tools/portcullis-ctl.c) build exactly the keys the daemon uses.
 *
 * Keys (P = configured prefix):
 *   P rl:{U}:login     P rl:{ip:A}:login   token bucket (hash: tok, ts)
 *   P fail:{U}         P fail:{ip:A}       failed logins (hash: n, level, until)
 *   P fail:{U}:A                           failed logins of the user from network A
 *   P pend:{U} P pend:{U}:A P pend:{ip:A}  attempts reserved, result not yet known (zset)
 *   P known:{U}                            networks the user logged in from (zset A -> ms)
 *   P rl:{U}:login:A                       the user's token bucket on a known network
 *   P conn:{U}         P conn:{ip:A}       live sessions (zset: session id -> heartbeat ms)
 *   P sess:{U}:<sid>                       session registry (hash)
 *   P rl:{U}:bytes                         download volume in the current window
 *   P kick                                 admin channel (user or session id)
 * U is the escaped user name (rl_user_key), A the aggregated client network (rl_addr_key). Every
 * key of one scope shares a hash tag. The login-path scripts touch the user's slot and the
 * address's slot together (one command per step; docs/redis.md "Redis Cluster").
 */
#ifndef PORTCULLIS_RATELIMIT_H
#define PORTCULLIS_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define RL_USER_MAX 256  /* bytes of a user name that go into keys (escaped: up to 3x) */
#define RL_ADDR_MAX 64   /* "ip:" + an IPv6 network with prefix */
#define RL_KEY_MAX  1024 /* any full key, prefix (<= 64) and session id (<= 128) included */

/* The user name as it appears between the braces of a key: ASCII letters folded to lower case
 * when `fold` (IMAP user names are usually case-insensitive: "Alice" must not get a fresh
 * lock-out counter), bytes that would end or nest a hash tag or look like our separators
 * ('{', '}', '%', ':', space, control bytes, DEL) written as %XX, and cut at RL_USER_MAX input
 * bytes. `out` needs 3 * RL_USER_MAX + 1 bytes. Returns the length. */
size_t rl_user_key(const char *user, bool fold, char *out, size_t cap);

/* The client network for per-address keys: "ip:" + the address with the host bits cleared +
 * "/" + prefix, e.g. "ip:192.0.2.7/32", "ip:2001:db8:1:2::/64". A v4-mapped IPv6 address counts
 * as IPv4. Returns false for other families. */
bool rl_addr_key(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix, char *out,
                 size_t cap);
/* The same from text ("192.0.2.7", "2001:db8::1"); false if it is not an address. */
bool rl_addr_key_text(const char *text, unsigned v4_prefix, unsigned v6_prefix, char *out,
                      size_t cap);

/* "<prefix><kind>:{<tag>}<suffix>", e.g. rl_key(b, n, "pc:", "fail", "alice", "") ->
 * "pc:fail:{alice}". Returns false if it does not fit. */
bool rl_key(char *out, size_t cap, const char *prefix, const char *kind, const char *tag,
            const char *suffix);

/* Lua scripts. Each documents KEYS and ARGV in its text; all take time from Redis' TIME so
 * every instance agrees, and all set a TTL on every key they create. */
struct rl_script_text {
    const char *name;
    const char *text;
};
/* login: both scopes' limits and lock-outs, then the reservation and the route, in one
 * script -> {code, detail, scope, route kind, route backend, done} */
extern const struct rl_script_text rl_lua_login;
/* fail: turn the reservations into failures, lock out with doubling back-off */
extern const struct rl_script_text rl_lua_fail;
/* release: drop the reservations of a login refused elsewhere or abandoned */
extern const struct rl_script_text rl_lua_release;
/* merge: add counts and lock-outs of the outage table (write-back) */
extern const struct rl_script_text rl_lua_merge;
/* sess: register (with the login's result) / heartbeat a session -> download bytes */
extern const struct rl_script_text rl_lua_sess;
/* close: unregister a session, remember its backend -> download bytes in the window */
extern const struct rl_script_text rl_lua_close;

/* Result codes of the check script. */
enum rl_code { RL_OK = 0, RL_LOCKED = 1, RL_RATE = 2, RL_SESSIONS = 3 };

/* `done`, the 6th field of an allowed check's answer and ARGV 9 of `sess` at login: what the
 * login's result has to undo, as a sum of these bits (plain numbers: they are pasted into the
 * Lua text), plus RL_DONE_TIME x the check's time (Redis TIME, ms; < 2^53 as Lua needs).
 * Without RL_DONE_VALID (0: the check had no answer from Redis) `sess` does all. */
#define RL_DONE_VALID   1   /* the rest is known */
#define RL_DONE_CONN_U  2   /* reserved in conn:{U} */
#define RL_DONE_CONN_A  4   /* reserved in conn:{A} */
#define RL_DONE_PEND_U  8   /* reserved in pend:{U} */
#define RL_DONE_PEND_UA 16  /* reserved in pend:{U}:A */
#define RL_DONE_PEND_A  32  /* reserved in pend:{A} */
#define RL_DONE_FAIL_UA 64  /* fail:{U}:A exists (or was not read) */
#define RL_DONE_KNOWN   128 /* A is in known:{U}, refreshed less than the slack ago */
#define RL_DONE_TIME    256 /* the multiplier of the check's time */
#define RL_STR_(x)      #x
#define RL_STR(x)       RL_STR_(x)

#endif
