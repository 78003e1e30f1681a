/*
 * scanner — the scanner-agnostic interface: build an engine from options, scan one whole message
 * held in memory, reload signatures, report an engine version for cache keys.
 *
 * libclamav (clamav.c) is the first implementation; a clamd INSTREAM one can follow behind the
 * same ops table. Nothing here knows about sessions, loops or protocols (scanners/ never
 * includes proxy/ headers).
 *
 * Threads: scanner_scan() may run on any number of threads at once (scan threads, never an
 * event-loop thread: it takes milliseconds to seconds). scanner_reload() blocks for as long as a
 * database load takes (seconds to minutes with the official databases): call it from a thread
 * of its own, or use scanner_reload_async(). A reload never disturbs scans in flight: they finish
 * on the engine they started with.
 */
#ifndef PORTCULLIS_SCANNER_H
#define PORTCULLIS_SCANNER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum scan_verdict {
    SCAN_CLEAN,    /* scanned completely, nothing found */
    SCAN_INFECTED, /* a signature matched: result.signature names it */
    SCAN_OVERSIZE, /* a size limit (max_scan_size, max_file_size) stopped the scan: not judged */
    SCAN_ERROR,    /* engine error or no engine: not judged */
    SCAN_LIMIT,    /* any other limit (recursion, file count, scan time, libclamav's email
                      parser limits, unknown ones) stopped the scan: not judged */
};

enum scan_reload_mode {
    SCAN_RELOAD_CONCURRENT, /* build the new engine beside the old one (2x memory for a while) */
    SCAN_RELOAD_LOWMEM,     /* pause new scans, drop the old engine, then build the new one */
};

/* Log hook: scanners/ has no logger of its own. Called from any thread (scan threads, the
 * reload thread); must be thread-safe. `msg` is plain text without a newline. level: 0 debug,
 * 1 info, 2 warn, 3 error (the numbering of proxy/log.h). */
typedef void scan_log_fn(void *arg, int level, const char *msg);

/* Canary state changes (scanner_health): `ok` false = the scanner turned broken, `why` says
 * why; true = the canary passed again. Called from the thread that ran the canary (never a
 * loop); must be thread-safe. */
typedef void scan_health_fn(void *arg, bool ok, const char *why);

struct scan_options {
    const char *database_dir; /* signature files (.cvd/.cld/.ndb/.hdb/...) or one file */
    const char *tmpdir;       /* parent of the private 0700 work dir; NULL = $TMPDIR or /tmp */
    uint64_t max_scan_size;   /* bytes: larger messages are SCAN_OVERSIZE without scanning;
                                 also libclamav's limit on bytes scanned incl. extracted parts */
    uint64_t max_file_size;   /* bytes, one extracted part or archive member */
    unsigned max_recursion;   /* archive / MIME nesting depth */
    unsigned max_files;       /* parts/members per message */
    uint64_t scan_timeout_ms; /* libclamav's own time limit; exceeded = SCAN_LIMIT */
    enum scan_reload_mode reload_mode;
    bool disable_cache; /* libclamav's clean-file cache off (scan.engine_cache; pitfall 6) */
    scan_log_fn *log;   /* may be NULL */
    void *log_arg;
    uint64_t work_min_free;      /* bytes the work dir's filesystem must have free beyond the
                                    message's size before a scan (0 = only "not full") */
    uint64_t canary_interval_ms; /* canary period (0 = only at start and after reloads) */
    scan_health_fn *health;      /* may be NULL; shares log_arg */
};

#define SCAN_SIGNATURE_MAX 128
#define SCAN_VERSION_MAX   128

struct scan_result {
    enum scan_verdict verdict;
    /* INFECTED: the signature name (copied out of the engine, NUL-terminated, cut to fit).
     * OVERSIZE/ERROR: why, e.g. "Heuristics.Limits.Exceeded.MaxScanSize", "size", "timeout",
     * "CL_EMEM: ...". CLEAN: "". */
    char signature[SCAN_SIGNATURE_MAX];
    /* The engine that judged (scanner_version() of that engine). Cache verdicts under this. */
    char engine_version[SCAN_VERSION_MAX];
    uint64_t generation; /* reload generation of that engine: 1 at init, +1 per reload */
    uint64_t epoch;      /* scanner_health().epoch when the scan started: a verdict whose epoch
                            is no longer current was produced by a scanner since found broken */
    uint64_t scanned_bytes;
    uint64_t elapsed_us;
};

struct scanner;

/* Failing closed (docs/scanning.md): a scan counts only if the engine demonstrably works. A
 * canary (built-in signature, one message per encoding the scanner handles) is scanned at
 * start, after every reload and every canary_interval; while it is not detected the scanner is
 * broken and every scan answers SCAN_ERROR. Clean verdicts dated inside a suspect window (from
 * the last passing canary before a failure to the recovery) must not be trusted from a cache. */
