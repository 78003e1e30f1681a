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
    /* "%s%s:{%s}%s" by hand: some 30 keys are built per login (issue 19), and snprintf's
     * format walk cost more than the copies. Truncated like snprintf when it does not fit. */
    const char *part[] = {prefix, kind, ":{", tag, "}", suffix};
    size_t o = 0;
    for (size_t i = 0; i < sizeof part / sizeof part[0]; i++) {
        size_t l = strlen(part[i]);
        if (l >= cap - o) {
            if (cap > o) {
                memcpy(out + o, part[i], cap - o - 1);
                out[cap - 1] = '\0';
            }
            return false;
        }
        memcpy(out + o, part[i], l);
        o += l;
    }
    out[o] = '\0';
    return true;
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

/* The RL_DONE_* bits (ratelimit.h) under Lua names: `login` sets them, `sess` reads them. */
// clang-format off
#define LUA_DONE_BITS \
    "local D_VALID, D_CONN_U, D_CONN_A = " \
    RL_STR(RL_DONE_VALID) ", " RL_STR(RL_DONE_CONN_U) ", " RL_STR(RL_DONE_CONN_A) "\n" \
    "local D_PEND_U, D_PEND_UA, D_PEND_A = " \
    RL_STR(RL_DONE_PEND_U) ", " RL_STR(RL_DONE_PEND_UA) ", " RL_STR(RL_DONE_PEND_A) "\n" \
    "local D_FAIL_UA, D_KNOWN, D_TIME = " \
    RL_STR(RL_DONE_FAIL_UA) ", " RL_STR(RL_DONE_KNOWN) ", " RL_STR(RL_DONE_TIME) "\n"
// clang-format on

/* Is the failure record KEYS[k] with pending reservations `pend` (a zset) at its limit?
 * Locked -> the time left; failures + attempts in flight >= limit -> `busy_ms` (the attempts
 * in flight may all fail); else 0. Reservations older than `pttl` (their proxy died between
 * check and result) do not count: they are dropped only when the raw count would refuse, which
 * gives the same answer as dropping them first (the raw count is an upper bound) for one call
 * instead of two. Second result: the record exists (the login's result must delete it). */
#define LUA_FULL                                                                                   \
    "local function full(key, pend, limit, pttl)\n"                                                \
    "  if limit <= 0 then return 0, true end\n"                                                    \
    "  local h = redis.call('HMGET', key, 'n', 'until')\n"                                         \
    "  local u = tonumber(h[2] or '0') or 0\n"                                                     \
    "  if u > now then return u - now, true end\n"                                                 \
    "  local n = tonumber(h[1]) or 0\n"                                                            \
    "  local seen = h[1] ~= false or h[2] ~= false\n"                                              \
    "  if n + redis.call('ZCARD', pend) < limit then return 0, seen end\n"                         \
    "  redis.call('ZREMRANGEBYSCORE', pend, '-inf', now - pttl)\n"                                 \
    "  if n + redis.call('ZCARD', pend) >= limit then return 1000, seen end\n"                     \
    "  return 0, seen\n"                                                                           \
    "end\n"

/* peek(key, burst, interval): the time until a token is there (0 = one is), the tokens now and
 * when the key's TTL ends (0 = not known); take() then spends one of those tokens. The login
 * script peeks every bucket first and takes only when every scope allowed, so a refused attempt
 * spends no token anywhere; the script is atomic, so the tokens peeked are still the bucket's
 * when it takes (one read per bucket).
 * The TTL must last until the bucket is full again (a missing bucket reads as full). take()
 * sets it to that plus 16 intervals, and only when the TTL it set last would end too soon, so a
 * busy bucket gets a PEXPIRE once per ~16 takes instead of at every take; a bucket that
 * outlives its refill reads as full, exactly as a missing one. Field `exp` = "<ts>:<ms the TTL
 * ends>" is trusted only while its <ts> is the bucket's `ts`: a writer that does not know it
 * (an older version during an upgrade) changes `ts`, and the next take sets the TTL again. */
