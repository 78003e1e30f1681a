/*
 * Unit tests for scanners/clamav.c with the real libclamav and a real (generated) signature
 * database: every infected variant from tests/integration/malware.py is detected under the
 * right name, every near miss is clean, size limits give SCAN_OVERSIZE and other limits SCAN_LIMIT
 * (not CL_CLEAN), the synthetic Received: prefix is what makes an unknown-first-header message scan
 * as mail, and reloads swap engines while a scan still holds the old one.
 *
 * clamav.c is included so that the reload tests can stop a scan inside libclamav (a pre-scan
 * callback set on the engine before any scan) and so observe a scan holding the old engine.
 */
#include "../../scanners/clamav.c"

#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "scan.h"

#define SIG "Portcullis.Test.EICAR-NDB.UNOFFICIAL"

static char tmp[64];   /* mkdtemp: db/, msgs/, manifest.txt from malware.py */
static char dbdir[96]; /* tmp/db */

struct msg {
    char name[64];
    bool infected;
    char *data;
    size_t len;
};
static struct msg msgs[32];
static size_t nmsgs;

static char *read_file(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *len_r = (size_t)n;
    return buf;
}

static const struct msg *find_msg(const char *name)
{
    for (size_t i = 0; i < nmsgs; i++)
        if (strcmp(msgs[i].name, name) == 0)
            return &msgs[i];
    fail_msg("no test message %s", name);
    return NULL;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/pc-scan-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    const char *gen = access("tests/integration/malware.py", R_OK) == 0
                          ? "tests/integration/malware.py"
                          : "../../tests/integration/malware.py";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s write %s", gen, tmp);
    if (system(cmd) != 0)
        return -1;
    snprintf(dbdir, sizeof dbdir, "%s/db", tmp);
    char path[256];
    snprintf(path, sizeof path, "%s/manifest.txt", tmp);
    FILE *m = fopen(path, "r");
    if (!m)
        return -1;
    char name[64], verdict[16];
    while (nmsgs < 32 && fscanf(m, "%63s %15s", name, verdict) == 2) {
        struct msg *x = &msgs[nmsgs++];
        snprintf(x->name, sizeof x->name, "%s", name);
        x->infected = strcmp(verdict, "infected") == 0;
        snprintf(path, sizeof path, "%s/msgs/%s.eml", tmp, name);
        x->data = read_file(path, &x->len);
        if (!x->data)
            return -1;
    }
    fclose(m);
    return nmsgs >= 10 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < nmsgs; i++)
        free(msgs[i].data);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static struct scan_options opts(void)
{
    struct scan_options o = {
        .database_dir = dbdir,
        .tmpdir = tmp,
        .max_scan_size = 25u << 20,
        .max_file_size = 25u << 20,
        .max_recursion = 16,
        .max_files = 10000,
        .scan_timeout_ms = 60000,
        .reload_mode = SCAN_RELOAD_CONCURRENT,
    };
    return o;
}

static struct scanner *new_scanner(const struct scan_options *o)
{
    char *err = NULL;
    struct scanner *s = scanner_clamav_new(o, &err);
    if (!s)
        print_error("scanner_clamav_new: %s\n", err ? err : "?");
    free(err);
    assert_non_null(s);
    return s;
}

/* ---- detection --------------------------------------------------------------------------- */

/* Every test message judged as it should be, `passes` times over the same engine: a second
 * pass with libclamav's clean cache on (scan.engine_cache) answers the clean parts from the
 * cache and must still find every infected message. */
static void detection_matrix(const struct scan_options *o, int passes)
{
    struct scanner *s = new_scanner(o);
    for (int pass = 0; pass < passes; pass++) {
        size_t infected = 0, clean = 0;
        for (size_t i = 0; i < nmsgs; i++) {
            struct scan_result r;
            scanner_scan(s, msgs[i].data, msgs[i].len, &r);
            enum scan_verdict want = msgs[i].infected ? SCAN_INFECTED : SCAN_CLEAN;
            if (r.verdict != want)
                print_error("%s (pass %d): got %s (%s), want %s\n", msgs[i].name, pass,
                            scan_verdict_name(r.verdict), r.signature, scan_verdict_name(want));
            assert_int_equal(r.verdict, want);
            if (msgs[i].infected) {
                assert_string_equal(r.signature, SIG);
                infected++;
            } else {
                assert_string_equal(r.signature, "");
                clean++;
            }
            assert_int_equal(r.generation, 1);
            assert_true(strncmp(r.engine_version, "clamav-1.", 9) == 0);
        }
        assert_true(infected >= 7);
        assert_true(clean >= 5);
    }
    scanner_destroy(&s);
    assert_null(s);
}

