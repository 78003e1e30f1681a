/*
 * scan_rcache — verdicts in Redis (see scan_rcache.h).
 *
 * Key: `<prefix>vc:{<sha256 hex>}:<engine version>`, so a signature update (new engine string)
 * misses every old entry and they expire with their TTL. Value: a short text line, parsed
 * strictly on the way back: anything odd is a miss and the message is scanned, never trusted.
 * A Redis that is down or slow is a miss too (policy_kv_* never wait).
 */
#include "scan_rcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "worker.h"

size_t scan_rcache_encode(const struct msgscan_cached *v, char *out, size_t cap)
{
    int n;
    if (v->verdict == MSGSCAN_CLEAN)
        n = snprintf(out, cap, "v1 C %lld - -", (long long)v->date);
    else if (v->verdict == MSGSCAN_INFECTED)
        n = snprintf(out, cap, "v1 I %lld %s %s", (long long)v->date, v->ref[0] ? v->ref : "-",
                     v->signature[0] ? v->signature : "-");
    else
        return 0;
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* The next space-separated field of [*p, end) into out (at most cap-1 bytes). */
static bool field(const char **p, const char *end, char *out, size_t cap)
{
    const char *s = *p, *e = memchr(s, ' ', (size_t)(end - s));
    if (!e)
        e = end;
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= cap)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    *p = e < end ? e + 1 : e;
    return true;
}

bool scan_rcache_decode(const char *val, size_t len, struct msgscan_cached *v)
{
    const char *p = val, *end = val + len;
    char tag[4], kind[2], date[24];
    *v = (struct msgscan_cached){0};
    if (!field(&p, end, tag, sizeof tag) || strcmp(tag, "v1") != 0 ||
        !field(&p, end, kind, sizeof kind) || !field(&p, end, date, sizeof date) ||
        !field(&p, end, v->ref, sizeof v->ref))
        return false;
    /* The signature is the rest of the line (names may hold spaces): printable ASCII only. */
    size_t n = (size_t)(end - p);
    if (n == 0 || n >= sizeof v->signature)
        return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return false;
    memcpy(v->signature, p, n);
    v->signature[n] = '\0';
    char *e;
    long long d = strtoll(date, &e, 10);
    if (*e || d < 0)
        return false;
    v->date = (time_t)d;
    for (const char *r = v->ref; *r; r++)
        if (!((*r >= '0' && *r <= '9') || (*r >= 'a' && *r <= 'f') || *r == '-'))
            return false;
    if (strcmp(kind, "C") == 0) {
        v->verdict = MSGSCAN_CLEAN;
        v->ref[0] = v->signature[0] = '\0';
    } else if (strcmp(kind, "I") == 0 && strcmp(v->ref, "-") != 0) {
        v->verdict = MSGSCAN_INFECTED;
    } else {
        return false;
    }
    return true;
}

static void key_parts(const struct msgscan_cache_key *k, char hex[2 * SHA256_LEN + 1], char *suffix,
                      size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < SHA256_LEN; i++) {
        hex[2 * i] = digits[k->sha256[i] >> 4];
        hex[2 * i + 1] = digits[k->sha256[i] & 15];
    }
    hex[2 * SHA256_LEN] = '\0';
    snprintf(suffix, cap, ":%s", k->engine ? k->engine : "");
}

struct rc_get {
    struct policy_kv_req *q;
    msgscan_cache_got_fn *cb;
    void *arg;
};

static void on_got(void *arg, const char *val, size_t len)
{
    struct rc_get *g = arg;
    g->q = NULL;
    msgscan_cache_got_fn *cb = g->cb;
    void *cbarg = g->arg;
    free(g);
    struct msgscan_cached v;
    cb(cbarg, val && scan_rcache_decode(val, len, &v) ? &v : NULL);
}

static void *rc_get(void *ctx, const struct msgscan_cache_key *k, msgscan_cache_got_fn *cb,
                    void *arg)
{
    struct worker *w = ctx;
    struct rc_get *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->cb = cb;
    g->arg = arg;
    char hex[2 * SHA256_LEN + 1], suffix[200];
    key_parts(k, hex, suffix, sizeof suffix);
    g->q = policy_kv_get(w->policy, "vc", hex, suffix, on_got, g);
    if (!g->q) {
        free(g);
        return NULL;
    }
    return g;
}

static void rc_cancel(void *ctx, void *handle)
{
    (void)ctx;
    struct rc_get *g = handle;
    policy_kv_cancel(&g->q);
    free(g);
}

static void rc_put(void *ctx, const struct msgscan_cache_key *k, const struct msgscan_cached *v,
                   uint64_t ttl_ms)
{
    struct worker *w = ctx;
    char val[32 + SCAN_REF_MAX + SCAN_SIGNATURE_MAX];
    size_t n = scan_rcache_encode(v, val, sizeof val);
    if (!n)
        return;
    char hex[2 * SHA256_LEN + 1], suffix[200];
    key_parts(k, hex, suffix, sizeof suffix);
    policy_kv_set(w->policy, "vc", hex, suffix, val, n, ttl_ms);
}

static const struct msgscan_cache_ops ops = {.get = rc_get, .cancel = rc_cancel, .put = rc_put};

void scan_rcache_attach(struct worker *w)
{
    if (w->scan && w->policy && policy_redis_configured(w->policy))
        msgscan_set_remote_cache(w, &ops, w);
}
