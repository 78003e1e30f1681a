/*
 * msgscan — judge one whole downloaded message, for any protocol relay (POP3 RETR/TOP, IMAP
 * FETCH). The relay hands over the message (unstuffed, exactly as stored) and gets back, on its
 * session's loop, what the client is to receive: the original bytes or a notice.
 *
 * What it does, in order, for msgscan_judge():
 *   1. sha256 of the message: inline for small messages (MSGSCAN_INLINE_HASH_MAX), on a scan
 *      thread otherwise (hashing 25 MiB takes tens of milliseconds: too long for a loop);
 *   2. verdict cache: the worker's in-memory LRU, then the optional remote cache hook (Redis),
 *      keyed by sha256 + engine version, so a signature update makes every message be judged
 *      again;
 *   3. on a miss, a scan job on the pool (a full queue waits for a slot with pool_slot_wait: the
 *      relay is paused anyway, its response being held);
 *   4. the verdict becomes an action: clean → the original; infected → the notice; libclamav's
 *      size limits (oversize) → scan.oversize_action; every other limit (recursion, files,
 *      scan time, ...) → scan.limits_action; errors → scan.error_action. One logfmt
 *      line per verdict, counters, optional quarantine (on the scan thread).
 *
 * What it does not do: frame protocols, hold relay buffers, acquire the budget for the caller's
 * collection (msgscan_budget_acquire is a helper the caller uses before collecting).
 *
 * Threads: everything here runs on the session's worker loop, except the process functions (main
 * thread) and msgscan_counters_get (any thread). Callbacks never run before the starting call
 * returns; a cancelled request never calls back.
 */
#ifndef PORTCULLIS_MSGSCAN_H
#define PORTCULLIS_MSGSCAN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <time.h>

#include "pool.h"
#include "scan.h"
#include "config.h"

struct session;
struct worker;

#define MSGSCAN_INLINE_HASH_MAX (64 << 10) /* sha256 on the loop up to this size (~0.1 ms) */
#define MSGSCAN_CACHE_MAX       4096       /* verdicts remembered per worker (LRU) */
#define MSGSCAN_WHERE_MAX       192        /* the caller's logfmt fragment naming the message */

/* ---- process (main thread) ---- */

/* With cfg->scan.enabled: load the engine (blocking: seconds to minutes with the official
 * databases) and start the pool. Call after the privilege drop (the scanner's work dir must
 * belong to the user that scans) and before the workers start. `main_loop` receives reload
 * results. Without scan.enabled: nothing, true. */
/* `portcullis -t`: what msgscan_process_init would check, and nothing kept: the engine is built
 * from the signature files (as long as start takes) in a work dir under scan.tmpdir, then freed.
 * Without scan.enabled: true. */
bool msgscan_check(const struct config *cfg, char **error_r) __attribute__((warn_unused_result));
bool msgscan_process_init(const struct config *cfg, struct ev_loop *main_loop, char **error_r)
    __attribute__((warn_unused_result));
/* SIGHUP: reload the signatures off the loop with the scan settings of `cfg` (NULL: the ones in
 * use). The result is logged on the main loop (event=scan_reload). */
void msgscan_reload(const struct config *cfg);
/* `portcullis-ctl reload-signatures` (POST /reload-signatures): read the signature database
 * again off the loop with the engine settings in use, leaving the configuration alone. When
 * STARTED, `done` runs once on the main loop with the result and the engine version then in
 * service (the old one after a failure); nothing is called back otherwise. */
typedef void msgscan_reloaded_fn(bool ok, const char *error, const char *engine);
enum msgscan_reload_rc {
    MSGSCAN_RELOAD_STARTED,
    MSGSCAN_RELOAD_BUSY, /* a reload (SIGHUP's or another request's) is running */
    MSGSCAN_RELOAD_OFF,  /* scanning is not enabled */
};
enum msgscan_reload_rc msgscan_reload_signatures(msgscan_reloaded_fn *done);
/* After every worker stopped: stop the pool, free the engine. */
void msgscan_process_fini(void);
/* Scanning was enabled at start (scan.enabled is restart-only). */
bool msgscan_enabled(void);
/* Does this session's worker scan? (false when scanning is off, or the worker could not set
 * up its pool client). Relays test this before holding anything. */
bool msgscan_on(const struct session *s);