static void test_detection_matrix(void **state)
{
    (void)state;
    struct scan_options o = opts();
    detection_matrix(&o, 2);
}

/* scan.engine_cache: false gives the same verdicts (the benchmark compares it with libclamav
 * alone, whose cache is off too). */
static void test_detection_matrix_engine_cache_off(void **state)
{
    (void)state;
    struct scan_options o = opts();
    o.disable_cache = true;
    detection_matrix(&o, 2);
}

/* The test message with an unknown first header is only detected because of the prefix:
 * libclamav alone, scanning the same bytes, misses it (pitfall 2). Without this the detection
 * test above would prove nothing about the prefix. */
static void test_prefix_is_what_finds_unknown_header(void **state)
{
    (void)state;
    const struct msg *m = find_msg("unknown_first_header");
    struct cl_engine *e = cl_engine_new();
    assert_non_null(e);
    unsigned int sigs = 0;
    assert_int_equal(cl_load(dbdir, e, &sigs, CL_DB_STDOPT), CL_SUCCESS);
    assert_int_equal(cl_engine_compile(e), CL_SUCCESS);
    struct cl_scan_options so = {.parse = ~0u,
                                 .general = CL_SCAN_GENERAL_HEURISTICS,
                                 .heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX};
    const char *vir = NULL;
    cl_fmap_t *map = cl_fmap_open_memory(m->data, m->len);
    assert_int_equal(cl_scanmap_callback(map, NULL, &vir, NULL, e, &so, NULL), CL_CLEAN);
    cl_fmap_close(map);
    cl_engine_free(e);

    struct scan_options o = opts();
    struct scanner *s = new_scanner(&o);
    struct scan_result r;
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    assert_string_equal(r.signature, SIG);
    scanner_destroy(&s);
}

/* The pread callback must serve any window across the prefix/buffer seam. */
static void test_prefixed_pread(void **state)
{
    (void)state;
    const char body[] = "From: a\r\n\r\nbody";
    struct prefixed p = {body, sizeof body - 1};
    size_t total = MAIL_PREFIX_LEN + p.len;
    char whole[128];
    memcpy(whole, MAIL_PREFIX, MAIL_PREFIX_LEN);
    memcpy(whole + MAIL_PREFIX_LEN, body, p.len);
    for (size_t off = 0; off <= total; off++) {
        for (size_t cnt = 0; cnt <= total + 3; cnt += 3) {
            char out[160];
            off_t n = prefixed_pread(&p, out, cnt, (off_t)off);
            size_t want = off >= total ? 0 : (cnt < total - off ? cnt : total - off);
            assert_int_equal((size_t)n, want);
            assert_memory_equal(out, whole + off, want);
        }
    }
}

/* Over the message-size limit: not scanned, OVERSIZE, and fast. */
static void test_oversize_message(void **state)
{
    (void)state;
    struct scan_options o = opts();
    o.max_scan_size = 4096;
    struct scanner *s = new_scanner(&o);
    const struct msg *m = find_msg("base64");
    size_t len = 10000;
    char *big = malloc(len);
    assert_non_null(big);
    memcpy(big, m->data, m->len);
    memset(big + m->len, 'a', len - m->len);
    struct scan_result r;
    scanner_scan(s, big, len, &r);
    assert_int_equal(r.verdict, SCAN_OVERSIZE);
    assert_string_equal(r.signature, "size");
    /* Within the limit, the same engine still judges. */
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    free(big);
    scanner_destroy(&s);
}

