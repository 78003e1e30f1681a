/*
 * ldaplookup — asynchronous LDAP user → host lookups on a worker's libev loop.
 *
 * Connections: each slot is DOWN (waiting for its back-off timer), CONNECTING (a helper thread
 * runs ldap_initialize + StartTLS + bind, see ldaplookup.h for why a thread) or READY (an ev_io
 * on the socket drains ldap_result() with a zero timeout). A failed attempt or a lost
 * connection schedules the next attempt after backoff_min * 2^(failures-1), capped at
 * backoff_max. A READY connection multiplexes searches (LDAP message ids), round robin.
 *
 * Requests: every request owns one ev_timer. It is the deadline (`timeout`) while the request
 * waits or is in flight, and a zero-delay timer when the answer is known early, so the callback
 * never runs inside ldl_lookup(). A request is on exactly one list: the pool's queue (no
 * connection ready yet) or the pool's in-flight list (sent on conn with msgid).
 *
 * Invariants: the bind password lives only in the pool's config copy and is never logged; the
 * user name reaches the filter only through ldl_template_expand(); callbacks never run after
 * ldl_cancel() / ldl_pool_free().
 */
#include "ldaplookup.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ldap.h>

#include "log.h"

#define LDL_MAGIC      0x4c444c50u /* "LDLP" */
#define LDL_FILTER_MAX 2048        /* expanded filter: 3 x max_user_len (512) + template */
#define LDL_CONNS_MAX  16
#define LDL_REASON_MAX 160

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY };

struct ldl_conn {
    struct ldl_pool *pool; /* owner */
    unsigned idx;
    enum conn_state state;
    LDAP *ld;                 /* owned; the helper thread's until th_done, then the loop's */
    ev_io io;                 /* READY: read interest on LDAP_OPT_DESC */
    ev_timer retry;           /* DOWN: back-off before the next attempt */
    unsigned failures;        /* consecutive failed attempts (back-off exponent) */
    pthread_t th;             /* CONNECTING: the helper */
    atomic_bool th_done;      /* set by the helper as its last act */
    int th_rc;                /* helper's result: LDAP_SUCCESS or an LDAP error code */
    char err[LDL_REASON_MAX]; /* helper's failure text (no secrets) */
};

struct ldl_req {
    struct ldl_pool *pool; /* owner */
    struct ldl_req *prev;  /* on pool->queue, pool->inflight or pool->done */
    struct ldl_req *next;
    bool queued, inflight; /* which list (neither: done) */
    bool done;             /* answer known, on pool->done; the timer delivers it */
    struct ldl_conn *conn; /* inflight: the connection */
    int msgid;             /* inflight: LDAP message id */
    ev_timer timer;        /* deadline, then zero-delay delivery */
    ldl_cb *cb;            /* the caller's */
    void *arg;             /* the caller's */
    unsigned entries;      /* entries seen */
    struct ldl_answer ans; /* filled when done; strings point into the buffers below */
    char host[LDL_HOST_MAX + 1];
    char reason[LDL_REASON_MAX];
    char filter[LDL_FILTER_MAX];
};

struct ldl_pool {
    unsigned magic;
    struct ev_loop *loop;  /* borrowed */
    struct ldl_config cfg; /* strings point into `strings` */
    char *strings;         /* owned: one block holding every config string */
    size_t password_len;   /* to wipe it */
    struct ldl_conn conns[LDL_CONNS_MAX];
    unsigned next_conn;                                   /* round robin */
    ev_async wake;                                        /* helpers → loop */
    struct ldl_req *queue, *queue_tail, *inflight, *done; /* requests, owned */
    unsigned pending;                                     /* requests alive (for max_pending) */
    bool closing; /* ldl_pool_idle() was called: no more (re)connects */
    char last_err[LDL_REASON_MAX];
};

static void conn_start(struct ldl_conn *c);
static void dispatch(struct ldl_pool *p);