/* ---- worker (on its loop thread) ---- */
bool msgscan_worker_start(struct worker *w) __attribute__((warn_unused_result));
/* After the worker's sessions are freed (their requests cancelled). */
void msgscan_worker_stop(struct worker *w);

/* ---- memory budget for bytes held for scanning (process-wide) ---- */

struct msgscan_wait;
typedef void msgscan_wait_fn(void *arg);
/* Embed in the caller's state; private fields. Idle when zeroed. */
struct msgscan_wait {
    struct pool_waiter pw;
    msgscan_wait_fn *cb;
    void *arg;
};
enum msgscan_budget_rc {
    MSGSCAN_BUDGET_OK,      /* acquired now */
    MSGSCAN_BUDGET_WAIT,    /* cb(arg) runs later on the loop once acquired (FIFO); pause input */
    MSGSCAN_BUDGET_TOO_BIG, /* more than the whole budget */
};
/* Acquire `bytes` of scan.memory_budget for session `s`. `w` must stay valid until its callback
 * ran or msgscan_wait_cancel(). */
enum msgscan_budget_rc msgscan_budget_acquire(struct session *s, size_t bytes,
                                              struct msgscan_wait *w, msgscan_wait_fn *cb,
                                              void *arg);
/* Give back bytes acquired earlier by `owner` (any amount up to what it holds). */
void msgscan_budget_release(pool_owner owner, size_t bytes);
/* The session's key for the budget and queue shares (its user's and its own); constant for the
 * session once logged in (scanning starts after login). */
pool_owner msgscan_owner(const struct session *s);
/* No callback afterwards; bytes granted but not yet delivered go back. No-op when idle. */
void msgscan_wait_cancel(struct msgscan_wait *w);

/* ---- judging ---- */

enum msgscan_verdict {
    MSGSCAN_CLEAN,
    MSGSCAN_INFECTED,
    MSGSCAN_OVERSIZE, /* over max_scan_size, or libclamav's MaxScanSize/MaxFileSize */
    MSGSCAN_ERROR,    /* engine error, out of memory */
    MSGSCAN_LIMIT,    /* any other libclamav limit: recursion, files, scan time, email parser
                         limits, unknown Limits.* names (scan_limit_kind) */
};

/* What the relay is told. The receiver may take `msg` (then it owns the buffer and the `budget`
 * bytes of budget covering it: free it, msgscan_budget_release(budget)) and/or `notice` (owns
 * it: free) by setting the field to NULL; msgscan frees whatever is left after the callback. */
struct msgscan_outcome {
    enum msgscan_verdict verdict;
    bool replace; /* true: deliver `notice`; false: deliver the original */
    bool cached;  /* the verdict came from the cache (no scan) */
    char *msg;    /* the original (when !replace; may be NULL for msgscan_oversize) */
    size_t len;
    size_t budget;
    pool_owner owner; /* whose share `budget` counts against */
    char *notice;     /* malloc'd RFC 5322 notice (when replace) */
    size_t notice_len;
    char signature[SCAN_SIGNATURE_MAX]; /* infected: the signature; else why ("" when clean) */
    char ref[SCAN_REF_MAX];             /* reference id (notice, quarantine, log); "" if clean */
};

/* Names the message in the verdict's log line and says which protocol asked. */
struct msgscan_item {
    const char *proto; /* "pop3", "imap" */
    const char *where; /* logfmt fragment, e.g. "msg=3 command=RETR" or "mailbox=\"INBOX\"
                          uid=7"; its values already quoted with log_q (peer text) */
};

struct msgscan_req;
/* On the session's loop, exactly once unless cancelled. `o` is valid during the call only. The
 * request handle is already freed when this runs: forget it first thing (even when the session
 * is closing), never msgscan_cancel() it afterwards. */
typedef void msgscan_done_fn(void *arg, struct msgscan_outcome *o);

/* Judge `msg` (malloc'd, `len` bytes, covered by `budget` bytes of the scan budget; both move to
 * the request, also on failure). Returns the handle, or NULL when out of memory (nothing will
 * be called back; msg freed and budget released). Never calls back before returning — even a
 * cache hit is delivered from the loop. */
struct msgscan_req *msgscan_judge(struct session *s, const struct msgscan_item *item, char *msg,
                                  size_t len, size_t budget, msgscan_done_fn *done, void *arg)
    __attribute__((warn_unused_result));
