/*
 * Failing closed (issue 16), with the real libclamav: a work directory that is removed, on a
 * read-only filesystem or on a full tmpfs must never give a clean verdict for infected mail
 * (without the checks libclamav answers CL_CLEAN: measured, see clamav.c); a removed one is made
 * again; an error libclamav reports during a scan makes the scan an error; the canary turns the
 * scanner broken (every verdict an error, an epoch bump, a suspect window) and back.
 *
 * clamav.c is included to reach the work dir, the message hook and the health state. The
 * read-only and full-filesystem cases mount (bind, tmpfs): they need root and are skipped
 * without it.
 */
#include "../../scanners/clamav.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mount.h>

#include <cmocka.h>

#define SIG "Portcullis.Test.EICAR-NDB.UNOFFICIAL"

static char tmp[64];
static char dbdir[96];
static char *infected[8];
static size_t infected_len[8];
static size_t ninfected;

static int health_calls, health_last_ok = -1;

static void on_health(void *arg, bool ok, const char *why)
{
    (void)arg;
    (void)why;
    health_calls++;
    health_last_ok = ok;
}

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
    *len_r = (size_t)n;
    return buf;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/pc-faults-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    const char *gen = access("tests/integration/malware.py", R_OK) == 0
                          ? "tests/integration/malware.py"
                          : "../../tests/integration/malware.py";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s write %s >/dev/null", gen, tmp);
    if (system(cmd) != 0)
        return -1;
    snprintf(dbdir, sizeof dbdir, "%s/db", tmp);
    static const char *names[] = {"plain",
                                  "base64",
                                  "zip_base64",
                                  "nested_rfc822",
                                  "quoted_printable",
                                  "qp_attachment",
                                  "unknown_first_header"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/msgs/%s.eml", tmp, names[i]);
        infected[ninfected] = read_file(path, &infected_len[ninfected]);
        if (!infected[ninfected])
            return -1;
        ninfected++;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < ninfected; i++)
        free(infected[i]);
    char cmd[400];
    /* A failed mount test may have left its mount behind. */
    snprintf(cmd, sizeof cmd,
             "for d in %s/portcullis-scan.* %s/tmpfs; do umount $d 2>/dev/null; done; rm -rf %s",
             tmp, tmp, tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static struct scan_options opts(const char *parent)
{
    struct scan_options o = {
        .database_dir = dbdir,
        .tmpdir = parent,
        .max_scan_size = 25u << 20,
        .max_file_size = 25u << 20,
        .max_recursion = 16,
        .max_files = 10000,
        .scan_timeout_ms = 60000,
        .canary_interval_ms = 3600000, /* the tests run it by hand */
        .health = on_health,
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

/* Every infected form gets `want`; none is ever clean. */
static void scan_all(struct scanner *s, enum scan_verdict want)
{
    for (size_t i = 0; i < ninfected; i++) {
        struct scan_result r;
        scanner_scan(s, infected[i], infected_len[i], &r);
        if (r.verdict != want)
            print_error("form %zu: %s (%s)\n", i, scan_verdict_name(r.verdict), r.signature);
        assert_int_equal(r.verdict, want);
    }
}

static bool is_root(void)
{
    return geteuid() == 0;
}

/* ---- canary ------------------------------------------------------------------------------ */

static void test_canary_variants(void **state)
{
    (void)state;
    struct canary_msg m[CANARY_VARIANTS];
    assert_true(canary_build(m));
    /* Only the plain variant carries the payload as is: the others are found only if libclamav
     * decoded them (which needs its temp files). */
    for (int i = 0; i < CANARY_VARIANTS; i++) {
        bool raw = memmem(m[i].data, m[i].len, CANARY_PAYLOAD, strlen(CANARY_PAYLOAD)) != NULL;
        assert_int_equal(raw, i == 0);
    }
    struct scan_options o = opts(tmp);
    struct scanner *s = new_scanner(&o);
    for (int i = 0; i < CANARY_VARIANTS; i++) {
        struct scan_result r;
        scanner_scan(s, m[i].data, m[i].len, &r);
        if (r.verdict != SCAN_INFECTED)
            print_error("canary %s: %s (%s)\n", m[i].name, scan_verdict_name(r.verdict),
                        r.signature);
        assert_int_equal(r.verdict, SCAN_INFECTED);
        assert_string_equal(r.signature, CANARY_SIG ".UNOFFICIAL");
    }
    canary_free(m);
    struct scanner_health h;
    scanner_health(s, &h);
    assert_true(h.ok);
    assert_int_equal(h.canary_runs, 1); /* at start */
    assert_int_equal(h.epoch, 0);
    assert_true(scanner_canary(s));
    scanner_health(s, &h);
    assert_int_equal(h.canary_runs, 2);
    assert_int_equal(h.canary_failures, 0);
    /* The test database still judges (the canary signature is loaded beside it). */
    scan_all(s, SCAN_INFECTED);
    scanner_destroy(&s);
}

/* ---- work directory ---------------------------------------------------------------------- */

static void test_removed_work_dir_is_made_again(void **state)
{
    (void)state;
    struct scan_options o = opts(tmp);
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", c->work_dir);
    assert_int_equal(system(cmd), 0);
    scan_all(s, SCAN_INFECTED);
    struct stat st;
    assert_int_equal(stat(c->work_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* Loose modes are repaired too. */
    assert_int_equal(chmod(c->work_dir, 0777), 0);
    scan_all(s, SCAN_INFECTED);
    assert_int_equal(stat(c->work_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_true(scanner_canary(s));
    scanner_destroy(&s);
}

/* Something else in its place is not ours to remove: error, and the canary fails. */
static void test_work_dir_replaced_by_file(void **state)
{
    (void)state;
    struct scan_options o = opts(tmp);
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    assert_int_equal(rmdir(c->work_dir), 0);
    FILE *f = fopen(c->work_dir, "w");
    assert_non_null(f);
    fclose(f);
    scan_all(s, SCAN_ERROR);
    assert_false(scanner_canary(s));
    assert_int_equal(unlink(c->work_dir), 0);
    assert_true(scanner_canary(s));
    scan_all(s, SCAN_INFECTED);
    scanner_destroy(&s);
}

static void test_read_only_work_dir(void **state)
{
    (void)state;
    if (!is_root())
        skip();
    struct scan_options o = opts(tmp);
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    /* As root, chmod 0500 changes nothing (root writes anyway: measured, all detected); a
     * read-only mount is what really stops the writes. */
    assert_int_equal(mount(c->work_dir, c->work_dir, NULL, MS_BIND, NULL), 0);
    assert_int_equal(mount(NULL, c->work_dir, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL), 0);
    health_calls = 0;
    scan_all(s, SCAN_ERROR);
    assert_false(scanner_canary(s));
    struct scanner_health h;
    scanner_health(s, &h);
    assert_false(h.ok);
    assert_int_equal(h.epoch, 1);
    assert_true(h.work_dir_errors >= ninfected);
    assert_int_equal(h.nsuspect, 1);
    assert_int_equal(h.suspect[0].to, INT64_MAX);
    assert_true(scanner_health_suspect(&h, (int64_t)time(NULL)));
    assert_true(strstr(h.why, "Read-only file system") != NULL);
    assert_int_equal(health_calls, 1);
    assert_int_equal(health_last_ok, 0);
    assert_int_equal(umount(c->work_dir), 0);
    /* Broken: even with the directory fixed, no verdict counts until the canary passes. */
    struct scan_result r;
    scanner_scan(s, infected[0], infected_len[0], &r);
    assert_int_equal(r.verdict, SCAN_ERROR);
    assert_true(strstr(r.signature, "canary") != NULL);
    assert_true(scanner_canary(s));
    scanner_health(s, &h);
    assert_true(h.ok);
    assert_int_equal(health_calls, 2);
    assert_int_equal(health_last_ok, 1);
    assert_true(h.suspect[0].to != INT64_MAX);
    assert_false(scanner_health_suspect(&h, h.suspect[0].to + 1));
    assert_true(scanner_health_suspect(&h, h.suspect[0].from));
    scan_all(s, SCAN_INFECTED);
    scanner_destroy(&s);
}

static void test_full_tmpfs(void **state)
{
    (void)state;
    if (!is_root())
        skip();
    char mnt[96], fill[200];
    snprintf(mnt, sizeof mnt, "%s/tmpfs", tmp);
    assert_int_equal(mkdir(mnt, 0700), 0);
    assert_int_equal(mount("tmpfs", mnt, "tmpfs", 0, "size=256k"), 0);
    struct scan_options o = opts(mnt);
    o.work_min_free = 16 << 10;
    struct scanner *s = new_scanner(&o);
    scan_all(s, SCAN_INFECTED);
    snprintf(fill, sizeof fill, "dd if=/dev/zero of=%s/fill bs=4k count=1000 2>/dev/null", mnt);
    (void)system(fill); /* fails with ENOSPC once full: that is the point */
    scan_all(s, SCAN_ERROR);
    assert_false(scanner_canary(s));
    struct scanner_health h;
    scanner_health(s, &h);
    assert_true(strstr(h.why, "full") != NULL);
    snprintf(fill, sizeof fill, "%s/fill", mnt);
    assert_int_equal(unlink(fill), 0);
    assert_true(scanner_canary(s));
    scan_all(s, SCAN_INFECTED);
    scanner_destroy(&s);
    assert_int_equal(umount(mnt), 0);
    rmdir(mnt);
}

/* ---- libclamav's own errors ------------------------------------------------------------- */

static cl_error_t report_error(int fd, const char *type, void *context)
{
    (void)fd, (void)type, (void)context;
    /* What libclamav does when a temp file fails: an error message on the scanning thread,
     * then it goes on and may answer CL_CLEAN. */
    clam_msg(CL_MSG_ERROR, "LibClamAV Error: Can't create temporary directory\n",
             "Can't create temporary directory\n", NULL);
    return CL_CLEAN;
}

static void test_engine_error_is_not_clean(void **state)
{
    (void)state;
    struct scan_options o = opts(tmp);
    struct scanner *s = new_scanner(&o);
    struct cav *c = (struct cav *)s;
    /* Three different messages: libclamav's clean cache would skip a second scan of one. */
    static const char clean[] = "From: a@b\r\nSubject: hi\r\n\r\nnothing here\r\n";
    static const char clean2[] = "From: a@b\r\nSubject: hi\r\n\r\nnothing here 2\r\n";
    static const char clean3[] = "From: a@b\r\nSubject: hi\r\n\r\nnothing here 3\r\n";
    struct scan_result r;
    scanner_scan(s, clean, sizeof clean - 1, &r);
    assert_int_equal(r.verdict, SCAN_CLEAN);
    cl_engine_set_clcb_pre_scan(c->engine, report_error);
    scanner_scan(s, clean2, sizeof clean2 - 1, &r);
    assert_int_equal(r.verdict, SCAN_ERROR);
    assert_true(strstr(r.signature, "temporary directory") != NULL);
    struct scanner_health h;
    scanner_health(s, &h);
    assert_int_equal(h.engine_errors, 1);
    /* Another thread's scans are not affected by this thread's messages, and messages outside
     * a scan touch nothing. */
    clam_msg(CL_MSG_ERROR, "x", "outside a scan", NULL);
    cl_engine_set_clcb_pre_scan(c->engine, NULL);
    scanner_scan(s, clean3, sizeof clean3 - 1, &r);
    assert_int_equal(r.verdict, SCAN_CLEAN);
    scanner_destroy(&s);
}

/* The canary's own state machine: windows open at the last pass, close at recovery, and merge
 * when there are too many. */
static void test_suspect_windows(void **state)
{
    (void)state;
    struct cav c;
    memset(&c, 0, sizeof c);
    c.h.ok = true;
    c.last_ok = 100;
    for (int i = 0; i < SCAN_SUSPECT_MAX + 2; i++) {
        assert_true(health_record(&c, false, "x"));
        assert_false(health_record(&c, false, "x")); /* no change while broken */
        assert_true(health_record(&c, true, ""));
        assert_false(health_record(&c, true, ""));
    }
    assert_int_equal(c.h.epoch, SCAN_SUSPECT_MAX + 2);
    assert_int_equal(c.h.nsuspect, SCAN_SUSPECT_MAX);
    assert_int_equal(c.h.suspect[0].from, 100);
    assert_true(scanner_health_suspect(&c.h, 100));
    assert_false(scanner_health_suspect(&c.h, 99));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canary_variants),
        cmocka_unit_test(test_removed_work_dir_is_made_again),
        cmocka_unit_test(test_work_dir_replaced_by_file),
        cmocka_unit_test(test_read_only_work_dir),
        cmocka_unit_test(test_full_tmpfs),
        cmocka_unit_test(test_engine_error_is_not_clean),
        cmocka_unit_test(test_suspect_windows),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
