/*
 * sess_policy — see sess_policy.h. The glue between a session and its worker's policy
 * (policy/policy.h); the decisions themselves live in policy/.
 *
 * Answers (RFC 5530 response codes for IMAP, RFC 3206 for POP3):
 *   deny list / not in allow list     NO [AUTHENTICATIONFAILED] / -ERR [AUTH]      at once
 *   locked out, login rate exceeded   NO [UNAVAILABLE] / -ERR [SYS/TEMP]           after the tarpit
 *   session cap                       NO [LIMIT] / -ERR [IN-USE]                   after the tarpit
 *   Redis unavailable, fail closed    NO [UNAVAILABLE] / -ERR [SYS/TEMP]           at once
 * The refusal goes back through the protocol's callback, which answers and returns the session
 * to the pre-auth dialogue (the client may try again; max_bad_commands still applies).
 */
#include "sess_policy.h"

#include "backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "login_refusal.h"
#include "metrics.h"
#include "plog.h"
#include "policy.h"
#include "runtime.h"
#include "sess_event.h"
#include "session.h"
#include "worker.h"

/* The login check: from the first login command until the relay starts (sess_policy_relay),
 * so that a relayed session keeps only struct sess_pol (issue 19: memory per idle session). */
struct sess_pol_login {
    struct policy_req *req; /* check in flight */
    bool checked;           /* a check was sent: a slot may be reserved */
    ev_tstamp login_at;     /* the login command arrived (0: none in flight), for the histogram */
    ev_timer deny;          /* answers an address refusal from the loop */
    ev_timer allow;         /* allows a login without a policy object from the loop */
    sess_login_allowed *allowed;
    sess_login_refused *refused;
    /* routing, answered by the check itself (policy/route.c) */
    enum policy_route_kind route_kind;
    char route_backend[128];
    uint64_t done; /* the allowed check's policy_verdict.done, for policy_session_open() */
};

struct sess_pol {
    struct policy_sess *reg;   /* registered (logged in) */
    struct sess_pol_login *lg; /* NULL once the relay started */
    bool blocked_logged;
};

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void plog_sink(enum plog_level level, const char *line)
{
    log_write((enum log_level)level, "%s", line);
}

static int plog_on(enum plog_level level)
{
    return log_enabled((enum log_level)level);
}

/* Process-wide hooks of the policy library, set once by the first worker. (The registry's
 * session id is the session's own, s->sid: unique across instances and restarts.) */
static void init_hooks(void)
{
    policy_set_drained_handler(backend_set_admin_drained);
    plog_set(plog_sink, plog_on);
}

void sess_policy_worker_start(struct worker *w)
{
    pthread_once(&hooks_once, init_hooks);
    struct rt *rt = rt_current();
    const struct config *cfg = rt->cfg;
    const struct cfg_redis *r = &cfg->redis;
    char name[96];
    snprintf(name, sizeof name, "portcullis:%s:%d", cfg->instance, w->id);
    struct policy_conf pc = {
        .use_redis = r->enabled,
        .redis =
            {
                .host = r->addr,
                .port = r->port,
                .socket = r->socket,
                .username = r->username,
                .password = r->password,
                .db = r->db,
                .client_name = name,
                .connect_timeout = (double)r->connect_timeout_ms / 1000.0,
                .command_timeout = (double)r->command_timeout_ms / 1000.0,
                .backoff_min = (double)r->reconnect_min_ms / 1000.0,
                .backoff_max = (double)r->reconnect_max_ms / 1000.0,
                .max_pending = 20000,
            },
        .prefix = r->prefix,
        .fail_closed = r->fail_mode == CFG_FAIL_CLOSED,
        .heartbeat_ms = cfg->policy.heartbeat_ms,
        .session_ttl_ms = cfg->policy.session_ttl_ms,
        .drain_poll_ms = cfg->policy.drain_poll_ms,
        .local_entries = cfg->policy.local_entries,
    };
    w->policy = policy_new(w->loop, &pc);
    if (!w->policy)
        log_write(LOG_ERROR, "event=policy_failed worker=%d error=\"out of memory\"", w->id);
    rt_unref(&rt);
}

void sess_policy_worker_stop(struct worker *w)
{
    /* Let the unregistrations of the sessions just closed reach Redis. */
    policy_drain(w->policy, 1.0);
    policy_free(&w->policy);
}

