/*
 * sess_lookup — see sess_lookup.h.
 *
 * The worker keeps one chain (w->route) for the newest configuration a session brought; a
 * session of another snapshot (accepted before a reload) gets a chain of its own snapshot, so
 * a lookup always follows the rules its session was accepted under. The answer is copied into
 * the session (strings owned here), because a cached or map answer is only valid during the
 * call.
 */
#include "sess_lookup.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cfg_map.h"
#include "creds.h"
#include "log.h"
#include "route_chain.h"
#include "route_dyn.h"
#include "route_rcache.h"
#include "runtime.h"
#include "sess_policy.h"
#include "session.h"
#include "worker.h"

struct sess_lookup {
    struct route_chain_req *req; /* pending */
    sess_lookup_done *done;
    bool answered;
    enum route_status status;
    bool cached;
    bool shared; /* the answer came from the shared cache (Redis) */
    char source[CFG_NAME_MAX + 1];
    char rule[32];
    char reason[160];
    struct route_target target; /* FOUND: text and host owned */
    struct route_dyn *dyn;      /* SL_DYNAMIC: held until the session closes */
    char be_name[300];          /* the dynamic backend's cfg_backend strings */
    char be_host[ROUTE_MAP_KEY_MAX + 1];
    ev_timer wait; /* REJECT: auth_http's Auth-Wait before the refusal is answered */
    unsigned wait_ms;
    bool creds_failed; /* FOUND with credentials that could not be installed */
};

static struct route_chain *chain_for(struct session *s)
{
    struct worker *w = s->worker;
    if (w->route && route_chain_config(w->route) == s->cfg)
        return w->route;
    struct route_chain *c = route_chain_new(w->loop, s->rt->cfg);
    if (!c)
        return NULL;
    route_rcache_attach(c, w);      /* answers shared through Redis, when configured */
    route_chain_release(&w->route); /* pending requests keep the old one alive */
    w->route = c;
    return c;
}

/* auth_http's Auth-User/Auth-Pass replace the credentials used toward the backend (a front
 * that checked OAuth2 or MFA logs into a legacy server with a master user). What is missing
 * is kept from the client's login; a token login given only a user has no password to send.
 * The client-visible user (s->user: logs, registry, lock-outs) stays. */
static bool replace_creds(struct session *s, const char *user, const char *pass)
{
    struct creds *c = s->login_creds;
    if (!c || (!pass && !c->pass))
        return false;
    const char *u = user ? user : c->user;
    const char *p = pass ? pass : c->pass;
    /* creds_from_login() wipes *c first: copy what is taken from it. */
    size_t ul = strlen(u), pl = strlen(p);
    char *uc = malloc(ul + 1), *pc = malloc(pl + 1);
    bool ok = uc && pc;
    if (ok) {
        memcpy(uc, u, ul + 1);
        memcpy(pc, p, pl + 1);
        ok = creds_from_login(c, uc, ul, pc, pl) == CREDS_OK;
    }
    if (uc)
        OPENSSL_cleanse(uc, ul);
    if (pc)
        OPENSSL_cleanse(pc, pl);
    free(uc);
    free(pc);
    return ok;
}

static void keep(struct session *s, const struct route_answer *a)
{
    struct sess_lookup *sl = s->lookup;
    sl->answered = true;
    sl->status = a->status;
    sl->cached = a->cached;
    sl->shared = a->shared;
    snprintf(sl->source, sizeof sl->source, "%s", a->source ? a->source : "");
    snprintf(sl->rule, sizeof sl->rule, "%s", a->rule ? a->rule : "");
    snprintf(sl->reason, sizeof sl->reason, "%s", a->reason ? a->reason : "");
    if (a->status == ROUTE_FOUND && a->target) {
        sl->target = *a->target;
        sl->target.text = strdup(a->target->text);
        sl->target.host = a->target->host ? strdup(a->target->host) : NULL;
        if (!sl->target.text || (a->target->host && !sl->target.host)) {
            sl->status = ROUTE_ERROR;
            snprintf(sl->reason, sizeof sl->reason, "out of memory");
        } else if ((a->user || a->pass) && !replace_creds(s, a->user, a->pass)) {
            sl->status = ROUTE_ERROR;
            snprintf(sl->reason, sizeof sl->reason, "%s",
                     "the lookup's Auth-User/Auth-Pass cannot be used for this login");
        } else if (a->user || a->pass) {
            sess_log(s, LOG_INFO, "event=route_lookup_credentials source=%s backend_user=%s",
                     sl->source, LOG_QS(a->user ? a->user : s->login_creds->user));
        }
    }
    if (a->status == ROUTE_REJECT)
        sl->wait_ms = a->wait_ms;
}