#define LUA_BUCKET                                                                                 \
    "local function peek(key, burst, interval)\n"                                                  \
    "  if burst <= 0 then return 0, 0, 0 end\n"                                                    \
    "  local b = redis.call('HMGET', key, 'tok', 'ts', 'exp')\n"                                   \
    "  local tok = tonumber(b[1]) or burst\n"                                                      \
    "  local ts = tonumber(b[2]) or now\n"                                                         \
    "  if now > ts then tok = math.min(burst, tok + (now - ts) / interval) end\n"                  \
    "  if tok < 1 then return math.ceil((1 - tok) * interval), tok, 0 end\n"                       \
    "  local ets, exp = string.match(b[3] or '', '^(%d+):(%d+)$')\n"                               \
    "  if ets == nil or ets ~= b[2] then return 0, tok, 0 end\n"                                   \
    "  return 0, tok, tonumber(exp)\n"                                                             \
    "end\n"                                                                                        \
    "local function take(key, burst, interval, tok, exp)\n"                                        \
    "  if burst <= 0 then return end\n"                                                            \
    "  tok = tok - 1\n"                                                                            \
    "  local need = math.ceil((burst - tok) * interval) + 1000\n"                                  \
    "  local ttl = 0\n"                                                                            \
    "  if exp < now + need then\n"                                                                 \
    "    ttl = need + 16 * interval\n"                                                             \
    "    exp = now + ttl\n"                                                                        \
    "  end\n"                                                                                      \
    "  redis.call('HSET', key, 'tok', tostring(tok), 'ts', tostring(now), 'exp',\n"                \
    "             tostring(now) .. ':' .. tostring(exp))\n"                                        \
    "  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end\n"                                      \
    "end\n"

/* capped(conn, sid, maxs, stale): the session count when at the cap (0 = below it, or `sid`
 * already counted), and the raw member count (-1 = not read). Members older than `stale` do not
 * count; like full(), they are trimmed only when the raw count reaches the cap. */
#define LUA_CAP                                                                                    \
    "local function capped(conn, sid, maxs, stale)\n"                                              \
    "  if maxs <= 0 then return 0, -1 end\n"                                                       \
    "  local raw = redis.call('ZCARD', conn)\n"                                                    \
    "  if raw < maxs then return 0, raw end\n"                                                     \
    "  redis.call('ZREMRANGEBYSCORE', conn, '-inf', now - stale)\n"                                \
    "  if redis.call('ZSCORE', conn, sid) then return 0, raw end\n"                                \
    "  local n = redis.call('ZCARD', conn)\n"                                                      \
    "  if n >= maxs then return n, raw end\n"                                                      \
    "  return 0, raw\n"                                                                            \
    "end\n"

/* The login check, one script for both scopes (docs/redis.md "Lock-out model", "Scripts").
 * KEYS: 1 fail:{U}, 2 fail:{U}:A, 3 pend:{U}, 4 pend:{U}:A, 5 known:{U}, 6 rl:{U}:login,
 * 7 rl:{U}:login:A, 8 conn:{U}, 9 route:{U}, 10 aff:{U}, and with an address 11 fail:{A},
 * 12 rl:{A}:login, 13 conn:{A}, 14 pend:{A}.
 * ARGV: 1 sid, 2 A ("" = none), 3 user burst, 4 user interval ms, 5 user max sessions,
 * 6 session_ttl ms, 7 user limit, 8 pair limit, 9 pend ttl ms, 10 "P sess:{U}:" ("" = no route
 * lookup), 11 address burst, 12 address interval ms, 13 address max sessions, 14 address limit,
 * 15 known slack ms (pol_known_slack).
 * A is a known network of the user (a member of known:{U}) -> the ceiling is not checked.
 * Order: the user scope (its record, ceiling, cap, bucket), then the address scope; the first
 * refusal answers, so the user scope wins a tie. Only when everything passed are the tokens
 * taken and the attempt reserved (pend sets, conn sets): attempts racing on any instance never
 * overrun a limit, and a refused one spends nothing. Then the route (override > live session
 * > recent affinity; this session's own member of conn:{U}, just added, has no hash yet and is
 * skipped, and a conn:{U} that was empty is not read at all).
 * Returns {code, detail, scope, route kind, route backend, done}: code 0 allowed, 1 locked out
 * (detail = ms), 2 rate (ms), 3 session cap (n); scope 0 user, 1 (user, network), 2 address;
 * route kind 0 none, 1 override, 2 live session, 3 recent; `done` (allowed only, else 0) says
 * what the login's result has to undo, so that `sess` at login touches nothing else, and when
 * the check ran: the sum of RL_DONE_* (ratelimit.h). */
