/*
 * clamav — the libclamav implementation of scanner.h.
 *
 * One compiled engine serves every scan thread. A scan takes a reference (cl_engine_addref)
 * under `mu`, scans without any lock, copies the signature name out, then drops the reference
 * (cl_engine_free), so a reload can swap engines at any time: scans in flight finish on the
 * engine they took, and the old engine is freed by whoever drops the last reference.
 *
 * Traps this file exists to avoid (shared/libs-notes.md, measured):
 *  - over-limit content comes back CL_CLEAN unless GENERAL_HEURISTICS + HEURISTIC_EXCEEDS_MAX
 *    are on; then it is CL_VIRUS "Heuristics.Limits.Exceeded.*", or CL_VIRUS with a NULL name
 *    for an over-size top-level file (pitfall 1). Size limits map to SCAN_OVERSIZE, every other
 *    limit (recursion, files, scan time, email parser limits, unknown names) to SCAN_LIMIT
 *    (scan_limit_kind);
 *  - a message whose first header is unknown to libclamav's magic table can be typed as plain
 *    text and its attachments never decoded (pitfall 2): every scan sees a synthetic
 *    "Received:" line first, served by a pread callback over prefix + buffer (no copy);
 *  - only some parsers enabled misses packed/OLE2/PDF content (pitfall 3): parse = ~0;
 *  - decoded parts are written under CL_ENGINE_TMPDIR even for memory scans (pitfall 4): each
 *    scanner gets a private 0700 directory, removed on destroy;
 *  - virname points into the engine (pitfall 7): copied before the reference is dropped;
 *  - a work dir that is removed, read-only or on a full filesystem makes libclamav answer
 *    CL_CLEAN for infected mail (issue 16, measured with 1.4: removed or read-only: 7 of 7
 *    EICAR forms clean, each with a CL_MSG_ERROR "Can't create temporary directory"; full
 *    tmpfs: 5 of 7 clean and nothing logged). So a scan counts only if (a) the work dir passed
 *    work_dir_check() just before (repaired when it can be), (b) libclamav logged no error on
 *    this thread during the scan (tl_watch), and (c) the canary (canary.h) passes: it runs at
 *    start, after every reload, every canary_interval and soon after any fault; while it fails
 *    the scanner is broken and every scan answers SCAN_ERROR (fail closed).
 *
 * Limits are engine settings, which libclamav forbids changing on an engine in use, so new
 * limits take effect with the next reload (a fresh engine).
 */
#include "scanner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <clamav.h>
#include <openssl/evp.h>

#include "canary.h"
#include "errorf.h"

/* Any header libclamav's magic table types as mail (libclamav filetypes_int.h). */
static const char MAIL_PREFIX[] = "Received: by portcullis\r\n";
#define MAIL_PREFIX_LEN (sizeof MAIL_PREFIX - 1)

#define LIMITS_PREFIX "Heuristics.Limits.Exceeded"
/* Extracted content (decoded base64, unpacked archives) counts toward libclamav's scan-size
 * limit on top of the message itself; a 20 MiB message with a 15 MiB attachment scans about
 * 35 MiB. The message-size check is ours (max_scan_size); the engine gets room for extraction. */
#define SCANSIZE_FACTOR 4
#define MAX_DB_FILES    4096 /* files fingerprinted in a database directory */
#define CANARY_RETRY_MS 2000 /* canary period while broken, and the least gap between runs */
#define CANARY_DB_NAME  "portcullis-canary.ndb"

struct cav {
    struct scanner base;
    pthread_mutex_t mu;       /* guards everything below except reload_mu and work_dir */
    pthread_cond_t cv;        /* paused -> running, inflight -> 0 */
    struct cl_engine *engine; /* current; one reference held by us; NULL only after a failed
                                 low-memory reload */
    char version[SCAN_VERSION_MAX];
    uint64_t generation;
    unsigned inflight; /* scans holding any engine (low-memory reload waits for 0) */
    bool paused;       /* low-memory reload in progress: new scans wait */

    pthread_mutex_t reload_mu;  /* one reload at a time; guards opts and the strings */
    struct scan_options opts;   /* in use; strings below */
    char *database_dir;         /* owned */
    char work_dir[PATH_MAX];    /* private CL_ENGINE_TMPDIR, fixed for the scanner's life */
    uint64_t max_scan_size;     /* copy readable without reload_mu (scan threads) */
    _Atomic(scan_log_fn *) log; /* readable from any thread */
    void *_Atomic log_arg;
    _Atomic(scan_health_fn *) health_fn;
    _Atomic uint64_t work_min_free;
    _Atomic uint64_t canary_interval_ms;

    /* Canary state (scanner.h struct scanner_health), guarded by hmu. */
    pthread_mutex_t hmu;
    pthread_cond_t hcv; /* wakes the canary thread: stop, kick */
    struct scanner_health h;
    _Atomic bool broken; /* h.ok == false, readable by scans without hmu */
    int64_t last_ok;     /* wall-clock second of the last passing canary */
    bool kick, stop;     /* canary thread: run soon / exit */
    bool thread_started;
    pthread_t thread;
    pthread_mutex_t canary_mu; /* one canary run at a time */
};