static void limits(const struct config *cfg, struct policy_limits *l)
{
    const struct cfg_policy *p = &cfg->policy;
    *l = (struct policy_limits){
        .v4_prefix = p->ipv4_prefix,
        .v6_prefix = p->ipv6_prefix,
        .fold_case = p->user_case_insensitive,
        .tarpit_ms = p->tarpit_ms,
        .user_burst = p->user_login_burst,
        .addr_burst = p->addr_login_burst,
        .user_interval_ms = p->user_login_interval_ms,
        .addr_interval_ms = p->addr_login_interval_ms,
        .user_fail_limit = p->user_fail_limit,
        .pair_fail_limit = p->user_addr_fail_limit,
        .known_ttl_ms = p->known_addr_ttl_ms,
        .known_max = p->known_addr_max,
        .pend_ttl_ms = p->pending_ttl_ms,
        .addr_fail_limit = p->addr_fail_limit,
        .fail_window_ms = p->fail_window_ms,
        .lockout_ms = p->lockout_ms,
        .lockout_max_ms = p->lockout_max_ms,
        .user_max_sessions = p->user_max_sessions,
        .addr_max_sessions = p->addr_max_sessions,
        .download_limit = p->download_limit,
        .download_window_ms = p->download_window_ms,
    };
}

static void who(struct session *s, struct policy_who *w)
{
    const struct cfg_policy *p = &s->cfg->policy;
    /* The address is known until the relay starts, which is as long as the policy asks for
     * it (check, failure, release: all before the relay). */
    const struct sockaddr *sa = s->pre ? (const struct sockaddr *)&s->pre->client_sa : NULL;
    bool inet = sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
    *w = (struct policy_who){
        .user = s->user,
        .addr = inet ? sa : NULL,
        .addr_exempt = inet && cfg_cidr_match(p->exempt_nets, p->nexempt, sa),
        .sid = s->sid,
        .done = s->pol && s->pol->lg ? s->pol->lg->done : 0,
    };
}

static bool is_pop3(const struct session *s)
{
    return s->listener->protocol == CFG_PROTO_POP3;
}

static void refuse(struct session *s, const char *imap, const char *pop3)
{
    sess_login_refused *cb = s->pol->lg->refused;
    cb(s, is_pop3(s) ? pop3 : imap);
    if (!s->closing)
        sess_pump(s);
}

static enum sess_reason refusal_reason(enum policy_result r)
{
    switch (r) {
    case POLICY_LOCKED:
        return SR_LOCKED_OUT;
    case POLICY_RATE:
        return SR_LOGIN_RATE;
    case POLICY_SESSIONS:
        return SR_SESSION_LIMIT;
    default:
        return SR_POLICY_UNAVAILABLE;
    }
}

_Static_assert(MP_ALLOW == (int)POLICY_ALLOW && MP_LOCKED == (int)POLICY_LOCKED &&
                   MP_RATE == (int)POLICY_RATE && MP_SESSIONS == (int)POLICY_SESSIONS &&
                   MP_UNAVAILABLE == (int)POLICY_UNAVAILABLE,
               "metrics_policy follows policy_result");

static void on_verdict(void *arg, const struct policy_verdict *v)
{
    struct session *s = arg;
    struct sess_pol_login *lg = s->pol->lg;
    lg->req = NULL;
    lg->done = v->done;
    if ((unsigned)v->result < MP__COUNT)
        atomic_fetch_add(&metrics.policy[v->result][v->scope == POLICY_SCOPE_ADDR], 1);
    if (v->degraded)
        atomic_fetch_add(&metrics.policy_degraded, 1);
    if (s->closing)
        return;
    if (v->result == POLICY_ALLOW) {
        if (v->degraded)
            sess_log(s, LOG_DEBUG,
                     "event=policy_degraded note=\"local limits (Redis unavailable)\"");
        lg->route_kind = v->route_kind;
        snprintf(lg->route_backend, sizeof lg->route_backend, "%s", v->route_backend);
        lg->allowed(s);
        if (!s->closing)
            sess_pump(s);
        return;
    }
    lg->checked = false; /* the policy released what the check may have reserved */
    sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_REFUSED,
                                       .reason = refusal_reason(v->result),
                                       .scope = v->scope == POLICY_SCOPE_USER   ? "user"
                                                : v->scope == POLICY_SCOPE_PAIR ? "user_network"
                                                                                : "address",
                                       .n = v->retry_ms,
                                       .degraded = v->degraded});
    switch (v->result) {
    case POLICY_SESSIONS:
        refuse(s, "NO [LIMIT] Too many sessions; close some and try again.",
               "-ERR [IN-USE] Too many sessions; close some and try again.");
        break;
    case POLICY_UNAVAILABLE:
        refuse(s, "NO [UNAVAILABLE] Login service temporarily unavailable; try again later.",
               "-ERR [SYS/TEMP] Login service temporarily unavailable; try again later.");
        break;
    default:
        refuse(s, "NO [UNAVAILABLE] Too many login attempts; try again later.",
               "-ERR [SYS/TEMP] Too many login attempts; try again later.");
        break;
    }
}