static void on_wait(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = t->data;
    if (!s->closing)
        s->lookup->done(s);
}

static void on_answer(void *arg, const struct route_answer *a)
{
    struct session *s = arg;
    struct sess_lookup *sl = s->lookup;
    sl->req = NULL;
    if (s->closing)
        return;
    keep(s, a);
    if (sl->status == ROUTE_REJECT && sl->wait_ms) {
        /* Auth-Wait (nginx: the refusal is answered after it): a timer the session cancels at
         * close; the session has no other deadline meanwhile, the wait is capped by config. */
        ev_timer_init(&sl->wait, on_wait, (double)sl->wait_ms / 1000., 0.);
        sl->wait.data = s;
        ev_timer_start(s->worker->loop, &sl->wait);
        return;
    }
    sl->done(s);
}

bool sess_lookup_start(struct session *s, sess_lookup_done *done)
{
    struct sess_lookup *sl = s->lookup;
    if (sl) { /* a login attempt before this one in the session: forget its answer */
        route_chain_cancel(&sl->req);
        ev_timer_stop(s->worker->loop, &sl->wait);
        free((char *)sl->target.text);
        free((char *)sl->target.host);
        route_dyn_release(&sl->dyn);
        memset(sl, 0, sizeof *sl);
    }
    if (s->cfg->routing.nlookups == 0 || s->listener->transparent)
        return false;
    bool pinned = false;
    const char *kind = NULL;
    if (sess_route_backend(s, &pinned, &kind) && pinned)
        return false; /* an administrator's override goes first: no lookup */
    if (!sl && !(sl = s->lookup = calloc(1, sizeof *s->lookup)))
        return false; /* no memory: the hash decides, as without lookups */
    sl->done = done;
    struct route_chain *c = chain_for(s);
    struct route_answer a;
    struct route_query q = {.user = s->user ? s->user : "",
                            .proto = s->listener->protocol,
                            .client_ip = s->client_ip,
                            .creds = s->login_creds,
                            .login_attempt = s->login_attempts,
                            .client_tls = s->client_tls};
    int rc = c ? route_chain_lookup(c, &q, &a, &sl->req, on_answer, s) : -1;
    if (rc == 0) {
        sess_set_state(s, SESS_BACKEND);
        sess_set_deadline(s, 0); /* the chain's timeout bounds the wait */
        return true;
    }
    if (rc < 0)
        a = (struct route_answer){.status = ROUTE_ERROR, .source = "", .reason = "out of memory"};
    keep(s, &a);
    return false;
}

static enum sess_lookup_route failed(struct session *s, const char *why, const char **why_r)
{
    struct sess_lookup *sl = s->lookup;
    bool refuse = s->cfg->routing.on_error == CFG_ROUTE_REFUSE;
    char q[200];
    sess_log(s, LOG_WARN, "event=route_lookup_failed source=%s reason=%s action=%s",
             sl->source[0] ? sl->source : "-", log_qs(q, sizeof q, why),
             refuse ? "refuse" : "fallback");
    *why_r = "routing lookup failed";
    return refuse ? SL_REFUSE_TEMP : SL_HASH;
}

static uint16_t template_port(const struct session *s)
{
    const struct cfg_dynamic_backend *db = &s->cfg->routing.dynamic_backend;
    bool pop3 = s->listener->protocol == CFG_PROTO_POP3;
    unsigned p = pop3 ? db->pop3_port : db->imap_port;
    if (p)
        return (uint16_t)p;
    if (db->tls == CFG_TLS_IMPLICIT)
        return pop3 ? 995 : 993;
    return pop3 ? 110 : 143;
}

