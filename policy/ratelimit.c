/*
 * ratelimit — see ratelimit.h. The Lua below is the only place limits are decided in Redis;
 * the local fallback (local.c) mirrors the same arithmetic.
 *
 * Lua facts relied on (libs-notes 2.2, pitfall 11): numbers returned to the client are cut to
 * integers, so scripts return only integers; a nil bulk reply reads as `false`; TIME followed by
 * writes is allowed (Redis 7 replicates effects).
 */
#include "ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

size_t rl_user_key(const char *user, bool fold, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < RL_USER_MAX && user[i]; i++) {
        unsigned char c = (unsigned char)user[i];
        if (fold && c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        bool esc = c <= 0x20 || c == 0x7f || c == '{' || c == '}' || c == '%' || c == ':';
        if (o + (esc ? 3 : 1) >= cap)
            break;
        if (esc) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return o;
}

static void clear_host_bits(unsigned char *a, size_t bytes, unsigned prefix)
{
    for (size_t i = 0; i < bytes; i++) {
        unsigned bit = (unsigned)i * 8;
        if (bit >= prefix)
            a[i] = 0;
        else if (prefix - bit < 8)
            a[i] &= (unsigned char)(0xff << (8 - (prefix - bit)));
    }
}

static bool format_net(int family, const unsigned char *addr, unsigned v4p, unsigned v6p, char *out,
                       size_t cap)
{
    unsigned char a[16];
    char text[INET6_ADDRSTRLEN];
    unsigned p;
    if (family == AF_INET) {
        memcpy(a, addr, 4);
        p = v4p > 32 ? 32 : v4p;
        clear_host_bits(a, 4, p);
    } else {
        memcpy(a, addr, 16);
        p = v6p > 128 ? 128 : v6p;
        clear_host_bits(a, 16, p);
    }
    if (!inet_ntop(family, a, text, sizeof text))
        return false;
    int n = snprintf(out, cap, "ip:%s/%u", text, p);
    return n > 0 && (size_t)n < cap;
}

static bool v4mapped(const unsigned char *a)
{
    static const unsigned char pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, pfx, 12) == 0;
}

bool rl_addr_key(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix, char *out,
                 size_t cap)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return format_net(AF_INET, (const unsigned char *)&in->sin_addr, v4_prefix, v6_prefix, out,
                          cap);
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (v4mapped(a))
            return format_net(AF_INET, a + 12, v4_prefix, v6_prefix, out, cap);
        return format_net(AF_INET6, a, v4_prefix, v6_prefix, out, cap);
    }
    return false;
}

bool rl_addr_key_text(const char *text, unsigned v4_prefix, unsigned v6_prefix, char *out,
                      size_t cap)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, text, &in.sin_addr) == 1)
        return rl_addr_key((struct sockaddr *)&in, v4_prefix, v6_prefix, out, cap);
    if (inet_pton(AF_INET6, text, &in6.sin6_addr) == 1)
        return rl_addr_key((struct sockaddr *)&in6, v4_prefix, v6_prefix, out, cap);
    return false;
}

bool rl_key(char *out, size_t cap, const char *prefix, const char *kind, const char *tag,
            const char *suffix)
{
    int n = snprintf(out, cap, "%s%s:{%s}%s", prefix, kind, tag, suffix);
    return n > 0 && (size_t)n < cap;
}

#define LUA_NOW                                                                                    \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* Shared by the scripts that count failures: one failure on hash KEYS[k] (n, level, until) with
 * `limit`; at the limit a lock-out of lockout * 2^(level-1) (capped) starts and n restarts. The
 * window is fixed from the first failure (TTL set once); a lock-out keeps the record for the
 * lock plus one window, so a client that keeps failing climbs the levels and one that stops is
 * forgotten. Returns the lock-out started (ms, 0 = none). */
#define LUA_BUMP                                                                                   \
    "local function bump(key, limit, window, lock0, lockmax)\n"                                    \
    "  if limit <= 0 then return 0 end\n"                                                          \
    "  local h = redis.call('HMGET', key, 'n', 'level')\n"                                         \
    "  local n = (tonumber(h[1]) or 0) + 1\n"                                                      \
    "  local level = tonumber(h[2]) or 0\n"                                                        \
    "  if n >= limit then\n"                                                                       \
    "    level = level + 1\n"                                                                      \
    "    local lock = math.min(lock0 * 2 ^ math.min(level - 1, 30), lockmax)\n"                    \
    "    redis.call('HSET', key, 'n', 0, 'level', level, 'until', tostring(now + lock))\n"         \
    "    redis.call('PEXPIRE', key, lock + window)\n"                                              \
    "    return lock\n"                                                                            \
    "  end\n"                                                                                      \
    "  redis.call('HSET', key, 'n', n, 'level', level)\n"                                          \
    "  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, window) end\n"               \
    "  return 0\n"                                                                                 \
    "end\n"

