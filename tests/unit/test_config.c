/*
 * Unit tests for config (+ cfg_map): every default, unit parsing, junk rejection, error
 * positions, cross-checks, both YAML styles, and the snapshot refcount. Run under ASan: every
 * error path is exercised here, so a leak on any of them fails the run.
 *
 * Configs that name files use "@D@", replaced with a mkdtemp directory holding empty cert, key,
 * CA and ticket files (config only checks readability; tls.c loads the contents).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>

#include <cmocka.h>

#include "config.h"

static char tmpdir[64];

/* Replace every "@D@" with the temp dir. */
static char *expand(const char *text)
{
    size_t dl = strlen(tmpdir), n = 0;
    for (const char *p = text; (p = strstr(p, "@D@")); p += 3)
        n++;
    char *out = malloc(strlen(text) + n * dl + 1);
    assert_non_null(out);
    char *o = out;
    for (const char *p = text; *p;) {
        if (strncmp(p, "@D@", 3) == 0) {
            memcpy(o, tmpdir, dl);
            o += dl;
            p += 3;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static struct config *load(const char *text, char **err)
{
    char *t = expand(text);
    struct config *c = cfg_load_string(t, strlen(t), "t.yaml", err);
    free(t);
    return c;
}

static struct config *load_ok(const char *text)
{
    char *err = NULL;
    struct config *c = load(text, &err);
    if (!c)
        print_error("unexpected error: %s\n", err ? err : "(null)");
    assert_non_null(c);
    assert_null(err);
    return c;
}

/* Loading must fail with a message containing `want`. */
static void expect_error(const char *text, const char *want)
{
    char *err = NULL;
    struct config *c = load(text, &err);
    if (c || !err || !strstr(err, want))
        print_error("config:\n%s\nwant error containing: %s\ngot: %s\n", text, want,
                    c     ? "(success)"
                    : err ? err
                          : "(null)");
    assert_null(c);
    assert_non_null(err);
    assert_non_null(strstr(err, want));
    free(err);
}

#define LISTENER "listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: none }\n"
#define BACKEND  "backends:\n  - { name: b1, host: 127.0.0.1, port: 10143 }\n"
#define MINIMAL  LISTENER BACKEND

/* ---- defaults ---------------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok(MINIMAL);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c->workers, ncpu < 1 ? 1 : ncpu > 64 ? 64 : ncpu);
    char host[256] = "";
    gethostname(host, sizeof host);
    assert_string_equal(c->instance, host);
    assert_string_equal(c->greeting_name, "Portcullis");
    assert_false(c->allow_plaintext_auth);
    assert_int_equal(c->log_level, CFG_LOG_INFO);
    assert_null(c->log_file);
    assert_string_equal(c->path, "t.yaml");

    assert_int_equal(c->nlisteners, 1);
    const struct cfg_listener *l = &c->listeners[0];
    assert_string_equal(l->name, "imap");
    assert_string_equal(l->bind, "127.0.0.1:143");
    assert_int_equal(l->protocol, CFG_PROTO_IMAP);
    assert_int_equal(l->tls, CFG_TLS_NONE);
    assert_int_equal(l->addr.ss_family, AF_INET);
    assert_int_equal(l->addrlen, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
    assert_int_equal(ntohs(sin->sin_port), 143);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);

    assert_int_equal(c->tls.ncerts, 0);
    assert_null(c->tls.certs);
    assert_int_equal(c->tls.min_version, TLS1_2_VERSION);
    assert_string_equal(c->tls.ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS");
    assert_null(c->tls.ciphersuites);
    assert_null(c->tls.ticket_key_file);
    assert_int_equal(c->tls.handshake_timeout_ms, 30000);

    assert_int_equal(c->nbackends, 1);
    const struct cfg_backend *b = &c->backends[0];
    assert_string_equal(b->name, "b1");
    assert_string_equal(b->host, "127.0.0.1");
    assert_int_equal(b->port, 10143);
    assert_int_equal(b->protocol, CFG_PROTO_IMAP);
    assert_int_equal(b->weight, 1);
    assert_int_equal(b->tls, CFG_TLS_NONE);
    assert_null(b->tls_ca);
    assert_null(b->tls_sni);
    assert_true(b->tls_verify);
    assert_false(b->drain);
    assert_int_equal(b->addr.ss_family, AF_INET);
    assert_int_equal(ntohs(((const struct sockaddr_in *)&b->addr)->sin_port), 10143);

    const struct cfg_limits *lim = &c->limits;
    assert_int_equal(lim->preauth_timeout_ms, 60 * 1000);
    assert_int_equal(lim->imap_idle_timeout_ms, 30 * 60 * 1000);
    assert_int_equal(lim->pop3_idle_timeout_ms, 10 * 60 * 1000);
    assert_int_equal(lim->backend_connect_timeout_ms, 10 * 1000);
    assert_int_equal(lim->backend_login_timeout_ms, 30 * 1000);
    assert_int_equal(lim->max_line, 65536);
    assert_int_equal(lim->max_preauth_literal, 8192);
    assert_int_equal(lim->max_bad_commands, 10);
    assert_int_equal(lim->max_connections, 10000);
    assert_int_equal(lim->relay_buffer, 65536);
    assert_int_equal(atomic_load(&c->refs), 1);
    cfg_unref(&c);
    assert_null(c);
}

/* Every value set explicitly, to non-defaults, in block style. */
static void test_all_keys_block_style(void **state)
{
    (void)state;
    struct config *c = load_ok("workers: 3\n"
                               "instance: edge-1\n"
                               "greeting_name: \"Mail gate\"\n"
                               "allow_plaintext_auth: yes\n"
                               "log:\n"
                               "  level: debug\n"
                               "  file: /var/log/p.log\n"
                               "listeners:\n"
                               "  - name: imaps\n"
                               "    bind: \"*:993\"\n"
                               "    protocol: imap\n"
                               "    tls: implicit\n"
                               "  - name: pop3\n"
                               "    bind: 10.1.2.3:110\n"
                               "    protocol: pop3\n"
                               "    tls: starttls\n"
                               "tls:\n"
                               "  certificates:\n"
                               "    - cert: @D@/cert.pem\n"
                               "      key: @D@/key.pem\n"
                               "    - cert: @D@/cert.pem\n"
                               "      key: @D@/key.pem\n"
                               "  min_version: \"1.3\"\n"
                               "  ciphers: HIGH\n"
                               "  ciphersuites: TLS_AES_256_GCM_SHA384\n"
                               "  ticket_key_file: @D@/tickets.bin\n"
                               "  handshake_timeout: 5s\n"
                               "backends:\n"
                               "  - name: i1\n"
                               "    protocol: imap\n"
                               "    host: 127.0.0.1\n"
                               "    port: 993\n"
                               "    weight: 1000\n"
                               "    tls: implicit\n"
                               "    tls_ca: @D@/ca.pem\n"
                               "    tls_sni: imap.example.org\n"
                               "    tls_verify: off\n"
                               "    drain: on\n"
                               "  - name: p1\n"
                               "    protocol: pop3\n"
                               "    host: ::1\n"
                               "    port: 110\n"
                               "limits:\n"
                               "  preauth_timeout: 500ms\n"
                               "  imap_idle_timeout: 1h\n"
                               "  pop3_idle_timeout: 1d\n"
                               "  backend_connect_timeout: 3\n"
                               "  backend_login_timeout: 2m\n"
                               "  max_line: 1M\n"
                               "  max_preauth_literal: 1k\n"
                               "  max_bad_commands: 1\n"
                               "  max_connections: 20\n"
                               "  relay_buffer: 16k\n");
    assert_int_equal(c->workers, 3);
    assert_string_equal(c->instance, "edge-1");
    assert_string_equal(c->greeting_name, "Mail gate");
    assert_true(c->allow_plaintext_auth);
    assert_int_equal(c->log_level, CFG_LOG_DEBUG);
    assert_string_equal(c->log_file, "/var/log/p.log");
    assert_int_equal(c->nlisteners, 2);
    assert_int_equal(c->listeners[0].tls, CFG_TLS_IMPLICIT);
    assert_int_equal(ntohl(((struct sockaddr_in *)&c->listeners[0].addr)->sin_addr.s_addr),
                     INADDR_ANY);
    assert_int_equal(c->listeners[1].protocol, CFG_PROTO_POP3);
    assert_int_equal(c->listeners[1].tls, CFG_TLS_STARTTLS);
    assert_int_equal(c->tls.ncerts, 2);
    assert_non_null(strstr(c->tls.certs[1].key, "/key.pem"));
    assert_int_equal(c->tls.min_version, TLS1_3_VERSION);
    assert_string_equal(c->tls.ciphers, "HIGH");
    assert_string_equal(c->tls.ciphersuites, "TLS_AES_256_GCM_SHA384");
    assert_non_null(strstr(c->tls.ticket_key_file, "/tickets.bin"));
    assert_int_equal(c->tls.handshake_timeout_ms, 5000);
    assert_int_equal(c->nbackends, 2);
    const struct cfg_backend *b = &c->backends[0];
    assert_int_equal(b->weight, 1000);
    assert_int_equal(b->tls, CFG_TLS_IMPLICIT);
    assert_non_null(strstr(b->tls_ca, "/ca.pem"));
    assert_string_equal(b->tls_sni, "imap.example.org");
    assert_false(b->tls_verify);
    assert_true(b->drain);
    assert_int_equal(c->backends[1].protocol, CFG_PROTO_POP3);
    assert_int_equal(c->backends[1].addr.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&c->backends[1].addr)->sin6_port), 110);
    assert_int_equal(c->limits.preauth_timeout_ms, 500);
    assert_int_equal(c->limits.imap_idle_timeout_ms, 3600000);
    assert_int_equal(c->limits.pop3_idle_timeout_ms, 86400000);
    assert_int_equal(c->limits.backend_connect_timeout_ms, 3000);
    assert_int_equal(c->limits.backend_login_timeout_ms, 120000);
    assert_int_equal(c->limits.max_line, 1 << 20);
    assert_int_equal(c->limits.max_preauth_literal, 1024);
    assert_int_equal(c->limits.max_bad_commands, 1);
    assert_int_equal(c->limits.max_connections, 20);
    assert_int_equal(c->limits.relay_buffer, 16384);
    cfg_unref(&c);
}

static void test_flow_style(void **state)
{
    (void)state;
    struct config *c = load_ok(
        "{ listeners: [ { name: a, bind: \"127.0.0.1:1143\", tls: none },\n"
        "               { name: b, bind: \"127.0.0.1:1110\", protocol: pop3, tls: none } ],\n"
        "  backends: [ { name: x, host: 127.0.0.1, port: 1 },\n"
        "              { name: y, host: 127.0.0.1, port: 2, protocol: pop3 } ],\n"
        "  limits: { max_line: 2k }, log: { level: warn } }\n");
    assert_int_equal(c->nlisteners, 2);
    assert_string_equal(c->listeners[1].name, "b");
    assert_int_equal(c->listeners[1].protocol, CFG_PROTO_POP3);
    assert_int_equal(c->nbackends, 2);
    assert_int_equal(c->backends[1].port, 2);
    assert_int_equal(c->limits.max_line, 2048);
    assert_int_equal(c->limits.relay_buffer, 65536);
    assert_int_equal(c->log_level, CFG_LOG_WARN);
    cfg_unref(&c);
}

/* `key:` with nothing (YAML null) means "not given" for sections and "" for strings. */
static void test_null_values(void **state)
{
    (void)state;
    struct config *c = load_ok(MINIMAL "log:\nlimits: ~\ntls:\n  certificates:\n"
                                       "  ciphersuites: ~\ninstance: null\n");
    assert_int_equal(c->log_level, CFG_LOG_INFO);
    assert_int_equal(c->limits.max_line, 65536);
    assert_null(c->tls.ciphersuites);
    assert_true(c->instance[0] != '\0');
    cfg_unref(&c);
}

static void test_aliases(void **state)
{
    (void)state;
    struct config *c = load_ok(LISTENER "backends:\n"
                                        "  - &b { name: b1, host: 127.0.0.1, port: 7 }\n"
                                        "  - { name: b2, host: 127.0.0.1, port: 8 }\n"
                                        "limits: { max_line: &n 4k, relay_buffer: 16k }\n");
    assert_int_equal(c->nbackends, 2);
    assert_int_equal(c->limits.max_line, 4096);
    cfg_unref(&c);
}

/* The shipped config must load once its cert paths exist, and must state the built-in
 * defaults (a drift between docs/yaml and the tables fails here). */
static void test_shipped_config(void **state)
{
    (void)state;
    FILE *f = fopen("deploy/portcullis.yaml", "r");
    if (!f)
        f = fopen("../../deploy/portcullis.yaml", "r");
    assert_non_null(f);
    char *text = calloc(1, 1 << 16);
    assert_non_null(text);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    fclose(f);
    assert_true(n > 0);
    /* Point /etc/portcullis/ at the temp dir. */
    char *fixed = malloc(n * 2 + 1024), *o = fixed;
    assert_non_null(fixed);
    for (const char *p = text; *p;) {
        if (strncmp(p, "/etc/portcullis", 15) == 0) {
            o += sprintf(o, "%s", tmpdir);
            p += 15;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    char *err = NULL;
    struct config *c = cfg_load_string(fixed, strlen(fixed), "portcullis.yaml", &err);
    if (!c)
        print_error("%s\n", err);
    assert_non_null(c);
    struct config *d = load_ok(MINIMAL);
    assert_int_equal(c->nlisteners, 4);
    assert_int_equal(c->nbackends, 2);
    assert_int_equal(c->tls.ncerts, 1);
    assert_int_equal(c->workers, d->workers);
    assert_string_equal(c->instance, d->instance);
    assert_string_equal(c->greeting_name, d->greeting_name);
    assert_int_equal(c->allow_plaintext_auth, d->allow_plaintext_auth);
    assert_int_equal(c->log_level, d->log_level);
    assert_null(c->log_file);
    assert_int_equal(c->tls.min_version, d->tls.min_version);
    assert_string_equal(c->tls.ciphers, d->tls.ciphers);
    assert_null(c->tls.ciphersuites);
    assert_null(c->tls.ticket_key_file);
    assert_int_equal(c->tls.handshake_timeout_ms, d->tls.handshake_timeout_ms);
    assert_memory_equal(&c->limits, &d->limits, sizeof c->limits);
    for (size_t i = 0; i < c->nbackends; i++) {
        const struct cfg_backend *b = &c->backends[i], *db = &d->backends[0];
        assert_int_equal(b->weight, db->weight);
        assert_int_equal(b->tls, db->tls);
        assert_null(b->tls_ca);
        assert_null(b->tls_sni);
        assert_int_equal(b->tls_verify, db->tls_verify);
        assert_int_equal(b->drain, db->drain);
    }
    assert_int_equal(ntohs(((struct sockaddr_in *)&c->backends[1].addr)->sin_port), 10110);
    assert_int_equal(c->backends[1].protocol, CFG_PROTO_POP3);
    cfg_unref(&c);
    cfg_unref(&d);
    free(fixed);
    free(text);
}

/* ---- units ------------------------------------------------------------------------------- */

static void test_units(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } durs[] = {{"30s", 30000}, {"10m", 600000}, {"1h", 3600000}, {"500ms", 500}, {"2d", 172800000},
                {"45", 45000},  {"0", 0},        {"0ms", 0},      {"007s", 7000}};
    for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
        uint64_t v = 1;
        assert_true(cfg_parse_duration_ms(durs[i].s, &v));
        assert_int_equal(v, durs[i].ms);
    }
    static const struct {
        const char *s;
        uint64_t bytes;
    } sizes[] = {{"64k", 65536},
                 {"64K", 65536},
                 {"25M", 25u << 20},
                 {"1G", 1u << 30},
                 {"100", 100},
                 {"0", 0},
                 {"16777216G", UINT64_C(1) << 54}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint64_t v = 1;
        assert_true(cfg_parse_size(sizes[i].s, &v));
        assert_int_equal(v, sizes[i].bytes);
    }
    static const char *const junk[] = {"6379x",
                                       "16abc",
                                       "1e3",
                                       "-1",
                                       "99999999999999999999",
                                       "",
                                       " 5",
                                       "5 ",
                                       "+5",
                                       "1.5",
                                       "0x10",
                                       "5 s",
                                       "5sec",
                                       "k",
                                       "18446744073709551615s",
                                       "17179869184G",
                                       "1kk",
                                       "1mb"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        uint64_t v;
        bool d = cfg_parse_duration_ms(junk[i], &v), s = cfg_parse_size(junk[i], &v);
        if (d || s)
            print_error("accepted junk %s\n", junk[i]);
        assert_false(d);
        assert_false(s);
    }
    uint64_t v;
    assert_false(cfg_parse_size("1m", &v)); /* m is minutes, not mega */
    assert_false(cfg_parse_duration_ms("1M", &v));
    assert_false(cfg_parse_duration_ms("1k", &v));
    assert_true(cfg_parse_duration_ms("213503982334d", &v)); /* fits in ms */
    assert_false(cfg_parse_duration_ms("213503982335d", &v));
}

static void test_junk_in_file(void **state)
{
    (void)state;
    static const char *const junk[] = {"6379x", "16abc",  "1e3",  "-1",  "99999999999999999999",
                                       "\"\"",  "\" 5\"", "0x10", "1.0", "'12 '",
                                       "~"};
    char buf[512];
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        snprintf(buf, sizeof buf,
                 LISTENER "backends:\n  - name: b1\n    host: 127.0.0.1\n"
                          "    port: %s\n",
                 junk[i]);
        expect_error(buf, "t.yaml:6:11: backends[0].port: invalid port number");
        snprintf(buf, sizeof buf, MINIMAL "limits:\n  max_bad_commands: %s\n", junk[i]);
        expect_error(buf, "t.yaml:6:21: limits.max_bad_commands: invalid number");
        snprintf(buf, sizeof buf, MINIMAL "limits:\n  max_line: %s\n", junk[i]);
        expect_error(buf, "limits.max_line: invalid size");
        snprintf(buf, sizeof buf, MINIMAL "tls:\n  handshake_timeout: %s\n", junk[i]);
        expect_error(buf, "tls.handshake_timeout: invalid duration");
    }
}