void ldl_config_init(struct ldl_config *c)
{
    memset(c, 0, sizeof *c);
    c->scope = LDL_SCOPE_SUB;
    c->filter = "(uid=%u)";
    c->attr = "mailHost";
    c->max_conns = 2;
    c->max_pending = 1024;
    c->max_user_len = 256;
    c->connect_timeout = 3.0;
    c->timeout = 2.0;
    c->backoff_min = 0.1;
    c->backoff_max = 10.0;
}

/* ---- request lists and delivery ----------------------------------------------------------- */

static void list_remove(struct ldl_req **head, struct ldl_req **tail, struct ldl_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else if (tail)
        *tail = r->prev;
    r->prev = r->next = NULL;
}

static void req_unlink(struct ldl_req *r)
{
    struct ldl_pool *p = r->pool;
    if (r->queued)
        list_remove(&p->queue, &p->queue_tail, r);
    if (r->inflight)
        list_remove(&p->inflight, NULL, r);
    if (r->done)
        list_remove(&p->done, NULL, r);
    r->queued = r->inflight = false;
}

static void req_free(struct ldl_req *r)
{
    r->pool->pending--;
    free(r);
}

/* Records the answer and arms the zero-delay delivery. The callback runs from the timer. */
static void req_finish(struct ldl_req *r, enum ldl_status st, const char *reason)
{
    if (r->done)
        return;
    req_unlink(r);
    r->done = true;
    r->next = r->pool->done;
    if (r->next)
        r->next->prev = r;
    r->pool->done = r;
    r->ans.status = st;
    if (reason != NULL) {
        snprintf(r->reason, sizeof r->reason, "%s", reason);
        r->ans.reason = r->reason;
    }
    ev_timer_stop(r->pool->loop, &r->timer);
    ev_timer_set(&r->timer, 0., 0.);
    ev_timer_start(r->pool->loop, &r->timer);
}

static void req_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct ldl_req *r = w->data;
    (void)revents;
    if (!r->done) {
        /* Deadline: abandon the search so the server stops working on it. */
        if (r->inflight && r->conn->ld != NULL)
            ldap_abandon_ext(r->conn->ld, r->msgid, NULL, NULL);
        req_finish(r, LDL_ERROR,
                   r->queued ? "timeout waiting for an LDAP connection" : "LDAP search timed out");
        return;
    }
    ev_timer_stop(loop, w);
    req_unlink(r);
    r->cb(r->arg, &r->ans);
    req_free(r);
}

/* ---- connections -------------------------------------------------------------------------- */

static void set_err(struct ldl_conn *c, const char *what, int rc, LDAP *ld)
{
    char *diag = NULL;
    if (ld != NULL)
        ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
    snprintf(c->err, sizeof c->err, "%s: %s%s%s", what, ldap_err2string(rc),
             diag && *diag ? ": " : "", diag && *diag ? diag : "");
    ldap_memfree(diag);
}

static int tls_options(struct ldl_conn *c, LDAP *ld)
{
    const struct ldl_config *cfg = &c->pool->cfg;
    int demand = LDAP_OPT_X_TLS_DEMAND, zero = 0, rc;

    if ((rc = ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand)) != LDAP_OPT_SUCCESS)
        return rc;
    if (cfg->ca_file &&
        (rc = ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, cfg->ca_file)) != LDAP_OPT_SUCCESS)
        return rc;
    if (cfg->cert_file &&
        (rc = ldap_set_option(ld, LDAP_OPT_X_TLS_CERTFILE, cfg->cert_file)) != LDAP_OPT_SUCCESS)
        return rc;
    if (cfg->key_file &&
        (rc = ldap_set_option(ld, LDAP_OPT_X_TLS_KEYFILE, cfg->key_file)) != LDAP_OPT_SUCCESS)
        return rc;
    /* Per-handle TLS options take effect only in a new per-handle context. */
    return ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
}

