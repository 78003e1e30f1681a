/*
 * policy — see policy.h. This file holds the login check and the plumbing of requests; the
 * registry and kicks are in sessions.c, keys and scripts in ratelimit.c, the fallback table in
 * local.c, the connection in redis.c.
 *
 * A login check sends two EVALSHA of one script (ratelimit.c rl_lua_check), user scope and
 * address scope, back to back on the worker's connection: one network round trip. The first
 * refusal wins (user scope before address scope). If either has no answer (not sent, timeout,
 * connection lost, script error), the check is decided by the fail mode: closed → UNAVAILABLE,
 * open → the local table's answer. Refusals are answered after the tarpit delay; an allowed or
 * unavailable answer goes out on the next loop iteration.
 */
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "local.h"
#include "plog.h"
#include "policy_int.h"
#include "ratelimit.h"

static uint64_t now_ms(struct policy *p)
{
    return (uint64_t)(ev_now(p->loop) * 1000.0);
}

static void on_cmd_state(void *arg, bool up)
{
    struct policy *p = arg;
    if (up)
        pol_sessions_resync(p);
}

static void on_kick(void *arg, const char *msg, size_t len)
{
    policy_kick(arg, msg, len);
}

struct policy *policy_new(struct ev_loop *loop, const struct policy_conf *c)
{
    struct policy *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->loop = loop;
    p->conf = *c;
    p->conf.redis.host = NULL; /* the copies live in the rds objects */
    snprintf(p->prefix, sizeof p->prefix, "%s", c->prefix ? c->prefix : "");
    if (!p->conf.heartbeat_ms)
        p->conf.heartbeat_ms = 30000;
    if (p->conf.session_ttl_ms < p->conf.heartbeat_ms)
        p->conf.session_ttl_ms = p->conf.heartbeat_ms * 3;
    p->local = local_new(c->local_entries ? c->local_entries : 10000);
    if (!p->local) {
        free(p);
        return NULL;
    }
    rds_script_init(&p->s_check, rl_lua_check.name, rl_lua_check.text);
    rds_script_init(&p->s_fail, rl_lua_fail.name, rl_lua_fail.text);
    rds_script_init(&p->s_sess, rl_lua_sess.name, rl_lua_sess.text);
    rds_script_init(&p->s_touch, rl_lua_touch.name, rl_lua_touch.text);
    rds_script_init(&p->s_close, rl_lua_close.name, rl_lua_close.text);
    if (c->use_redis) {
        struct rds_opts o = c->redis;
        p->cmd = rds_new(loop, &o, "command", on_cmd_state, NULL, p);
        char chan[sizeof p->prefix + 8];
        snprintf(chan, sizeof chan, "%skick", p->prefix);
        o.subscribe = chan;
        p->sub = rds_new(loop, &o, "subscriber", NULL, on_kick, p);
        if (!p->cmd || !p->sub) {
            policy_free(&p);
            return NULL;
        }
        const struct rds_script *all[] = {&p->s_check, &p->s_fail, &p->s_sess, &p->s_touch,
                                          &p->s_close};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            rds_preload(p->cmd, all[i]);
    }
    pol_route_init(p);
    pol_route_start(p);
    pol_sessions_init(p);
    return p;
}

void policy_free(struct policy **pp)
{
    struct policy *p = *pp;
    if (!p)
        return;
    *pp = NULL;
    /* Detach the list first: each cancel then frees one request and touches no other. */
    struct policy_req *list = p->reqs;
    p->reqs = NULL;
    while (list) {
        struct policy_req *r = list;
        list = r->next;
        r->prev = r->next = NULL;
        policy_cancel(&r);
    }
    pol_sessions_done(p);
    pol_route_stop(p);
    rds_free(&p->cmd);
    rds_free(&p->sub);
    local_free(&p->local);
    free(p);
}

static void drain_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    *(bool *)t->data = true;
}

void policy_drain(struct policy *p, double secs)
{
    if (!p || !rds_ready(p->cmd) || rds_pending(p->cmd) == 0)
        return;
    bool expired = false;
    ev_timer t;
    ev_timer_init(&t, drain_timeout, secs, 0.);
    t.data = &expired;
    ev_timer_start(p->loop, &t);
    while (!expired && rds_ready(p->cmd) && rds_pending(p->cmd) > 0)
        ev_run(p->loop, EVRUN_ONCE);
    ev_timer_stop(p->loop, &t);
}

