/*
 * kv — plain string values under the key prefix, for callers that only need GET and SET with a
 * time to live (the shared verdict cache of proxy/scan_rcache.c). Same connection, same
 * non-blocking rules as everything else in policy/: no Redis, not ready or too many pending means
 * "no answer now", never a wait.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

struct policy_kv_req {
    struct rds_req *r;
    policy_kv_cb *cb;
    void *arg;
};

static void on_get(void *arg, const redisReply *rep)
{
    struct policy_kv_req *q = arg;
    q->r = NULL;
    policy_kv_cb *cb = q->cb;
    void *cbarg = q->arg;
    free(q);
    if (rep && rep->type == REDIS_REPLY_STRING)
        cb(cbarg, rep->str, rep->len);
    else
        cb(cbarg, NULL, 0); /* nil, error, timeout, connection lost: a miss */
}

struct policy_kv_req *policy_kv_get(struct policy *p, const char *kind, const char *tag,
                                    const char *suffix, policy_kv_cb *cb, void *arg)
{
    char k[POLICY_KV_KEY_MAX];
    if (!p || !p->cmd || !rds_ready(p->cmd) || !pol_key(p, k, sizeof k, kind, tag, suffix))
        return NULL;
    struct policy_kv_req *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->cb = cb;
    q->arg = arg;
    const char *argv[] = {"GET", k};
    size_t lens[] = {3, strlen(k)};
    q->r = rds_call(p->cmd, 2, argv, lens, on_get, q);
    if (!q->r) {
        free(q);
        return NULL;
    }
    return q;
}

void policy_kv_cancel(struct policy_kv_req **qp)
{
    if (!qp || !*qp)
        return;
    struct policy_kv_req *q = *qp;
    *qp = NULL;
    rds_cancel(&q->r);
    free(q);
}

void policy_kv_set(struct policy *p, const char *kind, const char *tag, const char *suffix,
                   const char *val, size_t len, uint64_t ttl_ms)
{
    char k[POLICY_KV_KEY_MAX], ttl[24];
    if (!p || !p->cmd || !rds_ready(p->cmd) || !ttl_ms ||
        !pol_key(p, k, sizeof k, kind, tag, suffix))
        return;
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)ttl_ms);
    const char *argv[] = {"SET", k, val, "PX", ttl};
    size_t lens[] = {3, strlen(k), len, 2, strlen(ttl)};
    rds_call(p->cmd, 5, argv, lens, NULL, NULL); /* fire and forget */
}
