/*
 * metrics — counters and their Prometheus text exposition (see metrics.h).
 */
#include "metrics.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "metrics_proc.h"
#include "redis.h"
#include "route_dyn.h"
#include "runtime.h"
#include "tls.h"

struct metrics metrics;

#define REASONS_MAX 64
#define REASON_LEN  48
static struct {
    char reason[REASON_LEN];
    atomic_ullong n;
} reasons[REASONS_MAX];
static atomic_uint nreasons;
static atomic_ullong reasons_other;
static pthread_mutex_t reasons_lock = PTHREAD_MUTEX_INITIALIZER;

#define COLLECTORS_MAX 16
static struct {
    metrics_collector *fn;
    void *arg;
} collectors[COLLECTORS_MAX];
static size_t ncollectors;
static pthread_mutex_t collectors_lock = PTHREAD_MUTEX_INITIALIZER;

void metrics_refusal(const char *reason)
{
    unsigned n = atomic_load(&nreasons);
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(reasons[i].reason, reason) == 0) {
            atomic_fetch_add(&reasons[i].n, 1);
            return;
        }
    }
    pthread_mutex_lock(&reasons_lock);
    n = atomic_load(&nreasons);
    unsigned i = 0;
    while (i < n && strcmp(reasons[i].reason, reason) != 0)
        i++;
    if (i == n && n < REASONS_MAX) {
        snprintf(reasons[n].reason, REASON_LEN, "%s", reason);
        atomic_store(&nreasons, n + 1); /* published after the slot is filled */
    }
    pthread_mutex_unlock(&reasons_lock);
    if (i < REASONS_MAX)
        atomic_fetch_add(&reasons[i].n, 1);
    else
        atomic_fetch_add(&reasons_other, 1);
}

unsigned long long metrics_refusal_count(const char *reason)
{
    unsigned n = atomic_load(&nreasons);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(reasons[i].reason, reason) == 0)
            return atomic_load(&reasons[i].n);
    return 0;
}

void metrics_register(metrics_collector *fn, void *arg)
{
    pthread_mutex_lock(&collectors_lock);
    if (ncollectors < COLLECTORS_MAX) {
        collectors[ncollectors].fn = fn;
        collectors[ncollectors].arg = arg;
        ncollectors++;
    }
    pthread_mutex_unlock(&collectors_lock);
}

const char *metrics_label(char *out, size_t cap, const char *v)
{
    size_t n = 0;
    for (; *v && n + 3 < cap; v++) {
        if (*v == '\\' || *v == '"' || *v == '\n') {
            out[n++] = '\\';
            out[n++] = *v == '\n' ? 'n' : *v;
        } else {
            out[n++] = *v;
        }
    }
    if (cap)
        out[n < cap ? n : cap - 1] = '\0';
    return out;
}

void metrics_hist_observe(struct metrics_hist *h, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    if (v > 0)
        atomic_fetch_add_explicit(&h->sum_micro, (unsigned long long)(v * 1e6 + 0.5),
                                  memory_order_relaxed);
}

/* The _bucket/_sum/_count lines from non-cumulative `bucket` counts; `labels` (may be "") go
 * before `le`. */
static void hist_lines(struct buf *o, const char *name, const char *labels, const double *bounds,
                       size_t nbounds, const unsigned long long *bucket,
                       unsigned long long sum_micro)
{
    const char *sep = labels[0] ? "," : "";
    unsigned long long cum = 0;
    for (size_t i = 0; i < nbounds; i++) {
        cum += bucket[i];
        buf_printf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bounds[i], cum);
    }
    cum += bucket[nbounds];
    /* +Inf equals _count; both are printed from the same sum so a scrape stays consistent. */
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    buf_printf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n%s_sum%s%s%s %.6f\n%s_count%s%s%s %llu\n", name,
               labels, sep, cum, name, open, labels, close, (double)sum_micro / 1e6, name, open,
               labels, close, cum);
}

void metrics_hist_render(struct buf *o, const char *name, const char *help, struct metrics_hist *h)
{
    buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long b[METRICS_HIST_MAX + 1];
    for (size_t i = 0; i <= h->nbounds; i++)
        b[i] = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
    hist_lines(o, name, "", h->bounds, h->nbounds, b,
               atomic_load_explicit(&h->sum_micro, memory_order_relaxed));
}

