/*
 * msgscan — see msgscan.h.
 *
 * A request walks hash → cache → scan → decide. Each step that leaves the loop (a pool job, a
 * slot wait, a remote cache lookup, the deferred delivery of a cache hit) is one handle in the
 * request, so msgscan_cancel() can stop whichever is pending; at most one is pending at a time.
 * The message buffer is always owned by exactly one party: the request, or the pool job running
 * with it (scan_job_take_buffer() brings it back), so the budget that covers it is released
 * exactly once, by whoever frees it.
 *
 * A notice is scanned too before it is delivered (issue 15: a notice shows decoded text of the
 * original's header): finish() builds it, submits notice_scan_buffer() as a pool job like any
 * scan (never on the loop), and a notice that is not clean is replaced by the minimal notice.
 * Only then is the verdict logged and delivered. Notices built synchronously
 * (msgscan_oversize/msgscan_unjudged) cannot wait for a scan: they show nothing of the
 * original's text (NOTICE_DESCRIBE).
 *
 * The per-worker verdict cache is an LRU of MSGSCAN_CACHE_MAX entries with a TTL
 * (scan.verdict_cache_ttl), touched only by its loop: no locks. Failing closed (issue 16): a
 * verdict produced while the scanner is broken (its canary not detected) is an error and never
 * cached; a clean verdict is cached only when the scanner's health epoch did not move during
 * its scan; a cached clean verdict (local or Redis) is ignored while the scanner is broken and
 * when it is dated inside a suspect window (scanner.h), so verdicts a silently failing engine
 * gave before the canary caught it are judged again. Process-wide state (scanner,
 * pool, counters) is created before the workers start and freed after they stopped.
 */
#include "msgscan.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "msgscan_metrics.h"
#include "notice.h"
#include "session.h"
#include "worker.h"

#define CACHE_BUCKETS  8192 /* power of two, 2x MSGSCAN_CACHE_MAX */
#define SUBMIT_RETRIES 1000 /* slot waits that find room but still cannot submit (no memory) */

/* ---- process-wide state ---- */

static struct scanner *g_scanner;
static struct pool *g_pool;
static struct ev_loop *g_main_loop;
static ev_async g_reload_async;
static pthread_mutex_t g_reload_mu = PTHREAD_MUTEX_INITIALIZER;
static bool g_reload_ok;
static char g_reload_err[256];
static msgscan_reloaded_fn *g_reload_notify; /* main loop: who asked for the running reload */
/* issue 16: the engine limits in effect are the last engine's that loaded; a reload that
 * fails keeps the old engine with its old limits while the published configuration names the
 * new ones. Main thread only: `g_limits` in effect, `g_limits_asked` by the running reload. */
struct engine_limits {
    size_t max_scan_size, max_file_size;
    unsigned max_recursion, max_files;
    uint64_t scan_timeout_ms;
};
static struct engine_limits g_limits, g_limits_asked;
static bool g_limits_asked_set;

static struct {
    atomic_ullong judged, scanned, cache_hits, remote_hits;
    atomic_ullong clean, infected, oversize, error, limit;
    atomic_ullong delivered, replaced, quarantined, quarantine_failed;
    atomic_ullong scanned_bytes, scan_us, reloads, reload_failures;
    atomic_ullong notice_scans, notice_minimal;
} ctr;

/* ---- per-worker state ---- */

struct ms_entry {
    struct ms_entry *hnext;       /* bucket chain */
    struct ms_entry *prev, *next; /* LRU: head = most recent */
    unsigned char sha[SHA256_LEN];
    uint32_t ehash;
    char engine[SCAN_VERSION_MAX];
    struct msgscan_cached v;
    ev_tstamp expires;
};

struct msgscan_worker {
    struct ev_loop *loop;
    struct pool_client *pc; /* owned */
    struct ms_entry *buckets[CACHE_BUCKETS];
    struct ms_entry *lru_head, *lru_tail;
    unsigned nentries;
    const struct msgscan_cache_ops *remote; /* not owned */
    void *remote_ctx;
};

enum req_step { RS_NONE, RS_JOB, RS_SLOT, RS_REMOTE, RS_DEFER };

struct msgscan_req {
    struct session *s;
    struct msgscan_worker *ws;
    const char *proto; /* static */
    char where[MSGSCAN_WHERE_MAX];
    char *msg; /* owned while no job has it */
    size_t len, budget;
    pool_owner owner; /* the session's, for releases after it is gone */
    unsigned char sha[SHA256_LEN];
    bool hashed;
    char engine[SCAN_VERSION_MAX];
    enum req_step step;
    struct scan_job *job;
    unsigned job_flags;
    struct pool_waiter slot;
    void *remote_h;
    ev_timer defer;
    /* the verdict, once known */
    bool have_verdict, cached;
    enum msgscan_verdict verdict;
    char signature[SCAN_SIGNATURE_MAX];
    char ref[SCAN_REF_MAX];
    time_t date;
    int quarantine; /* 0 not asked, 1 written, -1 failed */
    /* the notice being scanned before delivery (finish → notice job → deliver) */
    struct msgscan_outcome out; /* owns out.notice; out.msg stays NULL until deliver */
    char *nbuf;                 /* notice_scan_buffer(), while no job has it */
    size_t nbuf_len;
    char notice_hit[SCAN_SIGNATURE_MAX]; /* why the minimal notice was sent; "" = not */
    char quarantine_error[256];
    uint64_t scan_us;
    unsigned retries; /* failed submits in a row */
    ev_tstamp started;
    msgscan_done_fn *done;
    void *arg;
};