/* Helper thread: everything that may block. Touches only c->ld/th_rc/err, then th_done. */
static void *conn_thread(void *arg)
{
    struct ldl_conn *c = arg;
    const struct ldl_config *cfg = &c->pool->cfg;
    LDAP *ld = NULL;
    int v3 = LDAP_VERSION3, rc;
    struct timeval tv;
    struct berval cred = {0, NULL};

    tv.tv_sec = (time_t)cfg->connect_timeout;
    tv.tv_usec = (suseconds_t)((cfg->connect_timeout - (double)tv.tv_sec) * 1e6);
    rc = ldap_initialize(&ld, cfg->uri);
    if (rc != LDAP_SUCCESS) {
        set_err(c, "initialize", rc, NULL);
        goto out;
    }
    /* NETWORK_TIMEOUT bounds connect(); TIMEOUT bounds each synchronous op (StartTLS, bind). */
    if ((rc = ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3)) != LDAP_OPT_SUCCESS ||
        (rc = ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF)) != LDAP_OPT_SUCCESS ||
        (rc = ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv)) != LDAP_OPT_SUCCESS ||
        (rc = ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv)) != LDAP_OPT_SUCCESS ||
        (rc = tls_options(c, ld)) != LDAP_OPT_SUCCESS) {
        set_err(c, "options", rc, ld);
        goto out;
    }
    if (cfg->starttls && (rc = ldap_start_tls_s(ld, NULL, NULL)) != LDAP_SUCCESS) {
        set_err(c, "StartTLS", rc, ld);
        goto out;
    }
    if (cfg->sasl_external) {
        /* An empty initial response (authzid = the certificate's identity). bv_val must not be
         * NULL: libldap then omits the credentials field and slapd's Cyrus SASL asks for a
         * second round ("SASL bind in progress"). */
        cred.bv_val = (char *)"";
        rc = ldap_sasl_bind_s(ld, NULL, "EXTERNAL", &cred, NULL, NULL, NULL);
    } else {
        if (cfg->bind_password != NULL) {
            cred.bv_val = (char *)cfg->bind_password;
            cred.bv_len = strlen(cfg->bind_password);
        }
        rc = ldap_sasl_bind_s(ld, cfg->bind_dn ? cfg->bind_dn : "", LDAP_SASL_SIMPLE, &cred, NULL,
                              NULL, NULL);
    }
    if (rc != LDAP_SUCCESS)
        set_err(c, "bind", rc, ld);
out:
    if (rc != LDAP_SUCCESS && ld != NULL) {
        ldap_unbind_ext(ld, NULL, NULL);
        ld = NULL;
    }
    c->ld = ld;
    c->th_rc = rc;
    atomic_store(&c->th_done, true);
    ev_async_send(c->pool->loop, &c->pool->wake);
    return NULL;
}

static double backoff(const struct ldl_config *cfg, unsigned failures)
{
    double d = cfg->backoff_min * ldexp(1.0, (int)(failures > 30 ? 30 : failures) - 1);
    return d > cfg->backoff_max ? cfg->backoff_max : d;
}

static bool any_state(const struct ldl_pool *p, enum conn_state st)
{
    for (unsigned i = 0; i < p->cfg.max_conns; i++)
        if (p->conns[i].state == st)
            return true;
    return false;
}

static void conn_schedule(struct ldl_conn *c)
{
    struct ldl_pool *p = c->pool;
    c->state = CONN_DOWN;
    c->failures++;
    ev_timer_set(&c->retry, backoff(&p->cfg, c->failures), 0.);
    ev_timer_start(p->loop, &c->retry);
    snprintf(p->last_err, sizeof p->last_err, "%s", c->err);
    /* Nobody can serve the queue soon: answer it now rather than at each deadline. */
    if (!any_state(p, CONN_READY) && !any_state(p, CONN_CONNECTING)) {
        char why[LDL_REASON_MAX + 32];
        snprintf(why, sizeof why, "LDAP unavailable: %s", p->last_err);
        while (p->queue != NULL)
            req_finish(p->queue, LDL_ERROR, why);
    }
}

/* A READY connection failed: its searches get an error, the slot reconnects after back-off. */
static void conn_down(struct ldl_conn *c, const char *what, int rc)
{
    struct ldl_pool *p = c->pool;
    struct ldl_req *r, *next;

    set_err(c, what, rc, c->ld);
    log_write(LOG_WARN, "event=ldap_conn_lost uri=%s conn=%u reason=\"%s\"", p->cfg.uri, c->idx,
              c->err);
    ev_io_stop(p->loop, &c->io);
    for (r = p->inflight; r != NULL; r = next) {
        next = r->next;
        if (r->conn == c)
            req_finish(r, LDL_ERROR, c->err);
    }
    ldap_unbind_ext(c->ld, NULL, NULL);
    c->ld = NULL;
    c->failures = 0;
    conn_schedule(c);
}