/* Is the failure record KEYS[k] with pending reservations `pend` (a zset) at its limit?
 * Locked -> the time left; failures + attempts in flight >= limit -> `busy_ms` (the attempts
 * in flight may all fail); else 0. Reservations older than `pttl` are dropped first (their
 * proxy died between check and result). */
#define LUA_FULL                                                                                   \
    "local function full(key, pend, limit, pttl)\n"                                                \
    "  if limit <= 0 then return 0 end\n"                                                          \
    "  local h = redis.call('HMGET', key, 'n', 'until')\n"                                         \
    "  local u = tonumber(h[2] or '0') or 0\n"                                                     \
    "  if u > now then return u - now end\n"                                                       \
    "  redis.call('ZREMRANGEBYSCORE', pend, '-inf', now - pttl)\n"                                 \
    "  if (tonumber(h[1]) or 0) + redis.call('ZCARD', pend) >= limit then return 1000 end\n"       \
    "  return 0\n"                                                                                 \
    "end\n"

#define LUA_BUCKET                                                                                 \
    "local function take(key, burst, interval)\n"                                                  \
    "  if burst <= 0 then return 0 end\n"                                                          \
    "  local b = redis.call('HMGET', key, 'tok', 'ts')\n"                                          \
    "  local tok = tonumber(b[1]) or burst\n"                                                      \
    "  local ts = tonumber(b[2]) or now\n"                                                         \
    "  if now > ts then tok = math.min(burst, tok + (now - ts) / interval) end\n"                  \
    "  if tok < 1 then return math.ceil((1 - tok) * interval) end\n"                               \
    "  tok = tok - 1\n"                                                                            \
    "  redis.call('HSET', key, 'tok', tostring(tok), 'ts', tostring(now))\n"                       \
    "  redis.call('PEXPIRE', key, math.ceil((burst - tok) * interval) + 1000)\n"                   \
    "  return 0\n"                                                                                 \
    "end\n"

#define LUA_CAP                                                                                    \
    "local function capped(conn, sid, maxs, stale)\n"                                              \
    "  if maxs <= 0 then return 0 end\n"                                                           \
    "  redis.call('ZREMRANGEBYSCORE', conn, '-inf', now - stale)\n"                                \
    "  if redis.call('ZSCORE', conn, sid) then return 0 end\n"                                     \
    "  local n = redis.call('ZCARD', conn)\n"                                                      \
    "  if n >= maxs then return n end\n"                                                           \
    "  return 0\n"                                                                                 \
    "end\n"

/* Address scope. KEYS: fail, bucket, conn, pend. ARGV: sid, burst, interval_ms, max_sessions,
 * stale_ms, fail_limit, pend_ttl_ms.
 * Order matters: a locked-out or capped client does not spend a token, and the attempt is
 * reserved (session id into the pending set and the session set) only when everything passed,
 * so neither the failure limit nor the cap can be overrun by attempts racing on any instance. */
const struct rl_script_text rl_lua_check = {
    "check",
    "-- portcullis check v2\n" LUA_NOW LUA_FULL LUA_BUCKET LUA_CAP
    "local maxs = tonumber(ARGV[4])\n"
    "local stale = tonumber(ARGV[5])\n"
    "local flimit = tonumber(ARGV[6])\n"
    "local pttl = tonumber(ARGV[7])\n"
    "local l = full(KEYS[1], KEYS[4], flimit, pttl)\n"
    "if l > 0 then return {1, l, 0} end\n"
    "local c = capped(KEYS[3], ARGV[1], maxs, stale)\n"
    "if c > 0 then return {3, c, 0} end\n"
    "local r = take(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))\n"
    "if r > 0 then return {2, r, 0} end\n"
    "if flimit > 0 then\n"
    "  redis.call('ZADD', KEYS[4], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[4], pttl)\n"
    "end\n"
    "if maxs > 0 then\n"
    "  redis.call('ZADD', KEYS[3], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[3], stale * 2)\n"
    "end\n"
    "return {0, 0, 0}\n",
};