static void scanner_log(void *arg, int level, const char *msg)
{
    (void)arg;
    char q[600];
    log_write((enum log_level)level, "event=scanner msg=%s", log_qs(q, sizeof q, msg));
}

/* The scanner's canary changed state (scan thread or reload thread). */
static void scanner_health_changed(void *arg, bool ok, const char *why)
{
    (void)arg;
    char q[600];
    if (ok)
        log_write(LOG_INFO, "event=scan_canary_ok note=\"scanner judges again\"");
    else
        log_write(LOG_ERROR,
                  "event=scan_canary_failed reason=%s note=\"every verdict is an error until "
                  "the canary passes\"",
                  log_qs(q, sizeof q, why));
}

static void options_from(const struct cfg_scan *c, struct scan_options *o)
{
    *o = (struct scan_options){
        .database_dir = c->database_dir,
        .tmpdir = c->tmpdir,
        .max_scan_size = c->max_scan_size,
        .max_file_size = c->max_file_size,
        .max_recursion = c->max_recursion,
        .max_files = c->max_files,
        .disable_cache = !c->engine_cache,
        .scan_timeout_ms = c->scan_timeout_ms,
        .reload_mode =
            c->reload == CFG_SCAN_RELOAD_LOWMEM ? SCAN_RELOAD_LOWMEM : SCAN_RELOAD_CONCURRENT,
        .log = scanner_log,
        .work_min_free = c->tmpdir_min_free,
        .canary_interval_ms = c->canary_interval_ms,
        .health = scanner_health_changed,
    };
}

static struct engine_limits limits_of(const struct cfg_scan *c)
{
    return (struct engine_limits){c->max_scan_size, c->max_file_size, c->max_recursion,
                                  c->max_files, c->scan_timeout_ms};
}

static void reload_logged(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop, (void)a, (void)revents;
    pthread_mutex_lock(&g_reload_mu);
    bool ok = g_reload_ok;
    char err[sizeof g_reload_err];
    memcpy(err, g_reload_err, sizeof err);
    pthread_mutex_unlock(&g_reload_mu);
    char v[SCAN_VERSION_MAX], q[300];
    scanner_version(g_scanner, v, sizeof v);
    if (ok) {
        if (g_limits_asked_set)
            g_limits = g_limits_asked;
        log_write(LOG_INFO, "event=scan_reload result=ok engine=%s generation=%llu", v,
                  (unsigned long long)scanner_generation(g_scanner));
    } else {
        log_write(LOG_ERROR, "event=scan_reload result=failed error=%s engine=%s",
                  log_qs(q, sizeof q, err), v);
        /* Say exactly what applies: the rest of the new configuration is in effect, the
         * engine and its limits are the old ones (not the configuration's). */
        const struct engine_limits *l = &g_limits;
        log_write(LOG_ERROR,
                  "event=reload_failed part=scanner reason=%s engine=%s max_scan_size=%zu "
                  "max_file_size=%zu max_recursion=%u max_files=%u scan_timeout_ms=%llu "
                  "note=\"the old engine and its limits stay; the rest of the configuration "
                  "applies\"",
                  log_qs(q, sizeof q, err), v, l->max_scan_size, l->max_file_size, l->max_recursion,
                  l->max_files, (unsigned long long)l->scan_timeout_ms);
    }
    g_limits_asked_set = false;
    msgscan_reloaded_fn *notify = g_reload_notify;
    g_reload_notify = NULL;
    if (notify)
        notify(ok, err, v);
}

/* On the reload thread. */
static void reload_done(void *arg, bool ok, const char *error)
{
    (void)arg;
    pthread_mutex_lock(&g_reload_mu);
    g_reload_ok = ok;
    snprintf(g_reload_err, sizeof g_reload_err, "%s", error ? error : "");
    pthread_mutex_unlock(&g_reload_mu);
    atomic_fetch_add(ok ? &ctr.reloads : &ctr.reload_failures, 1);
    ev_async_send(g_main_loop, &g_reload_async);
}

bool msgscan_process_init(const struct config *cfg, struct ev_loop *main_loop, char **error_r)
{
    *error_r = NULL;
    if (!cfg->scan.enabled)
        return true;
    struct scan_options o;
    options_from(&cfg->scan, &o);
    g_scanner = scanner_clamav_new(&o, error_r);
    if (!g_scanner)
        return false;
    pool_set_thread_nice((int)cfg->scan.thread_nice);
    g_pool = pool_new(cfg->scan.threads ? cfg->scan.threads : 1, cfg->scan.queue,
                      cfg->scan.memory_budget, error_r);
    if (!g_pool) {
        scanner_destroy(&g_scanner);
        return false;
    }
    pool_set_shares(g_pool, &(struct pool_shares){
                                .per_user = cfg->scan.budget_per_user_bytes,
                                .per_session = cfg->scan.budget_per_session_bytes,
                                .queue_per_user = cfg->scan.queue_per_user_jobs,
                            });
    g_main_loop = main_loop;
    g_limits = limits_of(&cfg->scan);
    ev_async_init(&g_reload_async, reload_logged);
    ev_async_start(main_loop, &g_reload_async);
    ev_unref(main_loop); /* the reload watcher alone must not keep the main loop running */
    metrics_register(msgscan_metrics_render, NULL);
    char v[SCAN_VERSION_MAX];
    scanner_version(g_scanner, v, sizeof v);
    log_write(LOG_INFO,
              "event=scanner_ready engine=%s threads=%u queue=%u memory_budget=%zu "
              "budget_per_user=%llu budget_per_session=%llu queue_per_user=%u",
              v, cfg->scan.threads, cfg->scan.queue, cfg->scan.memory_budget,
              (unsigned long long)cfg->scan.budget_per_user_bytes,
              (unsigned long long)cfg->scan.budget_per_session_bytes,
              cfg->scan.queue_per_user_jobs);
    return true;
}

