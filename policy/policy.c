/*
 * policy — see policy.h. This file holds the login check and the plumbing of requests; the
 * registry and kicks are in sessions.c, keys and scripts in ratelimit.c, the fallback table in
 * local.c, the connection in redis.c.
 *
 * A login check sends two EVALSHA, user scope (rl_lua_ucheck: the (user, network) record, the
 * per-user ceiling unless the network is known, bucket, cap) and address scope (rl_lua_check),
 * back to back on the worker's connection: one network round trip. Each script reserves the
 * attempt when it allows it, so attempts racing on any worker or instance never overrun a
 * limit; the result (policy_login_failed, pol_login_ok, policy_release) turns the reservation
 * into a failure or drops it. The first refusal wins (user scope before address scope); a
 * scope that allowed while the other refused gets its reservation back. If either has no
 * answer (not sent, timeout, connection lost, script error), the check is decided by the fail
 * mode: closed → UNAVAILABLE, open → the process-wide local table's answer. Refusals are
 * answered after the tarpit delay; an allowed or unavailable answer goes out on the next loop
 * iteration.
 *
 * Write-back: results Redis did not get are marked in the local table; a 1 s timer (and the
 * reconnect) takes them (each exactly once, across workers) and merges them (rl_lua_merge).
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

static void writeback(struct policy *p);

static void on_cmd_state(void *arg, bool up)
{
    struct policy *p = arg;
    if (up) {
        pol_sessions_resync(p);
        writeback(p);
    }
}

static void writeback_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    writeback(t->data);
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
    p->local = local_shared_get(c->local_entries ? c->local_entries : 10000);
    if (!p->local) {
        free(p);
        return NULL;
    }
    rds_script_init(&p->s_check, rl_lua_check.name, rl_lua_check.text);
    rds_script_init(&p->s_fail, rl_lua_fail.name, rl_lua_fail.text);
    rds_script_init(&p->s_sess, rl_lua_sess.name, rl_lua_sess.text);
    rds_script_init(&p->s_touch, rl_lua_touch.name, rl_lua_touch.text);
    rds_script_init(&p->s_close, rl_lua_close.name, rl_lua_close.text);
    rds_script_init(&p->s_ucheck, rl_lua_ucheck.name, rl_lua_ucheck.text);
    rds_script_init(&p->s_ufail, rl_lua_ufail.name, rl_lua_ufail.text);
    rds_script_init(&p->s_ok, rl_lua_ok.name, rl_lua_ok.text);
    rds_script_init(&p->s_merge, rl_lua_merge.name, rl_lua_merge.text);
    ev_timer_init(&p->writeback, writeback_cb, 1., 1.);
    p->writeback.data = p;
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
        const struct rds_script *all[] = {&p->s_check, &p->s_fail,  &p->s_sess,
                                          &p->s_touch, &p->s_close, &p->s_ucheck,
                                          &p->s_ufail, &p->s_ok,    &p->s_merge};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            rds_preload(p->cmd, all[i]);
        ev_timer_start(loop, &p->writeback);
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
    ev_timer_stop(p->loop, &p->writeback);
    rds_free(&p->cmd);
    rds_free(&p->sub);
    local_shared_put(&p->local);
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
    snprintf(k->name, sizeof k->name, "%s", w->user ? w->user : "");
    /* An exempt address (webmail, NAT) has no network of its own: its logins count against
     * the per-user ceiling only, and it never becomes a known network. */
    if (w->addr_exempt || !w->addr ||
        !rl_addr_key(w->addr, lim->v4_prefix, lim->v6_prefix, k->net, sizeof k->net))
        k->net[0] = '\0';
    k->has_addr = k->net[0] != '\0';
    snprintf(k->addr, sizeof k->addr, "%s", k->has_addr ? k->net : "");
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
    if (r->v.result != POLICY_ALLOW) {
        /* One scope (or the local table) may have reserved the attempt before the other
         * refused: give it back. */
        struct policy_who w = {.user = NULL, .sid = r->k.sid};
        if (r->local_reserved)
            local_login_done(p->local, &r->lk, &r->lim, now_ms(p), LOCAL_RELEASE, true);
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
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_INTEGER ||
        rep->element[2]->type != REDIS_REPLY_INTEGER) {
        r->no_answer = true;
    } else if (rep->element[0]->integer != RL_OK) {
        /* user scope wins a tie: it is the more specific refusal */
        if (r->v.result == POLICY_ALLOW || scope == POLICY_SCOPE_USER) {
            r->v.result = from_code(rep->element[0]->integer);
            r->v.scope = (enum policy_scope)scope;
            if (scope == POLICY_SCOPE_USER && rep->element[2]->integer == 1)
                r->v.scope = POLICY_SCOPE_PAIR;
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

static char *num(char *buf, size_t cap, uint64_t v)
{
    snprintf(buf, cap, "%llu", (unsigned long long)v);
    return buf;
}

static uint64_t pend_ttl(const struct policy_limits *l)
{
    return l->pend_ttl_ms ? l->pend_ttl_ms : 60000;
}

/* The user-scope keys: fail:{U}, fail:{U}:A, pend:{U}, pend:{U}:A, known:{U}, rl:{U}:login,
 * rl:{U}:login:A, conn:{U}. Without a network the (user, network) keys get a suffix no
 * network has (":-"): the scripts never touch them then (pair limit 0). */
#define UKEYS 8
struct ukeys {
    char k[UKEYS][RL_KEY_MAX];
};
static bool user_keys(struct policy *p, const struct pol_keys *k, struct ukeys *o)
{
    char net[RL_ADDR_MAX + 2], login[RL_ADDR_MAX + 10];
    snprintf(net, sizeof net, ":%s", k->net[0] ? k->net : "-");
    snprintf(login, sizeof login, ":login%s", net);
    /* `o` is output only; cppcheck 2.10 takes o->k[0] passed to pol_key() for a read of
     * the caller's uninitialised struct (a false positive). */
    // cppcheck-suppress uninitvar
    return pol_key(p, o->k[0], RL_KEY_MAX, "fail", k->user, "") &&
           pol_key(p, o->k[1], RL_KEY_MAX, "fail", k->user, net) &&
           pol_key(p, o->k[2], RL_KEY_MAX, "pend", k->user, "") &&
           pol_key(p, o->k[3], RL_KEY_MAX, "pend", k->user, net) &&
           pol_key(p, o->k[4], RL_KEY_MAX, "known", k->user, "") &&
           pol_key(p, o->k[5], RL_KEY_MAX, "rl", k->user, ":login") &&
           pol_key(p, o->k[6], RL_KEY_MAX, "rl", k->user, login) &&
           pol_key(p, o->k[7], RL_KEY_MAX, "conn", k->user, "");
}

static struct rds_req *send_ucheck(struct policy *p, struct policy_req *r)
{
    struct ukeys tk;
    if (!user_keys(p, &r->k, &tk))
        return NULL;
    char burst[24], interval[24], maxs[24], stale[24], ul[24], pl[24], pt[24];
    const char *argv[UKEYS + 9];
    size_t lens[UKEYS + 9];
    for (int i = 0; i < UKEYS; i++)
        argv[i] = tk.k[i];
    const char *args[] = {r->k.sid,
                          r->k.net,
                          num(burst, sizeof burst, r->lim.user_burst),
                          num(interval, sizeof interval, r->lim.user_interval_ms),
                          num(maxs, sizeof maxs, r->lim.user_max_sessions),
                          num(stale, sizeof stale, p->conf.session_ttl_ms),
                          num(ul, sizeof ul, r->lim.user_fail_limit),
                          num(pl, sizeof pl, r->lim.pair_fail_limit),
                          num(pt, sizeof pt, pend_ttl(&r->lim))};
    for (int i = 0; i < 9; i++)
        argv[UKEYS + i] = args[i];
    for (int i = 0; i < UKEYS + 9; i++)
        lens[i] = strlen(argv[i]);
    return rds_eval(p->cmd, &p->s_ucheck, UKEYS, UKEYS + 9, argv, lens, user_reply, r);
}

static struct rds_req *send_acheck(struct policy *p, struct policy_req *r)
{
    const char *tag = r->k.addr;
    char kf[RL_KEY_MAX], kb[RL_KEY_MAX], kc[RL_KEY_MAX], kp[RL_KEY_MAX];
    if (!pol_key(p, kf, sizeof kf, "fail", tag, "") ||
        !pol_key(p, kb, sizeof kb, "rl", tag, ":login") ||
        !pol_key(p, kc, sizeof kc, "conn", tag, "") || !pol_key(p, kp, sizeof kp, "pend", tag, ""))
        return NULL;
    char burst[24], interval[24], maxs[24], stale[24], flimit[24], pt[24];
    const char *argv[] = {kf,
                          kb,
                          kc,
                          kp,
                          r->k.sid,
                          num(burst, sizeof burst, r->lim.addr_burst),
                          num(interval, sizeof interval, r->lim.addr_interval_ms),
                          num(maxs, sizeof maxs, r->lim.addr_max_sessions),
                          num(stale, sizeof stale, p->conf.session_ttl_ms),
                          num(flimit, sizeof flimit, r->lim.addr_fail_limit),
                          num(pt, sizeof pt, pend_ttl(&r->lim))};
    size_t lens[11];
    for (int i = 0; i < 11; i++)
        lens[i] = strlen(argv[i]);
    return rds_eval(p->cmd, &p->s_check, 4, 11, argv, lens, addr_reply, r);
}

static void local_keys(const struct pol_keys *k, struct local_login *lk)
{
    lk->user = k->user;
    lk->net = k->net;
    lk->addr = k->has_addr ? k->addr : NULL;
}

/* The in-memory answer, always computed (and the attempt reserved there too): it keeps the
 * process-wide table fed for an outage. */
static void local_decide(struct policy *p, struct policy_req *r)
{
    uint64_t d = 0;
    enum local_scope sc;
    local_keys(&r->k, &r->lk);
    int c = local_login_check(p->local, &r->lk, &r->lim, now_ms(p), &sc, &d);
    if (c != RL_OK) {
        enum policy_scope ps = sc == LOCAL_SCOPE_ADDR   ? POLICY_SCOPE_ADDR
                               : sc == LOCAL_SCOPE_PAIR ? POLICY_SCOPE_PAIR
                                                        : POLICY_SCOPE_USER;
        r->local = (struct policy_verdict){from_code(c), ps, d, true};
        return;
    }
    r->local_reserved = true;
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
    p->wb_lim = *lim;
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
    r->sub[0] = send_ucheck(p, r);
    if (r->k.has_addr)
        r->sub[1] = send_acheck(p, r);
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

/* A result sent to Redis: if its answer is lost, the local table keeps it for the write-back. */
struct result_ctx {
    struct local_tab *local; /* the process-wide table (outlives every worker's policy) */
    enum local_outcome o;
    bool user_scope;
    char user[3 * RL_USER_MAX + 1];
    char name[RL_USER_MAX + 1]; /* as sent: who a lock-out is logged for */
    char net[RL_ADDR_MAX];
    double now;
};

static struct result_ctx *result_ctx(struct policy *p, const struct pol_keys *k,
                                     enum local_outcome o, bool user_scope)
{
    struct result_ctx *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    c->local = p->local;
    c->o = o;
    c->user_scope = user_scope;
    snprintf(c->user, sizeof c->user, "%s", k->user);
    snprintf(c->name, sizeof c->name, "%s", k->name);
    snprintf(c->net, sizeof c->net, "%s", user_scope ? k->net : k->addr);
    c->now = ev_now(p->loop);
    return c;
}

static void result_reply(void *arg, const redisReply *rep)
{
    struct result_ctx *c = arg;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        /* No answer (timeout, connection lost): Redis may or may not have it. Counting it
         * again at the write-back errs on the side of the victim's attacker being slower. */
        struct local_login lk = {.user = c->user_scope ? c->user : NULL,
                                 .net = c->user_scope ? c->net : "",
                                 .addr = c->user_scope ? NULL : c->net};
        local_login_unsynced(c->local, &lk, (uint64_t)(c->now * 1000.0), c->o);
        free(c);
        return;
    }
    if (c->o == LOCAL_FAILED && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_INTEGER) {
        long long a = rep->element[0]->integer, b = rep->element[1]->integer;
        /* Who: the user as sent and the client network ("ip:" dropped: the form
         * `portcullis-ctl unlock` and the docs use). */
        char q[3 * RL_USER_MAX + 8];
        const char *net = strncmp(c->net, "ip:", 3) == 0 ? c->net + 3 : c->net;
        if (!net[0])
            net = "-";
        plog_q(q, sizeof q, c->name, strlen(c->name));
        if (c->user_scope && a > 0)
            plog(PLOG_INFO, "event=lockout scope=user user=%s network=%s duration_ms=%lld", q, net,
                 a);
        if (c->user_scope && b > 0)
            plog(PLOG_INFO, "event=lockout scope=user_network user=%s network=%s duration_ms=%lld",
                 q, net, b);
        if (!c->user_scope && b > 0)
            plog(PLOG_INFO, "event=lockout scope=address network=%s user=%s duration_ms=%lld", net,
                 q, b);
    }
    free(c);
}

/* Send a result script; false when it was not sent (the caller keeps it unsynced). */
static bool send_result(struct policy *p, const struct rds_script *s, int nkeys, int argc,
                        const char **argv, struct result_ctx *c)
{
    size_t lens[24];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (!c)
        return rds_eval(p->cmd, s, nkeys, argc, argv, lens, NULL, NULL) != NULL;
    if (rds_eval(p->cmd, s, nkeys, argc, argv, lens, result_reply, c))
        return true;
    free(c);
    return false;
}

static bool send_ufail(struct policy *p, const struct policy_limits *lim, const struct pol_keys *k)
{
    struct ukeys uk;
    if (!rds_ready(p->cmd) || !user_keys(p, k, &uk))
        return false;
    char ul[24], pl[24], win[24], lock[24], lmax[24];
    const char *argv[] = {uk.k[0],
                          uk.k[1],
                          uk.k[2],
                          uk.k[3],
                          uk.k[7],
                          k->sid,
                          num(ul, sizeof ul, lim->user_fail_limit),
                          num(pl, sizeof pl, k->net[0] ? lim->pair_fail_limit : 0),
                          num(win, sizeof win, lim->fail_window_ms),
                          num(lock, sizeof lock, lim->lockout_ms),
                          num(lmax, sizeof lmax, lim->lockout_max_ms)};
    return send_result(p, &p->s_ufail, 5, 11, argv, result_ctx(p, k, LOCAL_FAILED, true));
}

static bool send_afail(struct policy *p, const struct policy_limits *lim, const struct pol_keys *k)
{
    char kf[RL_KEY_MAX], kc[RL_KEY_MAX], kp[RL_KEY_MAX];
    if (!rds_ready(p->cmd) || !pol_key(p, kf, sizeof kf, "fail", k->addr, "") ||
        !pol_key(p, kc, sizeof kc, "conn", k->addr, "") ||
        !pol_key(p, kp, sizeof kp, "pend", k->addr, ""))
        return false;
    char limit[24], window[24], lock[24], lmax[24];
    const char *argv[] = {kf,
                          kc,
                          kp,
                          k->sid,
                          num(limit, sizeof limit, lim->addr_fail_limit),
                          num(window, sizeof window, lim->fail_window_ms),
                          num(lock, sizeof lock, lim->lockout_ms),
                          num(lmax, sizeof lmax, lim->lockout_max_ms)};
    return send_result(p, &p->s_fail, 3, 8, argv, result_ctx(p, k, LOCAL_FAILED, false));
}

void policy_login_failed(struct policy *p, const struct policy_limits *lim,
                         const struct policy_who *w)
{
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    struct local_login lk;
    local_keys(&k, &lk);
    uint64_t now = now_ms(p);
    p->wb_lim = *lim;
    bool user_sent = send_ufail(p, lim, &k);
    bool addr_sent = !k.has_addr || send_afail(p, lim, &k);
    /* Count it here in any case (the outage table must be fed); what Redis did not get is kept
     * for the write-back, per scope. */
    if (user_sent == addr_sent) {
        local_login_done(p->local, &lk, lim, now, LOCAL_FAILED, user_sent);
    } else {
        local_login_done(p->local, &lk, lim, now, LOCAL_FAILED, true);
        struct local_login part = {.user = user_sent ? NULL : lk.user,
                                   .net = user_sent ? "" : lk.net,
                                   .addr = addr_sent ? NULL : lk.addr};
        local_login_unsynced(p->local, &part, now, LOCAL_FAILED);
    }
}

void pol_login_ok(struct policy *p, const struct policy_limits *lim, const struct pol_keys *k)
{
    struct local_login lk;
    local_keys(k, &lk);
    p->wb_lim = *lim;
    bool sent = false;
    struct ukeys uk;
    if (rds_ready(p->cmd) && user_keys(p, k, &uk)) {
        char ttl[24], max[24];
        const char *argv[] = {
            uk.k[1],
            uk.k[2],
            uk.k[3],
            uk.k[4],
            k->sid,
            k->net,
            num(ttl, sizeof ttl, lim->known_ttl_ms ? lim->known_ttl_ms : 30ULL * 86400000),
            num(max, sizeof max, lim->known_max)};
        sent = send_result(p, &p->s_ok, 4, 8, argv, result_ctx(p, k, LOCAL_OK, true));
    }
    if (k->has_addr) {
        char kp[RL_KEY_MAX];
        if (pol_key(p, kp, sizeof kp, "pend", k->addr, "")) {
            const char *argv[] = {"ZREM", kp, k->sid};
            size_t lens[] = {4, strlen(kp), strlen(k->sid)};
            rds_call(p->cmd, 3, argv, lens, NULL, NULL);
        }
    }
    local_login_done(p->local, &lk, lim, now_ms(p), LOCAL_OK, sent);
}

void pol_release_keys(struct policy *p, const struct pol_keys *k, const struct policy_who *w)
{
    (void)w;
    if (!rds_ready(p->cmd))
        return;
    char net[RL_ADDR_MAX + 2];
    snprintf(net, sizeof net, ":%s", k->net[0] ? k->net : "-");
    struct {
        const char *kind, *tag, *suffix;
        bool on;
    } set[] = {
        {"conn", k->user, "", true},        {"pend", k->user, "", true},
        {"pend", k->user, net, true},       {"conn", k->addr, "", k->has_addr},
        {"pend", k->addr, "", k->has_addr},
    };
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
        char kc[RL_KEY_MAX];
        if (!set[i].on || !pol_key(p, kc, sizeof kc, set[i].kind, set[i].tag, set[i].suffix))
            continue;
        const char *argv[] = {"ZREM", kc, k->sid};
        size_t lens[] = {4, strlen(kc), strlen(k->sid)};
        rds_call(p->cmd, 3, argv, lens, NULL, NULL);
    }
}

void policy_release(struct policy *p, const struct policy_limits *lim, const struct policy_who *w)
{
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    struct local_login lk;
    local_keys(&k, &lk);
    local_login_done(p->local, &lk, lim, now_ms(p), LOCAL_RELEASE, true);
    pol_release_keys(p, &k, w);
}

/* ---- write-back ----------------------------------------------------------------------------- */

#define WB_BATCH 64

static void merge_reply(void *arg, const redisReply *rep)
{
    (void)arg;
    (void)rep;
}

/* Merge what the process-wide table kept while Redis was away. Records are taken (and so sent)
 * once, by whichever worker gets there first; a batch per call keeps the loop responsive, the
 * timer (1 s) takes the rest. The limits are this worker's snapshot at the last check. */
static void writeback(struct policy *p)
{
    if (!rds_ready(p->cmd) || !p->local || local_unsynced(p->local) == 0)
        return;
    struct local_wb *wb = calloc(WB_BATCH, sizeof *wb);
    if (!wb)
        return;
    size_t n = local_take(p->local, now_ms(p), wb, WB_BATCH);
    const struct policy_limits *l = &p->wb_lim;
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        struct local_wb *w = &wb[i];
        char kf[RL_KEY_MAX], kk[RL_KEY_MAX], sfx[RL_ADDR_MAX + 2];
        unsigned limit = w->kind == 'u'   ? l->user_fail_limit
                         : w->kind == 'p' ? l->pair_fail_limit
                                          : l->addr_fail_limit;
        bool ok;
        snprintf(sfx, sizeof sfx, ":%s", w->net);
        if (w->kind == 'a')
            ok = pol_key(p, kf, sizeof kf, "fail", w->net, "");
        else if (w->kind == 'u')
            ok = pol_key(p, kf, sizeof kf, "fail", w->user, "");
        else
            ok = pol_key(p, kf, sizeof kf, "fail", w->user, sfx);
        ok = ok && pol_key(p, kk, sizeof kk, "known", w->kind == 'a' ? w->net : w->user, "");
        if (!ok)
            continue;
        if (w->kind == 'a')
            snprintf(kk, sizeof kk, "%s", kf); /* one slot per script */
        char add[24], lvl[24], left[24], lim[24], win[24], lock[24], lmax[24], kttl[24], kmax[24];
        const char *argv[] = {
            kf,
            kk,
            num(add, sizeof add, w->kind == 'k' ? 0 : w->add),
            num(lvl, sizeof lvl, w->kind == 'k' ? 0 : w->level),
            num(left, sizeof left, w->kind == 'k' ? 0 : w->left_ms),
            num(lim, sizeof lim, limit),
            num(win, sizeof win, l->fail_window_ms ? l->fail_window_ms : 900000),
            num(lock, sizeof lock, l->lockout_ms ? l->lockout_ms : 60000),
            num(lmax, sizeof lmax, l->lockout_max_ms ? l->lockout_max_ms : 3600000),
            w->kind == 'k' ? w->net : "",
            num(kttl, sizeof kttl, l->known_ttl_ms ? l->known_ttl_ms : 30ULL * 86400000),
            num(kmax, sizeof kmax, l->known_max)};
        size_t lens[12];
        for (int j = 0; j < 12; j++)
            lens[j] = strlen(argv[j]);
        if (rds_eval(p->cmd, &p->s_merge, 2, 12, argv, lens, merge_reply, NULL))
            sent++;
    }
    if (n)
        plog(PLOG_INFO, "event=policy_writeback records=%zu sent=%zu", n, sent);
    free(wb);
}