/* libclamav's own limits: without EXCEEDS_MAX these return CL_CLEAN (pitfall 1). A part larger
 * than max_file_size must come back OVERSIZE (a size limit), nesting deeper than max_recursion
 * LIMIT (a structural limit, issue 15: its own action, default block). */
static void test_engine_limits_are_oversize(void **state)
{
    (void)state;
    struct scan_options o = opts();
    o.max_recursion = 2;
    struct scanner *s = new_scanner(&o);
    struct scan_result r;
    const struct msg *zip = find_msg("zip_base64");
    scanner_scan(s, zip->data, zip->len, &r);
    assert_int_equal(r.verdict, SCAN_LIMIT);
    assert_string_equal(r.signature, "Heuristics.Limits.Exceeded.MaxRecursion");
    scanner_destroy(&s);

    /* A 300 KiB attachment with EICAR at its end, max_file_size 64 KiB. */
    o = opts();
    o.max_file_size = 64 * 1024;
    s = new_scanner(&o);
    const char *hdr = "From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n"
                      "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n";
    const struct msg *plain = find_msg("plain");
    const char *eicar = strstr(plain->data, "X5O!");
    assert_non_null(eicar);
    size_t hl = strlen(hdr), fill = 300 * 1024, len = hl + fill + 68 + 2;
    char *big = malloc(len);
    assert_non_null(big);
    memcpy(big, hdr, hl);
    for (size_t i = 0; i < fill; i++)
        big[hl + i] = (i % 77 == 76) ? '\n' : 'x';
    memcpy(big + hl + fill, eicar, 68);
    memcpy(big + hl + fill + 68, "\r\n", 2);
    scanner_scan(s, big, len, &r);
    assert_int_equal(r.verdict, SCAN_OVERSIZE);
    assert_true(strncmp(r.signature, "Heuristics.Limits.Exceeded", 26) == 0);
    free(big);
    scanner_destroy(&s);
}

/* Every limit heuristic libclamav 1.4 can report (strings of libclamav.so), by kind: only the
 * two size limits the operator sets as sizes are "oversize"; everything else, and any name we
 * do not know, is a structural limit (default deny). */
