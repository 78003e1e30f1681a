/*
 * authhttp — the asynchronous auth_http client: libcurl's multi interface on a libev loop.
 *
 * The bridge is the one libcurl documents for event loops (multi-event.c / hiperfifo.c):
 * CURLMOPT_SOCKETFUNCTION tells us which sockets to watch (one ev_io each, attached to the
 * socket with curl_multi_assign), CURLMOPT_TIMERFUNCTION arms one ev_timer, and both watchers
 * call curl_multi_socket_action and then drain curl_multi_info_read for finished transfers.
 *
 * Invariants:
 *   - callbacks to the caller run only from a libev watcher, after libcurl returned (never from
 *     inside a libcurl callback, never from ah_lookup): a new transfer only asks for a 0 ms
 *     timer, which fires on the next loop iteration;
 *   - one multi handle per client, so libcurl's connection cache keeps connections to the
 *     service alive across lookups (HTTP/1.1 keep-alive), capped by max_connections;
 *   - a request is freed exactly once: by completion (after its callback) or by ah_cancel /
 *     ah_client_free (no callback); the Auth-Pass header and the parse state are wiped first.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <ev.h>
#include <openssl/crypto.h>

#include "authhttp.h"

#define AH_BODY_MAX  (64 * 1024) /* the body is ignored; a service streaming more is broken */
#define AH_VALUE_MAX 4096        /* one escaped request header value */

struct ah_sock {
    ev_io io;
    struct ah_client *c;
    curl_socket_t fd;
    struct ah_sock *next; /* in c->socks, freed at client free if libcurl did not REMOVE it */
    struct ah_sock *prev;
};

struct ah_req {
    struct ah_client *c;
    CURL *easy;              /* owned */
    struct curl_slist *hdrs; /* owned; holds the escaped password: wiped before free */
    ah_done_fn *cb;
    void *arg;
    struct ah_parse parse; /* the answer being parsed (holds backend credentials) */
    size_t body_bytes;
    char errbuf[CURL_ERROR_SIZE];
    struct ah_req *next; /* in c->reqs */
    struct ah_req *prev;
};

struct ah_client {
    struct ev_loop *loop;
    CURLM *multi;          /* owned */
    ev_timer timer;        /* libcurl's single timeout */
    struct ah_config cfg;  /* strings borrowed */
    struct ah_req *reqs;   /* in flight */
    struct ah_sock *socks; /* watched sockets */
    unsigned pending;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

/* curl_global_init is only thread-safe from 7.84 on and only with the "threadsafe" feature;
 * workers create their clients concurrently, so do it once. */
static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void req_unlink(struct ah_req *r)
{
    struct ah_client *c = r->c;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    c->pending--;
}

static void slist_wipe_free(struct curl_slist *l)
{
    for (struct curl_slist *e = l; e; e = e->next)
        OPENSSL_cleanse(e->data, strlen(e->data));
    curl_slist_free_all(l);
}

/* Detach from the multi handle and free everything; no callback. */
static void req_free(struct ah_req *r)
{
    req_unlink(r);
    curl_multi_remove_handle(r->c->multi, r->easy);
    curl_easy_cleanup(r->easy);
    slist_wipe_free(r->hdrs);
    ah_parse_clear(&r->parse);
    free(r);
}

/* Finished transfers: classify, call back, free. */
static void drain_done(struct ah_client *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct ah_req *r = (struct ah_req *)priv;
        if (!r)
            continue;
        CURLcode rc = m->data.result;
        struct ah_result res;
        if (rc == CURLE_OK) {
            ah_parse_result(&r->parse, &res);
        } else {
            memset(&res, 0, sizeof(res));
            res.status = AH_ERROR;
            res.http_status = r->parse.http_status;
            if (rc == CURLE_OPERATION_TIMEDOUT)
                res.message = "timeout";
            else if (r->parse.error)
                res.message = r->parse.error; /* our header callback aborted the transfer */
            else
                res.message = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        }
        /* Unlinked first: the callback may cancel other requests or start new ones (but must
         * not free the client). */
        req_unlink(r);
        r->cb(r->arg, &res);
        curl_multi_remove_handle(c->multi, r->easy);
        curl_easy_cleanup(r->easy);
        slist_wipe_free(r->hdrs);
        ah_parse_clear(&r->parse);
        free(r);
    }
}