static void test_ranges(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {MINIMAL "workers: 65\n", "workers: \"65\" is out of range (0..64)"},
        {MINIMAL "limits: { max_line: 512 }\n", "\"512\" is out of range (1k..1M)"},
        {MINIMAL "limits: { max_line: 2M }\n", "\"2M\" is out of range (1k..1M)"},
        {MINIMAL "limits: { relay_buffer: 8k }\n", "relay_buffer: \"8k\" is out of range (16k.."},
        {MINIMAL "limits: { imap_idle_timeout: 0 }\n", "\"0\" is out of range (1ms..1d)"},
        {MINIMAL "limits: { preauth_timeout: 0ms }\n", "out of range"},
        {MINIMAL "limits: { max_bad_commands: 0 }\n", "out of range (1..1000)"},
        {MINIMAL "limits: { max_connections: 4294967296 }\n", "out of range"},
        {MINIMAL "tls: { handshake_timeout: 2h }\n", "out of range (1ms..1h)"},
        {LISTENER "backends: [ { name: b, host: 127.0.0.1, port: 1, weight: 0 } ]\n",
         "backends[0].weight: \"0\" is out of range (1..1000)"},
        {LISTENER "backends: [ { name: b, host: 127.0.0.1, port: 1, weight: 1001 } ]\n",
         "out of range (1..1000)"},
        {LISTENER "backends: [ { name: b, host: 127.0.0.1, port: 0 } ]\n",
         "\"0\" is out of range (1..65535)"},
        {LISTENER "backends: [ { name: b, host: 127.0.0.1, port: 65536 } ]\n",
         "\"65536\" is out of range (1..65535)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);

    struct config *c = load_ok(MINIMAL "workers: 64\nlimits: { max_line: 1k, relay_buffer: 16k,"
                                       " imap_idle_timeout: 1ms }\n");
    assert_int_equal(c->workers, 64);
    assert_int_equal(c->limits.imap_idle_timeout_ms, 1);
    cfg_unref(&c);
}

static void test_bools(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool v;
    } ok[] = {{"true", true},   {"yes", true}, {"on", true},   {"True", true},
              {"false", false}, {"no", false}, {"off", false}, {"OFF", false}};
    char buf[512];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(buf, sizeof buf, MINIMAL "allow_plaintext_auth: %s\n", ok[i].s);
        struct config *c = load_ok(buf);
        assert_int_equal(c->allow_plaintext_auth, ok[i].v);
        cfg_unref(&c);
    }
    static const char *const bad[] = {"1", "0", "y", "n", "enable", "\"\"", "truee"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, MINIMAL "allow_plaintext_auth: %s\n", bad[i]);
        expect_error(buf, "allow_plaintext_auth: invalid boolean");
    }
}