/* ---- logging ------------------------------------------------------------------------------ */

/* libclamav's message hook is process-wide; it forwards to the last scanner created (a process
 * has one). */
static _Atomic(struct cav *) msg_target;

static void cav_log(struct cav *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cav_log(struct cav *c, int level, const char *fmt, ...)
{
    scan_log_fn *fn = atomic_load(&c->log);
    if (!fn)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(atomic_load(&c->log_arg), level, msg);
}

/* Set on a scan thread while libclamav scans for it: an error message during the scan means the
 * scan did not demonstrably run (its temp files failed), whatever it returns. libclamav calls
 * the message hook on the scanning thread. */
struct scan_watch {
    bool error;
    char first[160]; /* the first error message */
};
static _Thread_local struct scan_watch *tl_watch;

static void clam_msg(enum cl_msg severity, const char *fullmsg, const char *msg, void *context)
{
    (void)fullmsg;
    (void)context;
    struct scan_watch *w = tl_watch;
    if (w && severity == CL_MSG_ERROR && !w->error) {
        w->error = true;
        size_t n = msg ? strlen(msg) : 0;
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
            n--;
        snprintf(w->first, sizeof w->first, "%.*s", (int)n, msg ? msg : "");
    }
    struct cav *c = atomic_load(&msg_target);
    if (!c || severity == CL_MSG_INFO_VERBOSE || !msg)
        return;
    char line[512];
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        n--;
    snprintf(line, sizeof line, "libclamav: %.*s", (int)n, msg);
    cav_log(c, severity == CL_MSG_ERROR ? 3 : 2, "%s", line);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static cl_error_t init_rc = CL_SUCCESS;

static void clam_global_init(void)
{
    cl_set_clcb_msg(clam_msg);
    init_rc = cl_init(CL_INIT_DEFAULT);
}

/* ---- database fingerprint --------------------------------------------------------------- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool hash_file(EVP_MD_CTX *md, const char *path, const char *name)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    EVP_DigestUpdate(md, name, strlen(name) + 1);
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return n == 0;
        }
        EVP_DigestUpdate(md, buf, (size_t)n);
    }
}

/* sha256 over the names and contents of the regular files in `dir` (sorted), or of `dir` when
 * it is a file. Content, not mtimes: instances that downloaded the same databases at different
 * times must produce the same cache keys. Runs on the reload thread; reading the official
 * databases (~300 MB) costs well under a second next to a load of tens of seconds. */
static bool db_fingerprint(const char *dir, char hex[13], char **error_r)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        *error_r = errorf("%s: %s", dir, strerror(errno));
        return false;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(md);
        *error_r = errorf("sha256 unavailable");
        return false;
    }
    bool ok = true;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(dir);
        char **names = d ? calloc(MAX_DB_FILES, sizeof *names) : NULL;
        size_t n = 0;
        struct dirent *de;
        while (names && (de = readdir(d)) != NULL && n < MAX_DB_FILES) {
            if (de->d_name[0] == '.')
                continue;
            names[n] = strdup(de->d_name);
            if (!names[n]) {
                ok = false;
                break;
            }
            n++;
        }
        if (!d || !names)
            ok = false;
        if (ok)
            qsort(names, n, sizeof *names, cmp_names);
        char path[PATH_MAX];
        for (size_t i = 0; ok && i < n; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && !hash_file(md, path, names[i]))
                ok = false;
        }
        for (size_t i = 0; names && i < n; i++)
            free(names[i]);
        free(names);
        if (d)
            closedir(d);
    } else {
        ok = hash_file(md, dir, "");
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;
    if (!EVP_DigestFinal_ex(md, out, &outlen) || outlen < 6)
        ok = false;
    EVP_MD_CTX_free(md);
    if (!ok) {
        *error_r = errorf("%s: cannot read the signature files: %s", dir, strerror(errno));
        return false;
    }
    for (int i = 0; i < 6; i++)
        snprintf(hex + 2 * i, 3, "%02x", out[i]);
    return true;
}

/* ---- work directory ---------------------------------------------------------------------- */

static void health_note(struct cav *c, bool work_dir);