/* Point the session at the dynamic backend sl->target (host[:port]). */
static enum sess_lookup_route dynamic(struct session *s, const char **why_r)
{
    struct sess_lookup *sl = s->lookup;
    const struct route_target *t = &sl->target;
    const struct cfg_routing *r = &s->cfg->routing;
    uint16_t port = t->port ? t->port : template_port(s);
    struct sess_be_own *o = sess_be_own(s);
    if (!o)
        return failed(s, "out of memory", why_r);
    sl->dyn = route_dyn_acquire(t->host, port, &t->addr, t->addrlen, r->max_dynamic_backends,
                                (double)r->dynamic_idle_timeout_ms / 1000.);
    if (!sl->dyn)
        return failed(s, "too many dynamic backends in use (routing.max_dynamic_backends)", why_r);
    const struct cfg_dynamic_backend *db = &r->dynamic_backend;
    snprintf(sl->be_name, sizeof sl->be_name, "%s", sl->dyn->name);
    snprintf(sl->be_host, sizeof sl->be_host, "%s", t->host);
    struct cfg_backend *b = &o->be;
    *b = (struct cfg_backend){.name = sl->be_name,
                              .host = sl->be_host,
                              .port = port,
                              .addr = sl->dyn->addr,
                              .addrlen = sl->dyn->addrlen,
                              .protocol = s->listener->protocol,
                              .weight = 1,
                              .tls = db->tls,
                              .tls_ca = db->tls_ca,
                              .tls_sni = db->tls_sni,
                              .tls_verify = db->tls_verify,
                              .proxy_protocol = db->proxy_protocol};
    s->be = b;
    s->be_index = -1;
    s->be_state = &sl->dyn->st;
    s->be_ctx = s->rt->dyn_ctx;
    return SL_DYNAMIC;
}

/* The log's cached= field: yes (the worker's cache), shared (Redis), no (a source answered). */
static const char *cached_word(const struct sess_lookup *sl)
{
    return sl->shared ? "shared" : sl->cached ? "yes" : "no";
}

enum sess_lookup_route sess_lookup_apply(struct session *s, size_t *idx_r, const char **why_r)
{
    struct sess_lookup *sl = s->lookup;
    *why_r = NULL;
    if (!sl || !sl->answered || s->be_pinned)
        return SL_HASH;
    if (sl->status == ROUTE_ERROR)
        return failed(s, sl->reason, why_r);
    if (sl->status == ROUTE_REJECT) {
        /* auth_http refused the credentials: a wrong password (counted by the dialer's
         * REFUSED path). Its Auth-Status text is logged, quoted, never sent to the client. */
        sess_log(s, LOG_INFO, "event=route_lookup result=reject source=%s status=%s wait_ms=%u",
                 sl->source, LOG_QS(sl->reason), sl->wait_ms);
        *why_r = "the auth service refused the credentials";
        return SL_REFUSE_AUTH;
    }
    if (sl->status == ROUTE_NOT_FOUND) {
        bool refuse = s->cfg->routing.unknown == CFG_ROUTE_REFUSE;
        sess_log(s, LOG_INFO, "event=route_lookup result=not_found cached=%s action=%s",
                 cached_word(sl), refuse ? "refuse" : "hash");
        *why_r = "no routing lookup knows the user";
        return refuse ? SL_REFUSE_AUTH : SL_HASH;
    }
    const struct route_target *t = &sl->target;
    enum sess_lookup_route how;
    if (t->pool) {
        int idx = sess_route_pool_index(s, t->text);
        if (idx < 0)
            return failed(s, "backend not in this protocol's pool", why_r);
        const struct cfg_backend *b = &s->cfg->backends[idx];
        struct backend_state *st = s->rt->be_state[idx];
        if (b->drain || (st && atomic_load(&st->admin_drain))) {
            sess_log(s, LOG_WARN,
                     "event=route_lookup source=%s rule=%s backend=%s "
                     "action=refuse reason=draining",
                     sl->source, sl->rule, b->name);
            *why_r = "the user's backend is draining";
            return SL_REFUSE_TEMP;
        }
        *idx_r = (size_t)idx;
        how = SL_POOL;
    } else {
        how = dynamic(s, why_r);
        if (how != SL_DYNAMIC)
            return how;
    }
    sess_log(s, LOG_INFO, "event=route_lookup source=%s rule=%s backend=%s cached=%s", sl->source,
             sl->rule, how == SL_POOL ? s->cfg->backends[*idx_r].name : s->be->name,
             cached_word(sl));
    return how;
}

void sess_lookup_close(struct session *s)
{
    struct sess_lookup *sl = s->lookup;
    if (!sl)
        return;
    route_chain_cancel(&sl->req);
    ev_timer_stop(s->worker->loop, &sl->wait);
    if (sl->dyn) {
        s->be_state = NULL;
        route_dyn_release(&sl->dyn);
    }
}

void sess_lookup_free(struct session *s)
{
    struct sess_lookup *sl = s->lookup;
    if (!sl)
        return;
    s->lookup = NULL;
    route_chain_cancel(&sl->req);
    route_dyn_release(&sl->dyn);
    free((char *)sl->target.text);
    free((char *)sl->target.host);
    free(sl);
}

void sess_lookup_worker_stop(struct worker *w)
{
    route_chain_release(&w->route);
}