bool msgscan_check(const struct config *cfg, char **error_r)
{
    *error_r = NULL;
    if (!cfg->scan.enabled)
        return true;
    struct scan_options o;
    options_from(&cfg->scan, &o);
    struct scanner *sc = scanner_clamav_new(&o, error_r);
    if (!sc)
        return false;
    scanner_destroy(&sc);
    return true;
}

void msgscan_reload(const struct config *cfg)
{
    if (!g_scanner)
        return;
    struct scan_options o;
    if (cfg)
        options_from(&cfg->scan, &o);
    if (!scanner_reload_async(g_scanner, cfg ? &o : NULL, reload_done, NULL)) {
        log_write(LOG_WARN, "event=scan_reload result=skipped note=\"a reload is already "
                            "running\"");
        return;
    }
    if (cfg) {
        g_limits_asked = limits_of(&cfg->scan);
        g_limits_asked_set = true;
    }
    log_write(LOG_INFO, "event=scan_reload result=started database_dir=%s",
              cfg ? cfg->scan.database_dir : "(unchanged)");
}

enum msgscan_reload_rc msgscan_reload_signatures(msgscan_reloaded_fn *done)
{
    if (!g_scanner)
        return MSGSCAN_RELOAD_OFF;
    /* NULL options: the engine's settings stay the ones in use, only the database is read
     * again (the configuration file is not: that is SIGHUP's job). */
    if (!scanner_reload_async(g_scanner, NULL, reload_done, NULL))
        return MSGSCAN_RELOAD_BUSY;
    g_reload_notify = done;
    log_write(LOG_INFO, "event=scan_reload result=started source=admin note=\"signatures only\"");
    return MSGSCAN_RELOAD_STARTED;
}

void msgscan_process_fini(void)
{
    if (!g_scanner)
        return;
    pool_free(&g_pool);
    scanner_destroy(&g_scanner); /* waits for a running reload */
    ev_ref(g_main_loop);
    ev_async_stop(g_main_loop, &g_reload_async);
}

bool msgscan_enabled(void)
{
    return g_scanner != NULL;
}

bool msgscan_on(const struct session *s)
{
    return s->worker->scan != NULL;
}

/* ---- counters ---- */

bool msgscan_engine_version(char *buf, size_t cap)
{
    if (!g_scanner)
        return false;
    scanner_version(g_scanner, buf, cap);
    return true;
}

bool msgscan_scanner_health(struct scanner_health *h)
{
    if (!g_scanner)
        return false;
    scanner_health(g_scanner, h);
    return true;
}

/* May a cached verdict dated `date` be used? Infected: always (a match is a match). Clean: not
 * while the scanner is broken, nor from a suspect window. */
static bool cached_trusted(enum msgscan_verdict v, time_t date)
{
    if (v != MSGSCAN_CLEAN)
        return true;
    struct scanner_health h;
    scanner_health(g_scanner, &h);
    return h.ok && !scanner_health_suspect(&h, (int64_t)date);
}

bool msgscan_clean_trusted(time_t date)
{
    return !g_scanner || cached_trusted(MSGSCAN_CLEAN, date);
}

bool msgscan_pool_stats(struct pool_stats *st)
{
    if (!g_pool)
        return false;
    pool_get_stats(g_pool, st);
    return true;
}

void msgscan_counters_get(struct msgscan_counters *c)
{
    *c = (struct msgscan_counters){
        .judged = atomic_load(&ctr.judged),
        .scanned = atomic_load(&ctr.scanned),
        .cache_hits = atomic_load(&ctr.cache_hits),
        .remote_hits = atomic_load(&ctr.remote_hits),
        .clean = atomic_load(&ctr.clean),
        .infected = atomic_load(&ctr.infected),
        .oversize = atomic_load(&ctr.oversize),
        .error = atomic_load(&ctr.error),
        .limit = atomic_load(&ctr.limit),
        .delivered = atomic_load(&ctr.delivered),
        .replaced = atomic_load(&ctr.replaced),
        .quarantined = atomic_load(&ctr.quarantined),
        .quarantine_failed = atomic_load(&ctr.quarantine_failed),
        .scanned_bytes = atomic_load(&ctr.scanned_bytes),
        .scan_us = atomic_load(&ctr.scan_us),
        .reloads = atomic_load(&ctr.reloads),
        .reload_failures = atomic_load(&ctr.reload_failures),
        .notice_scans = atomic_load(&ctr.notice_scans),
        .notice_minimal = atomic_load(&ctr.notice_minimal),
    };
}