/* snprintf for reasons (paths may be long: cut, never an error). */
static void whyf(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void whyf(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
}

/* Is the work dir usable for a scan of `need` bytes? Repairs what it safely can: a missing dir
 * is made again (0700), our own dir with other modes gets 0700 back. Anything else (something
 * not ours in its place, a read-only or full filesystem, a parent we cannot write) is a
 * failure: the scan must not run, because libclamav would answer CL_CLEAN. Cheap (lstat,
 * access, statvfs): runs before every scan, on the scan thread. */
static bool work_dir_check(struct cav *c, uint64_t need, char *why, size_t cap)
{
    struct stat st;
    if (lstat(c->work_dir, &st) != 0) {
        if (errno != ENOENT) {
            whyf(why, cap, "work directory %s: %s", c->work_dir, strerror(errno));
            return false;
        }
        if (mkdir(c->work_dir, 0700) != 0 && errno != EEXIST) {
            whyf(why, cap, "work directory %s is gone and cannot be made again: %s", c->work_dir,
                 strerror(errno));
            return false;
        }
        cav_log(c, 2, "scan work directory %s was missing: made again", c->work_dir);
        if (lstat(c->work_dir, &st) != 0) {
            whyf(why, cap, "work directory %s: %s", c->work_dir, strerror(errno));
            return false;
        }
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        whyf(why, cap, "work directory not a directory of ours: %s", c->work_dir);
        return false;
    }
    if ((st.st_mode & 07777) != 0700 && chmod(c->work_dir, 0700) != 0) {
        whyf(why, cap, "work directory %s has mode %04o and cannot be repaired: %s", c->work_dir,
             (unsigned)(st.st_mode & 07777), strerror(errno));
        return false;
    }
    if (access(c->work_dir, W_OK | X_OK) != 0) {
        whyf(why, cap, "work directory not writable (%s): %s", strerror(errno), c->work_dir);
        return false;
    }
    struct statvfs vf;
    if (statvfs(c->work_dir, &vf) != 0) {
        whyf(why, cap, "work directory %s: statvfs: %s", c->work_dir, strerror(errno));
        return false;
    }
    if (vf.f_flag & ST_RDONLY) {
        whyf(why, cap, "work directory on a read-only filesystem: %s", c->work_dir);
        return false;
    }
    uint64_t avail = (uint64_t)vf.f_bavail * (uint64_t)vf.f_frsize;
    uint64_t want = atomic_load(&c->work_min_free) + need;
    if (avail == 0 || avail < want || (vf.f_files > 0 && vf.f_favail == 0)) {
        whyf(why, cap,
             "work directory filesystem full (%llu bytes and %llu inodes free, %llu "
             "needed): %s",
             (unsigned long long)avail, (unsigned long long)vf.f_favail,
             (unsigned long long)(want ? want : 1), c->work_dir);
        return false;
    }
    return true;
}

/* ---- engine ------------------------------------------------------------------------------ */

static bool set_num(struct cl_engine *e, enum cl_engine_field f, long long v, char **error_r)
{
    cl_error_t rc = cl_engine_set_num(e, f, v);
    if (rc != CL_SUCCESS) {
        *error_r = errorf("cl_engine_set_num(%d, %lld): %s", (int)f, v, cl_strerror(rc));
        return false;
    }
    return true;
}

static long long clamp32(uint64_t v)
{
    /* libclamav keeps these limits in 32-bit fields. */
    return v > UINT32_MAX ? (long long)UINT32_MAX : (long long)v;
}

/* The canary's signature, in every engine: written to the work dir (cl_load wants a file whose
 * name says its type), loaded, removed. */
static bool load_canary(struct cav *c, struct cl_engine *e, unsigned *sigs, char **error_r)
{
    char why[256];
    if (!work_dir_check(c, 0, why, sizeof why)) {
        *error_r = errorf("canary signature: %s", why);
        return false;
    }
    char line[512], path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/" CANARY_DB_NAME, c->work_dir);
    int fd = canary_ndb(line, sizeof line)
                 ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600)
                 : -1;
    size_t n = strlen(line);
    bool ok = fd >= 0 && write(fd, line, n) == (ssize_t)n;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    cl_error_t rc = ok ? cl_load(path, e, sigs, CL_DB_STDOPT) : CL_EWRITE;
    int err = errno;
    (void)unlink(path);
    if (!ok || rc != CL_SUCCESS) {
        *error_r = errorf("canary signature %s: %s", path, ok ? cl_strerror(rc) : strerror(err));
        return false;
    }
    return true;
}

/* Is `name` a signature database libclamav loads from a directory? (libclamav's CLI_DBEXT list;
 * .info, .cfg and .ign files alone hold no signatures.) */
static bool is_db_file(const char *name)
{
    static const char *const ext[] = {
        "cvd", "cld", "cud", "hdb", "hsb", "hdu", "hsu", "mdb",  "msb",  "mdu", "msu",
        "ndb", "ndu", "ldb", "ldu", "sdb", "zmd", "rmd", "idb",  "fp",   "sfp", "gdb",
        "pdb", "wdb", "cdb", "crb", "cat", "ftm", "yar", "yara", "pwdb", "imp", "cbc"};
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name)
        return false;
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (strcmp(dot + 1, ext[i]) == 0)
            return true;
    return false;
}

/* A directory without one signature file: cl_load() would only say "Can't open file or
 * directory" about a directory that is there. Say what is missing and where it comes from. */
