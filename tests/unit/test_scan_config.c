/*
 * Unit tests for the `scan:` section of the configuration: defaults, every key set, the
 * multi-line notice template (LF allowed, other controls still refused) and the cross-checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define MINIMAL                                                                                    \
    "listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: none }\n"                         \
    "backends:\n  - { name: b1, host: 127.0.0.1, port: 10143 }\n"

static struct config *load(const char *text, char **err)
{
    *err = NULL;
    return cfg_load_string(text, strlen(text), "t.yaml", err);
}

static void expect_error(const char *text, const char *want)
{
    char *err = NULL;
    struct config *c = load(text, &err);
    if (c || !err || !strstr(err, want))
        print_error("want error containing %s, got %s\n", want, err ? err : "(success)");
    assert_null(c);
    assert_non_null(err);
    assert_non_null(strstr(err, want));
    free(err);
}

static void test_scan_defaults(void **state)
{
    (void)state;
    char *err = NULL;
    struct config *c = load(MINIMAL, &err);
    assert_non_null(c);
    const struct cfg_scan *s = &c->scan;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    assert_false(s->enabled);
    assert_string_equal(s->database_dir, "/var/lib/clamav");
    assert_int_equal(s->threads, ncpu < 1 ? 1 : ncpu);
    assert_int_equal(s->queue, 256);
    assert_int_equal(s->max_scan_size, 25u << 20);
    assert_int_equal(s->max_file_size, 25u << 20);
    assert_int_equal(s->max_recursion, 16);
    assert_int_equal(s->max_files, 10000);
    assert_true(s->engine_cache);
    assert_int_equal(s->scan_timeout_ms, 60000);
    assert_null(s->tmpdir);
    assert_int_equal(s->oversize_action, CFG_SCAN_PASS);
    assert_int_equal(s->limits_action, CFG_SCAN_BLOCK); /* issue 15: structural limits deny */
    assert_int_equal(s->error_action, CFG_SCAN_BLOCK);
    assert_int_equal(s->memory_budget, 256u << 20);
    assert_int_equal(s->reload, CFG_SCAN_RELOAD_CONCURRENT);
    assert_int_equal(s->keepalive_interval_ms, 15000);
    assert_null(s->quarantine_dir);
    assert_null(s->notice_template);
    assert_int_equal(s->verdict_cache_ttl_ms, 86400000);
    cfg_unref(&c);
}

static void test_scan_all_keys(void **state)
{
    (void)state;
    char *err = NULL;
    struct config *c = load(MINIMAL "scan:\n"
                                    "  enabled: true\n"
                                    "  database_dir: /tmp\n"
                                    "  threads: 3\n"
                                    "  queue: 7\n"
                                    "  max_scan_size: 1M\n"
                                    "  max_file_size: 512k\n"
                                    "  max_recursion: 4\n"
                                    "  max_files: 50\n"
                                    "  engine_cache: false\n"
                                    "  scan_timeout: 1500ms\n"
                                    "  tmpdir: /run/pc\n"
                                    "  oversize_action: block\n"
                                    "  limits_action: pass\n"
                                    "  error_action: pass\n"
                                    "  memory_budget: 2M\n"
                                    "  reload: lowmem\n"
                                    "  keepalive_interval: 5s\n"
                                    "  quarantine_dir: /var/q\n"
                                    "  notice_template: |\n"
                                    "    Blocked: %signature%\n"
                                    "    \tref %ref%\n"
                                    "  verdict_cache_ttl: 2h\n",
                            &err);
    if (!c)
        print_error("%s\n", err);
    assert_non_null(c);
    const struct cfg_scan *s = &c->scan;
    assert_true(s->enabled);
    assert_string_equal(s->database_dir, "/tmp");
    assert_int_equal(s->threads, 3);
    assert_int_equal(s->queue, 7);
    assert_int_equal(s->max_scan_size, 1u << 20);
    assert_int_equal(s->max_file_size, 512u << 10);
    assert_int_equal(s->max_recursion, 4);
    assert_int_equal(s->max_files, 50);
    assert_false(s->engine_cache);
    assert_int_equal(s->scan_timeout_ms, 1500);
    assert_string_equal(s->tmpdir, "/run/pc");
    assert_int_equal(s->oversize_action, CFG_SCAN_BLOCK);
    assert_int_equal(s->limits_action, CFG_SCAN_PASS);
    assert_int_equal(s->error_action, CFG_SCAN_PASS);
    assert_int_equal(s->memory_budget, 2u << 20);
    assert_int_equal(s->reload, CFG_SCAN_RELOAD_LOWMEM);
    assert_int_equal(s->keepalive_interval_ms, 5000);
    assert_string_equal(s->quarantine_dir, "/var/q");
    assert_string_equal(s->notice_template, "Blocked: %signature%\n\tref %ref%\n");
    assert_int_equal(s->verdict_cache_ttl_ms, 7200000);
    cfg_unref(&c);
}

static void test_scan_errors(void **state)
{
    (void)state;
    expect_error(MINIMAL "scan: { max_scan_size: 64M, memory_budget: 32M }\n",
                 "scan.memory_budget (33554432) is smaller than scan.max_scan_size");
    expect_error(MINIMAL "scan: { enabled: true, database_dir: /nonexistent/db }\n",
                 "cannot read \"/nonexistent/db\"");
    expect_error(MINIMAL "scan: { oversize_action: drop }\n", "invalid value \"drop\"");
    expect_error(MINIMAL "scan: { reload: fast }\n", "invalid value \"fast\"");
    expect_error(MINIMAL "scan: { max_recursion: 0 }\n", "out of range");
    expect_error(MINIMAL "scan: { queue: 0 }\n", "out of range");
    expect_error(MINIMAL "scan: { maxscansize: 1M }\n", "unknown key \"maxscansize\"");
    /* Only the template may hold line breaks, and only LF/TAB. */
    expect_error(MINIMAL "scan: { notice_template: \"a\\x01b\" }\n", "control character (0x01)");
    expect_error(MINIMAL "scan: { quarantine_dir: \"a\\nb\" }\n", "control character (0x0a)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_defaults),
        cmocka_unit_test(test_scan_all_keys),
        cmocka_unit_test(test_scan_errors),
    };
    return cmocka_run_group_tests_name("scan_config", tests, NULL, NULL);
}