const char *sess_route_backend(struct session *s, bool *pinned_r, const char **kind_r)
{
    struct sess_pol_login *sp = s->pol ? s->pol->lg : NULL;
    if (!sp || sp->route_kind == POLICY_ROUTE_NONE || !sp->route_backend[0])
        return NULL;
    *pinned_r = sp->route_kind == POLICY_ROUTE_OVERRIDE;
    *kind_r = sp->route_kind == POLICY_ROUTE_OVERRIDE ? "override"
              : sp->route_kind == POLICY_ROUTE_LIVE   ? "live_session"
                                                      : "recent_session";
    return sp->route_backend;
}

static void deny_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = t->data;
    if (!s->closing)
        refuse(s, "NO [AUTHENTICATIONFAILED] Access denied from your address.",
               "-ERR [AUTH] Access denied from your address.");
}

static void allow_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = t->data;
    if (s->closing)
        return;
    s->pol->lg->allowed(s);
    if (!s->closing)
        sess_pump(s);
}

void sess_login_check(struct session *s, sess_login_allowed *allowed, sess_login_refused *refused)
{
    if (!s->pol) {
        s->pol = calloc(1, sizeof *s->pol);
        if (!s->pol) {
            sess_close(s, "out of memory");
            return;
        }
    }
    if (!s->pol->lg) {
        struct sess_pol_login *lg = calloc(1, sizeof *lg);
        if (!lg) {
            sess_close(s, "out of memory");
            return;
        }
        ev_init(&lg->deny, deny_cb);
        lg->deny.data = s;
        ev_init(&lg->allow, allow_cb);
        lg->allow.data = s;
        s->pol->lg = lg;
    }
    struct sess_pol_login *sp = s->pol->lg;
    sp->login_at = ev_now(s->worker->loop);
    sp->allowed = allowed;
    sp->refused = refused;
    const struct cfg_policy *p = &s->cfg->policy;
    const struct sockaddr *sa = (const struct sockaddr *)&s->pre->client_sa;
    bool inet = sa->sa_family == AF_INET || sa->sa_family == AF_INET6;
    if (inet && (cfg_cidr_match(p->deny_nets, p->ndeny, sa) ||
                 (p->nallow && !cfg_cidr_match(p->allow_nets, p->nallow, sa)))) {
        /* Static lists come first and need no state: no Redis, no tarpit, no counting. */
        sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_REFUSED, .reason = SR_ADDRESS_DENIED});
        ev_timer_set(&sp->deny, 0., 0.);
        ev_timer_start(s->worker->loop, &sp->deny);
        return;
    }
    if (!s->worker->policy) {
        /* No policy object (out of memory at start): nothing to enforce. Still from the loop,
         * as the header promises: the caller is not done setting up the wait. */
        ev_timer_set(&sp->allow, 0., 0.);
        ev_timer_start(s->worker->loop, &sp->allow);
        return;
    }
    struct policy_limits l;
    struct policy_who w;
    limits(s->cfg, &l);
    who(s, &w);
    sp->checked = true;
    sp->route_kind = POLICY_ROUTE_NONE;
    sp->route_backend[0] = '\0';
    w.route = !s->listener->transparent;
    sp->req = policy_check_login(s->worker->policy, &l, &w, on_verdict, s);
    if (!sp->req)
        sess_close(s, "out of memory");
}