static bool has_db_files(const char *dir, char **error_r)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return true; /* a single file, or an error db_fingerprint reported */
    DIR *d = opendir(dir);
    if (!d) {
        *error_r = errorf("scan.database_dir %s: %s", dir, strerror(errno));
        return false;
    }
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL)
        found = de->d_name[0] != '.' && is_db_file(de->d_name);
    closedir(d);
    if (!found)
        *error_r = errorf("scan.database_dir %s holds no signature files (.cvd, .cld, .ndb, .hdb, "
                          "…): run freshclam (package clamav-freshclam) to download the ClamAV "
                          "databases, or turn scanning off (scan.enabled: false)",
                          dir);
    return found;
}

/* Build and compile an engine. Blocking (seconds to minutes with the official databases). */
static struct cl_engine *engine_build(struct cav *c, const struct scan_options *o, char *version_r,
                                      size_t cap, char **error_r)
{
    char fp[13];
    if (!db_fingerprint(o->database_dir, fp, error_r) || !has_db_files(o->database_dir, error_r))
        return NULL;
    struct cl_engine *e = cl_engine_new();
    if (!e) {
        *error_r = errorf("cl_engine_new failed");
        return NULL;
    }
    bool ok =
        set_num(e, CL_ENGINE_MAX_SCANSIZE, clamp32(o->max_scan_size * SCANSIZE_FACTOR), error_r) &&
        set_num(e, CL_ENGINE_MAX_FILESIZE, clamp32(o->max_file_size + MAIL_PREFIX_LEN), error_r) &&
        set_num(e, CL_ENGINE_MAX_RECURSION, o->max_recursion, error_r) &&
        set_num(e, CL_ENGINE_MAX_FILES, o->max_files, error_r) &&
        set_num(e, CL_ENGINE_MAX_SCANTIME, clamp32(o->scan_timeout_ms), error_r) &&
        (!o->disable_cache || set_num(e, CL_ENGINE_DISABLE_CACHE, 1, error_r));
    if (ok) {
        cl_error_t rc = cl_engine_set_str(e, CL_ENGINE_TMPDIR, c->work_dir);
        if (rc != CL_SUCCESS) {
            *error_r = errorf("cl_engine_set_str(TMPDIR): %s", cl_strerror(rc));
            ok = false;
        }
    }
    unsigned int sigs = 0;
    if (ok) {
        cl_error_t rc = cl_load(o->database_dir, e, &sigs, CL_DB_STDOPT);
        if (rc != CL_SUCCESS) {
            *error_r = errorf("scan.database_dir %s: the signatures cannot be loaded: %s (a "
                              "damaged or partial download? run freshclam again)",
                              o->database_dir, cl_strerror(rc));
            ok = false;
        } else if (sigs == 0) {
            /* An engine without signatures would call everything clean. */
            *error_r = errorf("scan.database_dir %s: no signatures found in its files: run "
                              "freshclam (package clamav-freshclam) to download the ClamAV "
                              "databases",
                              o->database_dir);
            ok = false;
        }
    }
    if (ok)
        ok = load_canary(c, e, &sigs, error_r);
    if (ok) {
        cl_error_t rc = cl_engine_compile(e);
        if (rc != CL_SUCCESS) {
            *error_r = errorf("cl_engine_compile: %s", cl_strerror(rc));
            ok = false;
        }
    }
    if (!ok) {
        cl_engine_free(e);
        return NULL;
    }
    int err = 0;
    long long dbver = cl_engine_get_num(e, CL_ENGINE_DB_VERSION, &err);
    if (err != CL_SUCCESS)
        dbver = 0;
    snprintf(version_r, cap, "clamav-%s/db-%lld/sigs-%u/fp-%s", cl_retver(), dbver, sigs, fp);
    return e;
}

/* ---- scanning ---------------------------------------------------------------------------- */

struct prefixed {
    const char *buf;
    size_t len;
};