/* ---- error reporting --------------------------------------------------------------------- */

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error(MINIMAL "limits:\n  max_line: 8k\n  maxline: 4k\n",
                 "t.yaml:7:3: unknown key \"maxline\" in limits (valid: preauth_timeout,");
    expect_error("listen:\n  - x\n", "t.yaml:1:1: unknown key \"listen\" at top level (valid: "
                                     "workers, instance, greeting_name,");
    expect_error("listeners:\n"
                 "  - { name: a, bind: \"127.0.0.1:1\", tls: none }\n"
                 "  - { name: b, bind: \"127.0.0.1:2\", tls: none, protocl: pop3 }\n" BACKEND,
                 "t.yaml:3:48: unknown key \"protocl\" in listeners[1] (valid: name, bind,");
    expect_error(MINIMAL "tls:\n  certificates:\n    - { cert: a, key: b, chain: c }\n",
                 "t.yaml:7:26: unknown key \"chain\" in tls.certificates[0]");
    /* Hostile key text is quoted and escaped, never echoed raw. */
    expect_error(MINIMAL "\"a\\nb\\u0001\": 1\n", "unknown key \"a\\x0ab\\x01\" at top level");
}

static void test_duplicate_key(void **state)
{
    (void)state;
    expect_error(LISTENER "backends:\n  - name: b1\n    host: 127.0.0.1\n    port: 1\n"
                          "    port: 2\n",
                 "t.yaml:7:5: backends[0]: duplicate key \"port\" (first at line 6:5)");
    expect_error(MINIMAL "limits: {}\nlimits: {}\n",
                 "t.yaml:6:1: duplicate key \"limits\" (first at line 5:1)");
}

