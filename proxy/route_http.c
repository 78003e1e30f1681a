/*
 * route_http — see route_http.h.
 *
 * A request is a small wrapper around the authhttp request: the chain's callback and the
 * listener's protocol (to find the pool entry an Auth-Server address names). The authhttp
 * client never calls back synchronously and not after ah_cancel(), which is the contract the
 * chain expects of a source, so the wrapper only translates.
 *
 * The one subtlety is freeing: the chain may go away from inside our callback (after a reload,
 * the last pending request of the old chain ends there), but the client must not be freed from
 * inside its own callback (authhttp.h). http_free then only marks the source dead, and a 0 s
 * timer frees it on the next loop turn, outside every callback of the client.
 */
#include "route_http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authhttp.h"
#include "creds.h"
#include "log.h"

struct http_source {
    struct route_source base;
    const struct config *cfg; /* borrowed: the chain's reference outlives the source */
    struct ah_client *client; /* owned; NULL when libcurl refused the configuration */
    const char *client_error; /* static: why client is NULL */
    unsigned in_cb;           /* inside on_done: the client must not be freed now */
    bool dead;                /* http_free ran inside on_done: reaped on the next turn */
    ev_timer reap;            /* frees a dead source outside the client's callbacks */
};

struct route_req {
    struct http_source *src;
    struct ah_req *ah; /* pending authhttp request */
    enum cfg_proto proto;
    route_answer_fn *cb;
    void *arg;
};

const char *route_http_method(int creds_mech)
{
    switch ((enum creds_mech)creds_mech) {
    case CREDS_LOGIN:
    case CREDS_PLAIN:
        return "plain";
    case CREDS_XOAUTH2:
        return "xoauth2";
    case CREDS_OAUTHBEARER:
        return "oauthbearer";
    }
    return "plain";
}

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr)) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
    return false;
}

/* Auth-Server:Auth-Port as a routing target: the pool entry of the listener's protocol with
 * that address (its TLS settings and health), else a dynamic backend. False: not an address
 * (the parser already insists on a numeric one; this is the belt to its braces). */
static bool target_of(const struct http_source *hs, enum cfg_proto proto,
                      const struct ah_result *res, struct route_target *t, char *text, size_t cap)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    /* AI_NUMERICHOST: never a name lookup, so this does not block the loop. */
    if (getaddrinfo(res->server, NULL, &hints, &ai) != 0 || !ai)
        return false;
    memset(t, 0, sizeof *t);
    memcpy(&t->addr, ai->ai_addr, ai->ai_addrlen);
    t->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    const struct config *cfg = hs->cfg;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct cfg_backend *b = &cfg->backends[i];
        if (b->protocol == proto && b->port == res->port && same_ip(&b->addr, &t->addr)) {
            t->text = b->name;
            t->pool = true;
            return true;
        }
    }
    snprintf(text, cap, strchr(res->server, ':') ? "[%s]:%u" : "%s:%u", res->server,
             (unsigned)res->port);
    t->text = text;
    t->host = res->server;
    t->port = res->port;
    return true;
}

static void on_done(void *arg, const struct ah_result *res)
{
    struct route_req *r = arg;
    struct http_source *hs = r->src;
    route_answer_fn *cb = r->cb;
    void *cb_arg = r->arg;
    enum cfg_proto proto = r->proto;
    free(r);
    hs->in_cb++;
    struct route_answer a = {.source = hs->base.conf->name, .nocache = true};
    struct route_target t;
    char text[AH_SERVER_MAX + 16];
    switch (res->status) {
    case AH_OK:
        if (!target_of(hs, proto, res, &t, text, sizeof text)) {
            a.status = ROUTE_ERROR;
            a.reason = "Auth-Server is not a numeric address";
            break;
        }
        a.status = ROUTE_FOUND;
        a.rule = "ok";
        a.target = &t;
        a.user = res->user;
        a.pass = res->pass;
        break;
    case AH_FAIL: {
        a.status = ROUTE_REJECT;
        a.rule = "refused";
        a.reason = res->message ? res->message : "";
        uint64_t max = hs->base.conf->max_wait_ms;
        uint64_t want = res->has_wait ? (uint64_t)res->wait_s * 1000u : 0;
        a.wait_ms = (unsigned)(want < max ? want : max);
        break;
    }
    case AH_ERROR:
        a.status = ROUTE_ERROR;
        a.reason = res->message ? res->message : "auth_http error";
        break;
    }
    cb(cb_arg, &a);
    if (--hs->in_cb == 0 && hs->dead)
        ev_timer_start(hs->base.loop, &hs->reap);
}