const struct rl_script_text rl_lua_login = {
    "login",
    "-- portcullis login v2\n" LUA_NOW LUA_DONE_BITS LUA_FULL LUA_BUCKET LUA_CAP
    "local a = ARGV[2]\n"
    "local pttl = tonumber(ARGV[9])\n"
    "local ulimit = tonumber(ARGV[7])\n"
    "local plimit = a ~= '' and tonumber(ARGV[8]) or 0\n"
    "local umax, stale = tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local ub, ui = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local has_addr = #KEYS >= 14\n"
    "local ksc = a ~= '' and redis.call('ZSCORE', KEYS[5], a)\n"
    "local known = ksc ~= false\n"
    "local ubk = known and KEYS[7] or KEYS[6]\n"
    "local l, seen = full(KEYS[2], KEYS[4], plimit, pttl)\n"
    "if l > 0 then return {1, l, 1, 0, '', 0} end\n"
    "if not known then\n"
    "  l = full(KEYS[1], KEYS[3], ulimit, pttl)\n"
    "  if l > 0 then return {1, l, 0, 0, '', 0} end\n"
    "end\n"
    "local c, ulive = capped(KEYS[8], ARGV[1], umax, stale)\n"
    "if c > 0 then return {3, c, 0, 0, '', 0} end\n"
    "local r, utok, uexp = peek(ubk, ub, ui)\n"
    "if r > 0 then return {2, r, 0, 0, '', 0} end\n"
    "local ab, ai, amax, alimit = 0, 1, 0, 0\n"
    "if has_addr then\n"
    "  ab, ai = tonumber(ARGV[11]), tonumber(ARGV[12])\n"
    "  amax, alimit = tonumber(ARGV[13]), tonumber(ARGV[14])\n"
    "  l = full(KEYS[11], KEYS[14], alimit, pttl)\n"
    "  if l > 0 then return {1, l, 2, 0, '', 0} end\n"
    "  c = capped(KEYS[13], ARGV[1], amax, stale)\n"
    "  if c > 0 then return {3, c, 2, 0, '', 0} end\n"
    "  local atok, aexp\n"
    "  r, atok, aexp = peek(KEYS[12], ab, ai)\n"
    "  if r > 0 then return {2, r, 2, 0, '', 0} end\n"
    "  take(KEYS[12], ab, ai, atok, aexp)\n"
    "end\n"
    "take(ubk, ub, ui, utok, uexp)\n"
    "local done = D_VALID\n"
    "local function reserve(key, ttl, bit)\n"
    "  redis.call('ZADD', key, now, ARGV[1])\n"
    "  redis.call('PEXPIRE', key, ttl)\n"
    "  done = done + bit\n"
    "end\n"
    "if plimit > 0 then reserve(KEYS[4], pttl, D_PEND_UA) end\n"
    "if ulimit > 0 and not known then reserve(KEYS[3], pttl, D_PEND_U) end\n"
    "if umax > 0 then reserve(KEYS[8], stale * 2, D_CONN_U) end\n"
    "if alimit > 0 then reserve(KEYS[14], pttl, D_PEND_A) end\n"
    "if amax > 0 then reserve(KEYS[13], stale * 2, D_CONN_A) end\n"
    "if seen then done = done + D_FAIL_UA end\n"
    "if known and tonumber(ksc) + tonumber(ARGV[15]) >= now then done = done + D_KNOWN end\n"
    "done = done + D_TIME * now\n"
    "if ARGV[10] == '' then return {0, 0, 0, 0, '', done} end\n"
    "local rt = redis.call('MGET', KEYS[9], KEYS[10])\n"
    "if rt[1] then return {0, 0, 0, 1, rt[1], done} end\n"
    "if ulive ~= 0 then\n"
    "  local live = redis.call('ZRANGEBYSCORE', KEYS[8], now - stale, '+inf')\n"
    "  for _, sid in ipairs(live) do\n"
    "    if sid ~= ARGV[1] then\n"
    "      local be = redis.call('HGET', ARGV[10] .. sid, 'backend')\n"
    "      if be and be ~= '-' then return {0, 0, 0, 2, be, done} end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if rt[2] then return {0, 0, 0, 3, rt[2], done} end\n"
    "return {0, 0, 0, 0, '', done}\n",
};