/* pread over the virtual file MAIL_PREFIX + buf. */
static off_t prefixed_pread(void *handle, void *out, size_t count, off_t offset)
{
    const struct prefixed *p = handle;
    size_t total = MAIL_PREFIX_LEN + p->len, off = (size_t)offset, done = 0;
    if (offset < 0 || off >= total)
        return 0;
    if (count > total - off)
        count = total - off;
    if (off < MAIL_PREFIX_LEN) {
        size_t n = MAIL_PREFIX_LEN - off;
        if (n > count)
            n = count;
        memcpy(out, MAIL_PREFIX + off, n);
        done = n;
        off += n;
    }
    if (done < count)
        memcpy((char *)out + done, p->buf + (off - MAIL_PREFIX_LEN), count - done);
    return (off_t)count;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void set_name(struct scan_result *r, const char *name)
{
    whyf(r->signature, sizeof r->signature, "%s", name ? name : ""); /* cut to fit */
}

/* Classify a CL_VIRUS answer. Limit heuristics are "not judged", not "infected": size limits
 * follow the over-size action, every other limit the limits action (scan_limit_kind). */
static void classify_virus(struct scan_result *r, const char *name)
{
    if (!name) {
        r->verdict = scan_limit_kind(NULL);
        set_name(r, LIMITS_PREFIX ".MaxFileSize");
    } else if (strncmp(name, LIMITS_PREFIX, sizeof LIMITS_PREFIX - 1) == 0) {
        r->verdict = scan_limit_kind(name);
        set_name(r, name);
    } else {
        r->verdict = SCAN_INFECTED;
        set_name(r, name);
    }
}

/* One scan. `canary`: the canary's own scans, which run even while the scanner is broken. */
static void scan_one(struct cav *c, const char *buf, size_t len, struct scan_result *r, bool canary)
{
    memset(r, 0, sizeof *r);
    uint64_t t0 = now_us();

    pthread_mutex_lock(&c->mu);
    while (c->paused)
        pthread_cond_wait(&c->cv, &c->mu);
    struct cl_engine *e = c->engine;
    if (e) {
        cl_engine_addref(e);
        c->inflight++;
    }
    memcpy(r->engine_version, c->version, sizeof r->engine_version);
    r->generation = c->generation;
    uint64_t max = c->max_scan_size;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&c->hmu);
    r->epoch = c->h.epoch;
    pthread_mutex_unlock(&c->hmu);

    if (!e) {
        r->verdict = SCAN_ERROR;
        set_name(r, "no engine (signature load failed)");
        return;
    }
    char why[SCAN_SIGNATURE_MAX + 256];
    struct scan_watch watch = {0};
    if (!canary && atomic_load(&c->broken)) {
        /* Fail closed: the canary is not detected, so no verdict of this engine counts. */
        r->verdict = SCAN_ERROR;
        set_name(r, "scanner broken: canary not detected");
    } else if (len <= max && !work_dir_check(c, len, why, sizeof why)) {
        r->verdict = SCAN_ERROR;
        set_name(r, why);
        if (!canary) {
            cav_log(c, 3, "scan refused: %s", why);
            health_note(c, true);
        }
    } else if (len > max) {
        r->verdict = SCAN_OVERSIZE;
        set_name(r, "size");
    } else {
        struct prefixed p = {buf, len};
        cl_fmap_t *map = cl_fmap_open_handle(&p, 0, MAIL_PREFIX_LEN + len, prefixed_pread, 0);
        if (!map) {
            r->verdict = SCAN_ERROR;
            set_name(r, "cl_fmap_open_handle failed");
        } else {
            struct cl_scan_options so = {0};
            so.parse = ~0u;
            so.general = CL_SCAN_GENERAL_HEURISTICS;
            so.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
            const char *virname = NULL;
            unsigned long scanned = 0;
            tl_watch = &watch;
            cl_error_t rc = cl_scanmap_callback(map, NULL, &virname, &scanned, e, &so, NULL);
            tl_watch = NULL;
            cl_fmap_close(map);
            /* libclamav counts in CL_COUNT_PRECISION (4096-byte) units. */
            r->scanned_bytes = (uint64_t)scanned * CL_COUNT_PRECISION;
            if (rc == CL_CLEAN) {
                r->verdict = SCAN_CLEAN;
            } else if (rc == CL_VIRUS) {
                classify_virus(r, virname); /* copies the name while we hold the engine */
            } else if (rc == CL_ETIMEOUT) {
                r->verdict = SCAN_LIMIT; /* scan_timeout_ms: a structural limit, not an error */
                set_name(r, LIMITS_PREFIX ".MaxScanTime");
            } else if (rc == CL_EMAXSIZE) {
                r->verdict = SCAN_OVERSIZE;
                set_name(r, cl_strerror(rc));
            } else if (rc == CL_EMAXFILES || rc == CL_EMAXREC) {
                r->verdict = SCAN_LIMIT;
                set_name(r, cl_strerror(rc));
            } else {
                /* CL_ETMPDIR, CL_ETMPFILE, CL_EWRITE, CL_ECREAT, CL_EOPEN, CL_EMEM, ...: every
                 * code not handled above is an error, never a verdict. */
                r->verdict = SCAN_ERROR;
                set_name(r, cl_strerror(rc));
            }
            /* A time-out cuts the work short and libclamav logs the interrupted steps as errors:
             * that is the limit itself (limits_action), not a failed temp file. */
            if (watch.error && r->verdict != SCAN_INFECTED && rc != CL_ETIMEOUT) {
                /* libclamav failed part of the work (a temp file) and went on: a clean (or
                 * limit) answer proves nothing. An infected one stands: something matched. */
                snprintf(why, sizeof why, "libclamav: %s", watch.first);
                r->verdict = SCAN_ERROR;
                set_name(r, why);
                if (!canary)
                    health_note(c, false);
            }
        }
    }
    cl_engine_free(e); /* drops our reference; frees a swapped-out engine on the last one */
    pthread_mutex_lock(&c->mu);
    if (--c->inflight == 0)
        pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    r->elapsed_us = now_us() - t0;
}

