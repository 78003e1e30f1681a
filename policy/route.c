/*
 * route — where a user's sessions should go, as Redis knows it (design.md "Backends"):
 *   1. `P route:{U}`  an administrator's override (portcullis-ctl route), no TTL: wins;
 *   2. active affinity: the backend of any of the user's live sessions, on any instance (the
 *      registry `P sess:{U}:<sid>` hashes of the members of `P conn:{U}` heart-beaten within
 *      session_ttl) — Dovecot director's guarantee: while a user has sessions, every instance
 *      sends them to the same server, whatever happens to the pool;
 *   3. `P aff:{U}` the backend of the user's last session, kept `affinity_ttl` after it ended.
 * One script, one round trip, sent alongside the login check. Every key is in the {U} slot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

/* KEYS: route, conn, aff. ARGV: sess key prefix ("P sess:{U}:"), session_ttl ms.
 * Returns {0} nothing, {1, backend} override, {2, backend} live session, {3, backend} recent. */
static const char route_lua[] =
    "-- portcullis route v1\n"
    "local r = redis.call('GET', KEYS[1])\n"
    "if r then return {1, r} end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local live = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[2]), '+inf')\n"
    "for _, sid in ipairs(live) do\n"
    "  local b = redis.call('HGET', ARGV[1] .. sid, 'backend')\n"
    "  if b and b ~= '-' then return {2, b} end\n"
    "end\n"
    "local a = redis.call('GET', KEYS[3])\n"
    "if a then return {3, a} end\n"
    "return {0}\n";

struct policy_route_req {
    struct policy *p;
    struct rds_req *r;
    policy_route_cb *cb;
    void *arg;
};

void pol_route_init(struct policy *p)
{
    rds_script_init(&p->s_route, "route", route_lua);
    if (p->cmd)
        rds_preload(p->cmd, &p->s_route);
}

static void on_reply(void *arg, const redisReply *rep)
{
    struct policy_route_req *q = arg;
    q->r = NULL;
    enum policy_route_kind kind = POLICY_ROUTE_NONE;
    char backend[128] = "";
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        long long k = rep->element[0]->integer;
        if (k >= 1 && k <= 3 && rep->elements >= 2 && rep->element[1]->type == REDIS_REPLY_STRING &&
            rep->element[1]->len < sizeof backend) {
            kind = k == 1   ? POLICY_ROUTE_OVERRIDE
                   : k == 2 ? POLICY_ROUTE_LIVE
                            : POLICY_ROUTE_RECENT;
            memcpy(backend, rep->element[1]->str, rep->element[1]->len);
            backend[rep->element[1]->len] = '\0';
        }
    }
    policy_route_cb *cb = q->cb;
    void *cbarg = q->arg;
    free(q);
    cb(cbarg, kind, backend);
}

struct policy_route_req *policy_route_lookup(struct policy *p, const struct policy_limits *lim,
                                             const char *user, policy_route_cb *cb, void *arg)
{
    if (!p || !p->cmd || !rds_ready(p->cmd))
        return NULL; /* no Redis: the hash alone decides */
    char u[3 * RL_USER_MAX + 1];
    rl_user_key(user ? user : "", lim->fold_case, u, sizeof u);
    char kr[sizeof u + 96], kc[sizeof u + 96], ka[sizeof u + 96], ks[sizeof u + 96];
    if (!pol_key(p, kr, sizeof kr, "route", u, "") || !pol_key(p, kc, sizeof kc, "conn", u, "") ||
        !pol_key(p, ka, sizeof ka, "aff", u, "") || !pol_key(p, ks, sizeof ks, "sess", u, ":"))
        return NULL;
    struct policy_route_req *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->p = p;
    q->cb = cb;
    q->arg = arg;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)p->conf.session_ttl_ms);
    const char *argv[] = {kr, kc, ka, ks, ttl};
    size_t lens[] = {strlen(kr), strlen(kc), strlen(ka), strlen(ks), strlen(ttl)};
    q->r = rds_eval(p->cmd, &p->s_route, 3, 5, argv, lens, on_reply, q);
    if (!q->r) {
        free(q);
        return NULL;
    }
    return q;
}

void policy_route_cancel(struct policy_route_req **qp)
{
    if (!qp || !*qp)
        return;
    struct policy_route_req *q = *qp;
    *qp = NULL;
    rds_cancel(&q->r);
    free(q);
}

void policy_affinity_set(struct policy *p, const struct policy_limits *lim, const char *user,
                         const char *backend, uint64_t ttl_ms)
{
    if (!p || !p->cmd || !rds_ready(p->cmd) || !ttl_ms || !backend)
        return;
    char u[3 * RL_USER_MAX + 1];
    rl_user_key(user ? user : "", lim->fold_case, u, sizeof u);
    char ka[sizeof u + 96], ttl[24];
    if (!pol_key(p, ka, sizeof ka, "aff", u, ""))
        return;
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)ttl_ms);
    const char *argv[] = {"SET", ka, backend, "PX", ttl};
    size_t lens[] = {3, strlen(ka), strlen(backend), 2, strlen(ttl)};
    rds_call(p->cmd, 5, argv, lens, NULL, NULL); /* fire and forget */
}

/* ---- administrative drain: the set `P drained` (portcullis-ctl drain/undrain) ---------------- */

static policy_drained_cb *drained_cb;

void policy_set_drained_handler(policy_drained_cb *cb)
{
    drained_cb = cb;
}

static void on_drained(void *arg, const redisReply *rep)
{
    (void)arg;
    if (!drained_cb || !rep || rep->type != REDIS_REPLY_ARRAY)
        return; /* no answer: keep what we knew */
    const char *names[64];
    size_t n = 0;
    for (size_t i = 0; i < rep->elements && n < 64; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            names[n++] = rep->element[i]->str;
    drained_cb(names, n);
}

static void drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct policy *p = t->data;
    if (!p->cmd || !rds_ready(p->cmd) || !drained_cb)
        return;
    char key[96];
    snprintf(key, sizeof key, "%sdrained", p->prefix);
    const char *argv[] = {"SMEMBERS", key};
    size_t lens[] = {8, strlen(key)};
    rds_call(p->cmd, 2, argv, lens, on_drained, p);
}

void pol_route_start(struct policy *p)
{
    if (!p->cmd)
        return;
    double every = p->conf.drain_poll_ms ? (double)p->conf.drain_poll_ms / 1000.0 : 5.0;
    ev_timer_init(&p->drain_poll, drain_poll, 0.2, every);
    p->drain_poll.data = p;
    ev_timer_start(p->loop, &p->drain_poll);
}

void pol_route_stop(struct policy *p)
{
    if (p->cmd)
        ev_timer_stop(p->loop, &p->drain_poll);
}