void metrics_whist_observe(struct metrics_whist *h, int worker, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    struct metrics_whist_shard *sh = &h->shard[(unsigned)worker % METRICS_WORKERS];
    /* One writer per shard: load + store, not a read-modify-write (see metrics.h). */
    atomic_store_explicit(&sh->bucket[i],
                          atomic_load_explicit(&sh->bucket[i], memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (v > 0)
        atomic_store_explicit(&sh->sum_micro,
                              atomic_load_explicit(&sh->sum_micro, memory_order_relaxed) +
                                  (unsigned long long)(v * 1e6 + 0.5),
                              memory_order_relaxed);
}

void metrics_whist_render(struct buf *o, const char *name, const char *labels,
                          struct metrics_whist *h)
{
    unsigned long long b[METRICS_HIST_MAX + 1] = {0}, sum = 0;
    for (size_t w = 0; w < METRICS_WORKERS; w++) {
        for (size_t i = 0; i <= h->nbounds; i++)
            b[i] += atomic_load_explicit(&h->shard[w].bucket[i], memory_order_relaxed);
        sum += atomic_load_explicit(&h->shard[w].sum_micro, memory_order_relaxed);
    }
    hist_lines(o, name, labels, h->bounds, h->nbounds, b, sum);
}

/* Login: a Redis check plus a backend connect and login, milliseconds on a LAN; the top buckets
 * catch backend_login_timeout-sized waits. Session: from a probe's instant close to an IDLE
 * client that stays for a day. */
static const double login_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1,     2.5,  5,     10,   30,  60};
static const double session_bounds[] = {0.1, 1, 10, 60, 300, 900, 1800, 3600, 14400, 86400};
static struct metrics_whist login_secs[2] = {
    {.bounds = login_bounds, .nbounds = sizeof login_bounds / sizeof *login_bounds},
    {.bounds = login_bounds, .nbounds = sizeof login_bounds / sizeof *login_bounds}};
static struct metrics_whist session_secs[2] = {
    {.bounds = session_bounds, .nbounds = sizeof session_bounds / sizeof *session_bounds},
    {.bounds = session_bounds, .nbounds = sizeof session_bounds / sizeof *session_bounds}};

void metrics_observe_login(int worker, int proto, double secs)
{
    metrics_whist_observe(&login_secs[proto == CFG_PROTO_POP3], worker, secs);
}

void metrics_observe_session(int worker, int proto, double secs)
{
    metrics_whist_observe(&session_secs[proto == CFG_PROTO_POP3], worker, secs);
}

static const char *proto_name(int p)
{
    return p == CFG_PROTO_POP3 ? "pop3" : "imap";
}

/* One sample of a backend family for a dynamic backend (route_dyn.h). */
enum dyn_family { DYN_UP, DYN_ACTIVE, DYN_FAILURES };
struct dyn_emit {
    struct buf *o;
    enum dyn_family family;
};

static void dyn_line(void *arg, const struct route_dyn *d)
{
    const struct dyn_emit *e = arg;
    const struct backend_state *st = &d->st;
    switch (e->family) {
    case DYN_UP:
        buf_printf(e->o, "portcullis_backend_up{backend=\"%s\"} %d\n", d->name,
                   atomic_load(&st->up) ? 1 : 0);
        break;
    case DYN_ACTIVE:
        buf_printf(e->o, "portcullis_backend_sessions_active{backend=\"%s\"} %u\n", d->name,
                   atomic_load(&st->active));
        break;
    case DYN_FAILURES:
        buf_printf(e->o, "portcullis_backend_connect_failures_total{backend=\"%s\"} %llu\n",
                   d->name, (unsigned long long)atomic_load(&st->connect_failures));
        break;
    }
}

static void header(struct buf *o, const char *name, const char *type, const char *help)
{
    buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A histogram family with one series per protocol (h[CFG_PROTO_*]). */
static void proto_hist(struct buf *o, const char *name, const char *help, struct metrics_whist *h)
{
    header(o, name, "histogram", help);
    for (int p = 0; p < 2; p++) {
        char l[32];
        snprintf(l, sizeof l, "protocol=\"%s\"", proto_name(p));
        metrics_whist_render(o, name, l, &h[p]);
    }
}

/* Served certificates, as loaded by the published runtime (tls.c reads them at load/reload). */
static void certificates(struct buf *o, const struct rt *rt)
{
    const struct tls_cert_info *ci;
    size_t n = tls_server_certs(rt->tls, &ci);
    if (!n)
        return;
    header(o, "portcullis_tls_certificate_expiry_timestamp_seconds", "gauge",
           "When the served certificate (or an intermediate in its file) expires, as loaded.");
    for (size_t i = 0; i < n; i++) {
        char f[512], sj[512];
        buf_printf(o,
                   "portcullis_tls_certificate_expiry_timestamp_seconds{file=\"%s\","
                   "subject=\"%s\"} %lld\n",
                   metrics_label(f, sizeof f, ci[i].file),
                   metrics_label(sj, sizeof sj, ci[i].subject), (long long)ci[i].not_after);
    }
}

void metrics_render(const struct config *cfg, struct buf *o)
{
    size_t nl = cfg->nlisteners < METRICS_LISTENERS ? cfg->nlisteners : METRICS_LISTENERS;
    header(o, "portcullis_connections_accepted_total", "counter", "Client connections accepted.");
    for (size_t i = 0; i < nl; i++)
        buf_printf(o,
                   "portcullis_connections_accepted_total{listener=\"%s\",protocol=\"%s\"} %llu\n",
                   cfg->listeners[i].name, proto_name(cfg->listeners[i].protocol),
                   (unsigned long long)atomic_load(&metrics.listener[i].accepted));
    header(o, "portcullis_connections_active", "gauge", "Client connections open now.");
    for (size_t i = 0; i < nl; i++)
        buf_printf(o, "portcullis_connections_active{listener=\"%s\",protocol=\"%s\"} %lld\n",
                   cfg->listeners[i].name, proto_name(cfg->listeners[i].protocol),
                   (long long)atomic_load(&metrics.listener[i].active));
    header(o, "portcullis_tls_handshake_failures_total", "counter",
           "Client TLS handshakes that failed.");
    for (size_t i = 0; i < nl; i++)
        buf_printf(o, "portcullis_tls_handshake_failures_total{listener=\"%s\"} %llu\n",
                   cfg->listeners[i].name,
                   (unsigned long long)atomic_load(&metrics.listener[i].tls_failures));
    static const char *results[ML__COUNT] = {"ok", "auth_failed", "unavailable", "refused"};
    header(o, "portcullis_logins_total", "counter", "Login attempts by result.");
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < ML__COUNT; r++)
            buf_printf(o, "portcullis_logins_total{protocol=\"%s\",result=\"%s\"} %llu\n",
                       proto_name(p), results[r],
                       (unsigned long long)atomic_load(&metrics.logins[p][r]));
    header(o, "portcullis_refusals_total", "counter",
           "Commands and connections refused by the proxy, by reason.");
    unsigned n = atomic_load(&nreasons);
    for (unsigned i = 0; i < n; i++)
        buf_printf(o, "portcullis_refusals_total{reason=\"%s\"} %llu\n", reasons[i].reason,
                   (unsigned long long)atomic_load(&reasons[i].n));
    buf_printf(o, "portcullis_refusals_total{reason=\"other\"} %llu\n",
               (unsigned long long)atomic_load(&reasons_other));
    header(o, "portcullis_relayed_bytes_total", "counter",
           "Bytes relayed after login, by protocol and direction.");
    for (int p = 0; p < 2; p++) {
        buf_printf(o,
                   "portcullis_relayed_bytes_total{protocol=\"%s\",direction=\"to_client\"} %llu\n",
                   proto_name(p), (unsigned long long)atomic_load(&metrics.bytes_to_client[p]));
        buf_printf(
            o, "portcullis_relayed_bytes_total{protocol=\"%s\",direction=\"to_backend\"} %llu\n",
            proto_name(p), (unsigned long long)atomic_load(&metrics.bytes_to_backend[p]));
    }
    header(o, "portcullis_log_dropped_total", "counter",
           "Log lines dropped because the log writer's queue was full.");
    buf_printf(o, "portcullis_log_dropped_total %llu\n", log_dropped_total());
    header(o, "portcullis_sessions_closed_total", "counter", "Client sessions ended.");
    for (int p = 0; p < 2; p++)
        buf_printf(o, "portcullis_sessions_closed_total{protocol=\"%s\"} %llu\n", proto_name(p),
                   (unsigned long long)atomic_load(&metrics.sessions_closed[p]));
    proto_hist(o, "portcullis_session_duration_seconds",
               "Client sessions ended, by how long they lasted (accept to close).", session_secs);
    proto_hist(o, "portcullis_login_duration_seconds",
               "Logins answered (logged in, refused by the backend, or backend unavailable), by "
               "the time from the client's command to the answer.",
               login_secs);
    header(o, "portcullis_starttls_injections_total", "counter",
           "STARTTLS/STLS commands with pipelined plaintext behind them (discarded).");
    buf_printf(o, "portcullis_starttls_injections_total %llu\n",
               (unsigned long long)atomic_load(&metrics.starttls_injections));
    header(o, "portcullis_pop3_dele_withheld_total", "counter",
           "POP3 DELE of a message the scanner blocked, kept on the server (not passed on).");
    buf_printf(o, "portcullis_pop3_dele_withheld_total %llu\n",
               (unsigned long long)atomic_load(&metrics.pop3_dele_withheld));

    static const char *decisions[MP__COUNT] = {"allow", "locked", "rate", "sessions",
                                               "unavailable"};
    header(o, "portcullis_policy_decisions_total", "counter",
           "Login policy decisions, by decision and the scope that decided.");
    for (int d = 0; d < MP__COUNT; d++)
        for (int sc = 0; sc < 2; sc++)
            buf_printf(o, "portcullis_policy_decisions_total{decision=\"%s\",scope=\"%s\"} %llu\n",
                       decisions[d], sc ? "address" : "user",
                       (unsigned long long)atomic_load(&metrics.policy[d][sc]));
    header(o, "portcullis_policy_degraded_total", "counter",
           "Policy decisions taken from local limits because Redis was unavailable.");
    buf_printf(o, "portcullis_policy_degraded_total %llu\n",
               (unsigned long long)atomic_load(&metrics.policy_degraded));
    struct rds_stats rs;
    unsigned ready;
    rds_totals(&rs, &ready);
    header(o, "portcullis_redis_connections_ready", "gauge",
           "Redis connections (command and subscriber, every worker) ready now.");
    buf_printf(o, "portcullis_redis_connections_ready %u\n", ready);
    header(o, "portcullis_redis_commands_total", "counter", "Commands sent to Redis.");
    buf_printf(o, "portcullis_redis_commands_total %llu\n", (unsigned long long)rs.commands);
    header(o, "portcullis_redis_errors_total", "counter",
           "Redis failures: error replies, command timeouts, lost or failed connections, "
           "script cache misses (NOSCRIPT, answered by reloading the script).");
    buf_printf(o,
               "portcullis_redis_errors_total{kind=\"reply\"} %llu\n"
               "portcullis_redis_errors_total{kind=\"timeout\"} %llu\n"
               "portcullis_redis_errors_total{kind=\"connection\"} %llu\n"
               "portcullis_redis_errors_total{kind=\"noscript\"} %llu\n",
               (unsigned long long)rs.errors, (unsigned long long)rs.timeouts,
               (unsigned long long)rs.failures, (unsigned long long)rs.noscript);
    header(o, "portcullis_redis_connects_total", "counter",
           "Redis connections established (first connect and reconnects).");
    buf_printf(o, "portcullis_redis_connects_total %llu\n", (unsigned long long)rs.connects);

    /* Backends: health and sessions, from the process-wide table via the published runtime,
     * then the dynamic backends routing lookups named (issue 17) in each family. */
    struct rt *rt = rt_current();
    if (rt) {
        header(o, "portcullis_backend_up", "gauge", "1 when the backend takes new sessions.");
        for (size_t i = 0; i < rt->cfg->nbackends; i++)
            buf_printf(o, "portcullis_backend_up{backend=\"%s\"} %d\n", rt->cfg->backends[i].name,
                       atomic_load(&rt->be_state[i]->up) && !rt->cfg->backends[i].drain &&
                           !atomic_load(&rt->be_state[i]->admin_drain));
        route_dyn_foreach(dyn_line, &(struct dyn_emit){o, DYN_UP});
        header(o, "portcullis_backend_sessions_active", "gauge",
               "Relayed sessions open now on the backend.");
        for (size_t i = 0; i < rt->cfg->nbackends; i++)
            buf_printf(o, "portcullis_backend_sessions_active{backend=\"%s\"} %u\n",
                       rt->cfg->backends[i].name, atomic_load(&rt->be_state[i]->active));
        route_dyn_foreach(dyn_line, &(struct dyn_emit){o, DYN_ACTIVE});
        header(o, "portcullis_backend_connect_failures_total", "counter",
               "Failed session connects to the backend.");
        for (size_t i = 0; i < rt->cfg->nbackends; i++)
            buf_printf(o, "portcullis_backend_connect_failures_total{backend=\"%s\"} %llu\n",
                       rt->cfg->backends[i].name,
                       (unsigned long long)atomic_load(&rt->be_state[i]->connect_failures));
        route_dyn_foreach(dyn_line, &(struct dyn_emit){o, DYN_FAILURES});
        certificates(o, rt);
        rt_unref(&rt);
    }
    metrics_proc_render(o);
    pthread_mutex_lock(&collectors_lock);
    for (size_t i = 0; i < ncollectors; i++)
        collectors[i].fn(o, collectors[i].arg);
    pthread_mutex_unlock(&collectors_lock);
}