static void test_bad_enum(void **state)
{
    (void)state;
    expect_error("listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: implict }\n" BACKEND,
                 "t.yaml:2:47: listeners[0].tls: invalid value \"implict\" "
                 "(valid: none, starttls, implicit)");
    expect_error(MINIMAL "log: { level: verbose }\n",
                 "log.level: invalid value \"verbose\" (valid: debug, info, warn, error)");
    expect_error(MINIMAL "tls: { min_version: 1.1 }\n",
                 "tls.min_version: invalid value \"1.1\" (valid: 1.2, 1.3)");
    expect_error(LISTENER "backends: [ { name: b, host: h, port: 1, protocol: smtp } ]\n",
                 "backends[0].protocol: invalid value \"smtp\" (valid: imap, pop3)");
    expect_error(MINIMAL "tls: { min_version: \"\" }\n", "invalid value \"\" (valid: 1.2, 1.3)");
}

static void test_wrong_type(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {MINIMAL "limits: 5\n", "t.yaml:5:9: limits: expected a mapping, got a scalar"},
        {MINIMAL "log: [a]\n", "log: expected a mapping, got a sequence"},
        {"listeners: { name: x }\n" BACKEND, "t.yaml:1:12: listeners: expected a sequence, got a "
                                             "mapping"},
        {"listeners: imap\n" BACKEND, "listeners: expected a sequence, got a scalar"},
        {"listeners:\n  - imap\n" BACKEND,
         "t.yaml:2:5: listeners[0]: expected a mapping, got a scalar"},
        {"listeners:\n  -\n" BACKEND, "listeners[0]: expected a mapping, got an empty value"},
        {MINIMAL "workers: [1]\n", "t.yaml:5:10: workers: expected a single value, got a "
                                   "sequence"},
        {MINIMAL "greeting_name: { a: b }\n", "greeting_name: expected a single value, got a "
                                              "mapping"},
        {MINIMAL "tls: { certificates: { cert: a, key: b } }\n",
         "tls.certificates: expected a sequence, got a mapping"},
        {MINIMAL "[a]: 1\n", "t.yaml:5:1: a key must be a plain name, got a sequence"},
        {"- a\n- b\n", "t.yaml:1:1: expected a mapping at top level, got a sequence"},
        {"hello\n", "t.yaml:1:1: expected a mapping at top level, got a scalar"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);
}

