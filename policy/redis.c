/*
 * redis — see redis.h. The only file that includes hiredis' libev adapter (libs-notes
 * pitfall 10: its static functions must be used in the one translation unit that includes it).
 *
 * Ownership: a request (struct rds_req) is hiredis' privdata from the moment it is sent until
 * hiredis calls reply_cb for it, which hiredis does exactly once — with NULL when the context is
 * freed. reply_cb frees it. The user's callback runs at most once: from reply_cb, or earlier from
 * the request's timer, after which `cb` is NULL and the late reply is dropped.
 *
 * Reconnect is driven by our own state, not by hiredis' disconnect status: after
 * redisAsyncFree() hiredis reports REDIS_OK (pitfall 8), and a context freed before it connected
 * reports nothing at all. So every path that ends a context goes through drop(), which forgets
 * the context first (r->ac = NULL: callbacks from it are recognised as stale) and then schedules
 * the next attempt.
 *
 * Writes (issue 19): hiredis' libev adapter starts the write watcher for every command and
 * stops it once the buffer is written, so each command cost a loop iteration and two
 * epoll_ctl calls (EPOLLOUT on, off). Commands are instead written by an ev_prepare watcher,
 * which libev runs after the iteration's callbacks and before it applies watcher changes to
 * epoll: everything the worker's sessions asked for in one iteration leaves in one write(),
 * and the write watcher is started and stopped before epoll ever sees it. Only what the socket
 * does not take keeps the watcher on, as before.
 *
 * Commands whose answer nobody waits for (rds_eval_lazy: session registration, heartbeat,
 * unregistration) do not get a write of their own: they wait in hiredis' buffer, with the
 * write watcher off, until the next command that is waited for leaves (a login check: same
 * write, same order) or RDS_LAZY_DELAY passes. Per login + logout redis-server then reads one
 * batch instead of two or three under load, and each batch it reads (a wake-up, read(), a
 * reply write()) cost more of its CPU than the scripts in it (docs/redis.md "Commands per
 * login"). The connection is FIFO, so this worker's next check still sees them applied.
 */
#include "redis.h"

#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "plog.h"

enum rds_state { RDS_DOWN, RDS_CONNECTING, RDS_READY };

/* Process-wide sums of every connection's counters, for /metrics (read on another thread). */
static struct {
    atomic_ullong commands, timeouts, noscript, errors, connects, failures;
    atomic_uint ready;
} totals;
#define COUNT(r, field)                                                                            \
    do {                                                                                           \
        (r)->stats.field++;                                                                        \
        atomic_fetch_add_explicit(&totals.field, 1, memory_order_relaxed);                         \
    } while (0)

void rds_totals(struct rds_stats *out, unsigned *ready_r)
{
    *out = (struct rds_stats){
        .commands = atomic_load_explicit(&totals.commands, memory_order_relaxed),
        .timeouts = atomic_load_explicit(&totals.timeouts, memory_order_relaxed),
        .noscript = atomic_load_explicit(&totals.noscript, memory_order_relaxed),
        .errors = atomic_load_explicit(&totals.errors, memory_order_relaxed),
        .connects = atomic_load_explicit(&totals.connects, memory_order_relaxed),
        .failures = atomic_load_explicit(&totals.failures, memory_order_relaxed),
    };
    *ready_r = atomic_load_explicit(&totals.ready, memory_order_relaxed);
}

struct rds {
    struct ev_loop *loop;
    redisAsyncContext *ac; /* owned by hiredis once connected; NULL when DOWN */
    enum rds_state state;
    struct rds_opts o;   /* strings below are owned copies */
    char *what;          /* "command" / "subscriber", for logs */
    ev_timer retry;      /* DOWN: next connect attempt */
    ev_timer connect_to; /* CONNECTING: deadline until READY */
    ev_prepare flush;    /* READY: writes the commands of this loop iteration */
    ev_timer lazy;       /* lazy commands buffered and nothing else to write: write them then */
    double backoff;
    bool setup_failed; /* an AUTH/SELECT/SUBSCRIBE reply was an error */
    bool logged_down;  /* the outage was logged once; further failures go to debug */
    bool freeing;      /* rds_free(): late callbacks are not delivered */
    const struct rds_script *scripts[RDS_MAX_SCRIPTS]; /* loaded at every connect */
    size_t nscripts;
    size_t npending;      /* requests sent and not yet returned by hiredis */
    ev_tstamp last_heard; /* last reply, or when npending left 0 */
    rds_state_cb *on_state;
    rds_message_cb *on_message;
    void *arg;
    struct rds_stats stats;
};

