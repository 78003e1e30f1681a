/*
 * policy — the login policy and the live-session registry one worker uses: the API proxy/
 * calls (through proxy/sess_policy.c). Never includes proxy/ headers: sessions are an opaque
 * `void *arg` plus callbacks.
 *
 * Per login: policy_check_login() (lock-out, login rate, session cap — user and address scope —
 * and the route: one script, one round trip), then either policy_login_failed() or
 * policy_session_open(); at the end policy_session_close(). A session that ends between check and
 * result calls policy_release(). Static allow/deny lists are the caller's (they need no state).
 *
 * Redis unavailable (down, slow, not configured): fail open — the same limits from one
 * in-memory table per process, shared by the workers (local.c) — or fail closed —
 * POLICY_UNAVAILABLE at once. Failures, lock-outs and known networks that could not be written
 * are kept in that table and merged into Redis when it is back; heartbeats rebuild the registry.
 * Nothing here blocks and no callback runs from inside the call that started it.
 */
#ifndef PORTCULLIS_POLICY_H
#define PORTCULLIS_POLICY_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "redis.h"

struct policy;
struct policy_req;
struct policy_sess;

/* Fixed for the life of a worker (the `redis:` section and a few `policy:` keys). */
struct policy_conf {
    bool use_redis;          /* false: local limits only */
    struct rds_opts redis;   /* copied */
    const char *prefix;      /* key prefix, e.g. "pc:" (copied) */
    bool fail_closed;        /* Redis unavailable: refuse logins */
    uint64_t heartbeat_ms;   /* registry refresh */
    uint64_t session_ttl_ms; /* a session not heart-beaten for this long is gone */
    uint64_t drain_poll_ms;  /* how often the admin drain set is read (0 = 5 s) */
    size_t local_entries;    /* in-memory table size */
};

/* Per check (from the session's configuration snapshot, so a reload applies at once). */
struct policy_limits {
    unsigned v4_prefix, v6_prefix;               /* address aggregation */
    bool fold_case;                              /* user names compared case-insensitively */
    uint64_t tarpit_ms;                          /* delay before a refusal is answered */
    unsigned user_burst, addr_burst;             /* token buckets; 0 = off */
    uint64_t user_interval_ms, addr_interval_ms; /* one token back per interval */
    unsigned user_fail_limit, addr_fail_limit;   /* failures before lock-out; 0 = off */
    unsigned pair_fail_limit;                    /* per (user, network); 0 = off */
    uint64_t known_ttl_ms;                       /* a network stays known this long */
    unsigned known_max;                          /* known networks kept per user; 0 = none */
    uint64_t pend_ttl_ms; /* a reserved attempt without result is dropped after this */
    uint64_t fail_window_ms, lockout_ms, lockout_max_ms;
    unsigned user_max_sessions, addr_max_sessions; /* 0 = no cap */
    uint64_t download_limit, download_window_ms;   /* bytes per window; 0 = off */
};

/* Who is logging in. All strings are copied by the calls that keep them. */
struct policy_who {
    const char *user;
    const struct sockaddr *addr; /* may be NULL (no per-address limits) */
    bool addr_exempt;            /* per-address limits do not apply */
    const char *sid;             /* this session's registry id (<= 128 bytes) */
    bool route;                  /* also look up the route (policy_verdict.route_*) */
    uint64_t done; /* policy_session_open(): the allowed check's policy_verdict.done (0 = none) */
};

enum policy_result {
    POLICY_ALLOW,
    POLICY_LOCKED,      /* too many failed logins: locked out for retry_ms */
    POLICY_RATE,        /* login rate exceeded: retry in retry_ms */
    POLICY_SESSIONS,    /* concurrent-session cap reached */
    POLICY_UNAVAILABLE, /* Redis unavailable and fail_mode closed */
};
/* USER: the per-user ceiling (or bucket, session cap); ADDR: the client address across users;
 * PAIR: the user from this network (docs/redis.md "Lock-out model"). */
enum policy_scope { POLICY_SCOPE_USER, POLICY_SCOPE_ADDR, POLICY_SCOPE_PAIR };

enum policy_route_kind {
    POLICY_ROUTE_NONE,     /* Redis knows nothing (or is not there): hash the user */
    POLICY_ROUTE_OVERRIDE, /* route:{U}, set by an administrator: no failover */
    POLICY_ROUTE_LIVE,     /* the backend of a live session of the user (any instance) */
    POLICY_ROUTE_RECENT,   /* aff:{U}: the backend of the user's last session */
};