static void test_missing_required(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {"listeners:\n  - { name: imap, tls: none }\n" BACKEND,
         "t.yaml:2:5: listeners[0]: missing required key \"bind\""},
        {"listeners:\n  - { bind: \"127.0.0.1:1\", tls: none }\n" BACKEND,
         "listeners[0]: missing required key \"name\""},
        {"listeners:\n  - { name: imap, bind: \"127.0.0.1:1\" }\n" BACKEND,
         "listeners[0]: missing required key \"tls\""},
        {LISTENER "backends:\n  - { name: b1, host: 127.0.0.1 }\n",
         "t.yaml:4:5: backends[0]: missing required key \"port\""},
        {LISTENER "backends:\n  - { name: b1, port: 1 }\n",
         "backends[0]: missing required key \"host\""},
        {BACKEND, "t.yaml:1:1: missing required key \"listeners\""},
        {"listeners: []\n" BACKEND, "t.yaml:1:12: listeners: needs at least 1 entry"},
        {"listeners:\n" BACKEND, "listeners: needs at least 1 entry"},
        {MINIMAL "tls:\n  certificates:\n    - cert: @D@/cert.pem\n",
         "tls.certificates[0]: missing required key \"key\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);
}

static void test_syntax_and_empty(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {"", "t.yaml:1:1: empty document"},
        {"# nothing but a comment\n\n", "t.yaml:1:1: empty document"},
        {"---\n", "empty document"},
        {"~\n", "empty document"},
        {"listeners:\n  - { name: a\nbackends: []\n", "t.yaml:3:9: YAML syntax error: "},
        {"a: b\n c: d\n", "t.yaml:2:3: YAML syntax error: mapping values are not allowed"},
        {"a: [1, 2\n", "YAML syntax error: did not find expected ',' or ']'"},
        {"a: *nope\n", "t.yaml:1:4: YAML syntax error: found undefined alias"},
        {"a: \"\x01\"\n", "t.yaml:1:5: YAML syntax error: control characters are not allowed"},
        {"a: 1\nb: \"\xff\"\n", "t.yaml:2:5: YAML syntax error: invalid leading UTF-8 octet"},
        {"a: 1\n---\nb: 2\n", "t.yaml:3:1: more than one YAML document"},
        {MINIMAL "\tworkers: 1\n", "YAML syntax error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);
}

static void test_strings(void **state)
{
    (void)state;
    expect_error(MINIMAL "greeting_name: \"evil\\r\\n* BYE\"\n",
                 "greeting_name: control character (0x0d) in string");
    expect_error(MINIMAL "instance: \"a\\0b\"\n", "t.yaml:5:11: instance: NUL byte in value");
    /* A NUL must not cut a value short: "143\0junk" is not 143. */
    expect_error(LISTENER "backends: [ { name: b, host: 127.0.0.1, port: \"143\\0x\" } ]\n",
                 "backends[0].port: NUL byte in value");
    expect_error(MINIMAL "allow_plaintext_auth: \"true\\0\"\n", "NUL byte in value");
    expect_error("listeners: [ { name: \"im ap\", bind: \"127.0.0.1:1\", tls: none } ]\n" BACKEND,
                 "listeners[0].name: invalid name \"im ap\" (letters, digits, '.', '_', '-' only)");
    expect_error("listeners: [ { name: \"\", bind: \"127.0.0.1:1\", tls: none } ]\n" BACKEND,
                 "listeners[0].name: must be 1 to 64 characters");
    expect_error(LISTENER "backends: [ { name: b, host: \"\", port: 1 } ]\n",
                 "backend b: host is empty");

    /* 4096 bytes is the longest string; 4097 is refused. */
    size_t len = strlen(MINIMAL) + 5000;
    char *buf = malloc(len);
    assert_non_null(buf);
    int n = snprintf(buf, len, MINIMAL "greeting_name: ");
    memset(buf + n, 'g', 4096);
    strcpy(buf + n + 4096, "\n");
    struct config *c = load_ok(buf);
    assert_int_equal(strlen(c->greeting_name), 4096);
    cfg_unref(&c);
    memset(buf + n, 'g', 4097);
    strcpy(buf + n + 4097, "\n");
    expect_error(buf, "greeting_name: string too long (4097 bytes, max 4096)");
    free(buf);
}

static void test_input_limits(void **state)
{
    (void)state;
    /* 1 MiB of YAML is the most we take. */
    size_t big = 1024 * 1024 + 1;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, '#', big);
    char *err = NULL;
    struct config *c = cfg_load_string(text, big, "big.yaml", &err);
    assert_null(c);
    assert_string_equal(err, "big.yaml: file too large (1048577 bytes, max 1048576)");
    free(err);
    free(text);

    /* 256 entries in a sequence, not 257. */
    size_t cap = 300 * 80 + 1024;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int count = 256; count <= 257; count++) {
        size_t o = (size_t)snprintf(buf, cap, LISTENER "backends:\n");
        for (int i = 0; i < count; i++)
            o += (size_t)snprintf(buf + o, cap - o,
                                  "  - { name: b%d, host: 127.0.0.1, port: %d }\n", i, i + 1);
        if (count == 256) {
            c = load_ok(buf);
            assert_int_equal(c->nbackends, 256);
            assert_int_equal(c->backends[255].port, 256);
            cfg_unref(&c);
        } else {
            expect_error(buf, "t.yaml:4:3: backends: too many entries (257, max 256)");
        }
    }
    free(buf);
}