struct rds_req {
    struct rds *r;
    ev_timer timer;
    rds_reply_cb *cb; /* NULL once answered, timed out or cancelled */
    void *arg;
    const struct rds_script *script; /* EVALSHA: resent as EVAL on NOSCRIPT */
    bool retried;
    int argc;
    const char **argv; /* script calls: a copy, in the same allocation */
    size_t *lens;
};

static void connect_now(struct rds *r);

static char *dup_opt(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void schedule_reconnect(struct rds *r)
{
    /* Jitter so that the workers of many instances do not reconnect in lockstep. */
    double j = 0.8 + 0.4 * ((double)(rand() % 1000) / 1000.0);
    double d = r->backoff * j;
    r->backoff = r->backoff * 2 > r->o.backoff_max ? r->o.backoff_max : r->backoff * 2;
    ev_timer_stop(r->loop, &r->retry);
    ev_timer_set(&r->retry, d, 0.);
    ev_timer_start(r->loop, &r->retry);
}

/* End the current context (if any) and schedule a reconnect. Safe inside reply callbacks
 * (hiredis defers the free until the callback returns); never called from hiredis' connect
 * or disconnect callbacks, which must not free. */
static void drop(struct rds *r, const char *why, bool free_ctx)
{
    redisAsyncContext *ac = r->ac;
    bool was_ready = r->state == RDS_READY;
    char q[256];
    why = why ? why : "";
    r->ac = NULL;
    r->state = RDS_DOWN;
    if (was_ready)
        atomic_fetch_sub_explicit(&totals.ready, 1, memory_order_relaxed);
    ev_timer_stop(r->loop, &r->connect_to);
    ev_prepare_stop(r->loop, &r->flush);
    ev_timer_stop(r->loop, &r->lazy);
    COUNT(r, failures);
    if (!r->logged_down) {
        plog(PLOG_WARN, "event=redis_down conn=%s error=%s fail=%s", r->what,
             plog_q(q, sizeof q, why, strlen(why)), was_ready ? "lost" : "connect");
        r->logged_down = true;
    } else {
        plog(PLOG_DEBUG, "event=redis_retry_failed conn=%s error=%s", r->what,
             plog_q(q, sizeof q, why, strlen(why)));
    }
    if (ac && free_ctx)
        redisAsyncFree(ac); /* pending requests are answered NULL from here */
    if (was_ready && r->on_state)
        r->on_state(r->arg, false);
    schedule_reconnect(r);
}

static void on_connect(const redisAsyncContext *c, int status)
{
    struct rds *r = c->data;
    if (c != r->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        drop(r, c->errstr[0] ? c->errstr : "connect failed", false);
    }
}

static void on_disconnect(const redisAsyncContext *c, int status)
{
    (void)status;
    struct rds *r = c->data;
    if (c != r->ac)
        return; /* we ended it ourselves: drop() already ran */
    drop(r, c->errstr[0] ? c->errstr : "connection closed", false);
}

static void became_ready(struct rds *r)
{
    r->state = RDS_READY;
    atomic_fetch_add_explicit(&totals.ready, 1, memory_order_relaxed);
    r->backoff = r->o.backoff_min;
    ev_timer_stop(r->loop, &r->connect_to);
    COUNT(r, connects);
    plog(r->logged_down ? PLOG_INFO : PLOG_DEBUG, "event=redis_up conn=%s", r->what);
    r->logged_down = false;
    if (r->on_state)
        r->on_state(r->arg, true);
}

/* Replies to AUTH, SELECT, CLIENT SETNAME and the final PING. */
static void setup_cb(redisAsyncContext *c, void *reply, void *privdata)
{
    struct rds *r = privdata;
    redisReply *rep = reply;
    if (c != r->ac || !rep)
        return;
    r->last_heard = ev_now(r->loop);
    if (rep->type == REDIS_REPLY_ERROR) {
        if (!r->setup_failed) {
            /* The server's words only (e.g. "WRONGPASS invalid username-password pair"). */
            char q[160];
            plog(PLOG_ERROR, "event=redis_setup_failed conn=%s error=%s", r->what,
                 plog_q(q, sizeof q, rep->str, rep->len));
        }
        r->setup_failed = true;
        return;
    }
    if (rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0) {
        if (r->setup_failed)
            drop(r, "setup failed", true);
        else
            became_ready(r);
    }
}

/* Subscriber: the SUBSCRIBE confirmation and then every message. */
static void sub_cb(redisAsyncContext *c, void *reply, void *privdata)
{
    struct rds *r = privdata;
    redisReply *rep = reply;
    if (c != r->ac || !rep)
        return;
    r->last_heard = ev_now(r->loop);
    if (rep->type == REDIS_REPLY_ERROR) {
        char q[160];
        plog(PLOG_ERROR, "event=redis_setup_failed conn=%s error=%s", r->what,
             plog_q(q, sizeof q, rep->str, rep->len));
        drop(r, "subscribe failed", true);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rep->element[0]->str;
    if (strcmp(kind, "subscribe") == 0) {
        if (r->setup_failed)
            drop(r, "setup failed", true);
        else if (r->state != RDS_READY)
            became_ready(r);
    } else if (strcmp(kind, "message") == 0 && rep->element[2]->type == REDIS_REPLY_STRING &&
               r->on_message) {
        r->on_message(r->arg, rep->element[2]->str, rep->element[2]->len);
    }
}

static void connect_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct rds *r = t->data;
    if (r->state == RDS_CONNECTING)
        drop(r, "connect timeout", true);
}

/* Writes what hiredis holds for the connection (all of it, or what the socket takes). */
static void write_buffered(struct rds *r)
{
    if (r->ac && (r->ac->c.flags & REDIS_CONNECTED))
        redisAsyncHandleWrite(r->ac);
}

/* hiredis buffers a command and starts its write watcher; this writes the buffer before the
 * loop blocks. A write error ends the context through on_disconnect, as the watcher's would. */
static void flush_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)revents;
    struct rds *r = p->data;
    ev_prepare_stop(loop, p);
    ev_timer_stop(loop, &r->lazy); /* the lazy commands leave in this write too */
    write_buffered(r);
}