/* User scope (docs/redis.md "Lock-out model"). KEYS: fail:{U}, fail:{U}:A, pend:{U},
 * pend:{U}:A, known:{U}, rl:{U}:login, rl:{U}:login:A, conn:{U}. ARGV: sid, A ("" = no
 * address), burst, interval_ms, max_sessions, stale_ms, user_limit, pair_limit, pend_ttl_ms.
 * A is a known network of the user (a member of known:{U}: a login succeeded from it) -> only
 * the (user, A) record and bucket decide; otherwise the (user, A) record, then the per-user
 * ceiling, then the user's bucket. Returns {code, detail, which}: which = 1 when the (user, A)
 * record refused, 0 the user's; detail of an allowed answer = 1 when A is known. */
const struct rl_script_text rl_lua_ucheck = {
    "ucheck",
    "-- portcullis ucheck v1\n" LUA_NOW LUA_FULL LUA_BUCKET LUA_CAP "local a = ARGV[2]\n"
    "local pttl = tonumber(ARGV[9])\n"
    "local ulimit = tonumber(ARGV[7])\n"
    "local plimit = a ~= '' and tonumber(ARGV[8]) or 0\n"
    "local known = a ~= '' and redis.call('ZSCORE', KEYS[5], a) ~= false\n"
    "local l = full(KEYS[2], KEYS[4], plimit, pttl)\n"
    "if l > 0 then return {1, l, 1} end\n"
    "if not known then\n"
    "  l = full(KEYS[1], KEYS[3], ulimit, pttl)\n"
    "  if l > 0 then return {1, l, 0} end\n"
    "end\n"
    "local maxs = tonumber(ARGV[5])\n"
    "local stale = tonumber(ARGV[6])\n"
    "local c = capped(KEYS[8], ARGV[1], maxs, stale)\n"
    "if c > 0 then return {3, c, 0} end\n"
    "local r = take(known and KEYS[7] or KEYS[6], tonumber(ARGV[3]), tonumber(ARGV[4]))\n"
    "if r > 0 then return {2, r, known and 1 or 0} end\n"
    "if plimit > 0 then\n"
    "  redis.call('ZADD', KEYS[4], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[4], pttl)\n"
    "end\n"
    "if ulimit > 0 and not known then\n"
    "  redis.call('ZADD', KEYS[3], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[3], pttl)\n"
    "end\n"
    "if maxs > 0 then\n"
    "  redis.call('ZADD', KEYS[8], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[8], stale * 2)\n"
    "end\n"
    "return {0, known and 1 or 0, 0}\n",
};

/* Address scope. KEYS: fail, conn, pend. ARGV: sid, fail_limit, window_ms, lockout_ms,
 * lockout_max_ms. Turns the reservation into a failure. */
const struct rl_script_text rl_lua_fail = {
    "fail",
    "-- portcullis fail v2\n" LUA_NOW LUA_BUMP "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('ZREM', KEYS[3], ARGV[1])\n"
    "local lock = bump(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),\n"
    "                  tonumber(ARGV[5]))\n"
    "return {0, lock}\n",
};

/* User scope. KEYS: fail:{U}, fail:{U}:A, pend:{U}, pend:{U}:A, conn:{U}. ARGV: sid,
 * user_limit, pair_limit (0 = no address), window_ms, lockout_ms, lockout_max_ms.
 * Turns the reservation into a failure on both records (a failure from a known network still
 * counts toward the ceiling: it is not checked there, but unknown networks are) ->
 * {user lock ms, pair lock ms}. */
const struct rl_script_text rl_lua_ufail = {
    "ufail",
    "-- portcullis ufail v1\n" LUA_NOW LUA_BUMP "redis.call('ZREM', KEYS[3], ARGV[1])\n"
    "redis.call('ZREM', KEYS[4], ARGV[1])\n"
    "redis.call('ZREM', KEYS[5], ARGV[1])\n"
    "local w, l0, lm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local pl = bump(KEYS[2], tonumber(ARGV[3]), w, l0, lm)\n"
    "local ul = bump(KEYS[1], tonumber(ARGV[2]), w, l0, lm)\n"
    "return {ul, pl}\n",
};

/* A successful login. KEYS: fail:{U}:A, pend:{U}, pend:{U}:A, known:{U}. ARGV: sid, A ("" = no
 * address), known_ttl_ms, known_max. Releases the reservation, forgets the (user, A) failures
 * and remembers A as known (score = now); the set keeps the known_max most recent networks.
 * The per-user ceiling is not reset: a success from one place does not give a distributed
 * guesser a fresh allowance everywhere else. */