/* libyaml is quadratic in flow nesting and in anchors: both are capped before the document is
 * built, so a hostile 1 MiB file is rejected in milliseconds, not minutes. */
static void test_shape_limits(void **state)
{
    (void)state;
    static char text[1000 * 1000 + 16];
    size_t big = 1000 * 1000;
    size_t half = (big - 4) / 2;
    memcpy(text, "a: ", 3);
    memset(text + 3, '[', half);
    memset(text + 3 + half, ']', half);
    text[3 + 2 * half] = '\0';
    char *err = NULL;
    struct config *c = cfg_load_string(text, strlen(text), "t.yaml", &err);
    assert_null(c);
    assert_string_equal(err, "t.yaml:1:35: nested deeper than 32 levels");
    free(err);

    /* 32 levels (the top mapping and 31 sequences) pass the shape check; the schema then
     * refuses the key. */
    memset(text + 3, '[', 31);
    memset(text + 34, ']', 31);
    text[65] = '\0';
    expect_error(text, "t.yaml:1:1: unknown key \"a\" at top level");

    size_t o = (size_t)snprintf(text, big, "a: [");
    for (int i = 0; i < 257; i++)
        o += (size_t)snprintf(text + o, big - o, "&a%d 1, ", i);
    snprintf(text + o, big - o, "]\n");
    expect_error(text, "more than 256 anchors");

    o = (size_t)snprintf(text, big, "a: &x 1\nb: [");
    for (int i = 0; i < 4097; i++)
        o += (size_t)snprintf(text + o, big - o, "*x, ");
    snprintf(text + o, big - o, "]\n");
    expect_error(text, "more than 4096 aliases");
}

static void test_addresses(void **state)
{
    (void)state;
    struct config *c = load_ok("listeners:\n"
                               "  - { name: v6, bind: \"[::1]:993\", tls: none }\n"
                               "  - { name: any, bind: \"*:994\", tls: none }\n"
                               "  - { name: any6, bind: \"[::]:995\", tls: none }\n" BACKEND);
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&c->listeners[0].addr;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(c->listeners[0].addrlen, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(s6->sin6_port), 993);
    assert_memory_equal(&s6->sin6_addr, &in6addr_loopback, sizeof in6addr_loopback);
    assert_string_equal(c->listeners[0].bind, "[::1]:993");
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&c->listeners[1].addr;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(s4->sin_addr.s_addr, htonl(INADDR_ANY));
    assert_int_equal(ntohs(s4->sin_port), 994);
    s6 = (const struct sockaddr_in6 *)&c->listeners[2].addr;
    assert_memory_equal(&s6->sin6_addr, &in6addr_any, sizeof in6addr_any);
    cfg_unref(&c);

    static const char *const bad[] = {"localhost:993", "127.0.0.1", "127.0.0.1:",    "127.1:993",
                                      ":993",          "[::1]993",  "[::1]",         "[1.2.3.4]:1",
                                      "[*]:993",       "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:99x"};
    char buf[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, "listeners: [ { name: l, bind: \"%s\", tls: none } ]\n" BACKEND,
                 bad[i]);
        expect_error(buf, "t.yaml:1:31: listeners[0].bind: invalid ");
    }
    expect_error("listeners: [ { name: l, bind: \"::1:993\", tls: none } ]\n" BACKEND,
                 "listeners[0].bind: IPv6 address \"::1:993\" needs brackets");
}

static void test_backend_resolution(void **state)
{
    (void)state;
    struct config *c = load_ok(LISTENER "backends: [ { name: b, host: localhost, port: 143 } ]\n");
    const struct cfg_backend *b = &c->backends[0];
    assert_string_equal(b->host, "localhost");
    assert_true(b->addr.ss_family == AF_INET || b->addr.ss_family == AF_INET6);
    if (b->addr.ss_family == AF_INET) {
        assert_int_equal(b->addrlen, sizeof(struct sockaddr_in));
        assert_int_equal(ntohs(((const struct sockaddr_in *)&b->addr)->sin_port), 143);
    } else {
        assert_int_equal(b->addrlen, sizeof(struct sockaddr_in6));
        assert_int_equal(ntohs(((const struct sockaddr_in6 *)&b->addr)->sin6_port), 143);
    }
    cfg_unref(&c);
    expect_error(LISTENER "backends: [ { name: b, host: \"no such host.invalid\", port: 1 } ]\n",
                 "t.yaml:3:30: backend b: cannot resolve \"no such host.invalid\"");
}

