/*
 * route — where a user's sessions should go, as Redis knows it (design.md "Backends"):
 *   1. `P route:{U}`  an administrator's override (portcullis-ctl route), no TTL: wins;
 *   2. active affinity: the backend of any of the user's live sessions, on any instance (the
 *      registry `P sess:{U}:<sid>` hashes of the members of `P conn:{U}` heart-beaten within
 *      session_ttl) — Dovecot director's guarantee: while a user has sessions, every instance
 *      sends them to the same server, whatever happens to the pool;
 *   3. `P aff:{U}` the backend of the user's last session, kept `affinity_ttl` after it ended.
 * Looked up by the login script itself (ratelimit.c rl_lua_login), in the same round trip as the
 * check; the recent affinity is written by the close script (sessions.c). This file keeps the
 * administrative drain set.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

/* ---- administrative drain: the set `P drained` (portcullis-ctl drain/undrain) ---------------- */

static policy_drained_cb *drained_cb;

void policy_set_drained_handler(policy_drained_cb *cb)
{
    drained_cb = cb;
}

static void on_drained(void *arg, const redisReply *rep)
{
    (void)arg;
    if (!drained_cb || !rep || rep->type != REDIS_REPLY_ARRAY)
        return; /* no answer: keep what we knew */
    const char *names[64];
    size_t n = 0;
    for (size_t i = 0; i < rep->elements && n < 64; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            names[n++] = rep->element[i]->str;
    drained_cb(names, n);
}

static void drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct policy *p = t->data;
    if (!p->cmd || !rds_ready(p->cmd) || !drained_cb)
        return;
    char key[96];
    snprintf(key, sizeof key, "%sdrained", p->prefix);
    const char *argv[] = {"SMEMBERS", key};
    size_t lens[] = {8, strlen(key)};
    rds_call(p->cmd, 2, argv, lens, on_drained, p);
}

void pol_route_start(struct policy *p)
{
    if (!p->cmd)
        return;
    double every = p->conf.drain_poll_ms ? (double)p->conf.drain_poll_ms / 1000.0 : 5.0;
    ev_timer_init(&p->drain_poll, drain_poll, 0.2, every);
    p->drain_poll.data = p;
    ev_timer_start(p->loop, &p->drain_poll);
}

void pol_route_stop(struct policy *p)
{
    if (p->cmd)
        ev_timer_stop(p->loop, &p->drain_poll);
}