static void run_action(struct ah_client *c, curl_socket_t fd, int ev_bitmask)
{
    int running;
    curl_multi_socket_action(c->multi, fd, ev_bitmask, &running);
    drain_done(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct ah_sock *s = (struct ah_sock *)w;
    int mask =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    run_action(s->c, s->fd, mask);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ah_client *c = w->data;
    run_action(c, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_free(struct ah_client *c, struct ah_sock *s)
{
    ev_io_stop(c->loop, &s->io);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

/* CURLMOPT_SOCKETFUNCTION: watch `fd` for what libcurl wants (never calls libcurl back). */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct ah_client *c = userp;
    struct ah_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_free(c, s);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1; /* libcurl fails the transfer */
        s->c = c;
        s->fd = fd;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        ev_io_init(&s->io, on_io, fd, 0);
        curl_multi_assign(c->multi, fd, s);
    }
    int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    ev_io_stop(c->loop, &s->io);
    ev_io_set(&s->io, fd, events);
    ev_io_start(c->loop, &s->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer; 0 ms means "on the next loop iteration", which is also
 * what keeps ah_lookup from ever calling back synchronously. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct ah_client *c = userp;
    ev_timer_stop(c->loop, &c->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&c->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(c->loop, &c->timer);
    }
    return 0;
}

static size_t on_header(char *buf, size_t size, size_t n, void *userp)
{
    struct ah_req *r = userp;
    size_t len = size * n;
    /* a short count aborts the transfer (CURLE_WRITE_ERROR); the reason stays in r->parse */
    return ah_parse_line(&r->parse, buf, len) < 0 ? 0 : len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *userp)
{
    (void)buf;
    struct ah_req *r = userp;
    size_t len = size * n;
    r->body_bytes += len;
    if (r->body_bytes > AH_BODY_MAX) {
        r->parse.error = "response body too large";
        return 0;
    }
    return len;
}

struct ah_client *ah_client_new(struct ev_loop *loop, const struct ah_config *cfg,
                                const char **error_r)
{
    if (!cfg->url ||
        (strncmp(cfg->url, "http://", 7) != 0 && strncmp(cfg->url, "https://", 8) != 0)) {
        *error_r = "auth_http url must start with http:// or https://";
        return NULL;
    }
    if (cfg->timeout_ms == 0 || cfg->max_connections == 0 ||
        cfg->max_header_bytes < AH_MAX_HEADER_BYTES_MIN) {
        *error_r = "auth_http timeout, max_connections and max_header_bytes must be set";
        return NULL;
    }
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        *error_r = "curl_global_init failed";
        return NULL;
    }
    struct ah_client *c = calloc(1, sizeof(*c));
    if (!c) {
        *error_r = "out of memory";
        return NULL;
    }
    c->loop = loop;
    c->cfg = *cfg;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        *error_r = "curl_multi_init failed";
        return NULL;
    }
    ev_timer_init(&c->timer, on_timer, 0., 0.);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)cfg->max_connections);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cfg->max_connections);
    return c;
}

/* Append "Name: value" with the value escaped as nginx does. */
static bool add_hdr(struct curl_slist **l, const char *name, const char *value, bool escape)
{
    char buf[AH_VALUE_MAX + 64];
    int n = snprintf(buf, sizeof(buf), "%s: ", name);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return false;
    size_t vlen = strlen(value);
    if (escape) {
        if (ah_escape(value, vlen, buf + n, sizeof(buf) - (size_t)n) == (size_t)-1)
            return false;
    } else {
        if ((size_t)n + vlen >= sizeof(buf))
            return false;
        memcpy(buf + n, value, vlen + 1);
    }
    struct curl_slist *nl = curl_slist_append(*l, buf);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (!nl)
        return false;
    *l = nl;
    return true;
}