static void lazy_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    write_buffered(t->data);
}

/* After hiredis took a command: write it (with the others of this iteration) from flush_cb. */
static void flush_soon(struct rds *r)
{
    if (!ev_is_active(&r->flush))
        ev_prepare_start(r->loop, &r->flush);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    connect_now(t->data);
}

static void setup_cmd(struct rds *r, redisCallbackFn *fn, int argc, const char **argv)
{
    size_t lens[4];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisAsyncCommandArgv(r->ac, fn, r, argc, argv, lens);
}

static void connect_now(struct rds *r)
{
    redisAsyncContext *ac =
        r->o.socket ? redisAsyncConnectUnix(r->o.socket) : redisAsyncConnect(r->o.host, r->o.port);
    if (!ac) {
        drop(r, "out of memory", false);
        return;
    }
    if (ac->err) {
        char e[128];
        snprintf(e, sizeof e, "%s", ac->errstr);
        redisAsyncFree(ac);
        drop(r, e, false);
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->state = RDS_CONNECTING;
    r->setup_failed = false;
    redisLibevAttach(r->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Pipelined ahead of everything else (hiredis buffers them until the connect completes). */
    if (r->o.password) {
        if (r->o.username)
            setup_cmd(r, setup_cb, 3, (const char *[]){"AUTH", r->o.username, r->o.password});
        else
            setup_cmd(r, setup_cb, 2, (const char *[]){"AUTH", r->o.password});
    }
    if (r->o.db && !r->o.subscribe) {
        char db[16];
        snprintf(db, sizeof db, "%u", r->o.db);
        setup_cmd(r, setup_cb, 2, (const char *[]){"SELECT", db});
    }
    if (r->o.client_name)
        setup_cmd(r, setup_cb, 3, (const char *[]){"CLIENT", "SETNAME", r->o.client_name});
    /* Scripts are loaded before the connection counts as ready, so NOSCRIPT (and its EVAL
     * fallback) is left for a SCRIPT FLUSH at run time. */
    for (size_t i = 0; i < r->nscripts; i++)
        setup_cmd(r, setup_cb, 3, (const char *[]){"SCRIPT", "LOAD", r->scripts[i]->text});
    if (r->o.subscribe)
        setup_cmd(r, sub_cb, 2, (const char *[]){"SUBSCRIBE", r->o.subscribe});
    else
        setup_cmd(r, setup_cb, 1, (const char *[]){"PING"});
    ev_timer_set(&r->connect_to, r->o.connect_timeout, 0.);
    ev_timer_start(r->loop, &r->connect_to);
}

struct rds *rds_new(struct ev_loop *loop, const struct rds_opts *o, const char *what,
                    rds_state_cb *on_state, rds_message_cb *on_message, void *arg)
{
    struct rds *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->loop = loop;
    r->o = *o;
    r->o.host = dup_opt(o->host ? o->host : "127.0.0.1");
    r->o.socket = dup_opt(o->socket);
    r->o.username = dup_opt(o->username);
    r->o.password = dup_opt(o->password);
    r->o.client_name = dup_opt(o->client_name);
    r->o.subscribe = dup_opt(o->subscribe);
    r->what = strdup(what ? what : "redis");
    if (r->o.connect_timeout <= 0)
        r->o.connect_timeout = 1.0;
    if (r->o.command_timeout <= 0)
        r->o.command_timeout = 0.5;
    if (r->o.backoff_min <= 0)
        r->o.backoff_min = 0.1;
    if (r->o.backoff_max < r->o.backoff_min)
        r->o.backoff_max = r->o.backoff_min;
    if (!r->o.max_pending)
        r->o.max_pending = 10000;
    r->backoff = r->o.backoff_min;
    r->on_state = on_state;
    r->on_message = on_message;
    r->arg = arg;
    ev_init(&r->retry, retry_cb);
    r->retry.data = r;
    ev_init(&r->connect_to, connect_timeout_cb);
    r->connect_to.data = r;
    ev_prepare_init(&r->flush, flush_cb);
    r->flush.data = r;
    ev_init(&r->lazy, lazy_cb);
    r->lazy.data = r;
    /* The first attempt runs from the loop, like every later one. */
    ev_timer_set(&r->retry, 0., 0.);
    ev_timer_start(loop, &r->retry);
    return r;
}

static void free_opt(const char *s)
{
    free((char *)s);
}

void rds_free(struct rds **rp)
{
    struct rds *r = *rp;
    if (!r)
        return;
    *rp = NULL;
    ev_timer_stop(r->loop, &r->retry);
    ev_timer_stop(r->loop, &r->connect_to);
    /* Unregistrations still buffered are written now, as the last loop pass would have. */
    if (ev_is_active(&r->flush) || ev_is_active(&r->lazy))
        write_buffered(r);
    ev_prepare_stop(r->loop, &r->flush);
    ev_timer_stop(r->loop, &r->lazy);
    r->on_state = NULL;
    r->on_message = NULL;
    r->freeing = true;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (r->state == RDS_READY)
        atomic_fetch_sub_explicit(&totals.ready, 1, memory_order_relaxed);
    r->state = RDS_DOWN;
    if (ac)
        redisAsyncFree(ac); /* every pending request comes back through reply_cb now */
    free_opt(r->o.host);
    free_opt(r->o.socket);
    free_opt(r->o.username);
    if (r->o.password) {
        /* volatile: the wipe must not be optimised away */
        volatile char *p = (volatile char *)r->o.password;
        while (*p)
            *p++ = 0;
    }
    free_opt(r->o.password);
    free_opt(r->o.client_name);
    free_opt(r->o.subscribe);
    free(r->what);
    free(r);
}

bool rds_ready(const struct rds *r)
{
    return r && r->state == RDS_READY && r->ac;
}

size_t rds_pending(const struct rds *r)
{
    return r ? r->npending : 0;
}

const struct rds_stats *rds_stats(const struct rds *r)
{
    return &r->stats;
}

bool rds_preload(struct rds *r, const struct rds_script *s)
{
    if (!r || r->nscripts >= RDS_MAX_SCRIPTS)
        return false;
    r->scripts[r->nscripts++] = s;
    return true;
}

void rds_script_init(struct rds_script *s, const char *name, const char *text)
{
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)text, strlen(text), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    s->name = name;
    s->text = text;
}

/* "<kind><n>\r\n" at p; returns its length. */
static size_t resp_head(char *p, char kind, size_t n)
{
    size_t o = 0;
    p[o++] = kind;
    o += dec_put(p + o, DEC_MAX, n);
    p[o++] = '\r';
    p[o++] = '\n';
    return o;
}

static void reply_cb(redisAsyncContext *c, void *reply, void *privdata);

/* A request's command as RESP, handed to hiredis whole: its own formatter (an sdscatfmt per
 * argument) cost more instructions than the rest of a command's way through this file, and
 * three commands go out per login (issue 19). */
static int send_argv(redisAsyncContext *ac, struct rds_req *q)
{
    size_t total = 24;
    for (int i = 0; i < q->argc; i++)
        total += q->lens[i] + 24;
    char small[2048];
    char *p = total <= sizeof small ? small : malloc(total);
    if (!p)
        return REDIS_ERR;
    size_t o = resp_head(p, '*', (size_t)q->argc);
    for (int i = 0; i < q->argc; i++) {
        o += resp_head(p + o, '$', q->lens[i]);
        memcpy(p + o, q->argv[i], q->lens[i]);
        o += q->lens[i];
        p[o++] = '\r';
        p[o++] = '\n';
    }
    int rc = redisAsyncFormattedCommand(ac, reply_cb, q, p, o);
    if (p != small)
        free(p);
    return rc;
}

static void reply_cb(redisAsyncContext *c, void *reply, void *privdata)
{
    struct rds_req *q = privdata;
    struct rds *r = q->r;
    redisReply *rep = reply;
    if (rep)
        r->last_heard = ev_now(r->loop);
    if (rep && rep->type == REDIS_REPLY_ERROR && q->script && !q->retried && q->cb && c == r->ac &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): EVAL loads it again. */
        q->retried = true;
        COUNT(r, noscript);
        q->argv[0] = "EVAL";
        q->argv[1] = q->script->text;
        q->lens[0] = 4;
        q->lens[1] = strlen(q->script->text);
        if (send_argv(c, q) == REDIS_OK) {
            flush_soon(r);
            return;
        }
    }
    r->npending--;
    ev_timer_stop(r->loop, &q->timer);
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        COUNT(r, errors);
        char e[160];
        plog(PLOG_WARN, "event=redis_error script=%s error=%s", q->script ? q->script->name : "-",
             plog_q(e, sizeof e, rep->str, rep->len));
    }
    rds_reply_cb *cb = q->cb;
    q->cb = NULL;
    if (cb && !r->freeing)
        cb(q->arg, rep);
    free(q);
}