/* Session closing (or the relay gave up): no callback; every resource of the request is freed
 * (a running scan finishes on its thread and is dropped). NULLs *r; NULL-safe. */
void msgscan_cancel(struct msgscan_req **r);

/* A message over scan.max_scan_size (`size` bytes; the caller holds at most `head` of it): no
 * scan; applies oversize_action, logs and counts. Synchronous: fills *o (msg is NULL; with
 * block, `notice` is built from `head`, which should hold the header section). False only when
 * out of memory building a notice. Release with msgscan_outcome_clear(). */
bool msgscan_oversize(struct session *s, const struct msgscan_item *item, const char *head,
                      size_t head_len, uint64_t size, struct msgscan_outcome *o)
    __attribute__((warn_unused_result));
/* A message that could not be judged for a reason of the caller's (`reason`, e.g. "budget"):
 * applies error_action like a scan error. Synchronous, like msgscan_oversize. */
bool msgscan_unjudged(struct session *s, const struct msgscan_item *item, const char *head,
                      size_t head_len, const char *reason, struct msgscan_outcome *o)
    __attribute__((warn_unused_result));
/* Free what is left in an outcome (msg with its budget, notice). */
void msgscan_outcome_clear(struct msgscan_outcome *o);

/* ---- remote verdict cache (Redis; registered per worker by whoever owns the connection) ---- */

struct msgscan_cache_key {
    unsigned char sha256[SHA256_LEN];
    const char *engine; /* scanner_version() of the engine that judged / would judge */
};
/* A cached verdict: only definitive ones (clean, infected) are cached. `ref` and `date` make the
 * notice of a cached infected message the same bytes as the first time. */
struct msgscan_cached {
    enum msgscan_verdict verdict; /* MSGSCAN_CLEAN or MSGSCAN_INFECTED */
    char signature[SCAN_SIGNATURE_MAX];
    char ref[SCAN_REF_MAX];
    time_t date; /* the first verdict's time: the notice's Date fallback */
};
/* `hit` NULL = miss (or the cache is unavailable: treated as a miss). Runs on the loop, once,
 * unless cancelled; `v` valid during the call. */
typedef void msgscan_cache_got_fn(void *arg, const struct msgscan_cached *hit);
struct msgscan_cache_ops {
    /* Start a lookup; returns a handle for cancel, or NULL = miss now (no callback). Must not
     * call back before returning. */
    void *(*get)(void *ctx, const struct msgscan_cache_key *k, msgscan_cache_got_fn *cb, void *arg);
    void (*cancel)(void *ctx, void *handle);
    /* Store for `ttl_ms` (scan.verdict_cache_ttl), fire and forget. */
    void (*put)(void *ctx, const struct msgscan_cache_key *k, const struct msgscan_cached *v,
                uint64_t ttl_ms);
};
/* On the worker's loop thread; NULL ops removes the hook. */
void msgscan_set_remote_cache(struct worker *w, const struct msgscan_cache_ops *ops, void *ctx);

/* ---- counters (process-wide; any thread) ---- */
struct msgscan_counters {
    uint64_t judged;     /* verdicts given (scanned, cached or oversize) */
    uint64_t scanned;    /* scans run by libclamav */
    uint64_t cache_hits; /* verdicts from the cache (local or remote) */
    uint64_t remote_hits;
    uint64_t clean, infected, oversize, error, limit; /* by verdict */
    uint64_t delivered, replaced;                     /* by action: original / notice */
    uint64_t quarantined, quarantine_failed;
    uint64_t scanned_bytes, scan_us; /* bytes given to libclamav, time in scans */
    uint64_t reloads, reload_failures;
    uint64_t notice_scans;   /* notices scanned before delivery */
    uint64_t notice_minimal; /* notices replaced by the minimal one (matched or not scanned) */
};
void msgscan_counters_get(struct msgscan_counters *c);
/* The scanner's canary state (scanner.h); false when scanning is off. Any thread. */
bool msgscan_scanner_health(struct scanner_health *h);
/* May a clean verdict reached at wall-clock `date` still be trusted? Not while the scanner is
 * broken, nor when `date` is inside a suspect window (scanner.h). Any thread. */
bool msgscan_clean_trusted(time_t date);

#endif