bool policy_redis_configured(const struct policy *p)
{
    return p && p->cmd;
}

bool policy_redis_up(const struct policy *p)
{
    return p && rds_ready(p->cmd);
}

const struct rds_stats *policy_redis_stats(const struct policy *p)
{
    return p && p->cmd ? rds_stats(p->cmd) : NULL;
}

/* ---- keys ---------------------------------------------------------------------------------- */

bool pol_scope_keys(struct policy *p, const struct policy_limits *lim, const struct policy_who *w,
                    struct pol_keys *k)
{
    rl_user_key(w->user ? w->user : "", lim->fold_case, k->user, sizeof k->user);
    k->has_addr = !w->addr_exempt && w->addr &&
                  rl_addr_key(w->addr, lim->v4_prefix, lim->v6_prefix, k->addr, sizeof k->addr);
    if (!k->has_addr)
        k->addr[0] = '\0';
    snprintf(k->sid, sizeof k->sid, "%s", w->sid ? w->sid : "");
    (void)p;
    return true;
}

bool pol_key(struct policy *p, char *out, size_t cap, const char *kind, const char *tag,
             const char *suffix)
{
    return rl_key(out, cap, p->prefix, kind, tag, suffix);
}

/* ---- login check ---------------------------------------------------------------------------- */

static void req_unlink(struct policy_req *r)
{
    struct policy *p = r->p;
    if (r->prev)
        r->prev->next = r->next;
    else if (p->reqs == r)
        p->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

void policy_cancel(struct policy_req **rp)
{
    if (!rp || !*rp)
        return;
    struct policy_req *r = *rp;
    *rp = NULL;
    rds_cancel(&r->sub[0]);
    rds_cancel(&r->sub[1]);
    ev_timer_stop(r->p->loop, &r->timer);
    req_unlink(r);
    free(r);
}

static void deliver_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct policy_req *r = t->data;
    policy_cb *cb = r->cb;
    void *arg = r->arg;
    struct policy_verdict v = r->v;
    req_unlink(r);
    free(r);
    cb(arg, &v);
}

/* The session counts this worker knows (fail-open decisions). */
static enum rl_code local_sessions(struct policy_req *r, uint64_t *detail)
{
    unsigned nu = 0, na = 0;
    pol_sessions_count(r->p, r->k.user, r->k.has_addr ? r->k.addr : NULL, &nu, &na);
    if (r->lim.user_max_sessions && nu >= r->lim.user_max_sessions) {
        *detail = nu;
        return RL_SESSIONS;
    }
    if (r->k.has_addr && r->lim.addr_max_sessions && na >= r->lim.addr_max_sessions) {
        *detail = na;
        return RL_SESSIONS;
    }
    return RL_OK;
}

static enum policy_result from_code(long long code)
{
    switch (code) {
    case RL_OK:
        return POLICY_ALLOW;
    case RL_LOCKED:
        return POLICY_LOCKED;
    case RL_RATE:
        return POLICY_RATE;
    default:
        return POLICY_SESSIONS;
    }
}

static void finish(struct policy_req *r)
{
    struct policy *p = r->p;
    if (r->no_answer) {
        r->v.degraded = p->cmd != NULL; /* without Redis configured the local table is the rule */
        if (p->conf.fail_closed) {
            r->v.result = POLICY_UNAVAILABLE;
        } else {
            /* The local table's answer, computed when the check started. */
            r->v.result = r->local.result;
            r->v.scope = r->local.scope;
            r->v.retry_ms = r->local.retry_ms;
            if (r->v.result == POLICY_ALLOW) {
                uint64_t d = 0;
                if (local_sessions(r, &d) != RL_OK) {
                    r->v.result = POLICY_SESSIONS;
                    r->v.retry_ms = 0;
                }
            }
        }
    }
    if (r->v.result != POLICY_ALLOW && (r->lim.user_max_sessions || r->lim.addr_max_sessions)) {
        /* One scope may have reserved a slot before the other refused. */
        struct policy_who w = {.user = NULL, .sid = r->k.sid};
        pol_release_keys(p, &r->k, &w);
    }
    double delay = 0;
    if (r->v.result != POLICY_ALLOW && r->v.result != POLICY_UNAVAILABLE)
        delay = (double)r->lim.tarpit_ms / 1000.0;
    ev_timer_set(&r->timer, delay, 0.);
    ev_timer_start(p->loop, &r->timer);
}