static void cav_scan(struct scanner *s, const char *buf, size_t len, struct scan_result *r)
{
    scan_one((struct cav *)s, buf, len, r, false);
}

/* ---- canary ------------------------------------------------------------------------------ */

static int64_t wall_now(void)
{
    return (int64_t)time(NULL);
}

/* A scan found a fault (work dir, libclamav error): count it and have the canary run soon, so
 * the scanner is marked broken without waiting for the next period. */
static void health_note(struct cav *c, bool work_dir)
{
    pthread_mutex_lock(&c->hmu);
    if (work_dir)
        c->h.work_dir_errors++;
    else
        c->h.engine_errors++;
    c->kick = true;
    pthread_cond_signal(&c->hcv);
    pthread_mutex_unlock(&c->hmu);
}

/* Record one canary result; returns whether the state changed. Opens a suspect window at the
 * last passing canary when the scanner turns broken (verdicts since then may be false) and
 * closes it when it recovers. Called with hmu held. */
static bool health_record(struct cav *c, bool ok, const char *why)
{
    struct scanner_health *h = &c->h;
    int64_t now = wall_now();
    h->canary_runs++;
    if (ok) {
        c->last_ok = now;
        if (h->ok)
            return false;
        h->ok = true;
        h->why[0] = '\0';
        if (h->nsuspect > 0)
            h->suspect[h->nsuspect - 1].to = now;
        atomic_store(&c->broken, false);
        return true;
    }
    h->canary_failures++;
    snprintf(h->why, sizeof h->why, "%s", why);
    if (!h->ok)
        return false;
    h->ok = false;
    h->epoch++;
    atomic_store(&c->broken, true);
    if (h->nsuspect == SCAN_SUSPECT_MAX) {
        /* Merge the two oldest: a wider window only costs scans. */
        h->suspect[1].from = h->suspect[0].from;
        memmove(&h->suspect[0], &h->suspect[1], sizeof h->suspect[0] * (SCAN_SUSPECT_MAX - 1));
        h->nsuspect--;
    }
    h->suspect[h->nsuspect].from = c->last_ok;
    h->suspect[h->nsuspect].to = INT64_MAX;
    h->nsuspect++;
    return true;
}

static bool cav_canary(struct scanner *s)
{
    struct cav *c = (struct cav *)s;
    pthread_mutex_lock(&c->canary_mu);
    struct canary_msg m[CANARY_VARIANTS];
    char why[256] = "";
    bool ok = canary_build(m);
    bool timed_out = false;
    if (!ok)
        snprintf(why, sizeof why, "out of memory building the canary");
    for (int i = 0; ok && !timed_out && i < CANARY_VARIANTS; i++) {
        struct scan_result r;
        scan_one(c, m[i].data, m[i].len, &r, true);
        if (r.verdict == SCAN_LIMIT && strstr(r.signature, "MaxScanTime")) {
            /* The admin's scan_timeout cut the canary short: that proves nothing either way
             * (the scans it would judge end as the same limit, under limits_action), so the
             * state stays as it was and the canary tries again at its next run. */
            snprintf(why, sizeof why,
                     "variant=%s timed out (scan_timeout shorter than the "
                     "canary needs)",
                     m[i].name);
            timed_out = true;
        } else if (r.verdict != SCAN_INFECTED ||
                   strncmp(r.signature, CANARY_SIG, strlen(CANARY_SIG)) != 0) {
            snprintf(why, sizeof why, "variant=%s verdict=%s detail=%s", m[i].name,
                     scan_verdict_name(r.verdict), r.signature[0] ? r.signature : "-");
            ok = false;
        }
    }
    if (m[0].data)
        canary_free(m);
    if (ok && timed_out) {
        cav_log(c, 2, "scan canary inconclusive: %s", why);
        pthread_mutex_unlock(&c->canary_mu);
        return false;
    }
    pthread_mutex_lock(&c->hmu);
    bool changed = health_record(c, ok, why);
    pthread_mutex_unlock(&c->hmu);
    if (changed) {
        scan_health_fn *fn = atomic_load(&c->health_fn);
        if (fn)
            fn(atomic_load(&c->log_arg), ok, why);
    }
    pthread_mutex_unlock(&c->canary_mu);
    return ok;
}

static void cav_health(struct scanner *s, struct scanner_health *h)
{
    struct cav *c = (struct cav *)s;
    pthread_mutex_lock(&c->hmu);
    *h = c->h;
    pthread_mutex_unlock(&c->hmu);
}

/* Runs the canary every canary_interval (CANARY_RETRY_MS while broken), and soon after a scan
 * reported a fault, but never more often than every CANARY_RETRY_MS. */