static struct ldl_req *find_inflight(struct ldl_pool *p, struct ldl_conn *c, int msgid)
{
    for (struct ldl_req *r = p->inflight; r != NULL; r = r->next)
        if (r->conn == c && r->msgid == msgid)
            return r;
    return NULL;
}

static void on_entry(struct ldl_conn *c, struct ldl_req *r, LDAPMessage *msg)
{
    struct berval **vals;
    const char *err = NULL;

    if (++r->entries > 1)
        return; /* the result message reports the ambiguity */
    vals = ldap_get_values_len(c->ld, msg, r->pool->cfg.attr);
    if (vals == NULL || vals[0] == NULL) {
        r->host[0] = '\0';
    } else if (!ldl_parse_host(vals[0]->bv_val, vals[0]->bv_len, r->host, &r->ans.port, &err)) {
        r->host[0] = '\0';
        snprintf(r->reason, sizeof r->reason, "bad %s value: %s", r->pool->cfg.attr, err);
    }
    ldap_value_free_len(vals);
}

static void on_result(struct ldl_conn *c, struct ldl_req *r, LDAPMessage *msg)
{
    int err = LDAP_OTHER;
    int rc = ldap_parse_result(c->ld, msg, &err, NULL, NULL, NULL, NULL, 0);
    char why[LDL_REASON_MAX];

    if (rc != LDAP_SUCCESS)
        err = rc;
    if (err == LDAP_SIZELIMIT_EXCEEDED || (err == LDAP_SUCCESS && r->entries > 1)) {
        req_finish(r, LDL_ERROR, "more than one entry matches the filter");
    } else if (err == LDAP_NO_SUCH_OBJECT || (err == LDAP_SUCCESS && r->entries == 0)) {
        req_finish(r, LDL_NOT_FOUND, NULL);
    } else if (err != LDAP_SUCCESS) {
        snprintf(why, sizeof why, "search failed: %s", ldap_err2string(err));
        req_finish(r, LDL_ERROR, why);
    } else if (r->reason[0] != '\0') {
        snprintf(why, sizeof why, "%s", r->reason);
        req_finish(r, LDL_ERROR, why);
    } else if (r->host[0] == '\0') {
        /* The user exists but has no host: the chain falls through to the next source. */
        snprintf(why, sizeof why, "entry has no %s", r->pool->cfg.attr);
        req_finish(r, LDL_NOT_FOUND, why);
    } else {
        r->ans.host = r->host;
        req_finish(r, LDL_FOUND, NULL);
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ldl_conn *c = w->data;
    struct timeval zero = {0, 0};
    (void)loop;
    (void)revents;

    for (;;) {
        LDAPMessage *msg = NULL;
        int type = ldap_result(c->ld, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
        struct ldl_req *r;
        if (type == 0)
            return;
        if (type < 0) {
            int rc = LDAP_SERVER_DOWN;
            ldap_get_option(c->ld, LDAP_OPT_RESULT_CODE, &rc);
            conn_down(c, "connection", rc);
            return;
        }
        r = find_inflight(c->pool, c, ldap_msgid(msg));
        /* Late answers to timed-out or cancelled searches are dropped here. */
        if (r != NULL && type == LDAP_RES_SEARCH_ENTRY)
            on_entry(c, r, msg);
        else if (r != NULL && type == LDAP_RES_SEARCH_RESULT)
            on_result(c, r, msg);
        ldap_msgfree(msg);
    }
}

static void conn_ready(struct ldl_conn *c)
{
    struct ldl_pool *p = c->pool;
    int fd = -1;

    if (ldap_get_option(c->ld, LDAP_OPT_DESC, &fd) != LDAP_OPT_SUCCESS || fd < 0) {
        snprintf(c->err, sizeof c->err, "no socket after bind");
        ldap_unbind_ext(c->ld, NULL, NULL);
        c->ld = NULL;
        conn_schedule(c);
        return;
    }
    /* From here on no libldap call may wait for the peer: a full send buffer makes libldap
     * park the request (LDAP_REQST_WRITING) and finish writing in a later ldap_result(). */
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        snprintf(c->err, sizeof c->err, "fcntl O_NONBLOCK: %s", strerror(errno));
        ldap_unbind_ext(c->ld, NULL, NULL);
        c->ld = NULL;
        conn_schedule(c);
        return;
    }
    if (c->failures > 0)
        log_write(LOG_INFO, "event=ldap_conn_up uri=%s conn=%u attempts=%u", p->cfg.uri, c->idx,
                  c->failures + 1);
    c->state = CONN_READY;
    c->failures = 0;
    ev_io_set(&c->io, fd, EV_READ);
    ev_io_start(p->loop, &c->io);
    dispatch(p);
}

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct ldl_pool *p = w->data;
    (void)loop;
    (void)revents;

    for (unsigned i = 0; i < p->cfg.max_conns; i++) {
        struct ldl_conn *c = &p->conns[i];
        if (c->state != CONN_CONNECTING || !atomic_load(&c->th_done))
            continue;
        pthread_join(c->th, NULL);
        if (c->th_rc == LDAP_SUCCESS) {
            conn_ready(c);
        } else {
            /* Logged once per outage, then at DEBUG: a directory down for an hour at the
             * back-off cap is one line every backoff_max, not per attempt. */
            log_write(c->failures == 0 ? LOG_WARN : LOG_DEBUG,
                      "event=ldap_connect_failed uri=%s conn=%u attempt=%u reason=\"%s\"",
                      p->cfg.uri, c->idx, c->failures + 1, c->err);
            conn_schedule(c);
        }
    }
}