/* ---- worker ---- */

bool msgscan_worker_start(struct worker *w)
{
    w->scan = NULL;
    if (!g_scanner)
        return true;
    struct msgscan_worker *ws = calloc(1, sizeof *ws);
    if (!ws)
        return false;
    ws->loop = w->loop;
    ws->pc = pool_client_new(g_pool, w->loop);
    if (!ws->pc) {
        free(ws);
        return false;
    }
    w->scan = ws;
    return true;
}

void msgscan_worker_stop(struct worker *w)
{
    struct msgscan_worker *ws = w->scan;
    if (!ws)
        return;
    pool_client_free(&ws->pc);
    for (struct ms_entry *e = ws->lru_head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    free(ws);
    w->scan = NULL;
}

void msgscan_set_remote_cache(struct worker *w, const struct msgscan_cache_ops *ops, void *ctx)
{
    if (!w->scan)
        return;
    w->scan->remote = ops;
    w->scan->remote_ctx = ctx;
}

/* ---- local verdict cache ---- */

static uint32_t engine_hash(const char *e)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *e; e++)
        h = (h ^ (unsigned char)*e) * 16777619u;
    return h;
}

static size_t bucket_of(const unsigned char *sha, uint32_t eh)
{
    uint32_t x;
    memcpy(&x, sha, sizeof x);
    return (x ^ eh) & (CACHE_BUCKETS - 1);
}

