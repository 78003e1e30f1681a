/*
 * policy — see policy.h. This file holds the login check and the plumbing of requests; the
 * registry and kicks are in sessions.c, keys and scripts in ratelimit.c, the fallback table in
 * local.c, the connection in redis.c.
 *
 * A login check is one EVALSHA (rl_lua_login: the (user, network) record, the per-user ceiling
 * unless the network is known, cap, bucket, then the address scope, then the route): one
 * command, one round trip. The script reserves the attempt only when every scope allowed it, so
 * attempts racing on any worker or instance never overrun a limit and a refused one spends
 * nothing; the result (policy_login_failed, the registration in sessions.c, policy_release)
 * turns the reservation into a failure or drops it, again one script each. If it has no answer
 * (not sent, timeout, connection lost, script error), the check is decided by the fail mode: closed
 * → UNAVAILABLE, open → the process-wide local table's answer. Refusals are answered after the
 * tarpit delay; an allowed or unavailable answer goes out on the next loop iteration.
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
    rds_script_init(&p->s_login, rl_lua_login.name, rl_lua_login.text);
    rds_script_init(&p->s_fail, rl_lua_fail.name, rl_lua_fail.text);
    rds_script_init(&p->s_release, rl_lua_release.name, rl_lua_release.text);
    rds_script_init(&p->s_sess, rl_lua_sess.name, rl_lua_sess.text);
    rds_script_init(&p->s_close, rl_lua_close.name, rl_lua_close.text);
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
        const struct rds_script *all[] = {&p->s_login, &p->s_fail,  &p->s_release,
                                          &p->s_sess,  &p->s_close, &p->s_merge};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            rds_preload(p->cmd, all[i]);
        ev_timer_start(loop, &p->writeback);
    }
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
    rds_cancel(&r->sub);
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

/* in_reply: called from a Redis reply, on the loop and not from inside policy_check_login():
 * an allowed login's verdict is delivered at once instead of through a zero timer (one loop
 * iteration and an epoll_wait per login, issue 19). */
static void finish(struct policy_req *r, bool in_reply)
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
        /* The local table may have reserved the attempt: give it back. */
        struct policy_who w = {.user = NULL, .sid = r->k.sid};
        if (r->local_reserved)
            local_login_done(p->local, &r->lk, &r->lim, now_ms(p), LOCAL_RELEASE, true, NULL);
        /* A refusal from Redis reserved nothing there; a lost answer may have. */
        if (r->no_answer)
            pol_release_keys(p, &r->k, &w);
    }
    double delay = 0;
    if (r->v.result != POLICY_ALLOW && r->v.result != POLICY_UNAVAILABLE)
        delay = (double)r->lim.tarpit_ms / 1000.0;
    if (in_reply && delay == 0) {
        deliver_cb(p->loop, &r->timer, 0);
        return;
    }
    ev_timer_set(&r->timer, delay, 0.);
    ev_timer_start(p->loop, &r->timer);
}

static bool int_at(const redisReply *rep, size_t i)
{
    return rep->element[i]->type == REDIS_REPLY_INTEGER;
}

/* {code, detail, scope, route kind, route backend, done} (rl_lua_login; an older script
 * without `done` leaves it 0: the registration then does everything). */
static void login_reply(void *arg, const redisReply *rep)
{
    struct policy_req *r = arg;
    r->sub = NULL;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 5 || !int_at(rep, 0) ||
        !int_at(rep, 1) || !int_at(rep, 2) || !int_at(rep, 3) ||
        rep->element[4]->type != REDIS_REPLY_STRING) {
        r->no_answer = true;
    } else if (rep->element[0]->integer != RL_OK) {
        long long sc = rep->element[2]->integer;
        r->v.result = from_code(rep->element[0]->integer);
        r->v.scope = sc == 1 ? POLICY_SCOPE_PAIR : sc == 2 ? POLICY_SCOPE_ADDR : POLICY_SCOPE_USER;
        r->v.retry_ms = r->v.result == POLICY_SESSIONS ? 0 : (uint64_t)rep->element[1]->integer;
    } else {
        long long k = rep->element[3]->integer;
        const redisReply *be = rep->element[4];
        if (r->route && k >= 1 && k <= 3 && be->len > 0 && be->len < sizeof r->v.route_backend) {
            r->v.route_kind = k == 1   ? POLICY_ROUTE_OVERRIDE
                              : k == 2 ? POLICY_ROUTE_LIVE
                                       : POLICY_ROUTE_RECENT;
            memcpy(r->v.route_backend, be->str, be->len);
            r->v.route_backend[be->len] = '\0';
        }
        if (rep->elements >= 6 && int_at(rep, 5) && rep->element[5]->integer > 0)
            r->v.done = (uint64_t)rep->element[5]->integer;
    }
    finish(r, rep != NULL);
}