static void conn_start(struct ldl_conn *c)
{
    int rc;
    c->state = CONN_CONNECTING;
    atomic_store(&c->th_done, false);
    c->ld = NULL;
    rc = pthread_create(&c->th, NULL, conn_thread, c);
    if (rc != 0) {
        snprintf(c->err, sizeof c->err, "pthread_create: %s", strerror(rc));
        conn_schedule(c);
    }
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ldl_conn *c = w->data;
    if (!c->pool->closing)
        conn_start(c);
}

bool ldl_pool_idle(struct ldl_pool *p)
{
    p->closing = true;
    bool idle = true;
    for (unsigned i = 0; i < p->cfg.max_conns; i++) {
        struct ldl_conn *c = &p->conns[i];
        ev_timer_stop(p->loop, &c->retry);
        if (c->state == CONN_CONNECTING && !atomic_load(&c->th_done))
            idle = false;
    }
    return idle;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static struct ldl_conn *pick_conn(struct ldl_pool *p)
{
    for (unsigned k = 0; k < p->cfg.max_conns; k++) {
        struct ldl_conn *c = &p->conns[(p->next_conn + k) % p->cfg.max_conns];
        if (c->state == CONN_READY) {
            p->next_conn = (c->idx + 1) % p->cfg.max_conns;
            return c;
        }
    }
    return NULL;
}

static void send_search(struct ldl_conn *c, struct ldl_req *r)
{
    struct ldl_pool *p = c->pool;
    static const int scopes[] = {LDAP_SCOPE_BASE, LDAP_SCOPE_ONELEVEL, LDAP_SCOPE_SUBTREE};
    char *attrs[2] = {(char *)p->cfg.attr, NULL};
    struct timeval limit = {(time_t)ceil(p->cfg.timeout), 0};
    int rc;

    /* sizelimit 2: enough to tell "one" from "ambiguous" without pulling a whole subtree. */
    rc = ldap_search_ext(c->ld, p->cfg.base, scopes[p->cfg.scope], r->filter, attrs, 0, NULL, NULL,
                         &limit, 2, &r->msgid);
    if (rc != LDAP_SUCCESS) {
        req_finish(r, LDL_ERROR, "LDAP connection lost while sending");
        conn_down(c, "search", rc);
        return;
    }
    r->conn = c;
    r->inflight = true;
    r->next = p->inflight;
    if (p->inflight)
        p->inflight->prev = r;
    p->inflight = r;
}

static void dispatch(struct ldl_pool *p)
{
    struct ldl_conn *c;
    while (p->queue != NULL && (c = pick_conn(p)) != NULL) {
        struct ldl_req *r = p->queue;
        list_remove(&p->queue, &p->queue_tail, r);
        r->queued = false;
        send_search(c, r);
    }
}

/* ---- public API --------------------------------------------------------------------------- */

struct ldl_req *ldl_lookup(struct ldl_pool *p, const char *user, size_t ulen, ldl_cb *cb, void *arg)
{
    struct ldl_req *r = calloc(1, sizeof *r);
    struct ldl_conn *c;

    if (r == NULL)
        abort(); /* as every allocation on the session path */
    r->pool = p;
    r->cb = cb;
    r->arg = arg;
    p->pending++;
    ev_timer_init(&r->timer, req_timer_cb, p->cfg.timeout, 0.);
    r->timer.data = r;

    if (ulen == 0 || ulen > p->cfg.max_user_len ||
        ldl_template_expand(r->filter, sizeof r->filter, p->cfg.filter, user, ulen) < 0) {
        req_finish(r, LDL_NOT_FOUND, "user name empty or too long for the filter");
        return r;
    }
    if (p->pending > p->cfg.max_pending) {
        req_finish(r, LDL_ERROR, "too many LDAP lookups pending");
        return r;
    }
    ev_timer_start(p->loop, &r->timer);
    if ((c = pick_conn(p)) != NULL && p->queue == NULL) {
        send_search(c, r);
        return r;
    }
    if (!any_state(p, CONN_CONNECTING) && !any_state(p, CONN_READY)) {
        char why[LDL_REASON_MAX + 32];
        snprintf(why, sizeof why, "LDAP unavailable: %s", p->last_err);
        req_finish(r, LDL_ERROR, why);
        return r;
    }
    r->queued = true;
    r->prev = p->queue_tail;
    if (p->queue_tail)
        p->queue_tail->next = r;
    else
        p->queue = r;
    p->queue_tail = r;
    return r;
}

void ldl_cancel(struct ldl_req **rp)
{
    struct ldl_req *r = *rp;
    if (r == NULL)
        return;
    *rp = NULL;
    if (r->inflight && r->conn->ld != NULL)
        ldap_abandon_ext(r->conn->ld, r->msgid, NULL, NULL);
    req_unlink(r);
    ev_timer_stop(r->pool->loop, &r->timer);
    req_free(r);
}

unsigned ldl_pool_ready(const struct ldl_pool *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->cfg.max_conns; i++)
        n += p->conns[i].state == CONN_READY;
    return n;
}