struct policy_verdict {
    enum policy_result result;
    enum policy_scope scope;
    uint64_t retry_ms;
    bool degraded; /* decided without Redis */
    /* With policy_who.route, an allowed check also says where Redis would send the user
     * (POLICY_ROUTE_NONE without an answer from Redis): same script, same round trip. */
    enum policy_route_kind route_kind;
    char route_backend[128];
    /* Allowed by Redis: what its check reserved (opaque; 0 = not known). Give it back in
     * policy_who.done to policy_session_open(), which then undoes only that (fewer Redis
     * calls per login; docs/redis.md "Scripts"). */
    uint64_t done;
};

/* Called exactly once (unless cancelled), never synchronously; `v` valid during the call. */
typedef void policy_cb(void *arg, const struct policy_verdict *v);
/* An admin asked to end this session (kick channel). The session should say goodbye and
 * close; it must call policy_session_close() (possibly from inside this callback). */
typedef void policy_kick_cb(void *arg);
/* Bytes relayed to the client so far by this session. */
typedef uint64_t policy_bytes_cb(void *arg);

struct policy *policy_new(struct ev_loop *loop, const struct policy_conf *c);
/* Ends Redis connections (pending requests are dropped) and frees. NULL-safe. */
void policy_free(struct policy **p);
/* Run the loop until queued Redis writes are answered or `secs` passed (shutdown). */
void policy_drain(struct policy *p, double secs);
bool policy_redis_up(const struct policy *p);
/* A `redis:` section is configured (whether or not it is reachable now). */
bool policy_redis_configured(const struct policy *p);
const struct rds_stats *policy_redis_stats(const struct policy *p);

struct policy_req *policy_check_login(struct policy *p, const struct policy_limits *lim,
                                      const struct policy_who *w, policy_cb *cb, void *arg);
/* The callback will not run; NULLs *r. A reservation the check may have made stays until
 * policy_release() or its TTL. */
void policy_cancel(struct policy_req **r);

/* The backend refused the credentials: count a failure ((user, network), user and address
 * scope), turning the check's reservation into it. */
void policy_login_failed(struct policy *p, const struct policy_limits *lim,
                         const struct policy_who *w);
/* Release a reservation (login refused or abandoned after the check). */
void policy_release(struct policy *p, const struct policy_limits *lim, const struct policy_who *w);

struct policy_sess_info {
    const char *client;   /* "ip:port" */
    const char *backend;  /* backend name */
    const char *instance; /* this instance's name */
    const char *protocol; /* "imap" / "pop3" */
    uint64_t started;     /* unix time, seconds */
};
/* Logged in: release the reservation, clear the (user, network) failures, remember the network
 * as known, register the session (hash + sets), heartbeat it until
 * policy_session_close(). NULL only on out of memory. */
struct policy_sess *policy_session_open(struct policy *p, const struct policy_limits *lim,
                                        const struct policy_who *w,
                                        const struct policy_sess_info *info, policy_kick_cb *kick,
                                        policy_bytes_cb *bytes, void *arg);
/* Unregister (final byte count included) and free; NULLs *ps. NULL-safe. */
void policy_session_close(struct policy_sess **ps);
/* Has this user downloaded more than download_limit in the window (as far as this instance
 * knows: the total in Redis at the last flush plus what this session relayed since)? May start
 * an early flush. */
bool policy_session_over_volume(struct policy_sess *ps);

/* Kick handling for tests: deliver a kick message as if it came from the channel. */
void policy_kick(struct policy *p, const char *msg, size_t len);

/* ---- routing (route.c) ---- */

/* Backends drained by an administrator (the Redis set `P drained`, read every 5 s by each
 * worker): the handler gets the whole current set; process-wide, set once at start. */
typedef void policy_drained_cb(const char **names, size_t n);
void policy_set_drained_handler(policy_drained_cb *cb);
/* Remember `backend` as the user's for `ttl_ms` after this session ends: sent with the
 * unregistration (policy_session_close). NULL-safe. */
void policy_session_affinity(struct policy_sess *ps, const char *backend, uint64_t ttl_ms);

/* ---- plain values (kv.c): GET / SET PX of `<prefix><kind>:{<tag>}<suffix>` ---- */
#define POLICY_KV_KEY_MAX 320
struct policy_kv_req;
/* `val` NULL = miss: no such key, or no usable answer (Redis down, slow, error). Called once,
 * never synchronously, unless cancelled; `val` valid during the call. */
typedef void policy_kv_cb(void *arg, const char *val, size_t len);
/* NULL = no lookup started (no Redis or not ready): a miss now, no callback. */
struct policy_kv_req *policy_kv_get(struct policy *p, const char *kind, const char *tag,
                                    const char *suffix, policy_kv_cb *cb, void *arg);
void policy_kv_cancel(struct policy_kv_req **q);
/* Fire and forget. */
void policy_kv_set(struct policy *p, const char *kind, const char *tag, const char *suffix,
                   const char *val, size_t len, uint64_t ttl_ms);

#endif