static struct route_req *http_start(struct route_source *src, const struct route_query *q,
                                    struct route_answer *now_r, route_answer_fn *cb, void *arg)
{
    struct http_source *hs = (struct http_source *)src;
    *now_r =
        (struct route_answer){.status = ROUTE_ERROR, .source = src->conf->name, .nocache = true};
    if (!hs->client) {
        now_r->reason = hs->client_error;
        return NULL;
    }
    if (!q->creds) {
        /* No login to judge (portcullis-ctl route show): the service cannot be asked. */
        now_r->reason = "auth_http needs the login's credentials";
        return NULL;
    }
    const struct creds *c = q->creds;
    struct route_req *r = calloc(1, sizeof *r);
    if (!r) {
        now_r->reason = "out of memory";
        return NULL;
    }
    *r = (struct route_req){.src = hs, .proto = q->proto, .cb = cb, .arg = arg};
    struct ah_query aq = {
        .method = route_http_method(c->mech),
        .user = c->user,
        /* Token mechanisms: the client's initial response, as received, for the service to
         * check (nginx has no such methods; documented in docs/routing.md). */
        .pass = c->pass ? c->pass : (c->token ? c->token : ""),
        .protocol = q->proto == CFG_PROTO_POP3 ? "pop3" : "imap",
        .login_attempt = q->login_attempt ? q->login_attempt : 1,
        .client_ip = q->client_ip,
        .ssl = q->client_tls,
    };
    r->ah = ah_lookup(hs->client, &aq, on_done, r);
    if (!r->ah) {
        free(r);
        now_r->reason = "out of memory";
        return NULL;
    }
    return r;
}

static void http_cancel(struct route_req *r)
{
    ah_cancel(r->ah);
    free(r);
}

static void on_reap(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct http_source *hs = t->data;
    ev_timer_stop(loop, t);
    ah_client_free(&hs->client);
    free(hs);
}

static void http_free(struct route_source *src)
{
    struct http_source *hs = (struct http_source *)src;
    if (hs->in_cb) {
        hs->dead = true; /* on_done starts the reaper once the client's callback is over */
        return;
    }
    ah_client_free(&hs->client);
    free(hs);
}

static const struct route_source_ops http_ops = {.type = "http",
                                                 .cacheable = false,
                                                 .start = http_start,
                                                 .cancel = http_cancel,
                                                 .free = http_free};

struct route_source *route_http_new(struct ev_loop *loop, const struct config *cfg,
                                    const struct cfg_lookup *l)
{
    struct http_source *hs = route_source_alloc(sizeof *hs, &http_ops, loop, l);
    if (!hs)
        return NULL;
    hs->cfg = cfg;
    ev_timer_init(&hs->reap, on_reap, 0., 0.);
    hs->reap.data = hs;
    struct ah_config ac;
    ah_config_defaults(&ac);
    ac.url = l->url;
    ac.timeout_ms = (unsigned)l->timeout_ms;
    if (l->connect_timeout_ms) /* 0: the type's default (ah_config_defaults) */
        ac.connect_timeout_ms = (unsigned)l->connect_timeout_ms;
    ac.ca_file = l->ca_file;
    if (l->connections)
        ac.max_connections = l->connections;
    ac.headers = (const char *const *)l->headers;
    const char *err = NULL;
    hs->client = ah_client_new(loop, &ac, &err);
    if (!hs->client) {
        hs->client_error = err ? err : "auth_http client failed";
        log_write(LOG_ERROR, "event=route_http_error lookup=%s error=%s", l->name,
                  LOG_QS(hs->client_error));
    }
    return &hs->base;
}