/* Copies the config strings into one block so the pool outlives the caller's config. */
static bool copy_config(struct ldl_pool *p, const struct ldl_config *c)
{
    const char **fields[] = {&p->cfg.uri,      &p->cfg.ca_file, &p->cfg.cert_file,
                             &p->cfg.key_file, &p->cfg.bind_dn, &p->cfg.bind_password,
                             &p->cfg.base,     &p->cfg.filter,  &p->cfg.attr};
    size_t total = 0, off = 0;

    p->cfg = *c;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        total += *fields[i] ? strlen(*fields[i]) + 1 : 0;
    p->strings = malloc(total + 1);
    if (p->strings == NULL)
        return false;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        size_t n;
        if (*fields[i] == NULL)
            continue;
        n = strlen(*fields[i]) + 1;
        memcpy(p->strings + off, *fields[i], n);
        *fields[i] = p->strings + off;
        off += n;
    }
    p->password_len = total + 1;
    return true;
}

static bool check_config(const struct ldl_config *c, const char **error_r)
{
    if (c->uri == NULL ||
        (strncmp(c->uri, "ldap://", 7) != 0 && strncmp(c->uri, "ldaps://", 8) != 0)) {
        *error_r = "ldap uri must start with ldap:// or ldaps://";
        return false;
    }
    if (c->starttls && strncmp(c->uri, "ldaps://", 8) == 0) {
        *error_r = "ldap starttls needs an ldap:// uri";
        return false;
    }
    if (c->base == NULL || c->attr == NULL || c->attr[0] == '\0') {
        *error_r = "ldap base and attribute are required";
        return false;
    }
    if (c->scope > LDL_SCOPE_SUB || c->max_conns < 1 || c->max_conns > LDL_CONNS_MAX ||
        c->max_pending < 1 || c->max_user_len < 1 || c->max_user_len > 512) {
        *error_r = "ldap scope, max_conns (1..16), max_pending or max_user_len (1..512) invalid";
        return false;
    }
    if (!(c->connect_timeout > 0) || !(c->timeout > 0) || !(c->backoff_min > 0) ||
        c->backoff_max < c->backoff_min) {
        *error_r = "ldap timeouts and back-off must be positive (backoff_max >= backoff_min)";
        return false;
    }
    if (c->sasl_external && c->cert_file == NULL) {
        *error_r = "ldap sasl_external needs a client certificate";
        return false;
    }
    return ldl_template_check(c->filter, error_r);
}