static char *num(char *buf, size_t cap, uint64_t v)
{
    return pol_num(buf, cap, v);
}

static uint64_t pend_ttl(const struct policy_limits *l)
{
    return l->pend_ttl_ms ? l->pend_ttl_ms : 60000;
}

/* The user-scope keys (enum POL_FAIL_U...). Without a network the (user, network) keys get a
 * suffix no network has (":-"): the scripts never touch them then (pair limit 0). */
bool pol_user_keys(struct policy *p, const char *user, const char *network, struct pol_ukeys *o)
{
    char net[RL_ADDR_MAX + 2], login[RL_ADDR_MAX + 10];
    snprintf(net, sizeof net, ":%s", network[0] ? network : "-");
    snprintf(login, sizeof login, ":login%s", net);
    /* `o` is output only; cppcheck 2.10 takes o->k[0] passed to pol_key() for a read of
     * the caller's uninitialised struct (a false positive). */
    // cppcheck-suppress uninitvar
    return pol_key(p, o->k[POL_FAIL_U], RL_KEY_MAX, "fail", user, "") &&
           pol_key(p, o->k[POL_FAIL_UA], RL_KEY_MAX, "fail", user, net) &&
           pol_key(p, o->k[POL_PEND_U], RL_KEY_MAX, "pend", user, "") &&
           pol_key(p, o->k[POL_PEND_UA], RL_KEY_MAX, "pend", user, net) &&
           pol_key(p, o->k[POL_KNOWN_U], RL_KEY_MAX, "known", user, "") &&
           pol_key(p, o->k[POL_RL_U], RL_KEY_MAX, "rl", user, ":login") &&
           pol_key(p, o->k[POL_RL_UA], RL_KEY_MAX, "rl", user, login) &&
           pol_key(p, o->k[POL_CONN_U], RL_KEY_MAX, "conn", user, "");
}

uint64_t pol_known_ttl(const struct policy_limits *l)
{
    return l->known_ttl_ms ? l->known_ttl_ms : 30ULL * 86400000;
}

uint64_t pol_known_slack(const struct policy_limits *l)
{
    uint64_t s = pol_known_ttl(l) / 64;
    return s < 3600000 ? s : 3600000;
}