static void *canary_thread(void *p)
{
    struct cav *c = p;
    pthread_mutex_lock(&c->hmu);
    for (;;) {
        uint64_t ms = atomic_load(&c->canary_interval_ms);
        if (!c->h.ok && (ms == 0 || ms > CANARY_RETRY_MS))
            ms = CANARY_RETRY_MS;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        struct timespec least = until;
        least.tv_sec += CANARY_RETRY_MS / 1000;
        until.tv_sec += (time_t)(ms ? ms / 1000 : 86400);
        until.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        /* The least gap first (a burst of faults must not make the canary run all the time). */
        while (!c->stop && pthread_cond_timedwait(&c->hcv, &c->hmu, &least) != ETIMEDOUT)
            ;
        while (!c->stop && !c->kick &&
               pthread_cond_timedwait(&c->hcv, &c->hmu, &until) != ETIMEDOUT)
            ;
        if (c->stop)
            break;
        c->kick = false;
        pthread_mutex_unlock(&c->hmu);
        (void)cav_canary(&c->base);
        pthread_mutex_lock(&c->hmu);
    }
    pthread_mutex_unlock(&c->hmu);
    return NULL;
}
/* ---- lifecycle --------------------------------------------------------------------------- */

static bool opts_adopt(struct cav *c, const struct scan_options *o, char **error_r)
{
    if (!o->database_dir || !o->database_dir[0]) {
        *error_r = errorf("no signature database directory configured");
        return false;
    }
    char *dir = strdup(o->database_dir);
    if (!dir) {
        *error_r = errorf("out of memory");
        return false;
    }
    free(c->database_dir);
    c->database_dir = dir;
    c->opts = *o;
    c->opts.database_dir = c->database_dir;
    c->opts.tmpdir = NULL; /* fixed at creation */
    atomic_store(&c->log, o->log);
    atomic_store(&c->log_arg, o->log_arg);
    atomic_store(&c->health_fn, o->health);
    atomic_store(&c->work_min_free, o->work_min_free);
    atomic_store(&c->canary_interval_ms, o->canary_interval_ms);
    return true;
}

static void install(struct cav *c, struct cl_engine *e, const char *version, bool bump)
{
    pthread_mutex_lock(&c->mu);
    c->engine = e;
    snprintf(c->version, sizeof c->version, "%s", version);
    if (bump)
        c->generation++;
    c->max_scan_size = c->opts.max_scan_size;
    pthread_mutex_unlock(&c->mu);
}

static bool reload_concurrent(struct cav *c, const struct scan_options *o, char **error_r)
{
    char version[SCAN_VERSION_MAX];
    struct cl_engine *e = engine_build(c, o, version, sizeof version, error_r);
    if (!e)
        return false;
    if (!opts_adopt(c, o, error_r)) {
        cl_engine_free(e);
        return false;
    }
    pthread_mutex_lock(&c->mu);
    struct cl_engine *old = c->engine;
    pthread_mutex_unlock(&c->mu);
    install(c, e, version, true);
    if (old)
        cl_engine_free(old); /* scans still holding it keep it alive until they end */
    return true;
}

/* Never two engines at once: wait for scans in flight to end (new ones wait for us), free the
 * old engine, build the new one. If the new one fails, the previous options are tried again so
 * that the service comes back; if that fails too, scans answer SCAN_ERROR until a reload
 * succeeds. */
static bool reload_lowmem(struct cav *c, const struct scan_options *o, char **error_r)
{
    pthread_mutex_lock(&c->mu);
    c->paused = true;
    while (c->inflight > 0)
        pthread_cond_wait(&c->cv, &c->mu);
    struct cl_engine *old = c->engine;
    c->engine = NULL;
    pthread_mutex_unlock(&c->mu);
    if (old)
        cl_engine_free(old);

    char version[SCAN_VERSION_MAX];
    struct cl_engine *e = engine_build(c, o, version, sizeof version, error_r);
    bool ok = e && opts_adopt(c, o, error_r);
    if (!ok && e) {
        cl_engine_free(e);
        e = NULL;
    }
    if (!ok) {
        char *again = NULL;
        e = engine_build(c, &c->opts, version, sizeof version, &again);
        if (!e)
            cav_log(c, 3, "low-memory reload: the previous databases failed too: %s",
                    again ? again : "?");
        free(again);
    }
    pthread_mutex_lock(&c->mu);
    c->engine = e;
    if (e) {
        snprintf(c->version, sizeof c->version, "%s", version);
        if (ok)
            c->generation++;
    } else {
        snprintf(c->version, sizeof c->version, "none");
    }
    c->max_scan_size = c->opts.max_scan_size;
    c->paused = false;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static bool cav_reload(struct scanner *s, const struct scan_options *o, char **error_r)
{
    struct cav *c = (struct cav *)s;
    *error_r = NULL;
    pthread_mutex_lock(&c->reload_mu);
    struct scan_options use = o ? *o : c->opts;
    bool ok = use.reload_mode == SCAN_RELOAD_LOWMEM ? reload_lowmem(c, &use, error_r)
                                                    : reload_concurrent(c, &use, error_r);
    if (ok)
        cav_log(c, 1, "signatures reloaded: %s (generation %llu)", c->version,
                (unsigned long long)c->generation);
    pthread_mutex_unlock(&c->reload_mu);
    /* After every reload, failed ones too (a low-memory reload may have left no engine). */
    (void)cav_canary(s);
    return ok;
}

static void cav_version(struct scanner *s, char *buf, size_t cap)
{
    struct cav *c = (struct cav *)s;
    pthread_mutex_lock(&c->mu);
    snprintf(buf, cap, "%s", c->version);
    pthread_mutex_unlock(&c->mu);
}

static uint64_t cav_generation(struct scanner *s)
{
    struct cav *c = (struct cav *)s;
    pthread_mutex_lock(&c->mu);
    uint64_t g = c->generation;
    pthread_mutex_unlock(&c->mu);
    return g;
}

/* The work dir holds only libclamav's temp files, which it removes after each scan; anything
 * left (a crash mid-scan) is removed here, one level deep as libclamav creates them. */
static void remove_work_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char path[PATH_MAX];
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            if (unlink(path) != 0)
                (void)rmdir(path);
        }
        closedir(d);
    }
    (void)rmdir(dir);
}