static bool build_headers(struct ah_req *r, const struct ah_query *q)
{
    struct curl_slist **l = &r->hdrs;
    char num[24];
    /* every peer-supplied value is escaped: a CR or LF must never split a header */
    if (!add_hdr(l, "Auth-Method", q->method && *q->method ? q->method : "plain", true) ||
        !add_hdr(l, "Auth-User", q->user, true) ||
        !add_hdr(l, "Auth-Pass", q->pass ? q->pass : "", true))
        return false;
    if (q->salt && *q->salt && !add_hdr(l, "Auth-Salt", q->salt, true))
        return false;
    snprintf(num, sizeof(num), "%u", q->login_attempt ? q->login_attempt : 1);
    if (!add_hdr(l, "Auth-Protocol", q->protocol, true) ||
        !add_hdr(l, "Auth-Login-Attempt", num, false))
        return false;
    if (q->client_ip && *q->client_ip && !add_hdr(l, "Client-IP", q->client_ip, true))
        return false;
    if (q->client_host && *q->client_host && !add_hdr(l, "Client-Host", q->client_host, true))
        return false;
    if (q->ssl && !add_hdr(l, "Auth-SSL", "on", false))
        return false;
    if (q->ssl && q->ssl_verify && *q->ssl_verify &&
        !add_hdr(l, "Auth-SSL-Verify", q->ssl_verify, true))
        return false;
    if (q->server_ip && *q->server_ip && !add_hdr(l, "Server-IP", q->server_ip, true))
        return false;
    if (q->server_port) {
        snprintf(num, sizeof(num), "%u", q->server_port);
        if (!add_hdr(l, "Server-Port", num, false))
            return false;
    }
    for (const char *const *h = r->c->cfg.headers; h && *h; h++) {
        struct curl_slist *nl = curl_slist_append(*l, *h);
        if (!nl)
            return false;
        *l = nl;
    }
    /* curl would send "Expect:" only with a body; drop Accept, which nginx does not send */
    struct curl_slist *nl = curl_slist_append(*l, "Accept:");
    if (!nl)
        return false;
    *l = nl;
    return true;
}

struct ah_req *ah_lookup(struct ah_client *c, const struct ah_query *q, ah_done_fn *cb, void *arg)
{
    if (!q->user || !*q->user || !q->protocol || !*q->protocol)
        return NULL;
    struct ah_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->c = c;
    r->cb = cb;
    r->arg = arg;
    ah_parse_init(&r->parse, c->cfg.max_header_bytes);
    r->easy = curl_easy_init();
    if (!r->easy || !build_headers(r, q)) {
        if (r->easy)
            curl_easy_cleanup(r->easy);
        slist_wipe_free(r->hdrs);
        free(r);
        return NULL;
    }
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, c->cfg.url);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* never through a proxy picked up from the daemon's environment (http_proxy & co.) */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->cfg.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->cfg.ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cfg.ca_file);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    c->pending++;
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        req_unlink(r);
        curl_easy_cleanup(e);
        slist_wipe_free(r->hdrs);
        free(r);
        return NULL;
    }
    return r;
}

void ah_cancel(struct ah_req *req)
{
    if (req)
        req_free(req);
}

void ah_client_free(struct ah_client **cp)
{
    struct ah_client *c = *cp;
    if (!c)
        return;
    /* walk with saved successors: each free unlinks the head it is given */
    for (struct ah_req *r = c->reqs, *next; r; r = next) {
        next = r->next;
        req_free(r);
    }
    ev_timer_stop(c->loop, &c->timer);
    curl_multi_cleanup(c->multi); /* closes cached connections (may REMOVE sockets) */
    for (struct ah_sock *s = c->socks, *next; s; s = next) {
        next = s->next;
        sock_free(c, s);
    }
    free(c);
    *cp = NULL;
}

unsigned ah_client_pending(const struct ah_client *c)
{
    return c->pending;
}