/* The login script: 10 keys (user scope, route, affinity), 14 with an address. */
static struct rds_req *send_login(struct policy *p, struct policy_req *r)
{
    struct pol_ukeys uk;
    char kr[RL_KEY_MAX], ka[RL_KEY_MAX], ks[RL_KEY_MAX];
    char af[RL_KEY_MAX], ab[RL_KEY_MAX], ac[RL_KEY_MAX], ap[RL_KEY_MAX];
    const char *tag = r->k.addr;
    if (!pol_user_keys(p, r->k.user, r->k.net, &uk) ||
        !pol_key(p, kr, sizeof kr, "route", r->k.user, "") ||
        !pol_key(p, ka, sizeof ka, "aff", r->k.user, "") ||
        !pol_key(p, ks, sizeof ks, "sess", r->k.user, ":"))
        return NULL;
    if (r->k.has_addr && (!pol_key(p, af, sizeof af, "fail", tag, "") ||
                          !pol_key(p, ab, sizeof ab, "rl", tag, ":login") ||
                          !pol_key(p, ac, sizeof ac, "conn", tag, "") ||
                          !pol_key(p, ap, sizeof ap, "pend", tag, "")))
        return NULL;
    char ub[24], ui[24], um[24], stale[24], ul[24], pl[24], pt[24], abu[24], ai[24], am[24], al[24],
        kslack[24];
    const char *argv[32]; /* 14 keys + 15 arguments */
    size_t lens[32];
    int n = 0;
    for (int i = 0; i < POL_UKEYS; i++)
        argv[n++] = uk.k[i];
    argv[n++] = kr;
    argv[n++] = ka;
    if (r->k.has_addr) {
        argv[n++] = af;
        argv[n++] = ab;
        argv[n++] = ac;
        argv[n++] = ap;
    }
    int nkeys = n;
    const char *args[] = {r->k.sid,
                          r->k.net,
                          num(ub, sizeof ub, r->lim.user_burst),
                          num(ui, sizeof ui, r->lim.user_interval_ms),
                          num(um, sizeof um, r->lim.user_max_sessions),
                          num(stale, sizeof stale, p->conf.session_ttl_ms),
                          num(ul, sizeof ul, r->lim.user_fail_limit),
                          num(pl, sizeof pl, r->lim.pair_fail_limit),
                          num(pt, sizeof pt, pend_ttl(&r->lim)),
                          r->route ? ks : "",
                          num(abu, sizeof abu, r->lim.addr_burst),
                          num(ai, sizeof ai, r->lim.addr_interval_ms),
                          num(am, sizeof am, r->lim.addr_max_sessions),
                          num(al, sizeof al, r->lim.addr_fail_limit),
                          num(kslack, sizeof kslack, pol_known_slack(&r->lim))};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        argv[n++] = args[i];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    return rds_eval(p->cmd, &p->s_login, nkeys, n, argv, lens, login_reply, r);
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
        r->local = (struct policy_verdict){
            .result = from_code(c), .scope = ps, .retry_ms = d, .degraded = true};
        return;
    }
    r->local_reserved = true;
    r->local = (struct policy_verdict){.result = POLICY_ALLOW, .degraded = true};
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
    r->route = w->route;
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
        finish(r, false);
        return r;
    }
    r->sub = send_login(p, r);
    if (!r->sub) {
        r->no_answer = true;
        finish(r, false);
    }
    return r;
}

/* ---- results -------------------------------------------------------------------------------- */

/* A failure sent to Redis: if its answer is lost, the local table keeps it for the write-back
 * (both scopes: one script carries both). */
struct result_ctx {
    struct local_tab *local; /* the process-wide table (outlives every worker's policy) */
    char user[3 * RL_USER_MAX + 1];
    char name[RL_USER_MAX + 1]; /* the user as sent, for the lock-out line */
    char net[RL_ADDR_MAX];
    char addr[RL_ADDR_MAX];
    bool has_addr;
    double now;
};

/* event=lockout lines, one per scope that started a lock-out (ms > 0). Who: the user as sent and
 * the client network ("ip:" dropped: the form `portcullis-ctl unlock` and the docs use). */
static void log_lockouts(const char *name, const char *net, long long user_ms, long long pair_ms,
                         long long addr_ms, const char *suffix)
{
    char q[3 * RL_USER_MAX + 8];
    if (strncmp(net, "ip:", 3) == 0)
        net += 3;
    if (!net[0])
        net = "-";
    plog_q(q, sizeof q, name, strlen(name));
    if (user_ms > 0)
        plog(PLOG_INFO, "event=lockout scope=user user=%s network=%s duration_ms=%lld%s", q, net,
             user_ms, suffix);
    if (pair_ms > 0)
        plog(PLOG_INFO, "event=lockout scope=user_network user=%s network=%s duration_ms=%lld%s", q,
             net, pair_ms, suffix);
    if (addr_ms > 0)
        plog(PLOG_INFO, "event=lockout scope=address network=%s user=%s duration_ms=%lld%s", net, q,
             addr_ms, suffix);
}

static void result_reply(void *arg, const redisReply *rep)
{
    struct result_ctx *c = arg;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        /* No answer (timeout, connection lost): Redis may or may not have it. Counting it
         * again at the write-back errs on the side of the victim's attacker being slower. */
        struct local_login lk = {
            .user = c->user, .net = c->net, .addr = c->has_addr ? c->addr : NULL};
        local_login_unsynced(c->local, &lk, (uint64_t)(c->now * 1000.0), LOCAL_FAILED);
        free(c);
        return;
    }
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 3 && int_at(rep, 0) && int_at(rep, 1) &&
        int_at(rep, 2)) {
        long long u = rep->element[0]->integer, pr = rep->element[1]->integer;
        long long a = rep->element[2]->integer;
        log_lockouts(c->name, c->net, u, pr, 0, "");
        log_lockouts(c->name, c->addr, 0, 0, a, "");
    }
    free(c);
}