static void test_cross_checks(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {"listeners:\n"
         "  - { name: imap, bind: \"127.0.0.1:143\", tls: none }\n"
         "  - { name: pop3, bind: \"127.0.0.1:110\", protocol: pop3, tls: none }\n" BACKEND,
         "t.yaml:3:52: listener \"pop3\" speaks pop3 but no backend has protocol pop3"},
        {LISTENER "backends: [ { name: p, host: 127.0.0.1, port: 1, protocol: pop3 } ]\n",
         "t.yaml:2:5: listener \"imap\" speaks imap but no backend has protocol imap"},
        {LISTENER, "listener \"imap\" speaks imap but no backend"},
        {"listeners:\n  - { name: imaps, bind: \"127.0.0.1:993\", tls: implicit }\n" BACKEND,
         "t.yaml:2:48: listener \"imaps\" uses TLS but tls.certificates is empty"},
        {"listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: starttls }\n" BACKEND
         "tls: { certificates: [] }\n",
         "listener \"imap\" uses TLS but tls.certificates is empty"},
        {MINIMAL "tls:\n  certificates:\n    - { cert: @D@/nope.pem, key: @D@/key.pem }\n",
         "t.yaml:7:15: certificate: cannot read \"/"},
        {MINIMAL "tls:\n  certificates:\n    - { cert: @D@/cert.pem, key: @D@/nope.pem }\n",
         "private key: cannot read"},
        {MINIMAL "tls: { ticket_key_file: @D@/nope }\n", "ticket key file: cannot read"},
        {LISTENER "backends: [ { name: b, host: 127.0.0.1, port: 1, tls_ca: @D@/nope } ]\n",
         "backend b: cannot read"},
        {"listeners:\n"
         "  - { name: a, bind: \"127.0.0.1:1\", tls: none }\n"
         "  - { name: a, bind: \"127.0.0.1:2\", tls: none }\n" BACKEND,
         "t.yaml:3:13: duplicate listener name \"a\" (also listeners[0])"},
        {"listeners:\n"
         "  - { name: a, bind: \"127.0.0.1:1\", tls: none }\n"
         "  - { name: b, bind: \"127.0.0.1:1\", protocol: pop3, tls: none }\n" BACKEND,
         "t.yaml:3:22: listener \"b\" binds the same address as \"a\""},
        {LISTENER "backends:\n  - { name: x, host: 127.0.0.1, port: 1 }\n"
                  "  - { name: x, host: 127.0.0.1, port: 2 }\n",
         "t.yaml:5:13: duplicate backend name \"x\" (also backends[0])"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);

    /* A TLS listener with a readable pair passes; a cert listed with no TLS listener is still
     * checked (it would be loaded on the next reload that adds one). */
    struct config *c =
        load_ok("listeners:\n  - { name: imaps, bind: \"127.0.0.1:993\", tls: implicit }\n" BACKEND
                "tls: { certificates: [ { cert: @D@/cert.pem, key: @D@/key.pem } ] }\n");
    assert_int_equal(c->tls.ncerts, 1);
    cfg_unref(&c);
}

/* ---- files and lifecycle ----------------------------------------------------------------- */

static void test_load_file(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/p.yaml", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(MINIMAL "workers: 2\n", f);
    fclose(f);
    char *err = NULL;
    struct config *c = cfg_load(path, &err);
    assert_non_null(c);
    assert_null(err);
    assert_string_equal(c->path, path);
    assert_int_equal(c->workers, 2);
    cfg_unref(&c);

    f = fopen(path, "w");
    assert_non_null(f);
    fputs(MINIMAL "workers: two\n", f);
    fclose(f);
    c = cfg_load(path, &err);
    assert_null(c);
    char want[256];
    snprintf(want, sizeof want, "%s:5:10: workers: invalid number (decimal digits only): \"two\"",
             path);
    assert_string_equal(err, want);
    free(err);
    unlink(path);

    c = cfg_load(path, &err);
    assert_null(c);
    assert_non_null(strstr(err, "p.yaml: cannot open: No such file or directory"));
    free(err);
    c = cfg_load(tmpdir, &err);
    assert_null(c);
    assert_non_null(strstr(err, "cannot read: Is a directory"));
    free(err);
}

static void test_refcount(void **state)
{
    (void)state;
    struct config *c = load_ok(MINIMAL);
    struct config *a = cfg_ref(c);
    struct config *b = cfg_ref(c);
    assert_ptr_equal(a, c);
    assert_ptr_equal(b, c);
    assert_int_equal(atomic_load(&c->refs), 3);
    cfg_unref(&a);
    assert_null(a);
    cfg_unref(&b);
    assert_null(b);
    assert_int_equal(atomic_load(&c->refs), 1);
    cfg_unref(&c); /* frees: ASan reports a leak otherwise */
    assert_null(c);
    cfg_unref(&c); /* NULL-safe */
    cfg_unref(NULL);
    assert_null(cfg_ref(NULL));
}

static void test_proto_name(void **state)
{
    (void)state;
    assert_string_equal(cfg_proto_name(CFG_PROTO_IMAP), "imap");
    assert_string_equal(cfg_proto_name(CFG_PROTO_POP3), "pop3");
}

/* ---- routing.lookups of type ldap (issue 17) ----------------------------------------------- */

#define LDAP_HEAD MINIMAL "routing:\n  lookups:\n    - name: dir\n      type: ldap\n"
#define LDAP_OK   LDAP_HEAD "      uri: ldap://127.0.0.1:389\n      base: dc=x\n"