static void check_reply(struct policy_req *r, int scope, const redisReply *rep)
{
    r->sub[scope] = NULL;
    r->waiting--;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_INTEGER) {
        r->no_answer = true;
    } else if (rep->element[0]->integer != RL_OK) {
        /* user scope wins a tie: it is the more specific refusal */
        if (r->v.result == POLICY_ALLOW || scope == POLICY_SCOPE_USER) {
            r->v.result = from_code(rep->element[0]->integer);
            r->v.scope = (enum policy_scope)scope;
            r->v.retry_ms = r->v.result == POLICY_SESSIONS ? 0 : (uint64_t)rep->element[1]->integer;
        }
    }
    if (r->waiting == 0)
        finish(r);
}

static void user_reply(void *arg, const redisReply *rep)
{
    check_reply(arg, POLICY_SCOPE_USER, rep);
}

static void addr_reply(void *arg, const redisReply *rep)
{
    check_reply(arg, POLICY_SCOPE_ADDR, rep);
}

static struct rds_req *send_check(struct policy *p, struct policy_req *r, int scope)
{
    const char *tag = scope == POLICY_SCOPE_USER ? r->k.user : r->k.addr;
    char kf[RL_KEY_MAX], kb[RL_KEY_MAX], kc[RL_KEY_MAX];
    if (!pol_key(p, kf, sizeof kf, "fail", tag, "") ||
        !pol_key(p, kb, sizeof kb, "rl", tag, ":login") ||
        !pol_key(p, kc, sizeof kc, "conn", tag, ""))
        return NULL;
    bool user = scope == POLICY_SCOPE_USER;
    char burst[24], interval[24], maxs[24], stale[24], flimit[24];
    snprintf(burst, sizeof burst, "%u", user ? r->lim.user_burst : r->lim.addr_burst);
    snprintf(interval, sizeof interval, "%llu",
             (unsigned long long)(user ? r->lim.user_interval_ms : r->lim.addr_interval_ms));
    snprintf(maxs, sizeof maxs, "%u", user ? r->lim.user_max_sessions : r->lim.addr_max_sessions);
    snprintf(stale, sizeof stale, "%llu", (unsigned long long)p->conf.session_ttl_ms);
    snprintf(flimit, sizeof flimit, "%u", user ? r->lim.user_fail_limit : r->lim.addr_fail_limit);
    const char *argv[] = {kf, kb, kc, r->k.sid, burst, interval, maxs, stale, flimit};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    return rds_eval(p->cmd, &p->s_check, 3, 9, argv, lens, user ? user_reply : addr_reply, r);
}

/* The in-memory answer, always computed: it keeps the local table fed for an outage. */
static void local_decide(struct policy *p, struct policy_req *r)
{
    uint64_t now = now_ms(p), d = 0;
    char key[RL_ADDR_MAX + 8];
    int c = local_check(p->local, r->k.user, now, r->lim.user_burst, r->lim.user_interval_ms,
                        r->lim.user_fail_limit, &d);
    if (c != RL_OK) {
        r->local = (struct policy_verdict){from_code(c), POLICY_SCOPE_USER, d, true};
        return;
    }
    if (r->k.has_addr) {
        snprintf(key, sizeof key, "%s", r->k.addr);
        c = local_check(p->local, key, now, r->lim.addr_burst, r->lim.addr_interval_ms,
                        r->lim.addr_fail_limit, &d);
        if (c != RL_OK) {
            r->local = (struct policy_verdict){from_code(c), POLICY_SCOPE_ADDR, d, true};
            return;
        }
    }
    r->local = (struct policy_verdict){POLICY_ALLOW, POLICY_SCOPE_USER, 0, true};
}