static void req_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct rds_req *q = t->data;
    struct rds *r = q->r;
    COUNT(r, timeouts);
    rds_reply_cb *cb = q->cb;
    q->cb = NULL;
    if (cb)
        cb(q->arg, NULL);
    /* Replies come in order: nothing heard for a whole timeout while commands wait means the
     * server or the path to it is stuck. A fresh connection is the only way out with 0.14. */
    if (r->state == RDS_READY && r->npending > 0 &&
        ev_now(loop) - r->last_heard >= r->o.command_timeout)
        drop(r, "command timeout", true);
}

static struct rds_req *send_req(struct rds *r, struct rds_req *q, rds_reply_cb *cb, void *arg,
                                bool lazy)
{
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    /* Set: a write is due anyway (the socket did not take everything), the command goes with it. */
    bool writing = ((redisLibevEvents *)r->ac->ev.data)->writing;
    if (send_argv(r->ac, q) != REDIS_OK) {
        free(q);
        return NULL;
    }
    if (!lazy) {
        flush_soon(r);
    } else if (!ev_is_active(&r->flush) && !writing) {
        /* hiredis started the write watcher for it: epoll must not see it before the delay. */
        r->ac->ev.delWrite(r->ac->ev.data);
        if (!ev_is_active(&r->lazy)) {
            ev_timer_set(&r->lazy, RDS_LAZY_DELAY, 0.);
            ev_timer_start(r->loop, &r->lazy);
        }
    }
    if (r->npending++ == 0)
        r->last_heard = ev_now(r->loop);
    COUNT(r, commands);
    ev_timer_init(&q->timer, req_timeout, r->o.command_timeout, 0.);
    q->timer.data = q;
    ev_timer_start(r->loop, &q->timer);
    return q;
}