static void test_ldap_lookup(void **state)
{
    (void)state;
    struct config *c = load_ok(LDAP_OK "      starttls: true\n      ca_file: @D@/ca.pem\n"
                                       "      bind_dn: cn=r,dc=x\n"
                                       "      bind_password_file: @D@/ldap.pw\n"
                                       "      connections: 4\n");
    const struct cfg_lookup *l = &c->routing.lookups[0];
    assert_int_equal(l->type, CFG_LOOKUP_LDAP);
    assert_string_equal(l->ldap.uri, "ldap://127.0.0.1:389");
    assert_true(l->ldap.starttls);
    assert_string_equal(l->ldap.bind_password, "s3cret pw"); /* the first line only */
    assert_int_equal(l->ldap.scope, CFG_LDAP_SUB);
    assert_string_equal(l->ldap.filter, "(uid=%u)");
    assert_string_equal(l->ldap.attribute, "mailHost");
    assert_int_equal(l->connections, 4);
    assert_int_equal(l->connect_timeout_ms, 0);
    cfg_unref(&c);

    static const struct {
        const char *yaml;
        const char *want;
    } cases[] = {
        {LDAP_HEAD "      base: dc=x\n", "lookup dir: type ldap needs a uri"},
        {LDAP_HEAD "      uri: http://h\n      base: dc=x\n", "type ldap needs a uri"},
        {LDAP_HEAD "      uri: ldap://\n      base: dc=x\n", "type ldap needs a uri"},
        {LDAP_HEAD "      uri: ldap://h\n", "lookup dir: type ldap needs a search base"},
        {LDAP_HEAD "      uri: ldaps://h\n      base: dc=x\n      starttls: true\n",
         "starttls is for ldap://"},
        {LDAP_OK "      filter: \"(uid=%x)\"\n", "lookup dir: bad filter template"},
        {LDAP_OK "      filter: \"uid=%u\"\n", "lookup dir: bad filter template"},
        {LDAP_OK "      attribute: \"mail host\"\n", "not an attribute name"},
        {LDAP_OK "      cert_file: @D@/cert.pem\n", "cert_file and key_file go together"},
        {LDAP_OK "      sasl_external: true\n", "sasl_external needs cert_file"},
        {LDAP_OK "      bind_password: s3cret\n", "a bind password needs a bind_dn"},
        {LDAP_OK "      bind_dn: cn=r\n      bind_password: s3cret\n"
                 "      bind_password_file: @D@/ldap.pw\n",
         "bind_password and bind_password_file exclude each other"},
        {LDAP_OK "      bind_dn: cn=r\n      bind_password_file: @D@/nope.pw\n", "cannot read"},
        {LDAP_OK "      bind_dn: cn=r\n      bind_password_file: @D@/empty.pw\n",
         "must hold one line of 1..1024 bytes"},
        {LDAP_OK "      ca_file: @D@/nope.pem\n", "lookup dir: cannot read"},
        {LDAP_OK "      scope: subtree\n", "scope"},
        {LDAP_OK "      connections: 17\n", "connections"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].want);
    /* A password never appears in an error, even one about the same entry. */
    char *err = NULL;
    c = load(LDAP_OK "      bind_password: s3cret\n", &err);
    assert_null(c);
    assert_non_null(err);
    assert_null(strstr(err, "s3cret"));
    free(err);
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static void touch(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config.XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    touch("cert.pem");
    touch("key.pem");
    touch("ca.pem");
    touch("tickets.bin");
    touch("empty.pw");
    char path[128];
    snprintf(path, sizeof path, "%s/ldap.pw", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("s3cret pw\nsecond line\n", f);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    static const char *const names[] = {"cert.pem",    "key.pem",  "ca.pem",
                                        "tickets.bin", "empty.pw", "ldap.pw"};
    char path[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    return rmdir(tmpdir);
}

/* routing.lookups type http (nginx auth_http, route_http.c): the keys, and the checks made at
 * load and by `portcullis -t`: url scheme and host, a readable ca_file, "Name: value" headers
 * (CR/LF refused by the string check). */
static void test_http_lookup(void **state)
{
    (void)state;
    struct config *c =
        load_ok(MINIMAL "routing:\n  lookups:\n"
                        "    - name: authsvc\n      type: http\n"
                        "      url: http://127.0.0.1:9000/auth\n"
                        "      headers: [\"X-Auth-Key: secret\", \"X-Site: a b\"]\n");
    const struct cfg_lookup *l = &c->routing.lookups[0];
    assert_int_equal(l->type, CFG_LOOKUP_HTTP);
    assert_string_equal(l->url, "http://127.0.0.1:9000/auth");
    assert_null(l->ca_file);
    assert_int_equal(l->connect_timeout_ms, 2000);
    assert_int_equal(l->timeout_ms, 2000);
    assert_int_equal(l->connections, 8);
    assert_int_equal(l->max_wait_ms, 10000);
    assert_int_equal(l->nheaders, 2);
    assert_string_equal(l->headers[0], "X-Auth-Key: secret");
    assert_string_equal(l->headers[1], "X-Site: a b");
    assert_null(l->headers[2]);
    cfg_unref(&c);

#define HTTP_LOOKUP MINIMAL "routing:\n  lookups:\n    - name: a\n      type: http\n"
    expect_error(HTTP_LOOKUP, "lookup a: type http needs a url");
    expect_error(HTTP_LOOKUP "      url: ftp://x/\n",
                 "url \"ftp://x/\" is not http:// or https://");
    expect_error(HTTP_LOOKUP "      url: \"https:///auth\"\n", "has no host");
    expect_error(HTTP_LOOKUP "      url: https://a/\n      ca_file: /nonexistent/ca.pem\n",
                 "lookup a: cannot read \"/nonexistent/ca.pem\"");
    expect_error(HTTP_LOOKUP "      url: http://a/\n      headers: [\"X-Auth-Key secret\"]\n",
                 "headers[0] is not a \"Name: value\" line");
    expect_error(HTTP_LOOKUP "      url: http://a/\n      headers: [\"X: 1\\r\\nY: 2\"]\n",
                 "control character (0x0d) in string");
    expect_error(HTTP_LOOKUP "      url: http://a/\n      headers: [{a: b}]\n",
                 "expected a single value");
    expect_error(HTTP_LOOKUP "      url: http://a/\n      headers: x\n", "expected a sequence");
#undef HTTP_LOOKUP
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_keys_block_style),
        cmocka_unit_test(test_flow_style),
        cmocka_unit_test(test_null_values),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_shipped_config),
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_junk_in_file),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_bad_enum),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_syntax_and_empty),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_input_limits),
        cmocka_unit_test(test_shape_limits),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_backend_resolution),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_ldap_lookup),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_proto_name),
        cmocka_unit_test(test_http_lookup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
