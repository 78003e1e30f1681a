/*
 * health — active backend checks on the main loop (see health.h).
 */
#include "health.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "buf.h"
#include "conn.h"
#include "log.h"
#include "runtime.h"

struct check {
    struct conn c;
    struct buf in;
    ev_timer timeout;
    struct rt *rt; /* reference for the check's life */
    size_t idx;    /* in rt->cfg->backends */
    bool busy;
};

static struct ev_loop *hloop;
static ev_timer round_timer;
static struct check *checks; /* one slot per backend of the current round's config */
static size_t nchecks;
static struct rt *checks_rt;

static void finish(struct check *k, bool ok, const char *why)
{
    struct backend_state *st = k->rt->be_state[k->idx];
    const struct config *cfg = k->rt->cfg;
    ev_timer_stop(hloop, &k->timeout);
    conn_close(&k->c);
    buf_free(&k->in);
    k->busy = false;
    if (ok) {
        atomic_store(&st->fails, 0);
        if (!atomic_load(&st->up)) {
            unsigned oks = atomic_fetch_add(&st->oks, 1) + 1;
            if (oks >= cfg->health.rise) {
                atomic_store(&st->oks, 0);
                atomic_store(&st->up, true);
                log_write(LOG_INFO, "event=backend_up backend=%s checks=%u", st->name, oks);
            }
        }
    } else {
        atomic_store(&st->oks, 0);
        unsigned f = atomic_fetch_add(&st->fails, 1) + 1;
        log_write(LOG_DEBUG, "event=health_check_failed backend=%s error=%s count=%u", st->name,
                  LOG_QS(why), f);
        if (f >= cfg->health.fall && atomic_exchange(&st->up, false))
            log_write(LOG_WARN, "event=backend_down backend=%s reason=%s count=%u", st->name,
                      LOG_QS(why), f);
    }
    rt_unref(&k->rt);
}

static void on_conn(struct conn *c, int events)
{
    struct check *k = c->owner;
    const struct cfg_backend *b = &k->rt->cfg->backends[k->idx];
    if (events & CONN_EV_CONNECT) {
        if (c->error) {
            finish(k, false, c->err ? c->err : "connect failed");
            return;
        }
        if (b->tls == CFG_TLS_IMPLICIT) {
            SSL_CTX *ctx = k->rt->backend_ctx[k->idx];
            SSL *ssl = ctx ? tls_client_ssl(ctx, b) : NULL;
            if (!ssl) {
                finish(k, false, "cannot set up TLS");
                return;
            }
            conn_start_tls(c, ssl, false);
            return;
        }
        c->reading = true;
        conn_update(c);
        return;
    }
    if (events & CONN_EV_HANDSHAKE) {
        if (c->error) {
            finish(k, false, c->err ? c->err : "TLS handshake failed");
            return;
        }
        c->reading = true;
        conn_update(c);
        return;
    }
    if (buf_len(&k->in) >= 3 || c->eof || c->error) {
        const char *p = buf_rptr(&k->in);
        size_t n = buf_len(&k->in);
        bool ok = b->protocol == CFG_PROTO_POP3 ? (n >= 3 && memcmp(p, "+OK", 3) == 0)
                                                : (n >= 4 && memcmp(p, "* OK", 4) == 0);
        if (ok || n >= 4 || c->eof || c->error)
            finish(k, ok, ok ? NULL : c->error ? (c->err ? c->err : "error") : "bad greeting");
    }
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    finish(t->data, false, "timeout");
}

static void start_check(struct check *k, struct rt *rt, size_t idx)
{
    const struct cfg_backend *b = &rt->cfg->backends[idx];
    int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    k->rt = rt_ref(rt);
    k->idx = idx;
    k->busy = true;
    buf_init(&k->in, 512);
    conn_init(&k->c, hloop, fd, on_conn, k, 256);
    k->c.rbuf = &k->in;
    ev_timer_init(&k->timeout, on_timeout, (double)rt->cfg->health.timeout_ms / 1000.0, 0.);
    k->timeout.data = k;
    ev_timer_start(hloop, &k->timeout);
    if (!conn_connect(&k->c, (const struct sockaddr *)&b->addr, b->addrlen))
        finish(k, false, k->c.err ? k->c.err : "connect failed");
}

static void stop_all(void)
{
    for (size_t i = 0; i < nchecks; i++)
        if (checks[i].busy)
            finish(&checks[i], false, "stopped");
    free(checks);
    checks = NULL;
    nchecks = 0;
    rt_unref(&checks_rt);
}

static void on_round(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct rt *rt = rt_current();
    if (!rt)
        return;
    const struct config *cfg = rt->cfg;
    if (rt != checks_rt) {
        /* A reload: checks in flight belong to the old runtime; let them end there. */
        stop_all();
        checks = calloc(cfg->nbackends ? cfg->nbackends : 1, sizeof *checks);
        nchecks = checks ? cfg->nbackends : 0;
        checks_rt = rt_ref(rt);
    }
    if (cfg->health.enabled) {
        for (size_t i = 0; i < nchecks; i++)
            if (!checks[i].busy)
                start_check(&checks[i], rt, i);
    }
    t->repeat = (double)cfg->health.interval_ms / 1000.0;
    ev_timer_again(hloop, t);
    rt_unref(&rt);
}

void health_start(struct ev_loop *loop)
{
    hloop = loop;
    ev_init(&round_timer, on_round);
    round_timer.repeat = 0.05; /* the first round right after start */
    ev_timer_again(loop, &round_timer);
}

void health_stop(void)
{
    if (!hloop)
        return;
    ev_timer_stop(hloop, &round_timer);
    stop_all();
}