struct policy_req *policy_check_login(struct policy *p, const struct policy_limits *lim,
                                      const struct policy_who *w, policy_cb *cb, void *arg)
{
    struct policy_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->p = p;
    r->cb = cb;
    r->arg = arg;
    r->lim = *lim;
    pol_scope_keys(p, lim, w, &r->k);
    ev_init(&r->timer, deliver_cb);
    r->timer.data = r;
    r->next = p->reqs;
    if (p->reqs)
        p->reqs->prev = r;
    p->reqs = r;
    local_decide(p, r);
    if (!rds_ready(p->cmd)) {
        r->no_answer = true;
        finish(r);
        return r;
    }
    r->waiting = 1 + r->k.has_addr;
    r->sub[0] = send_check(p, r, POLICY_SCOPE_USER);
    if (r->k.has_addr)
        r->sub[1] = send_check(p, r, POLICY_SCOPE_ADDR);
    if (!r->sub[0] || (r->k.has_addr && !r->sub[1])) {
        rds_cancel(&r->sub[0]);
        rds_cancel(&r->sub[1]);
        r->waiting = 0;
        r->no_answer = true;
        finish(r);
    }
    return r;
}

/* ---- results -------------------------------------------------------------------------------- */

static void fail_reply(void *arg, const redisReply *rep)
{
    const char *scope = arg == NULL ? "user" : "address";
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[1]->type == REDIS_REPLY_INTEGER && rep->element[1]->integer > 0)
        plog(PLOG_INFO, "event=lockout scope=%s duration_ms=%lld", scope, rep->element[1]->integer);
}

static void send_fail(struct policy *p, const struct policy_limits *lim, const struct pol_keys *k,
                      bool user)
{
    const char *tag = user ? k->user : k->addr;
    char kf[RL_KEY_MAX], kc[RL_KEY_MAX];
    if (!pol_key(p, kf, sizeof kf, "fail", tag, "") || !pol_key(p, kc, sizeof kc, "conn", tag, ""))
        return;
    char limit[24], window[24], lock[24], lmax[24];
    snprintf(limit, sizeof limit, "%u", user ? lim->user_fail_limit : lim->addr_fail_limit);
    snprintf(window, sizeof window, "%llu", (unsigned long long)lim->fail_window_ms);
    snprintf(lock, sizeof lock, "%llu", (unsigned long long)lim->lockout_ms);
    snprintf(lmax, sizeof lmax, "%llu", (unsigned long long)lim->lockout_max_ms);
    const char *argv[] = {kf, kc, k->sid, limit, window, lock, lmax};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(argv[i]);
    rds_eval(p->cmd, &p->s_fail, 2, 7, argv, lens, fail_reply, user ? NULL : p);
}

void policy_login_failed(struct policy *p, const struct policy_limits *lim,
                         const struct policy_who *w)
{
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    uint64_t now = now_ms(p);
    local_fail(p->local, k.user, now, lim->user_fail_limit, lim->fail_window_ms, lim->lockout_ms,
               lim->lockout_max_ms);
    if (k.has_addr)
        local_fail(p->local, k.addr, now, lim->addr_fail_limit, lim->fail_window_ms,
                   lim->lockout_ms, lim->lockout_max_ms);
    send_fail(p, lim, &k, true);
    if (k.has_addr)
        send_fail(p, lim, &k, false);
}

void pol_release_keys(struct policy *p, const struct pol_keys *k, const struct policy_who *w)
{
    (void)w;
    for (int i = 0; i < 2; i++) {
        const char *tag = i == 0 ? k->user : k->addr;
        if (i == 1 && !k->has_addr)
            break;
        char kc[RL_KEY_MAX];
        if (!pol_key(p, kc, sizeof kc, "conn", tag, ""))
            continue;
        const char *argv[] = {"ZREM", kc, k->sid};
        size_t lens[] = {4, strlen(kc), strlen(k->sid)};
        rds_call(p->cmd, 3, argv, lens, NULL, NULL);
    }
}

void policy_release(struct policy *p, const struct policy_limits *lim, const struct policy_who *w)
{
    if (!lim->user_max_sessions && !lim->addr_max_sessions)
        return;
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    pol_release_keys(p, &k, w);
}