static void test_limit_kinds(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        enum scan_verdict kind;
    } table[] = {
        {"Heuristics.Limits.Exceeded.MaxScanSize", SCAN_OVERSIZE},
        {"Heuristics.Limits.Exceeded.MaxFileSize", SCAN_OVERSIZE},
        {NULL, SCAN_OVERSIZE}, /* CL_VIRUS without a name: an over-size top-level file */
        {"Heuristics.Limits.Exceeded.MaxRecursion", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.MaxFiles", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.MaxScanTime", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.EmailHeaderBytes", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.EmailHeaders", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.EmailLineFoldCnt", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.EmailMIMEArguments", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.EmailMIMEPartsPerMessage", SCAN_LIMIT},
        /* unknown or malformed: structural */
        {"Heuristics.Limits.Exceeded.SomethingNew", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.MaxScanSizeX", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.maxscansize", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded.", SCAN_LIMIT},
        {"Heuristics.Limits.Exceeded", SCAN_LIMIT},
        {"", SCAN_LIMIT},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (scan_limit_kind(table[i].name) != table[i].kind)
            fail_msg("%s: kind %d, want %d", table[i].name ? table[i].name : "(null)",
                     (int)scan_limit_kind(table[i].name), (int)table[i].kind);
    }
    /* classify_virus keeps the name and applies the kind */
    struct scan_result r;
    memset(&r, 0, sizeof r);
    classify_virus(&r, "Heuristics.Limits.Exceeded.EmailMIMEPartsPerMessage");
    assert_int_equal(r.verdict, SCAN_LIMIT);
    assert_string_equal(r.signature, "Heuristics.Limits.Exceeded.EmailMIMEPartsPerMessage");
    classify_virus(&r, NULL);
    assert_int_equal(r.verdict, SCAN_OVERSIZE);
    classify_virus(&r, "Heuristics.Limits.Exceeded.MaxScanSize");
    assert_int_equal(r.verdict, SCAN_OVERSIZE);
    classify_virus(&r, SIG);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    assert_string_equal(scan_verdict_name(SCAN_LIMIT), "limit");
}

/* A message just under max_scan_size whose attachment decodes to most of its size must still
 * be judged: libclamav counts extracted bytes toward its scan-size limit too. */
static void test_large_attachment_within_limit(void **state)
{
    (void)state;
    struct scan_options o = opts();
    o.max_scan_size = 1536 * 1024;
    o.max_file_size = 1536 * 1024;
    struct scanner *s = new_scanner(&o);
    const struct msg *plain = find_msg("plain");
    const char *eicar = strstr(plain->data, "X5O!");
    /* 1 MiB of pseudo-random bytes then EICAR, base64 in 76-column lines. */
    size_t raw_len = (1u << 20) + 68;
    unsigned char *raw = malloc(raw_len);
    assert_non_null(raw);
    uint32_t x = 12345;
    for (size_t i = 0; i < raw_len - 68; i++) {
        x = x * 1103515245u + 12345u;
        raw[i] = (unsigned char)(x >> 16);
    }
    memcpy(raw + raw_len - 68, eicar, 68);
    const char *hdr = "From: a@example.org\r\nSubject: att\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "Content-Transfer-Encoding: base64\r\n\r\n";
    size_t cap = strlen(hdr) + raw_len * 2 + 64, len = 0;
    char *m = malloc(cap);
    assert_non_null(m);
    len += (size_t)sprintf(m, "%s", hdr);
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t col = 0;
    for (size_t i = 0; i < raw_len; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16;
        size_t n = raw_len - i;
        if (n > 1)
            v |= (uint32_t)raw[i + 1] << 8;
        if (n > 2)
            v |= raw[i + 2];
        m[len++] = b64[(v >> 18) & 63];
        m[len++] = b64[(v >> 12) & 63];
        m[len++] = n > 1 ? b64[(v >> 6) & 63] : '=';
        m[len++] = n > 2 ? b64[v & 63] : '=';
        if ((col += 4) == 76) {
            m[len++] = '\r';
            m[len++] = '\n';
            col = 0;
        }
    }
    len += (size_t)sprintf(m + len, "\r\n--b--\r\n");
    assert_true(len < o.max_scan_size);
    struct scan_result r;
    scanner_scan(s, m, len, &r);
    if (r.verdict != SCAN_INFECTED)
        print_error("got %s %s\n", scan_verdict_name(r.verdict), r.signature);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    assert_string_equal(r.signature, SIG);
    free(m);
    free(raw);
    scanner_destroy(&s);
}

static void test_bad_database(void **state)
{
    (void)state;
    char empty[128];
    snprintf(empty, sizeof empty, "%s/emptydb", tmp);
    mkdir(empty, 0700);
    struct scan_options o = opts();
    o.database_dir = empty;
    char *err = NULL;
    struct scanner *s = scanner_clamav_new(&o, &err);
    assert_null(s);
    assert_non_null(err);
    /* Not libclamav's "Can't open file or directory" for a directory that is there: what is
     * missing, and where it comes from (issue 18). */
    assert_non_null(strstr(err, "emptydb"));
    assert_non_null(strstr(err, "no signature files"));
    assert_non_null(strstr(err, "freshclam"));
    free(err);
    o.database_dir = "/nonexistent/db";
    s = scanner_clamav_new(&o, &err);
    assert_null(s);
    assert_non_null(strstr(err, "/nonexistent/db"));
    free(err);
}

/* The private work dir is 0700 and is removed with the scanner. */
static void test_work_dir(void **state)
{
    (void)state;
    struct scan_options o = opts();
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", c->work_dir);
    assert_true(strncmp(dir, tmp, strlen(tmp)) == 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    const struct msg *m = find_msg("zip_base64");
    struct scan_result r;
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    scanner_destroy(&s);
    assert_int_not_equal(stat(dir, &st), 0);
}

/* ---- reload ------------------------------------------------------------------------------ */

static sem_t entered, go;

static cl_error_t hold_scan(int fd, const char *type, void *context)
{
    (void)fd;
    (void)type;
    (void)context;
    sem_post(&entered);
    sem_wait(&go);
    return CL_CLEAN;
}

static void no_hold(void)
{
    /* The pre-scan callback runs for every extracted file too: let all of them through. */
    for (int i = 0; i < 64; i++)
        sem_post(&go);
}

struct scan_thread {
    pthread_t t;
    struct scanner *s;
    const struct msg *m;
    struct scan_result r;
};

static void *scan_main(void *p)
{
    struct scan_thread *st = p;
    scanner_scan(st->s, st->m->data, st->m->len, &st->r);
    return NULL;
}

/* A second database whose signature has another name, to see which engine judged. */
static void write_db2(char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/db2", tmp);
    mkdir(dir, 0700);
    char path[256];
    snprintf(path, sizeof path, "%s/second.ndb", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "Portcullis.Test.Second:0:*:58354f2150254041505b345c505a58353428505e2937434329"
               "377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c4521"
               "24482b482a\n");
    fclose(f);
}

static void test_reload_concurrent_while_scanning(void **state)
{
    (void)state;
    sem_init(&entered, 0, 0);
    sem_init(&go, 0, 0);
    struct scan_options o = opts();
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    cl_engine_set_clcb_pre_scan(c->engine, hold_scan); /* engine not in use yet */
    char v1[SCAN_VERSION_MAX], v2[SCAN_VERSION_MAX], db2[128];
    scanner_version(s, v1, sizeof v1);
    assert_int_equal(scanner_generation(s), 1);

    struct scan_thread st = {.s = s, .m = find_msg("plain")};
    assert_int_equal(pthread_create(&st.t, NULL, scan_main, &st), 0);
    sem_wait(&entered); /* the scan now holds engine 1 */

    write_db2(db2, sizeof db2);
    struct scan_options o2 = opts();
    o2.database_dir = db2;
    char *err = NULL;
    assert_true(scanner_reload(s, &o2, &err));
    assert_null(err);
    assert_int_equal(scanner_generation(s), 2);
    scanner_version(s, v2, sizeof v2);
    assert_string_not_equal(v1, v2); /* the database fingerprint changed */

    /* New scans use engine 2 (no hook there) while the first still waits inside engine 1. */
    struct scan_result r;
    const struct msg *m = find_msg("base64");
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    assert_string_equal(r.signature, "Portcullis.Test.Second.UNOFFICIAL");
    assert_int_equal(r.generation, 2);

    no_hold();
    pthread_join(st.t, NULL);
    assert_int_equal(st.r.verdict, SCAN_INFECTED);
    assert_string_equal(st.r.signature, SIG); /* judged by engine 1, name copied out */
    assert_int_equal(st.r.generation, 1);
    assert_string_equal(st.r.engine_version, v1);

    /* A failed reload keeps the running engine. */
    struct scan_options bad = opts();
    bad.database_dir = "/nonexistent";
    assert_false(scanner_reload(s, &bad, &err));
    assert_non_null(err);
    free(err);
    assert_int_equal(scanner_generation(s), 2);
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    scanner_destroy(&s);
    sem_destroy(&entered);
    sem_destroy(&go);
}

struct reload_wait {
    sem_t done;
    bool ok;
};

static void on_reload(void *arg, bool ok, const char *error)
{
    struct reload_wait *w = arg;
    w->ok = ok;
    if (!ok)
        print_error("reload: %s\n", error);
    sem_post(&w->done);
}

/* Low-memory mode: the reload waits for the scan in flight, then replaces the engine. */
static void test_reload_lowmem_waits_for_scans(void **state)
{
    (void)state;
    sem_init(&entered, 0, 0);
    sem_init(&go, 0, 0);
    struct scan_options o = opts();
    o.reload_mode = SCAN_RELOAD_LOWMEM;
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    cl_engine_set_clcb_pre_scan(c->engine, hold_scan);

    struct scan_thread st = {.s = s, .m = find_msg("plain")};
    assert_int_equal(pthread_create(&st.t, NULL, scan_main, &st), 0);
    sem_wait(&entered);

    struct reload_wait w = {.ok = false};
    sem_init(&w.done, 0, 0);
    assert_true(scanner_reload_async(s, NULL, on_reload, &w));
    assert_false(scanner_reload_async(s, NULL, NULL, NULL)); /* one at a time */
    usleep(100 * 1000);
    assert_int_equal(scanner_generation(s), 1); /* still waiting for the scan */
    pthread_mutex_lock(&c->mu);
    assert_true(c->paused);
    pthread_mutex_unlock(&c->mu);

    no_hold();
    pthread_join(st.t, NULL);
    assert_int_equal(st.r.verdict, SCAN_INFECTED);
    assert_int_equal(st.r.generation, 1);
    sem_wait(&w.done);
    assert_true(w.ok);
    struct scan_result r;
    scanner_scan(s, st.m->data, st.m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    assert_int_equal(r.generation, 2);
    scanner_destroy(&s);
    sem_destroy(&w.done);
    sem_destroy(&entered);
    sem_destroy(&go);
}

/* Low-memory mode with a bad new database falls back to the previous one. */
static void test_reload_lowmem_failure_recovers(void **state)
{
    (void)state;
    struct scan_options o = opts();
    o.reload_mode = SCAN_RELOAD_LOWMEM;
    struct scanner *s = new_scanner(&o);
    struct scan_options bad = o;
    bad.database_dir = "/nonexistent";
    char *err = NULL;
    assert_false(scanner_reload(s, &bad, &err));
    free(err);
    assert_int_equal(scanner_generation(s), 1);
    const struct msg *m = find_msg("base64");
    struct scan_result r;
    scanner_scan(s, m->data, m->len, &r);
    assert_int_equal(r.verdict, SCAN_INFECTED);
    scanner_destroy(&s);
}

/* ---- scan jobs on the pool ---------------------------------------------------------------- */

struct job_ctx {
    const struct msg *m;
    bool called;
    struct scan_result r;
    unsigned char sha[SHA256_LEN];
    char ref[SCAN_REF_MAX];
    bool quarantined;
    char *taken; /* clean buffers taken back */
    size_t taken_len, taken_budget;
};
static pthread_t loop_thread;
static int jobs_left;

static void on_scan(void *arg, struct scan_job *job)
{
    struct job_ctx *x = arg;
    assert_true(pthread_equal(pthread_self(), loop_thread));
    assert_false(x->called);
    x->called = true;
    assert_true(job->hashed && job->scanned);
    x->r = job->result;
    memcpy(x->sha, job->sha256, SHA256_LEN);
    snprintf(x->ref, sizeof x->ref, "%s", job->ref);
    x->quarantined = job->quarantined;
    if (job->result.verdict == SCAN_CLEAN)
        x->taken = scan_job_take_buffer(job, &x->taken_len, &x->taken_budget);
    if (--jobs_left == 0)
        ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static void on_loop_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void on_cancelled_scan(void *arg, struct scan_job *job)
{
    (void)arg;
    (void)job;
    fail_msg("a cancelled job was delivered");
}

/* Every test message through scan_submit on a 2-thread pool: verdicts and hashes come back on
 * the loop; infected originals land in quarantine (0600, byte-identical); clean buffers come
 * back byte-identical; budget bytes follow the buffer; a cancelled job is never delivered. */
static void test_scan_jobs(void **state)
{
    (void)state;
    loop_thread = pthread_self();
    struct scan_options o = opts();
    struct scanner *s = new_scanner(&o);
    char *err = NULL;
    struct pool *p = pool_new(2, 64, 64u << 20, &err);
    assert_non_null(p);
    struct pool_client *c = pool_client_new(p, EV_DEFAULT);
    char qdir[128];
    snprintf(qdir, sizeof qdir, "%s/quarantine", tmp);
    assert_int_equal(mkdir(qdir, 0700), 0);

    struct job_ctx ctx[32] = {{0}};
    jobs_left = (int)nmsgs;
    for (size_t i = 0; i < nmsgs; i++) {
        ctx[i].m = &msgs[i];
        char *copy = malloc(msgs[i].len);
        assert_non_null(copy);
        memcpy(copy, msgs[i].data, msgs[i].len);
        struct pool_waiter w = {0};
        assert_int_equal(pool_budget_acquire(c, msgs[i].len, &w, NULL), POOL_BUDGET_OK);
        struct scan_request rq = {.scanner = s,
                                  .flags = SCAN_JOB_HASH | SCAN_JOB_SCAN,
                                  .buf = copy,
                                  .len = msgs[i].len,
                                  .budget = msgs[i].len,
                                  .quarantine_dir = qdir};
        struct scan_job *j = scan_submit(c, &rq, on_scan, &ctx[i]);
        assert_non_null(j);
    }
    /* One more, cancelled at once: its buffer and budget are released by the pool. */
    char *copy = malloc(msgs[0].len);
    memcpy(copy, msgs[0].data, msgs[0].len);
    struct pool_waiter w = {0};
    assert_int_equal(pool_budget_acquire(c, msgs[0].len, &w, NULL), POOL_BUDGET_OK);
    struct scan_request rq = {.scanner = s,
                              .flags = SCAN_JOB_SCAN,
                              .buf = copy,
                              .len = msgs[0].len,
                              .budget = msgs[0].len};
    struct scan_job *cj = scan_submit(c, &rq, on_cancelled_scan, NULL);
    assert_non_null(cj);
    scan_cancel(&cj);
    assert_null(cj);

    ev_timer t; /* a hang fails the test instead of make */
    ev_timer_init(&t, on_loop_timeout, 30, 0);
    ev_timer_start(EV_DEFAULT, &t);
    ev_run(EV_DEFAULT, 0);
    ev_timer_stop(EV_DEFAULT, &t);
    assert_int_equal(jobs_left, 0);

    size_t held = 0;
    for (size_t i = 0; i < nmsgs; i++) {
        struct job_ctx *x = &ctx[i];
        assert_true(x->called);
        unsigned char want[SHA256_LEN];
        notice_sha256(x->m->data, x->m->len, want);
        assert_memory_equal(x->sha, want, SHA256_LEN);
        assert_int_equal(strlen(x->ref), 21); /* YYYYMMDD-xxxxxxxxxxxx */
        char path[256];
        snprintf(path, sizeof path, "%s/%s.eml", qdir, x->ref);
        struct stat st;
        if (x->m->infected) {
            assert_int_equal(x->r.verdict, SCAN_INFECTED);
            assert_string_equal(x->r.signature, SIG);
            assert_true(x->quarantined);
            assert_int_equal(stat(path, &st), 0);
            assert_int_equal(st.st_mode & 0777, 0600);
            size_t ql;
            char *q = read_file(path, &ql);
            assert_int_equal(ql, x->m->len);
            assert_memory_equal(q, x->m->data, ql);
            free(q);
        } else {
            assert_int_equal(x->r.verdict, SCAN_CLEAN);
            assert_false(x->quarantined);
            assert_int_not_equal(stat(path, &st), 0);
            assert_non_null(x->taken);
            assert_int_equal(x->taken_len, x->m->len);
            assert_memory_equal(x->taken, x->m->data, x->taken_len);
            held += x->taken_budget;
            free(x->taken);
        }
    }
    /* Only the budget of the buffers taken back is still held; the pool released the rest. */
    pool_client_free(&c); /* waits for the cancelled job to let go */
    struct pool_stats st;
    pool_get_stats(p, &st);
    assert_int_equal(st.budget_used, held);
    pool_budget_release(p, held);
    pool_free(&p);
    scanner_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detection_matrix),
        cmocka_unit_test(test_detection_matrix_engine_cache_off),
        cmocka_unit_test(test_prefix_is_what_finds_unknown_header),
        cmocka_unit_test(test_prefixed_pread),
        cmocka_unit_test(test_oversize_message),
        cmocka_unit_test(test_engine_limits_are_oversize),
        cmocka_unit_test(test_limit_kinds),
        cmocka_unit_test(test_large_attachment_within_limit),
        cmocka_unit_test(test_bad_database),
        cmocka_unit_test(test_work_dir),
        cmocka_unit_test(test_reload_concurrent_while_scanning),
        cmocka_unit_test(test_reload_lowmem_waits_for_scans),
        cmocka_unit_test(test_reload_lowmem_failure_recovers),
        cmocka_unit_test(test_scan_jobs),
    };
    return cmocka_run_group_tests_name("scan", tests, group_setup, group_teardown);
}