/* libldap initialises its global state on first use; do that once here, before several workers'
 * helper threads can race into it. */
static void global_init(void)
{
    int v = 0;
    ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
}

struct ldl_pool *ldl_pool_new(struct ev_loop *loop, const struct ldl_config *c,
                              const char **error_r)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    struct ldl_pool *p;

    if (!check_config(c, error_r))
        return NULL;
    pthread_once(&once, global_init);
    p = calloc(1, sizeof *p);
    if (p == NULL || !copy_config(p, c)) {
        free(p);
        *error_r = "out of memory";
        return NULL;
    }
    p->magic = LDL_MAGIC;
    p->loop = loop;
    snprintf(p->last_err, sizeof p->last_err, "not connected yet");
    ev_async_init(&p->wake, wake_cb);
    p->wake.data = p;
    ev_async_start(loop, &p->wake);
    for (unsigned i = 0; i < p->cfg.max_conns; i++) {
        struct ldl_conn *cn = &p->conns[i];
        cn->pool = p;
        cn->idx = i;
        ev_io_init(&cn->io, conn_io_cb, -1, EV_READ);
        cn->io.data = cn;
        ev_timer_init(&cn->retry, retry_cb, 0., 0.);
        cn->retry.data = cn;
        conn_start(cn);
    }
    return p;
}

/* Frees a whole request list without callbacks (ldl_pool_free only). */
static void drop_list(struct ldl_pool *p, struct ldl_req *r)
{
    while (r != NULL) {
        struct ldl_req *next = r->next;
        ev_timer_stop(p->loop, &r->timer);
        free(r);
        r = next;
    }
}

void ldl_pool_free(struct ldl_pool **pp)
{
    struct ldl_pool *p = *pp;
    if (p == NULL)
        return;
    *pp = NULL;
    if (p->magic != LDL_MAGIC)
        abort();
    /* No abandon needed for in-flight searches: the connections are unbound below. */
    drop_list(p, p->queue);
    drop_list(p, p->inflight);
    drop_list(p, p->done);
    p->queue = p->queue_tail = p->inflight = p->done = NULL;
    for (unsigned i = 0; i < p->cfg.max_conns; i++) {
        struct ldl_conn *c = &p->conns[i];
        if (c->state == CONN_CONNECTING) {
            pthread_join(c->th, NULL); /* bounded by connect_timeout per step */
            c->state = c->th_rc == LDAP_SUCCESS ? CONN_READY : CONN_DOWN;
        }
        ev_io_stop(p->loop, &c->io);
        ev_timer_stop(p->loop, &c->retry);
        if (c->ld != NULL)
            ldap_unbind_ext(c->ld, NULL, NULL);
    }
    ev_async_stop(p->loop, &p->wake);
    explicit_bzero(p->strings, p->password_len);
    free(p->strings);
    p->magic = 0;
    free(p);
}