const struct rl_script_text rl_lua_ok = {
    "ok",
    "-- portcullis ok v1\n" LUA_NOW "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('ZREM', KEYS[3], ARGV[1])\n"
    "if ARGV[2] == '' then return 0 end\n"
    "redis.call('DEL', KEYS[1])\n"
    "local max = tonumber(ARGV[4])\n"
    "if max <= 0 then return 0 end\n"
    "redis.call('ZADD', KEYS[4], now, ARGV[2])\n"
    "local n = redis.call('ZCARD', KEYS[4])\n"
    "if n > max then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, n - max - 1) end\n"
    "redis.call('PEXPIRE', KEYS[4], ARGV[3])\n"
    "return 1\n",
};

/* Write-back of what the process-wide table counted while Redis was away (policy.c).
 * KEYS: fail record, known:{U} (or the fail record again). ARGV: failures, level, lock-out
 * left (ms), limit, window_ms, lockout_ms, lockout_max_ms, known network ("" = none),
 * known_ttl_ms, known_max. Merge: failures are added, the longer lock-out and the higher
 * level are kept; a sum that reaches the limit locks out as `fail` would. -> {n, until}. */
const struct rl_script_text rl_lua_merge = {
    "merge",
    "-- portcullis merge v1\n" LUA_NOW
    "local add, lvl, left = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local limit, window = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "if ARGV[8] ~= '' and tonumber(ARGV[10]) > 0 then\n"
    "  redis.call('ZADD', KEYS[2], now, ARGV[8])\n"
    "  local k = redis.call('ZCARD', KEYS[2])\n"
    "  local max = tonumber(ARGV[10])\n"
    "  if k > max then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, k - max - 1) end\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[9])\n"
    "end\n"
    "if add == 0 and left == 0 then return {0, 0} end\n"
    "local h = redis.call('HMGET', KEYS[1], 'n', 'level', 'until')\n"
    "local n = (tonumber(h[1]) or 0) + add\n"
    "local level = math.max(tonumber(h[2]) or 0, lvl)\n"
    "local u = math.max(tonumber(h[3]) or 0, left > 0 and now + left or 0)\n"
    "if limit > 0 and n >= limit and u <= now then\n"
    "  level = level + 1\n"
    "  u = now + math.min(tonumber(ARGV[6]) * 2 ^ math.min(level - 1, 30), tonumber(ARGV[7]))\n"
    "  n = 0\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'n', n, 'level', level, 'until', tostring(u))\n"
    "local ttl = window + math.max(u - now, 0)\n"
    "if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
    "return {n, u}\n",
};

/* KEYS: fail (unused), conn, sess, bytes. ARGV: sid, ttl_ms, unused, bytes_delta,
 * window_ms (0 = no volume limit), then the registry hash as field/value pairs.
 * The whole hash is rewritten at every heartbeat, so a Redis that lost its data (restart
 * without persistence) has every live session back within one heartbeat. */
const struct rl_script_text rl_lua_sess = {
    "sess",
    "-- portcullis sess v2\n" LUA_NOW "local ttl = tonumber(ARGV[2])\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[2], ttl * 2)\n"
    "if #ARGV > 5 then redis.call('HSET', KEYS[3], unpack(ARGV, 6)) end\n"
    "redis.call('HSET', KEYS[3], 'heartbeat', tostring(now))\n"
    "redis.call('PEXPIRE', KEYS[3], ttl)\n"
    "local total = 0\n"
    "local d = tonumber(ARGV[4])\n"
    "if tonumber(ARGV[5]) > 0 then\n"
    "  if d > 0 then\n"
    "    total = redis.call('INCRBY', KEYS[4], d)\n"
    "    if redis.call('PTTL', KEYS[4]) < 0 then redis.call('PEXPIRE', KEYS[4], ARGV[5]) end\n"
    "  else\n"
    "    total = tonumber(redis.call('GET', KEYS[4]) or '0') or 0\n"
    "  end\n"
    "end\n"
    "return total\n",
};

/* KEYS: conn. ARGV: sid, ttl_ms. */
const struct rl_script_text rl_lua_touch = {
    "touch",
    "-- portcullis touch v1\n" LUA_NOW "redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)\n"
    "return 1\n",
};

/* KEYS: conn, sess, bytes. ARGV: sid, bytes_delta, window_ms (0 = no volume limit). */
const struct rl_script_text rl_lua_close = {
    "close",
    "-- portcullis close v1\n"
    "redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "redis.call('DEL', KEYS[2])\n"
    "local d = tonumber(ARGV[2])\n"
    "if tonumber(ARGV[3]) > 0 and d > 0 then\n"
    "  local total = redis.call('INCRBY', KEYS[3], d)\n"
    "  if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end\n"
    "  return total\n"
    "end\n"
    "return 0\n",
};
