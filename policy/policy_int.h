/*
 * policy_int — what policy.c and sessions.c share. Not an API: nothing outside policy/ includes
 * it.
 */
#ifndef PORTCULLIS_POLICY_INT_H
#define PORTCULLIS_POLICY_INT_H

#include "decimal.h"
#include "local.h"
#include "policy.h"
#include "ratelimit.h"
#include "redis.h"

#define POL_SID_MAX 128

/* The scope tags of one login: escaped user, aggregated address (or none), session id. */
struct pol_keys {
    char user[3 * RL_USER_MAX + 1];
    char name[RL_USER_MAX + 1]; /* the user as sent (cut), for log lines */
    char addr[RL_ADDR_MAX];     /* address scope ("" when exempt or none) */
    bool has_addr;
    char net[RL_ADDR_MAX]; /* the user's network: the same as addr (kept apart for clarity) */
    char sid[POL_SID_MAX + 1];
};

struct policy {
    struct ev_loop *loop;
    struct policy_conf conf; /* string members not used (copied into the rds objects) */
    char prefix[65];
    struct rds *cmd;         /* owned; NULL without Redis */
    struct rds *sub;         /* owned; the kick channel */
    struct local_tab *local; /* the process-wide table (one reference) */
    struct rds_script s_login, s_fail, s_release, s_sess, s_close, s_merge;
    ev_timer writeback;           /* merges the outage table into Redis once it is back */
    struct policy_limits wb_lim;  /* the limits of the last check (for the write-back) */
    struct policy_req *reqs;      /* checks in flight (owned) */
    struct policy_sess *sessions; /* registered sessions (owned by their callers' handles) */
    unsigned nsessions;
    ev_timer heartbeat;
    ev_timer drain_poll; /* route.c: reads `P drained` every conf.drain_poll_ms */
};

struct policy_req {
    struct policy *p;
    policy_cb *cb;
    void *arg;
    struct policy_limits lim;
    struct pol_keys k;
    struct rds_req *sub;         /* the login script in flight */
    bool route;                  /* the route was asked for */
    bool no_answer;              /* a scope had no usable answer: the fail mode decides */
    struct policy_verdict v;     /* from Redis */
    struct policy_verdict local; /* from the local table */
    struct local_login lk;       /* its keys (point into `k`) */
    bool local_reserved;         /* the local table reserved the attempt */
    ev_timer timer;              /* delivers the verdict (tarpit or next iteration) */
    struct policy_req *prev, *next;
};

bool pol_scope_keys(struct policy *p, const struct policy_limits *lim, const struct policy_who *w,
                    struct pol_keys *k);
bool pol_key(struct policy *p, char *out, size_t cap, const char *kind, const char *tag,
             const char *suffix);
void pol_release_keys(struct policy *p, const struct pol_keys *k, const struct policy_who *w);
/* The user-scope keys of the login-path scripts, in their KEYS order (policy.c). */
enum {
    POL_FAIL_U,
    POL_FAIL_UA,
    POL_PEND_U,
    POL_PEND_UA,
    POL_KNOWN_U,
    POL_RL_U,
    POL_RL_UA,
    POL_CONN_U,
    POL_UKEYS
};
struct pol_ukeys {
    char k[POL_UKEYS][RL_KEY_MAX];
};
bool pol_user_keys(struct policy *p, const char *user, const char *net, struct pol_ukeys *o);
uint64_t pol_known_ttl(const struct policy_limits *l);
/* A known network is re-written by a success only when its last refresh is older than this
 * (1/64 of the ttl, at most 1 h): every writer sets known:{U}'s TTL to ttl + slack. */
uint64_t pol_known_slack(const struct policy_limits *l);

/* sessions.c */
void pol_sessions_init(struct policy *p);
void pol_route_start(struct policy *p);
void pol_route_stop(struct policy *p);
void pol_sessions_done(struct policy *p);
/* Redis (re)connected: heartbeat every session now, so a restarted server has them back. */
void pol_sessions_resync(struct policy *p);
void pol_sessions_count(struct policy *p, const char *user, const char *addr, unsigned *nu,
                        unsigned *na);

/* v in decimal into buf (cap >= 21 holds any value; a shorter buf gets the leading digits, as
 * snprintf would). Script arguments are numbers, a dozen per login (issue 19): snprintf's
 * format walk cost more than the digits. */
static inline char *pol_num(char *buf, size_t cap, uint64_t v)
{
    if (cap)
        buf[dec_put(buf, cap - 1, v)] = '\0';
    return buf;
}

#endif