struct rds_req *rds_call(struct rds *r, int argc, const char **argv, const size_t *lens,
                         rds_reply_cb *cb, void *arg)
{
    if (!rds_ready(r) || r->npending >= r->o.max_pending)
        return NULL;
    struct rds_req *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    /* hiredis copies the arguments into its output buffer at once: no copy needed here. */
    q->argc = argc;
    q->argv = argv;
    q->lens = (size_t *)lens;
    struct rds_req *sent = send_req(r, q, cb, arg, false);
    if (sent) {
        sent->argv = NULL;
        sent->lens = NULL;
    }
    return sent;
}

static struct rds_req *eval_req(struct rds *r, const struct rds_script *s, int nkeys, int argc,
                                const char **argv, const size_t *lens, rds_reply_cb *cb, void *arg,
                                bool lazy)
{
    if (!rds_ready(r) || r->npending >= r->o.max_pending)
        return NULL;
    /* One allocation: the request, argv, lens and a copy of every argument (kept for the
     * NOSCRIPT retry). */
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += lens[i];
    int n = argc + 3;
    size_t sz = sizeof(struct rds_req) + (size_t)n * (sizeof(char *) + sizeof(size_t)) + total + 16;
    struct rds_req *q = calloc(1, sz);
    if (!q)
        return NULL;
    q->argv = (const char **)(q + 1);
    q->lens = (size_t *)(q->argv + n);
    char *data = (char *)(q->lens + n);
    memcpy(data, "", 1);
    char *nk = data;
    int nkl = snprintf(nk, 12, "%d", nkeys);
    data += 12;
    q->argv[0] = "EVALSHA";
    q->lens[0] = 7;
    q->argv[1] = s->sha;
    q->lens[1] = 40;
    q->argv[2] = nk;
    q->lens[2] = (size_t)nkl;
    for (int i = 0; i < argc; i++) {
        memcpy(data, argv[i], lens[i]);
        q->argv[3 + i] = data;
        q->lens[3 + i] = lens[i];
        data += lens[i];
    }
    q->argc = n;
    q->script = s;
    return send_req(r, q, cb, arg, lazy);
}

struct rds_req *rds_eval(struct rds *r, const struct rds_script *s, int nkeys, int argc,
                         const char **argv, const size_t *lens, rds_reply_cb *cb, void *arg)
{
    return eval_req(r, s, nkeys, argc, argv, lens, cb, arg, false);
}

struct rds_req *rds_eval_lazy(struct rds *r, const struct rds_script *s, int nkeys, int argc,
                              const char **argv, const size_t *lens, rds_reply_cb *cb, void *arg)
{
    return eval_req(r, s, nkeys, argc, argv, lens, cb, arg, true);
}

void rds_cancel(struct rds_req **req)
{
    if (!req || !*req)
        return;
    struct rds_req *q = *req;
    *req = NULL;
    q->cb = NULL;
    ev_timer_stop(q->r->loop, &q->timer);
}