static void on_kick(void *arg)
{
    struct session *s = arg;
    if (s->closing)
        return;
    sess_log(s, LOG_INFO, "event=kicked note=\"ended by an administrator\"");
    sess_end(s, "kicked", "Session terminated by an administrator.");
}

static uint64_t bytes_out(void *arg)
{
    struct session *s = arg;
    return s->client.bytes_out;
}

void sess_login_result(struct session *s, bool ok, bool auth_failure)
{
    struct sess_pol *sp = s->pol;
    struct sess_pol_login *lg = sp ? sp->lg : NULL;
    struct policy *p = s->worker->policy;
    if (lg && lg->login_at > 0) {
        metrics_observe_login(s->worker->id, s->listener->protocol,
                              ev_now(s->worker->loop) - lg->login_at);
        lg->login_at = 0;
    }
    if (!lg || !p || !s->user)
        return;
    struct policy_limits l;
    struct policy_who w;
    limits(s->cfg, &l);
    who(s, &w);
    if (!ok) {
        if (auth_failure)
            policy_login_failed(p, &l, &w);
        else
            policy_release(p, &l, &w);
        lg->checked = false;
        return;
    }
    char client[INET6_ADDRSTRLEN + 8];
    snprintf(client, sizeof client, "%s:%u", s->client_ip, s->client_port);
    struct policy_sess_info info = {
        .client = client,
        .backend = s->be ? s->be->name : "-",
        .instance = s->cfg->instance,
        .protocol = s->proto->name,
        .started = (uint64_t)time(NULL),
    };
    policy_session_close(&sp->reg);
    sp->reg = policy_session_open(p, &l, &w, &info, on_kick, bytes_out, s);
    lg->checked = false;
}

void sess_login_passed_on(struct session *s, const char *code, const char *text,
                          sess_refusal_answer *answer)
{
    char why[LR_CODE_MAX + 40];
    snprintf(why, sizeof why, "backend refused the login: %s", code);
    sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_UNAVAILABLE, .text = why});
    answer(s, code, text[0] ? text : "Login refused by the server.");
    sess_login_result(s, false, false); /* not a wrong password: released, never counted */
}

bool sess_policy_download_blocked(struct session *s)
{
    struct sess_pol *sp = s->pol;
    if (!sp || !sp->reg || !policy_session_over_volume(sp->reg))
        return false;
    if (!sp->blocked_logged) {
        sp->blocked_logged = true;
        sess_log(s, LOG_INFO, "event=download_limited limit=%zu window_ms=%llu",
                 s->cfg->policy.download_limit,
                 (unsigned long long)s->cfg->policy.download_window_ms);
    }
    return true;
}

void sess_policy_close(struct session *s)
{
    struct sess_pol *sp = s->pol;
    if (!sp)
        return;
    s->pol = NULL;
    struct sess_pol_login *lg = sp->lg;
    if (lg) {
        ev_timer_stop(s->worker->loop, &lg->deny);
        ev_timer_stop(s->worker->loop, &lg->allow);
        policy_cancel(&lg->req);
    }
    /* Affinity outlives the session for policy.affinity_ttl: the user's next session, from
     * any device and any instance, goes to the same server (written by the close script). */
    if (s->logged_in && s->be && s->be_index >= 0 && s->cfg)
        policy_session_affinity(sp->reg, s->be->name, s->cfg->policy.affinity_ttl_ms);
    policy_session_close(&sp->reg);
    if (lg && lg->checked && s->worker->policy && s->user && s->cfg) {
        struct policy_limits l;
        struct policy_who w;
        limits(s->cfg, &l);
        who(s, &w);
        policy_release(s->worker->policy, &l, &w);
    }
    free(lg);
    free(sp);
}

void sess_policy_relay(struct session *s)
{
    struct sess_pol *sp = s->pol;
    struct sess_pol_login *lg = sp ? sp->lg : NULL;
    /* The login was allowed and counted (sess_login_result): nothing is in flight or reserved,
     * and no login check comes after it. Kept if that ever is not so. */
    if (!lg || lg->req || lg->checked || ev_is_active(&lg->deny) || ev_is_active(&lg->allow))
        return;
    sp->lg = NULL;
    free(lg);
}