/* A wrong password, both scopes. KEYS: 1 fail:{U}, 2 fail:{U}:A, 3 pend:{U}, 4 pend:{U}:A,
 * 5 conn:{U}, and with an address 6 fail:{A}, 7 conn:{A}, 8 pend:{A}. ARGV: 1 sid, 2 user limit,
 * 3 pair limit (0 = no network), 4 window ms, 5 lockout ms, 6 lockout max ms, 7 address limit.
 * Turns the reservations into failures (a failure from a known network still counts toward the
 * ceiling: it is not checked there, but unknown networks are) -> {user lock ms, pair lock ms,
 * address lock ms}. */
const struct rl_script_text rl_lua_fail = {
    "fail",
    "-- portcullis fail v3\n" LUA_NOW LUA_BUMP "for i = 3, #KEYS do\n"
    "  if i ~= 6 then redis.call('ZREM', KEYS[i], ARGV[1]) end\n"
    "end\n"
    "local w, l0, lm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local pl = bump(KEYS[2], tonumber(ARGV[3]), w, l0, lm)\n"
    "local ul = bump(KEYS[1], tonumber(ARGV[2]), w, l0, lm)\n"
    "local al = 0\n"
    "if #KEYS >= 8 then al = bump(KEYS[6], tonumber(ARGV[7]), w, l0, lm) end\n"
    "return {ul, pl, al}\n",
};

/* A login refused elsewhere or abandoned after the check: drop its reservations.
 * KEYS: the sets (conn, pend) it may be in. ARGV: sid. */