static void lru_unlink(struct msgscan_worker *ws, struct ms_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        ws->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        ws->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(struct msgscan_worker *ws, struct ms_entry *e)
{
    e->prev = NULL;
    e->next = ws->lru_head;
    if (ws->lru_head)
        ws->lru_head->prev = e;
    ws->lru_head = e;
    if (!ws->lru_tail)
        ws->lru_tail = e;
}

static void entry_drop(struct msgscan_worker *ws, struct ms_entry *e)
{
    struct ms_entry **pp = &ws->buckets[bucket_of(e->sha, e->ehash)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    lru_unlink(ws, e);
    ws->nentries--;
    free(e);
}

static struct ms_entry *cache_find(struct msgscan_worker *ws, const unsigned char *sha,
                                   const char *engine)
{
    uint32_t eh = engine_hash(engine);
    for (struct ms_entry *e = ws->buckets[bucket_of(sha, eh)]; e; e = e->hnext) {
        if (e->ehash == eh && memcmp(e->sha, sha, SHA256_LEN) == 0 &&
            strcmp(e->engine, engine) == 0) {
            if (e->expires <= ev_now(ws->loop)) {
                entry_drop(ws, e);
                return NULL;
            }
            lru_unlink(ws, e);
            lru_front(ws, e);
            return e;
        }
    }
    return NULL;
}

static void cache_put(struct msgscan_worker *ws, const unsigned char *sha, const char *engine,
                      const struct msgscan_cached *v, double ttl)
{
    if (ttl <= 0)
        return;
    struct ms_entry *e = cache_find(ws, sha, engine);
    if (!e) {
        if (ws->nentries >= MSGSCAN_CACHE_MAX)
            entry_drop(ws, ws->lru_tail);
        e = calloc(1, sizeof *e);
        if (!e)
            return;
        memcpy(e->sha, sha, SHA256_LEN);
        e->ehash = engine_hash(engine);
        snprintf(e->engine, sizeof e->engine, "%s", engine);
        size_t b = bucket_of(sha, e->ehash);
        e->hnext = ws->buckets[b];
        ws->buckets[b] = e;
        lru_front(ws, e);
        ws->nentries++;
    }
    e->v = *v;
    e->expires = ev_now(ws->loop) + ttl;
}

/* ---- budget ---- */

static void budget_granted(struct pool_waiter *pw)
{
    struct msgscan_wait *w =
        (struct msgscan_wait *)((char *)pw - offsetof(struct msgscan_wait, pw));
    w->cb(w->arg);
}

enum msgscan_budget_rc msgscan_budget_acquire(struct session *s, size_t bytes,
                                              struct msgscan_wait *w, msgscan_wait_fn *cb,
                                              void *arg)
{
    struct msgscan_worker *ws = s->worker->scan;
    if (!ws)
        return MSGSCAN_BUDGET_TOO_BIG; /* no scanner here: nothing may be held for one */
    w->cb = cb;
    w->arg = arg;
    switch (pool_budget_acquire_as(ws->pc, msgscan_owner(s), bytes, &w->pw, budget_granted)) {
    case POOL_BUDGET_OK:
        return MSGSCAN_BUDGET_OK;
    case POOL_BUDGET_WAIT:
        return MSGSCAN_BUDGET_WAIT;
    default:
        return MSGSCAN_BUDGET_TOO_BIG;
    }
}

void msgscan_budget_release(pool_owner owner, size_t bytes)
{
    if (bytes && g_pool)
        pool_budget_release_as(g_pool, owner, bytes);
}

/* FNV-1a of the login name, folded to 32 bits (0 is kept for "no user"); the session's id in
 * the low half (0 is kept for "no session"). A collision only makes two users share a share. */
pool_owner msgscan_owner(const struct session *s)
{
    uint32_t u = 0, id = (uint32_t)s->id ? (uint32_t)s->id : 1;
    if (s->user && s->user[0]) {
        uint64_t h = 1469598103934665603ull;
        for (const unsigned char *p = (const unsigned char *)s->user; *p; p++)
            h = (h ^ *p) * 1099511628211ull;
        u = (uint32_t)(h ^ (h >> 32));
        if (!u)
            u = 1;
    }
    return POOL_OWNER(u, id);
}

void msgscan_wait_cancel(struct msgscan_wait *w)
{
    pool_waiter_cancel(&w->pw);
}

/* ---- deciding ---- */

static const char *verdict_name(enum msgscan_verdict v)
{
    static const char *n[] = {"clean", "infected", "oversize", "error", "limit"};
    return n[v];
}

/* Fill the action part of *o from its verdict and the session's settings; builds the notice
 * from `orig` when the message is replaced. False: out of memory (o->notice NULL). */
static bool decide(struct session *s, struct msgscan_outcome *o, const char *orig, size_t len,
                   time_t date, enum notice_mode mode)
{
    const struct cfg_scan *cs = &s->cfg->scan;
    switch (o->verdict) {
    case MSGSCAN_CLEAN:
        o->replace = false;
        break;
    case MSGSCAN_INFECTED:
        o->replace = true;
        break;
    case MSGSCAN_OVERSIZE:
        o->replace = cs->oversize_action == CFG_SCAN_BLOCK;
        break;
    case MSGSCAN_ERROR:
        o->replace = cs->error_action == CFG_SCAN_BLOCK;
        break;
    case MSGSCAN_LIMIT:
        o->replace = cs->limits_action == CFG_SCAN_BLOCK;
        break;
    }
    if (!o->replace)
        return true;
    if (!o->ref[0])
        scan_ref_new(o->ref);
    struct notice_params np = {
        .verdict = o->verdict == MSGSCAN_INFECTED ? NOTICE_INFECTED : NOTICE_BLOCKED,
        .signature = o->verdict == MSGSCAN_INFECTED ? o->signature : NULL,
        .reason_code = o->verdict == MSGSCAN_OVERSIZE ? "oversize"
                       : o->verdict == MSGSCAN_LIMIT  ? "limit"
                                                      : "scan-error",
        .reason_text = o->verdict == MSGSCAN_LIMIT
                           ? "it is nested or built in a way the scanner cannot fully inspect"
                           : NULL,
        .ref = o->ref,
        .tmpl = cs->notice_template,
        .date_fallback = date,
        .mode = mode,
    };
    return notice_build(&np, orig ? orig : "", orig ? len : 0, &o->notice, &o->notice_len);
}

static void count_and_log(struct session *s, const char *proto, const char *where,
                          const struct msgscan_outcome *o, uint64_t size, double elapsed_ms,
                          const char *extra)
{
    atomic_fetch_add(&ctr.judged, 1);
    atomic_ullong *by[] = {&ctr.clean, &ctr.infected, &ctr.oversize, &ctr.error, &ctr.limit};
    atomic_fetch_add(by[o->verdict], 1);
    atomic_fetch_add(o->replace ? &ctr.replaced : &ctr.delivered, 1);
    if (o->cached)
        atomic_fetch_add(&ctr.cache_hits, 1);
    s->scans++;
    if (o->replace)
        s->blocked++;
    char sig[SCAN_SIGNATURE_MAX + 8];
    sess_log(s, o->verdict == MSGSCAN_CLEAN ? LOG_INFO : LOG_WARN,
             "event=scan_verdict proto=%s %s verdict=%s signature=%s action=%s ref=%s "
             "cached=%s size=%llu elapsed_ms=%.1f%s",
             proto, where, verdict_name(o->verdict),
             o->signature[0] ? log_qs(sig, sizeof sig, o->signature) : "-",
             o->replace ? "block" : "pass", o->ref[0] ? o->ref : "-", o->cached ? "yes" : "no",
             (unsigned long long)size, elapsed_ms, extra ? extra : "");
}

void msgscan_outcome_clear(struct msgscan_outcome *o)
{
    if (o->msg) {
        free(o->msg);
        msgscan_budget_release(o->owner, o->budget);
        o->msg = NULL;
        o->budget = 0;
    }
    free(o->notice);
    o->notice = NULL;
}

static bool judge_sync(struct session *s, const struct msgscan_item *it, const char *head,
                       size_t head_len, uint64_t size, enum msgscan_verdict v, const char *reason,
                       struct msgscan_outcome *o)
{
    memset(o, 0, sizeof *o);
    o->verdict = v;
    snprintf(o->signature, sizeof o->signature, "%s", reason);
    /* No scan of this notice can be awaited here: it shows nothing of the original's text. */
    bool ok = decide(s, o, head, head_len, time(NULL), NOTICE_DESCRIBE);
    count_and_log(s, it->proto, it->where, o, size, 0, NULL);
    return ok;
}

bool msgscan_oversize(struct session *s, const struct msgscan_item *it, const char *head,
                      size_t head_len, uint64_t size, struct msgscan_outcome *o)
{
    return judge_sync(s, it, head, head_len, size, MSGSCAN_OVERSIZE, "max_scan_size", o);
}

bool msgscan_unjudged(struct session *s, const struct msgscan_item *it, const char *head,
                      size_t head_len, const char *reason, struct msgscan_outcome *o)
{
    return judge_sync(s, it, head, head_len, head_len, MSGSCAN_ERROR, reason, o);
}

/* ---- requests ---- */

static void req_free(struct msgscan_req *r)
{
    if (r->msg) {
        free(r->msg);
        msgscan_budget_release(r->owner, r->budget);
    }
    free(r->out.notice);
    free(r->nbuf);
    free(r);
}

/* The session closed while a step was away (its config is gone; its destroy will cancel the
 * request): free the message now, go idle, call nothing. */
static bool dead(struct msgscan_req *r)
{
    if (!r->s->closing)
        return false;
    r->step = RS_NONE;
    if (r->msg) {
        free(r->msg);
        msgscan_budget_release(r->owner, r->budget);
        r->msg = NULL;
        r->budget = 0;
    }
    return true;
}

/* Log, count, hand r->out to the caller and free the request. */
static void deliver(struct msgscan_req *r)
{
    struct session *s = r->s;
    struct msgscan_outcome o = r->out;
    r->out.notice = NULL;
    if (!o.replace) {
        o.msg = r->msg;
        o.len = r->len;
        o.budget = r->budget;
        o.owner = r->owner;
        r->msg = NULL;
        r->budget = 0;
    }
    char extra[640] = "";
    size_t xl = 0;
    if (r->quarantine > 0)
        xl = (size_t)snprintf(extra, sizeof extra, " quarantine=%s", r->ref);
    else if (r->quarantine < 0) {
        char q[280];
        xl = (size_t)snprintf(extra, sizeof extra, " quarantine=failed quarantine_error=%s",
                              log_qs(q, sizeof q, r->quarantine_error));
    }
    if (r->notice_hit[0] && xl < sizeof extra) {
        char q[SCAN_SIGNATURE_MAX + 8];
        snprintf(extra + xl, sizeof extra - xl, " notice=minimal notice_match=%s",
                 log_qs(q, sizeof q, r->notice_hit));
    }
    count_and_log(s, r->proto, r->where, &o, r->len, (ev_now(r->ws->loop) - r->started) * 1000.0,
                  extra);
    msgscan_done_fn *done = r->done;
    void *arg = r->arg;
    req_free(r);
    done(arg, &o);
    msgscan_outcome_clear(&o);
}

/* The notice matched (or could not be scanned): the fixed minimal one instead. */
static void notice_minimal(struct msgscan_req *r, const char *why)
{
    snprintf(r->notice_hit, sizeof r->notice_hit, "%s", why && why[0] ? why : "unknown");
    atomic_fetch_add(&ctr.notice_minimal, 1);
    free(r->out.notice);
    r->out.notice = NULL;
    r->out.notice_len = 0;
    if (!decide(r->s, &r->out, NULL, 0, r->date, NOTICE_MINIMAL))
        r->out.verdict = MSGSCAN_ERROR; /* no memory: the caller ends the session */
}

static void on_notice_job(void *arg, struct scan_job *job)
{
    struct msgscan_req *r = arg;
    r->job = NULL;
    r->step = RS_NONE;
    size_t l, b;
    free(scan_job_take_buffer(job, &l, &b));
    if (dead(r))
        return;
    atomic_fetch_add(&ctr.notice_scans, 1);
    if (!job->scanned)
        notice_minimal(r, "not scanned");
    else if (job->result.verdict != SCAN_CLEAN) /* infected, or not judged: default deny */
        notice_minimal(r, job->result.signature[0] ? job->result.signature
                                                   : scan_verdict_name(job->result.verdict));
    deliver(r);
}

static void notice_submit(struct msgscan_req *r);

static void on_notice_slot(struct pool_waiter *w)
{
    struct msgscan_req *r = (struct msgscan_req *)((char *)w - offsetof(struct msgscan_req, slot));
    r->step = RS_NONE;
    if (!dead(r))
        notice_submit(r);
}

/* The notice's scan on the pool, like a message's (a full queue: wait for a slot). */
static void notice_submit(struct msgscan_req *r)
{
    struct scan_request rq = {
        .scanner = g_scanner,
        .flags = SCAN_JOB_SCAN,
        .buf = r->nbuf,
        .len = r->nbuf_len,
        .owner = r->owner,
    };
    r->job = scan_submit(r->ws->pc, &rq, on_notice_job, r);
    if (r->job) {
        r->nbuf = NULL;
        r->step = RS_JOB;
        r->retries = 0;
        return;
    }
    if (++r->retries > SUBMIT_RETRIES) {
        free(r->nbuf);
        r->nbuf = NULL;
        notice_minimal(r, "cannot queue the notice scan");
        deliver(r);
        return;
    }
    r->step = RS_SLOT;
    pool_slot_wait_as(r->ws->pc, r->owner, &r->slot, on_notice_slot);
}

/* The verdict is known (never called from the starter's stack): decide, scan the notice if
 * there is one, deliver. */
static void finish(struct msgscan_req *r)
{
    struct msgscan_outcome *o = &r->out;
    *o = (struct msgscan_outcome){.verdict = r->verdict, .cached = r->cached};
    snprintf(o->signature, sizeof o->signature, "%s", r->signature);
    snprintf(o->ref, sizeof o->ref, "%s", r->ref);
    if (!decide(r->s, o, r->msg, r->len, r->date, NOTICE_FULL)) {
        /* No memory for a notice: the caller ends the session (replace without notice). */
        o->verdict = MSGSCAN_ERROR;
    }
    if (!o->replace || !o->notice) {
        deliver(r);
        return;
    }
    if (!notice_scan_buffer(o->notice, o->notice_len, r->msg, r->len, &r->nbuf, &r->nbuf_len)) {
        notice_minimal(r, "out of memory");
        deliver(r);
        return;
    }
    /* The original is not delivered: let it and its budget go now. */
    free(r->msg);
    msgscan_budget_release(r->owner, r->budget);
    r->msg = NULL;
    r->budget = 0;
    notice_submit(r);
}

static void defer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct msgscan_req *r = (struct msgscan_req *)((char *)t - offsetof(struct msgscan_req, defer));
    r->step = RS_NONE;
    if (!dead(r))
        finish(r);
}

/* A verdict is known while the starter may still be on the stack: deliver from the loop. */
static void finish_deferred(struct msgscan_req *r)
{
    r->step = RS_DEFER;
    ev_timer_init(&r->defer, defer_cb, 0., 0.);
    ev_timer_start(r->ws->loop, &r->defer);
}

static void on_job(void *arg, struct scan_job *job);
static void submit(struct msgscan_req *r, unsigned flags);

static void on_slot(struct pool_waiter *w)
{
    struct msgscan_req *r = (struct msgscan_req *)((char *)w - offsetof(struct msgscan_req, slot));
    r->step = RS_NONE;
    if (!dead(r))
        submit(r, r->job_flags);
}

/* Submit a pool job with `flags`; on a full queue wait for a slot. scan_submit() fails for a
 * full queue and for a failed allocation alike: a slot wait answers at once when the queue has
 * room, so a run of failures with room means memory is short. */
static void submit(struct msgscan_req *r, unsigned flags)
{
    const struct cfg_scan *cs = &r->s->cfg->scan;
    struct scan_request rq = {
        .scanner = g_scanner,
        .flags = flags,
        .buf = r->msg,
        .len = r->len,
        .budget = r->budget,
        .owner = r->owner,
        .quarantine_dir = (flags & SCAN_JOB_SCAN) ? cs->quarantine_dir : NULL,
    };
    r->job_flags = flags;
    r->job = scan_submit(r->ws->pc, &rq, on_job, r);
    if (r->job) {
        r->msg = NULL;
        r->budget = 0;
        r->step = RS_JOB;
        r->retries = 0;
        struct pool_stats st;
        pool_get_stats(g_pool, &st);
        msgscan_observe_queue(st.queued);
        return;
    }
    if (++r->retries > SUBMIT_RETRIES) {
        r->verdict = MSGSCAN_ERROR;
        snprintf(r->signature, sizeof r->signature, "cannot queue the scan");
        r->have_verdict = true;
        finish_deferred(r);
        return;
    }
    if (r->retries == 1)
        sess_log(r->s, LOG_DEBUG, "event=scan_queue_full %s", r->where);
    r->step = RS_SLOT;
    pool_slot_wait_as(r->ws->pc, r->owner, &r->slot, on_slot);
}

static void have_cached(struct msgscan_req *r, const struct msgscan_cached *c)
{
    r->verdict = c->verdict;
    snprintf(r->signature, sizeof r->signature, "%s", c->signature);
    snprintf(r->ref, sizeof r->ref, "%s", c->ref);
    r->date = c->date;
    r->cached = true;
    r->have_verdict = true;
}

static void on_remote(void *arg, const struct msgscan_cached *hit)
{
    struct msgscan_req *r = arg;
    r->remote_h = NULL;
    r->step = RS_NONE;
    if (dead(r))
        return;
    if (hit && (hit->verdict == MSGSCAN_CLEAN || hit->verdict == MSGSCAN_INFECTED) &&
        cached_trusted(hit->verdict, hit->date)) {
        atomic_fetch_add(&ctr.remote_hits, 1);
        cache_put(r->ws, r->sha, r->engine, hit,
                  (double)r->s->cfg->scan.verdict_cache_ttl_ms / 1000.0);
        have_cached(r, hit);
        finish(r);
        return;
    }
    submit(r, SCAN_JOB_SCAN);
}

/* The hash is known: local cache, remote cache, or scan. `sync`: the starter is on the stack. */
static void step_lookup(struct msgscan_req *r, bool sync)
{
    scanner_version(g_scanner, r->engine, sizeof r->engine);
    struct ms_entry *e = cache_find(r->ws, r->sha, r->engine);
    if (e && !cached_trusted(e->v.verdict, e->v.date)) {
        entry_drop(r->ws, e);
        e = NULL;
    }
    if (e) {
        have_cached(r, &e->v);
        if (sync)
            finish_deferred(r);
        else
            finish(r);
        return;
    }
    if (r->ws->remote) {
        struct msgscan_cache_key k = {.engine = r->engine};
        memcpy(k.sha256, r->sha, SHA256_LEN);
        r->remote_h = r->ws->remote->get(r->ws->remote_ctx, &k, on_remote, r);
        if (r->remote_h) {
            r->step = RS_REMOTE;
            return;
        }
    }
    submit(r, SCAN_JOB_SCAN);
}

static void on_job(void *arg, struct scan_job *job)
{
    struct msgscan_req *r = arg;
    r->job = NULL;
    r->step = RS_NONE;
    r->msg = scan_job_take_buffer(job, &r->len, &r->budget);
    if (dead(r))
        return;
    if (job->hashed) {
        memcpy(r->sha, job->sha256, SHA256_LEN);
        r->hashed = true;
    }
    if (!job->scanned) {
        step_lookup(r, false);
        return;
    }
    const struct scan_result *res = &job->result;
    atomic_fetch_add(&ctr.scanned, 1);
    atomic_fetch_add(&ctr.scanned_bytes, res->scanned_bytes ? res->scanned_bytes : r->len);
    atomic_fetch_add(&ctr.scan_us, res->elapsed_us);
    msgscan_observe_scan(res->elapsed_us);
    r->scan_us = res->elapsed_us;
    switch (res->verdict) {
    case SCAN_CLEAN:
        r->verdict = MSGSCAN_CLEAN;
        break;
    case SCAN_INFECTED:
        r->verdict = MSGSCAN_INFECTED;
        break;
    case SCAN_OVERSIZE:
        r->verdict = MSGSCAN_OVERSIZE;
        break;
    case SCAN_LIMIT:
        r->verdict = MSGSCAN_LIMIT;
        break;
    default:
        r->verdict = MSGSCAN_ERROR;
        break;
    }
    snprintf(r->signature, sizeof r->signature, "%s", res->signature);
    r->date = time(NULL);
    if (r->verdict == MSGSCAN_INFECTED) {
        snprintf(r->ref, sizeof r->ref, "%s", job->ref);
        if (job->quarantined) {
            r->quarantine = 1;
            atomic_fetch_add(&ctr.quarantined, 1);
        } else if (job->quarantine_error[0]) {
            r->quarantine = -1;
            snprintf(r->quarantine_error, sizeof r->quarantine_error, "%s", job->quarantine_error);
            atomic_fetch_add(&ctr.quarantine_failed, 1);
        }
    }
    r->have_verdict = true;
    struct scanner_health h;
    scanner_health(g_scanner, &h);
    /* Never cache what a scanner found broken since (or during) the scan said is clean. */
    bool trusted = r->verdict == MSGSCAN_INFECTED ||
                   (r->verdict == MSGSCAN_CLEAN && h.ok && h.epoch == res->epoch);
    if (trusted) {
        struct msgscan_cached c = {.verdict = r->verdict, .date = r->date};
        snprintf(c.signature, sizeof c.signature, "%s", r->signature);
        snprintf(c.ref, sizeof c.ref, "%s", r->ref);
        /* The engine that judged: a reload during the scan must not file the verdict under
         * the new engine's version. */
        double ttl = (double)r->s->cfg->scan.verdict_cache_ttl_ms / 1000.0;
        cache_put(r->ws, r->sha, res->engine_version, &c, ttl);
        if (r->ws->remote) {
            struct msgscan_cache_key k = {.engine = res->engine_version};
            memcpy(k.sha256, r->sha, SHA256_LEN);
            r->ws->remote->put(r->ws->remote_ctx, &k, &c, r->s->cfg->scan.verdict_cache_ttl_ms);
        }
    }
    finish(r);
}

struct msgscan_req *msgscan_judge(struct session *s, const struct msgscan_item *it, char *msg,
                                  size_t len, size_t budget, msgscan_done_fn *done, void *arg)
{
    struct msgscan_worker *ws = s->worker->scan;
    struct msgscan_req *r = ws ? calloc(1, sizeof *r) : NULL;
    if (!r) {
        free(msg);
        msgscan_budget_release(msgscan_owner(s), budget);
        return NULL;
    }
    r->s = s;
    r->owner = msgscan_owner(s);
    r->ws = ws;
    r->proto = it->proto;
    snprintf(r->where, sizeof r->where, "%s", it->where ? it->where : "");
    r->msg = msg;
    r->len = len;
    r->budget = budget;
    r->done = done;
    r->arg = arg;
    r->started = ev_now(ws->loop);
    if (len <= MSGSCAN_INLINE_HASH_MAX) {
        notice_sha256(msg ? msg : "", len, r->sha);
        r->hashed = true;
        step_lookup(r, true);
    } else {
        submit(r, SCAN_JOB_HASH);
    }
    return r;
}

void msgscan_cancel(struct msgscan_req **rp)
{
    struct msgscan_req *r = rp ? *rp : NULL;
    if (!r)
        return;
    switch (r->step) {
    case RS_JOB:
        scan_cancel(&r->job); /* the pool frees the buffer and its budget */
        break;
    case RS_SLOT:
        pool_waiter_cancel(&r->slot);
        break;
    case RS_REMOTE:
        if (r->ws->remote && r->ws->remote->cancel)
            r->ws->remote->cancel(r->ws->remote_ctx, r->remote_h);
        break;
    case RS_DEFER:
        ev_timer_stop(r->ws->loop, &r->defer);
        break;
    case RS_NONE:
        break;
    }
    req_free(r);
    *rp = NULL;
}