static void cav_destroy(struct scanner *s)
{
    struct cav *c = (struct cav *)s;
    struct cav *self = c;
    atomic_compare_exchange_strong(&msg_target, &self, NULL);
    if (c->thread_started) {
        pthread_mutex_lock(&c->hmu);
        c->stop = true;
        pthread_cond_broadcast(&c->hcv);
        pthread_mutex_unlock(&c->hmu);
        pthread_join(c->thread, NULL);
    }
    if (c->engine)
        cl_engine_free(c->engine);
    if (c->work_dir[0])
        remove_work_dir(c->work_dir);
    free(c->database_dir);
    pthread_mutex_destroy(&c->reload_mu);
    pthread_mutex_destroy(&c->canary_mu);
    pthread_cond_destroy(&c->hcv);
    pthread_mutex_destroy(&c->hmu);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    scanner_base_fini(&c->base);
    free(c);
}

static const struct scanner_ops cav_ops = {
    .name = "clamav",
    .scan = cav_scan,
    .reload = cav_reload,
    .version = cav_version,
    .generation = cav_generation,
    .health = cav_health,
    .canary = cav_canary,
    .destroy = cav_destroy,
};

struct scanner *scanner_clamav_new(const struct scan_options *o, char **error_r)
{
    *error_r = NULL;
    pthread_once(&init_once, clam_global_init);
    if (init_rc != CL_SUCCESS) {
        *error_r = errorf("cl_init: %s", cl_strerror(init_rc));
        return NULL;
    }
    struct cav *c = calloc(1, sizeof *c);
    if (!c) {
        *error_r = errorf("out of memory");
        return NULL;
    }
    if (!scanner_base_init(&c->base, &cav_ops)) {
        free(c);
        *error_r = errorf("pthread init failed");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_mutex_init(&c->reload_mu, NULL);
    pthread_mutex_init(&c->hmu, NULL);
    pthread_mutex_init(&c->canary_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->hcv, &ca);
    pthread_condattr_destroy(&ca);
    c->h.ok = true; /* until the first canary, run below before anything is scanned */
    c->last_ok = wall_now();
    snprintf(c->version, sizeof c->version, "none");

    /* mkdtemp creates the directory 0700: decoded attachments are readable by us only. */
    const char *parent = o->tmpdir && o->tmpdir[0] ? o->tmpdir : getenv("TMPDIR");
    if (!parent || !parent[0])
        parent = "/tmp";
    int n = snprintf(c->work_dir, sizeof c->work_dir, "%s/portcullis-scan.XXXXXX", parent);
    if (n < 0 || (size_t)n >= sizeof c->work_dir || !mkdtemp(c->work_dir)) {
        *error_r = errorf("cannot create a scan work directory in %s: %s", parent, strerror(errno));
        c->work_dir[0] = '\0';
        cav_destroy(&c->base);
        return NULL;
    }
    if (!opts_adopt(c, o, error_r)) {
        cav_destroy(&c->base);
        return NULL;
    }
    atomic_store(&msg_target, c);
    char version[SCAN_VERSION_MAX];
    struct cl_engine *e = engine_build(c, &c->opts, version, sizeof version, error_r);
    if (!e) {
        cav_destroy(&c->base);
        return NULL;
    }
    install(c, e, version, true);
    /* The first canary before the first scan; a failure leaves the scanner broken (every
     * verdict an error) rather than stopping the service. */
    (void)cav_canary(&c->base);
    if (pthread_create(&c->thread, NULL, canary_thread, c) != 0) {
        *error_r = errorf("cannot start the canary thread");
        cav_destroy(&c->base);
        return NULL;
    }
    c->thread_started = true;
    return &c->base;
}