const struct rl_script_text rl_lua_release = {
    "release",
    "-- portcullis release v1\n"
    "for _, k in ipairs(KEYS) do redis.call('ZREM', k, ARGV[1]) end\n"
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

/* Register (at login) and heartbeat a live session. KEYS: 1 conn:{U}, 2 sess:{U}:<sid>,
 * 3 rl:{U}:bytes, 4 fail:{U}:A, 5 pend:{U}, 6 pend:{U}:A, 7 known:{U}, and with an address
 * 8 conn:{A}, 9 pend:{A}. ARGV: 1 sid, 2 session_ttl ms, 3 "1" at login, 4 bytes delta,
 * 5 window ms (0 = no volume limit), 6 A ("" = none), 7 known_ttl ms, 8 known_max, 9 the login
 * check's `done` (RL_DONE_*; 0 = not known: do everything, "0" at a heartbeat), then the
 * registry hash as field/value pairs.
 * At login it is also the login's result: the reservations are released, the (user, A)
 * failures forgotten and A remembered as known (score = now; the known_max most recent kept).
 * With `done` from the check, only what it reserved is released, the record deleted only if the
 * check saw one, the conn sets it just added the session to are not written again (the score
 * stays the check's time until the first heartbeat), and the time is the check's (scores,
 * `heartbeat`): no TIME. A known network refreshed less than the slack ago (RL_DONE_KNOWN) is
 * not refreshed again: every writer of known:{U} sets its TTL to known_ttl + slack (ARGV 7 is
 * that sum), so it still lasts known_ttl after this success.
 * The per-user ceiling is not reset: a success from one place does not give a distributed
 * guesser a fresh allowance everywhere else. The whole hash is rewritten at every heartbeat, so
 * a Redis that lost its data has every live session back within one heartbeat.
 * -> the user's download total in the window. */
const struct rl_script_text rl_lua_sess = {
    "sess",
    "-- portcullis sess v4\n" LUA_DONE_BITS "local ttl = tonumber(ARGV[2])\n"
    "local sid = ARGV[1]\n"
    "local login = ARGV[3] == '1'\n"
    "local tok = login and tonumber(ARGV[9]) or 0\n"
    "local done = tok % D_TIME\n"
    "local function did(bit) return done % (2 * bit) >= bit end\n"
    "local all = not did(D_VALID)\n"
    "local now\n"
    "if all then\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "else\n"
    "  now = math.floor(tok / D_TIME)\n"
    "end\n"
    "if all or not did(D_CONN_U) then\n"
    "  redis.call('ZADD', KEYS[1], now, sid)\n"
    "  redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
    "end\n"
    "if #KEYS >= 9 and (all or not did(D_CONN_A)) then\n"
    "  redis.call('ZADD', KEYS[8], now, sid)\n"
    "  redis.call('PEXPIRE', KEYS[8], ttl * 2)\n"
    "end\n"
    "redis.call('HSET', KEYS[2], 'heartbeat', tostring(now), unpack(ARGV, 10))\n"
    "redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "if login then\n"
    "  if all or did(D_PEND_U) then redis.call('ZREM', KEYS[5], sid) end\n"
    "  if all or did(D_PEND_UA) then redis.call('ZREM', KEYS[6], sid) end\n"
    "  if #KEYS >= 9 and (all or did(D_PEND_A)) then redis.call('ZREM', KEYS[9], sid) end\n"
    "  local a, max = ARGV[6], tonumber(ARGV[8])\n"
    "  if a ~= '' then\n"
    "    if all or did(D_FAIL_UA) then redis.call('DEL', KEYS[4]) end\n"
    "    if max > 0 and (all or not did(D_KNOWN)) then\n"
    "      if redis.call('ZADD', KEYS[7], now, a) == 1 then\n"
    "        local n = redis.call('ZCARD', KEYS[7])\n"
    "        if n > max then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, n - max - 1) end\n"
    "      end\n"
    "      redis.call('PEXPIRE', KEYS[7], ARGV[7])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local total = 0\n"
    "local d = tonumber(ARGV[4])\n"
    "if tonumber(ARGV[5]) > 0 then\n"
    "  if d > 0 then\n"
    "    total = redis.call('INCRBY', KEYS[3], d)\n"
    "    if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end\n"
    "  else\n"
    "    total = tonumber(redis.call('GET', KEYS[3]) or '0') or 0\n"
    "  end\n"
    "end\n"
    "return total\n",
};

/* Unregister. KEYS: 1 conn:{U}, 2 sess:{U}:<sid>, 3 rl:{U}:bytes, 4 aff:{U}, and with an
 * address 5 conn:{A}. ARGV: 1 sid, 2 bytes delta, 3 window ms (0 = no volume limit),
 * 4 backend for the recent affinity ("" = none), 5 affinity ttl ms. -> the download total. */
const struct rl_script_text rl_lua_close = {
    "close",
    "-- portcullis close v2\n"
    "redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "if #KEYS >= 5 then redis.call('ZREM', KEYS[5], ARGV[1]) end\n"
    "redis.call('DEL', KEYS[2])\n"
    "if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5]) end\n"
    "local d = tonumber(ARGV[2])\n"
    "if tonumber(ARGV[3]) > 0 and d > 0 then\n"
    "  local total = redis.call('INCRBY', KEYS[3], d)\n"
    "  if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end\n"
    "  return total\n"
    "end\n"
    "return 0\n",
};