/* Both scopes in one script (rl_lua_fail); false when it was not sent. */
static bool send_fail(struct policy *p, const struct policy_limits *lim, const struct pol_keys *k)
{
    struct pol_ukeys uk;
    char af[RL_KEY_MAX], ac[RL_KEY_MAX], ap[RL_KEY_MAX];
    if (!rds_ready(p->cmd) || !pol_user_keys(p, k->user, k->net, &uk))
        return false;
    if (k->has_addr && (!pol_key(p, af, sizeof af, "fail", k->addr, "") ||
                        !pol_key(p, ac, sizeof ac, "conn", k->addr, "") ||
                        !pol_key(p, ap, sizeof ap, "pend", k->addr, "")))
        return false;
    struct result_ctx *c = malloc(sizeof *c);
    if (!c)
        return false;
    c->local = p->local;
    snprintf(c->user, sizeof c->user, "%s", k->user);
    snprintf(c->name, sizeof c->name, "%s", k->name);
    snprintf(c->net, sizeof c->net, "%s", k->net);
    snprintf(c->addr, sizeof c->addr, "%s", k->addr);
    c->has_addr = k->has_addr;
    c->now = ev_now(p->loop);
    char ul[24], pl[24], win[24], lock[24], lmax[24], al[24];
    const char *argv[16];
    size_t lens[16];
    int n = 0;
    argv[n++] = uk.k[POL_FAIL_U];
    argv[n++] = uk.k[POL_FAIL_UA];
    argv[n++] = uk.k[POL_PEND_U];
    argv[n++] = uk.k[POL_PEND_UA];
    argv[n++] = uk.k[POL_CONN_U];
    if (k->has_addr) {
        argv[n++] = af;
        argv[n++] = ac;
        argv[n++] = ap;
    }
    int nkeys = n;
    argv[n++] = k->sid;
    argv[n++] = num(ul, sizeof ul, lim->user_fail_limit);
    argv[n++] = num(pl, sizeof pl, k->net[0] ? lim->pair_fail_limit : 0);
    argv[n++] = num(win, sizeof win, lim->fail_window_ms);
    argv[n++] = num(lock, sizeof lock, lim->lockout_ms);
    argv[n++] = num(lmax, sizeof lmax, lim->lockout_max_ms);
    argv[n++] = num(al, sizeof al, lim->addr_fail_limit);
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    if (rds_eval(p->cmd, &p->s_fail, nkeys, n, argv, lens, result_reply, c))
        return true;
    free(c);
    return false;
}

void policy_login_failed(struct policy *p, const struct policy_limits *lim,
                         const struct policy_who *w)
{
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    struct local_login lk;
    local_keys(&k, &lk);
    p->wb_lim = *lim;
    /* Counted here in any case (the outage table must be fed); unsynced when not sent. */
    bool sent = send_fail(p, lim, &k);
    struct local_locks locks;
    local_login_done(p->local, &lk, lim, now_ms(p), LOCAL_FAILED, sent, &locks);
    /* Sent: the script's answer logs the lock-outs (result_reply). Not sent: the outage table
     * decided them, and says so with the same lines plus source=local. */
    if (!sent) {
        log_lockouts(k.name, k.net, (long long)locks.user, (long long)locks.pair, 0,
                     " source=local");
        log_lockouts(k.name, k.addr, 0, 0, (long long)locks.addr, " source=local");
    }
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
    char keys[5][RL_KEY_MAX];
    const char *argv[6];
    size_t lens[6];
    int n = 0;
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
        if (!set[i].on || !pol_key(p, keys[n], RL_KEY_MAX, set[i].kind, set[i].tag, set[i].suffix))
            continue;
        argv[n] = keys[n];
        n++;
    }
    argv[n++] = k->sid;
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    rds_eval(p->cmd, &p->s_release, n - 1, n, argv, lens, NULL, NULL); /* one command */
}

void policy_release(struct policy *p, const struct policy_limits *lim, const struct policy_who *w)
{
    struct pol_keys k;
    pol_scope_keys(p, lim, w, &k);
    struct local_login lk;
    local_keys(&k, &lk);
    local_login_done(p->local, &lk, lim, now_ms(p), LOCAL_RELEASE, true, NULL);
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
            num(kttl, sizeof kttl, pol_known_ttl(l) + pol_known_slack(l)),
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