#define SCAN_SUSPECT_MAX 4
struct scanner_health {
    bool ok;        /* false: broken, every verdict is SCAN_ERROR */
    char why[256];  /* when broken: the failing check */
    uint64_t epoch; /* +1 each time the scanner turns broken */
    uint64_t canary_runs, canary_failures, work_dir_errors, engine_errors;
    unsigned nsuspect; /* windows below, oldest first */
    struct {
        int64_t from, to; /* wall-clock seconds, inclusive; to = INT64_MAX while open */
    } suspect[SCAN_SUSPECT_MAX];
};

/* Implementation table. Every function may be called from any thread unless noted. */
struct scanner_ops {
    const char *name;
    void (*scan)(struct scanner *s, const char *buf, size_t len, struct scan_result *r);
    bool (*reload)(struct scanner *s, const struct scan_options *o, char **error_r);
    void (*version)(struct scanner *s, char *buf, size_t cap);
    uint64_t (*generation)(struct scanner *s);
    void (*health)(struct scanner *s, struct scanner_health *h);
    bool (*canary)(struct scanner *s);
    void (*destroy)(struct scanner *s);
};

/* Every implementation's struct starts with this; scanner_base_init() fills it. */
struct scanner {
    const struct scanner_ops *ops;
    pthread_mutex_t async_mu; /* guards async_running */
    pthread_cond_t async_cv;  /* signalled when an async reload ends */
    bool async_running;       /* one async reload at a time */
};

/* For implementations: initialise / tear down the base part. */
bool scanner_base_init(struct scanner *s, const struct scanner_ops *ops);
void scanner_base_fini(struct scanner *s);

/* libclamav. Initialises libclamav once per process, creates the private work dir and builds
 * the first engine (blocking: call before the loops start). NULL + *error_r (malloc'd) on
 * failure. The options are copied. */
struct scanner *scanner_clamav_new(const struct scan_options *o, char **error_r)
    __attribute__((warn_unused_result));

/* Scan `len` bytes: the WHOLE message (headers and body, dot-stuffing undone). Always fills *r.
 * Blocking; never on an event-loop thread. The buffer is only read, and only during the call. */
void scanner_scan(struct scanner *s, const char *buf, size_t len, struct scan_result *r);

/* Build a new engine from `o` (NULL: the options in use) and swap it in. Blocking. Returns false
 * with *error_r (malloc'd) when the new engine cannot be built; in concurrent mode the old engine
 * then stays in service. Only one reload runs at a time (a second caller waits). */
bool scanner_reload(struct scanner *s, const struct scan_options *o, char **error_r)
    __attribute__((warn_unused_result));

/* Called on the reload thread when an async reload ends. `error` is NULL on success and valid
 * only during the call. Hand the result to a loop with ev_async if it needs one. */
typedef void scan_reload_done_fn(void *arg, bool ok, const char *error);

/* scanner_reload() on a thread of its own (detached). Returns false (and starts nothing) when a
 * reload is already running or the thread cannot be created. `o` is copied before returning.
 * `done` (may be NULL) is called exactly once, on the reload thread. The scanner must not be
 * destroyed while a reload runs (scanner_destroy waits for it). */
bool scanner_reload_async(struct scanner *s, const struct scan_options *o,
                          scan_reload_done_fn *done, void *arg);

/* Version string of the engine new scans use, e.g.
 * "clamav-1.4.6/db-27500/sigs-8712345/fp-3a9c1e0b77d2": the library version, the database
 * version and signature count, and a fingerprint of the database files' contents, so that two
 * instances with the same databases share cache entries and any signature change makes a new
 * key. Always NUL-terminated. */
void scanner_version(struct scanner *s, char *buf, size_t cap);
/* 1 after init, +1 per successful reload. */
uint64_t scanner_generation(struct scanner *s);

/* Current canary state. Any thread. */
void scanner_health(struct scanner *s, struct scanner_health *h);
/* Is a clean verdict dated `date` (wall-clock seconds) inside a suspect window of `h`? */
bool scanner_health_suspect(const struct scanner_health *h, int64_t date);
/* Scan the canary now (blocking; a scan thread or the reload thread, never a loop). True when
 * every variant was detected. Updates the state and calls the health hook on a change; a canary
 * cut short by scan_timeout_ms is inconclusive (false, the state stays as it was). */
bool scanner_canary(struct scanner *s);

/* Waits for a running async reload, frees the engine (scans must have ended), removes the work
 * dir, NULLs *s. NULL-safe. */
void scanner_destroy(struct scanner **s);

const char *scan_verdict_name(enum scan_verdict v);

/* What kind of limit a libclamav limit heuristic ("Heuristics.Limits.Exceeded.*") names:
 * SCAN_OVERSIZE for the size limits the operator sets as sizes (MaxScanSize, MaxFileSize),
 * SCAN_LIMIT for every other name — the structural ones (MaxRecursion, MaxFiles, MaxScanTime,
 * the Email* parser limits) and any name this build does not know (default deny). NULL (what
 * libclamav reports for an over-size top-level file) is MaxFileSize. Pure. */
enum scan_verdict scan_limit_kind(const char *name);

#endif
