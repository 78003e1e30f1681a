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

/* KEYS: fail, bucket, conn. ARGV: sid, burst, interval_ms, max_sessions, stale_ms, fail_limit.
 * Order matters: a locked-out or capped client does not spend a token, and a slot is reserved
 * (the session id added to the set) only when everything passed, so the cap holds across
 * instances without a second round trip. */
const struct rl_script_text rl_lua_check = {
    "check",
    "-- portcullis check v1\n" LUA_NOW "local burst = tonumber(ARGV[2])\n"
    "local interval = tonumber(ARGV[3])\n"
    "local maxs = tonumber(ARGV[4])\n"
    "local stale = tonumber(ARGV[5])\n"
    "if tonumber(ARGV[6]) > 0 then\n"
    "  local u = tonumber(redis.call('HGET', KEYS[1], 'until') or '0') or 0\n"
    "  if u > now then return {1, u - now} end\n"
    "end\n"
    "if maxs > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - stale)\n"
    "  if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then\n"
    "    local n = redis.call('ZCARD', KEYS[3])\n"
    "    if n >= maxs then return {3, n} end\n"
    "  end\n"
    "end\n"
    "if burst > 0 then\n"
    "  local b = redis.call('HMGET', KEYS[2], 'tok', 'ts')\n"
    "  local tok = tonumber(b[1]) or burst\n"
    "  local ts = tonumber(b[2]) or now\n"
    "  if now > ts then tok = math.min(burst, tok + (now - ts) / interval) end\n"
    "  if tok < 1 then return {2, math.ceil((1 - tok) * interval)} end\n"
    "  tok = tok - 1\n"
    "  redis.call('HSET', KEYS[2], 'tok', tostring(tok), 'ts', tostring(now))\n"
    "  redis.call('PEXPIRE', KEYS[2], math.ceil((burst - tok) * interval) + 1000)\n"
    "end\n"
    "if maxs > 0 then\n"
    "  redis.call('ZADD', KEYS[3], now, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[3], stale * 2)\n"
    "end\n"
    "return {0, 0}\n",
};

/* KEYS: fail, conn. ARGV: sid, fail_limit, window_ms, lockout_ms, lockout_max_ms.
 * The failure window is fixed from the first failure (TTL set once); a lock-out doubles with
 * each level and keeps the record alive for the lock plus one window, so a client that keeps
 * failing climbs the levels and one that stops is forgotten. */
const struct rl_script_text rl_lua_fail = {
    "fail",
    "-- portcullis fail v1\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "local limit = tonumber(ARGV[2])\n"
    "if limit == 0 then return {0, 0} end\n" LUA_NOW "local window = tonumber(ARGV[3])\n"
    "local h = redis.call('HMGET', KEYS[1], 'n', 'level')\n"
    "local n = (tonumber(h[1]) or 0) + 1\n"
    "local level = tonumber(h[2]) or 0\n"
    "local lock = 0\n"
    "if n >= limit then\n"
    "  level = level + 1\n"
    "  lock = math.min(tonumber(ARGV[4]) * 2 ^ math.min(level - 1, 30), tonumber(ARGV[5]))\n"
    "  n = 0\n"
    "  redis.call('HSET', KEYS[1], 'n', 0, 'level', level, 'until', tostring(now + lock))\n"
    "  redis.call('PEXPIRE', KEYS[1], lock + window)\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], 'n', n, 'level', level)\n"
    "  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], window) end\n"
    "end\n"
    "return {n, lock}\n",
};

/* KEYS: fail, conn, sess, bytes. ARGV: sid, ttl_ms, reset_fail (0/1), bytes_delta,
 * window_ms (0 = no volume limit), then the registry hash as field/value pairs.
 * The whole hash is rewritten at every heartbeat, so a Redis that lost its data (restart
 * without persistence) has every live session back within one heartbeat. */
const struct rl_script_text rl_lua_sess = {
    "sess",
    "-- portcullis sess v1\n" LUA_NOW "local ttl = tonumber(ARGV[2])\n"
    "if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end\n"
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
