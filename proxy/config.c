/*
 * config — the Portcullis schema: which keys exist, their types, defaults and limits, and the
 * checks that span keys. The generic YAML walking lives in cfg_map.c; this file is tables and
 * the few rules a table cannot express.
 *
 * Invariants:
 *  - A snapshot returned by cfg_load*() is complete and consistent: every default applied, every
 *    listener address parsed, every backend resolved, every certificate/key file readable, and
 *    every protocol a listener speaks has a backend pool. Code holding a snapshot never
 *    re-validates it.
 *  - It is never modified afterwards; only `refs` changes (atomically).
 *  - Files are only checked for readability here. Loading certificates, CA stores and ticket
 *    keys is tls.c's job, because a reload must build those before swapping snapshots.
 *
 * To add a section: add the struct and its field to config.h, write its key table below, add one
 * CFG_K_MAP/CFG_K_SEQ line to top_keys, and document it in docs/configuration.md and
 * deploy/portcullis.yaml. Parsing, defaults, errors and freeing follow from the table.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "cfg_map.h"
#include "ldapfilter.h"

/* CFG_ENUM stores an int; the enums it targets must be int-sized. */
_Static_assert(sizeof(enum cfg_proto) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_tls_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_scan_action) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_scan_reload) == sizeof(int), "enum size");

#define KIB  (UINT64_C(1) << 10)
#define MIB  (UINT64_C(1) << 20)
#define SEC  UINT64_C(1000)
#define MIN  (60 * SEC)
#define HOUR (60 * MIN)
#define DAY  (24 * HOUR)

#define MAX_WORKERS 64
#define GIB         (UINT64_C(1) << 30)

static const struct cfg_enum proto_values[] = {
    {"imap", CFG_PROTO_IMAP}, {"pop3", CFG_PROTO_POP3}, {NULL, 0}};
static const struct cfg_enum tls_mode_values[] = {{"none", CFG_TLS_NONE},
                                                  {"starttls", CFG_TLS_STARTTLS},
                                                  {"implicit", CFG_TLS_IMPLICIT},
                                                  {NULL, 0}};
static const struct cfg_enum log_level_values[] = {{"debug", CFG_LOG_DEBUG},
                                                   {"info", CFG_LOG_INFO},
                                                   {"warn", CFG_LOG_WARN},
                                                   {"error", CFG_LOG_ERROR},
                                                   {NULL, 0}};
static const struct cfg_enum tls_version_values[] = {
    {"1.2", TLS1_2_VERSION}, {"1.3", TLS1_3_VERSION}, {NULL, 0}};

static const struct cfg_enum scan_action_values[] = {
    {"pass", CFG_SCAN_PASS}, {"block", CFG_SCAN_BLOCK}, {NULL, 0}};
static const struct cfg_enum scan_reload_values[] = {
    {"concurrent", CFG_SCAN_RELOAD_CONCURRENT}, {"lowmem", CFG_SCAN_RELOAD_LOWMEM}, {NULL, 0}};

static bool backend_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj);
static bool scan_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj);
static bool config_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj);

/* ---- schema ------------------------------------------------------------------------------ */

/* `log:` has no struct of its own: its keys land in struct config (log_level, log_file). */
static const struct cfg_key log_keys[] = {
    {CFG_K_ENUM("level", struct config, log_level, "info", log_level_values)},
    {CFG_K_OPTSTR("file", struct config, log_file, "")},
    {CFG_K_BOOL("syslog", struct config, log_syslog, "false")},
    {CFG_K_SIZE("queue_size", struct config, log_queue_size, "1M", 64 * KIB, GIB),
     .flags = CFG_RESTART},
    {CFG_K_END},
};
static const struct cfg_table log_table = {.keys = log_keys};

/* No default for `tls`: "none" would silently serve plaintext, "implicit" would silently need
 * certificates. The operator says which. */
static const struct cfg_key listener_keys[] = {
    {CFG_K_NAME("name", struct cfg_listener, name, NULL)},
    {CFG_K_ADDR("bind", struct cfg_listener, bind, addr, addrlen, NULL)},
    {CFG_K_ENUM("protocol", struct cfg_listener, protocol, "imap", proto_values)},
    {CFG_K_ENUM("tls", struct cfg_listener, tls, NULL, tls_mode_values)},
    {CFG_K_BOOL("proxy_protocol", struct cfg_listener, proxy_protocol, "false")},
    {CFG_K_BOOL("transparent", struct cfg_listener, transparent, "false")},
    {CFG_K_BOOL("transparent_source", struct cfg_listener, transparent_source, "false")},
    {CFG_K_ENUM("transparent_backend_tls", struct cfg_listener, transparent_backend_tls, "none",
                tls_mode_values)},
    {CFG_K_BOOL("transparent_backend_verify", struct cfg_listener, transparent_backend_verify,
                "true")},
    {CFG_K_END},
};
static const struct cfg_table listener_table = {.size = sizeof(struct cfg_listener),
                                                .keys = listener_keys};

static const struct cfg_key cert_keys[] = {
    {CFG_K_STRING("cert", struct cfg_cert, cert, NULL)},
    {CFG_K_STRING("key", struct cfg_cert, key, NULL)},
    {CFG_K_END},
};
static const struct cfg_table cert_table = {.size = sizeof(struct cfg_cert), .keys = cert_keys};

/* Forward-secret AEAD suites only (Mozilla "intermediate" without the DHE ones): every mail
 * client that speaks TLS 1.2 has ECDHE with AES-GCM or ChaCha20. See docs/configuration.md. */
#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"
/* TLS 1.3: AES-128-GCM first (OpenSSL's default order puts AES-256-GCM first; with server
 * preference that costs more per record and per handshake for no practical security gain,
 * and it is what nginx, HAProxy and browsers negotiate). Key exchange: X25519 first, the
 * cheapest group and every current client's first key share, so no HelloRetryRequest. */
#define DEFAULT_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define DEFAULT_GROUPS "X25519:P-256:X448:P-521:P-384"

static const struct cfg_key tls_keys[] = {
    {CFG_K_SEQ("certificates", struct cfg_tls, certs, ncerts, &cert_table, 0, CFG_SEQ_MAX)},
    {CFG_K_ENUM("min_version", struct cfg_tls, min_version, "1.2", tls_version_values)},
    {CFG_K_STRING("ciphers", struct cfg_tls, ciphers, DEFAULT_CIPHERS)},
    {CFG_K_OPTSTR("ciphersuites", struct cfg_tls, ciphersuites, DEFAULT_SUITES)},
    {CFG_K_OPTSTR("groups", struct cfg_tls, groups, DEFAULT_GROUPS)},
    {CFG_K_UINT("session_tickets", struct cfg_tls, session_tickets, "1", 0, 8)},
    {CFG_K_UINT("ssl_cache", struct cfg_tls, ssl_cache, "64", 0, 4096)},
    {CFG_K_OPTSTR("ticket_key_file", struct cfg_tls, ticket_key_file, "")},
    {CFG_K_DURATION("handshake_timeout", struct cfg_tls, handshake_timeout_ms, "30s", 1, HOUR)},
    {CFG_K_END},
};
static const struct cfg_table tls_table = {.keys = tls_keys};

static const struct cfg_key backend_keys[] = {
    {CFG_K_NAME("name", struct cfg_backend, name, NULL)},
    {CFG_K_OPTSTR("server", struct cfg_backend, server, "")},
    {CFG_K_ENUM("protocol", struct cfg_backend, protocol, "imap", proto_values)},
    {CFG_K_STRING("host", struct cfg_backend, host, NULL)},
    {CFG_K_PORT("port", struct cfg_backend, port, NULL)},
    {CFG_K_UINT("weight", struct cfg_backend, weight, "1", 1, 1000)},
    {CFG_K_ENUM("tls", struct cfg_backend, tls, "none", tls_mode_values)},
    {CFG_K_OPTSTR("tls_ca", struct cfg_backend, tls_ca, "")},
    {CFG_K_OPTSTR("tls_sni", struct cfg_backend, tls_sni, "")},
    {CFG_K_BOOL("tls_verify", struct cfg_backend, tls_verify, "true")},
    {CFG_K_BOOL("drain", struct cfg_backend, drain, "false")},
    {CFG_K_BOOL("proxy_protocol", struct cfg_backend, proxy_protocol, "false")},
    {CFG_K_END},
};
static const struct cfg_table backend_table = {
    .size = sizeof(struct cfg_backend), .keys = backend_keys, .check = backend_check};

/* Timeouts must be > 0 (a zero timer would fire at once) and at most a day (a typo like "30d"
 * for "30s" should not keep dead sessions for a month). The RFC minimums for idle timeouts
 * (30 min IMAP, 10 min POP3) are defaults, not floors: tests need short values. */
static const struct cfg_key limits_keys[] = {
    {CFG_K_DURATION("preauth_timeout", struct cfg_limits, preauth_timeout_ms, "60s", 1, DAY)},
    {CFG_K_DURATION("imap_idle_timeout", struct cfg_limits, imap_idle_timeout_ms, "30m", 1, DAY)},
    {CFG_K_DURATION("pop3_idle_timeout", struct cfg_limits, pop3_idle_timeout_ms, "10m", 1, DAY)},
    {CFG_K_DURATION("backend_connect_timeout", struct cfg_limits, backend_connect_timeout_ms, "10s",
                    1, DAY)},
    {CFG_K_DURATION("backend_login_timeout", struct cfg_limits, backend_login_timeout_ms, "30s", 1,
                    DAY)},
    {CFG_K_SIZE("max_line", struct cfg_limits, max_line, "64k", KIB, MIB)},
    {CFG_K_SIZE("max_preauth_literal", struct cfg_limits, max_preauth_literal, "8k", 1, MIB)},
    {CFG_K_UINT("max_bad_commands", struct cfg_limits, max_bad_commands, "10", 1, 1000)},
    {CFG_K_UINT("max_connections", struct cfg_limits, max_connections, "10000", 1, 1000000)},
    {CFG_K_UINT("max_connections_per_address", struct cfg_limits, max_connections_per_address,
                "100", 0, 1000000)},
    {CFG_K_SIZE("relay_buffer", struct cfg_limits, relay_buffer, "64k", 16 * KIB, 64 * MIB)},
    {CFG_K_SIZE("tls_write_batch", struct cfg_limits, tls_write_batch, "64k", 0, 16 * MIB)},
    {CFG_K_DURATION("drain_timeout", struct cfg_limits, drain_timeout_ms, "30s", 0, HOUR)},
    {CFG_K_DURATION("closing_timeout", struct cfg_limits, closing_timeout_ms, "5s", 1, HOUR)},
    {CFG_K_DURATION("backend_lost_timeout", struct cfg_limits, backend_lost_timeout_ms, "10s", 1,
                    HOUR)},
    {CFG_K_END},
};
static const struct cfg_table limits_table = {.keys = limits_keys};

/* Engine limits apply when an engine is built: at start and at each signature reload. The
 * thread pool, its queue and the memory budget are sized once. */
static const struct cfg_key scan_keys[] = {
    {CFG_K_BOOL("enabled", struct cfg_scan, enabled, "false"), .flags = CFG_RESTART},
    {CFG_K_STRING("database_dir", struct cfg_scan, database_dir, "/var/lib/clamav")},
    {CFG_K_UINT("threads", struct cfg_scan, threads, "0", 0, 256), .flags = CFG_RESTART},
    {CFG_K_UINT("queue", struct cfg_scan, queue, "256", 1, 100000), .flags = CFG_RESTART},
    {CFG_K_UINT("thread_nice", struct cfg_scan, thread_nice, "5", 0, 19), .flags = CFG_RESTART},
    {CFG_K_SIZE("max_scan_size", struct cfg_scan, max_scan_size, "25M", KIB, 4 * GIB - 1)},
    {CFG_K_SIZE("max_file_size", struct cfg_scan, max_file_size, "25M", KIB, 4 * GIB - 1)},
    {CFG_K_UINT("max_recursion", struct cfg_scan, max_recursion, "16", 1, 64)},
    {CFG_K_UINT("max_files", struct cfg_scan, max_files, "10000", 1, 1000000)},
    {CFG_K_BOOL("engine_cache", struct cfg_scan, engine_cache, "true")},
    {CFG_K_UINT("max_prefetch_messages", struct cfg_scan, max_prefetch_messages, "1000", 1,
                1000000)},
    {CFG_K_DURATION("scan_timeout", struct cfg_scan, scan_timeout_ms, "60s", 1, HOUR)},
    {CFG_K_OPTSTR("tmpdir", struct cfg_scan, tmpdir, ""), .flags = CFG_RESTART},
    {CFG_K_ENUM("oversize_action", struct cfg_scan, oversize_action, "pass", scan_action_values)},
    {CFG_K_ENUM("error_action", struct cfg_scan, error_action, "block", scan_action_values)},
    {CFG_K_ENUM("limits_action", struct cfg_scan, limits_action, "block", scan_action_values)},
    {CFG_K_SIZE("memory_budget", struct cfg_scan, memory_budget, "256M", MIB, 64 * GIB),
     .flags = CFG_RESTART},
    {CFG_K_ENUM("reload", struct cfg_scan, reload, "concurrent", scan_reload_values)},
    {CFG_K_DURATION("keepalive_interval", struct cfg_scan, keepalive_interval_ms, "15s", 1, HOUR)},
    {CFG_K_STRING("budget_per_user", struct cfg_scan, budget_per_user, "25%"),
     .flags = CFG_RESTART},
    {CFG_K_STRING("budget_per_session", struct cfg_scan, budget_per_session, "10%"),
     .flags = CFG_RESTART},
    {CFG_K_STRING("queue_per_user", struct cfg_scan, queue_per_user, "25%"), .flags = CFG_RESTART},
    {CFG_K_DURATION("held_timeout", struct cfg_scan, held_timeout_ms, "60s", SEC / 10, HOUR)},
    {CFG_K_OPTSTR("quarantine_dir", struct cfg_scan, quarantine_dir, "")},
    {CFG_K_OPTSTR("notice_template", struct cfg_scan, notice_template, ""), .flags = CFG_MULTILINE},
    {CFG_K_DURATION("verdict_cache_ttl", struct cfg_scan, verdict_cache_ttl_ms, "1d", SEC,
                    30 * DAY)},
    {CFG_K_DURATION("canary_interval", struct cfg_scan, canary_interval_ms, "5m", SEC, DAY)},
    {CFG_K_SIZE("tmpdir_min_free", struct cfg_scan, tmpdir_min_free, "1M", 0, 64 * GIB)},
    {CFG_K_END},
};
static const struct cfg_table scan_table = {.keys = scan_keys, .check = scan_check};

static const struct cfg_key health_keys[] = {
    {CFG_K_BOOL("enabled", struct cfg_health, enabled, "true")},
    {CFG_K_DURATION("interval", struct cfg_health, interval_ms, "10s", 100, DAY)},
    {CFG_K_DURATION("timeout", struct cfg_health, timeout_ms, "3s", 10, HOUR)},
    {CFG_K_UINT("rise", struct cfg_health, rise, "2", 1, 100)},
    {CFG_K_UINT("fall", struct cfg_health, fall, "3", 1, 100)},
    {CFG_K_END},
};
static const struct cfg_table health_table = {.size = sizeof(struct cfg_health),
                                              .keys = health_keys};

static const struct cfg_key admin_keys[] = {
    {CFG_K_BOOL("enabled", struct cfg_admin, enabled, "true"), .flags = CFG_RESTART},
    {CFG_K_ADDR("bind", struct cfg_admin, bind, addr, addrlen, "127.0.0.1:9190"),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("idle_timeout", struct cfg_admin, idle_timeout_ms, "5s", 100, HOUR),
     .flags = CFG_RESTART},
    {CFG_K_UINT("max_connections", struct cfg_admin, max_connections, "64", 2, 10000),
     .flags = CFG_RESTART},
    {CFG_K_END},
};
static const struct cfg_table admin_table = {.size = sizeof(struct cfg_admin), .keys = admin_keys};

/* ---- redis: and policy: (issue 5; docs/redis.md) ------------------------------------------- */

_Static_assert(sizeof(enum cfg_fail_mode) == sizeof(int), "enum size");
static const struct cfg_enum fail_mode_values[] = {
    {"open", CFG_FAIL_OPEN}, {"closed", CFG_FAIL_CLOSED}, {NULL, 0}};

/* Absent section: Redis is off. The host is resolved here, off the worker loops: hiredis would
 * otherwise call getaddrinfo() on the loop at every reconnect. */
static bool redis_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    struct cfg_redis *r = obj;
    r->enabled = node != NULL;
    if (strlen(r->prefix) > 64)
        return cfg_fail(ctx, cfg_find(ctx, "redis.prefix"), "redis.prefix: longer than 64 bytes");
    if (r->reconnect_max_ms < r->reconnect_min_ms)
        return cfg_fail(ctx, cfg_find(ctx, "redis.reconnect_max"),
                        "redis.reconnect_max is smaller than redis.reconnect_min");
    if (!r->enabled || r->socket)
        return true;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
#ifdef PORTCULLIS_FUZZ
    hints.ai_flags = AI_NUMERICHOST;
#endif
    struct addrinfo *res = NULL;
    char text[INET6_ADDRSTRLEN], q[96];
    int rc = getaddrinfo(r->host, NULL, &hints, &res);
    if (rc != 0 || !res ||
        getnameinfo(res->ai_addr, res->ai_addrlen, text, sizeof text, NULL, 0, NI_NUMERICHOST)) {
        if (res)
            freeaddrinfo(res);
        return cfg_fail(ctx, cfg_find(ctx, "redis.host"), "redis.host: cannot resolve %s: %s",
                        cfg_quote(q, sizeof q, r->host), rc ? gai_strerror(rc) : "no address");
    }
    freeaddrinfo(res);
    r->addr = strdup(text);
    return r->addr ? true : cfg_fail(ctx, NULL, "out of memory");
}

static bool policy_nets(struct cfg_ctx *ctx, const char *key, const char *text,
                        struct cfg_cidr **out, size_t *n)
{
    char err[160], path[32];
    if (!text)
        return true;
    snprintf(path, sizeof path, "policy.%s", key);
    if (!cfg_parse_cidrs(text, out, n, err, sizeof err))
        return cfg_fail(ctx, cfg_find(ctx, path), "%s: %s", path, err);
    return true;
}

static bool policy_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    (void)node;
    struct cfg_policy *p = obj;
    if (p->session_ttl_ms <= p->heartbeat_ms)
        return cfg_fail(ctx, cfg_find(ctx, "policy.session_ttl"),
                        "policy.session_ttl must be longer than policy.heartbeat");
    if (p->lockout_max_ms < p->lockout_ms)
        return cfg_fail(ctx, cfg_find(ctx, "policy.lockout_max"),
                        "policy.lockout_max is smaller than policy.lockout");
    return policy_nets(ctx, "allow", p->allow, &p->allow_nets, &p->nallow) &&
           policy_nets(ctx, "deny", p->deny, &p->deny_nets, &p->ndeny) &&
           policy_nets(ctx, "exempt", p->exempt, &p->exempt_nets, &p->nexempt);
}

static const struct cfg_key redis_keys[] = {
    {CFG_K_STRING("host", struct cfg_redis, host, "127.0.0.1"), .flags = CFG_RESTART},
    {CFG_K_PORT("port", struct cfg_redis, port, "6379"), .flags = CFG_RESTART},
    {CFG_K_OPTSTR("socket", struct cfg_redis, socket, ""), .flags = CFG_RESTART},
    {CFG_K_OPTSTR("username", struct cfg_redis, username, ""), .flags = CFG_RESTART},
    {CFG_K_OPTSTR("password", struct cfg_redis, password, ""), .flags = CFG_RESTART | CFG_SECRET},
    {CFG_K_UINT("db", struct cfg_redis, db, "0", 0, 1000), .flags = CFG_RESTART},
    {CFG_K_STRING("prefix", struct cfg_redis, prefix, "pc:"), .flags = CFG_RESTART},
    {CFG_K_DURATION("connect_timeout", struct cfg_redis, connect_timeout_ms, "1s", 10, MIN),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("command_timeout", struct cfg_redis, command_timeout_ms, "500ms", 10, MIN),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("reconnect_min", struct cfg_redis, reconnect_min_ms, "100ms", 10, MIN),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("reconnect_max", struct cfg_redis, reconnect_max_ms, "5s", 10, HOUR),
     .flags = CFG_RESTART},
    {CFG_K_ENUM("fail_mode", struct cfg_redis, fail_mode, "open", fail_mode_values),
     .flags = CFG_RESTART},
    {CFG_K_END},
};
static const struct cfg_table redis_table = {.keys = redis_keys, .check = redis_check};

static const struct cfg_key policy_keys[] = {
    {CFG_K_OPTSTR("allow", struct cfg_policy, allow, "")},
    {CFG_K_OPTSTR("deny", struct cfg_policy, deny, "")},
    {CFG_K_OPTSTR("exempt", struct cfg_policy, exempt, "")},
    {CFG_K_UINT("ipv4_prefix", struct cfg_policy, ipv4_prefix, "32", 8, 32)},
    {CFG_K_UINT("ipv6_prefix", struct cfg_policy, ipv6_prefix, "64", 16, 128)},
    {CFG_K_BOOL("user_case_insensitive", struct cfg_policy, user_case_insensitive, "true")},
    {CFG_K_DURATION("tarpit", struct cfg_policy, tarpit_ms, "2s", 0, MIN)},
    {CFG_K_UINT("user_login_burst", struct cfg_policy, user_login_burst, "10", 0, 100000)},
    {CFG_K_DURATION("user_login_interval", struct cfg_policy, user_login_interval_ms, "6s", 1,
                    DAY)},
    {CFG_K_UINT("addr_login_burst", struct cfg_policy, addr_login_burst, "30", 0, 100000)},
    {CFG_K_DURATION("addr_login_interval", struct cfg_policy, addr_login_interval_ms, "2s", 1,
                    DAY)},
    {CFG_K_UINT("user_fail_limit", struct cfg_policy, user_fail_limit, "100", 0, 1000000)},
    {CFG_K_UINT("user_addr_fail_limit", struct cfg_policy, user_addr_fail_limit, "5", 0, 100000)},
    {CFG_K_DURATION("known_addr_ttl", struct cfg_policy, known_addr_ttl_ms, "30d", SEC, 365 * DAY)},
    {CFG_K_UINT("known_addr_max", struct cfg_policy, known_addr_max, "16", 0, 1000)},
    {CFG_K_DURATION("pending_ttl", struct cfg_policy, pending_ttl_ms, "1m", SEC, HOUR)},
    {CFG_K_UINT("addr_fail_limit", struct cfg_policy, addr_fail_limit, "20", 0, 100000)},
    {CFG_K_DURATION("fail_window", struct cfg_policy, fail_window_ms, "15m", 100, DAY)},
    {CFG_K_DURATION("lockout", struct cfg_policy, lockout_ms, "1m", 100, DAY)},
    {CFG_K_DURATION("lockout_max", struct cfg_policy, lockout_max_ms, "1h", 100, 7 * DAY)},
    {CFG_K_UINT("user_max_sessions", struct cfg_policy, user_max_sessions, "20", 0, 100000)},
    {CFG_K_UINT("addr_max_sessions", struct cfg_policy, addr_max_sessions, "0", 0, 1000000)},
    {CFG_K_DURATION("heartbeat", struct cfg_policy, heartbeat_ms, "30s", 100, HOUR),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("session_ttl", struct cfg_policy, session_ttl_ms, "90s", 200, DAY),
     .flags = CFG_RESTART},
    {CFG_K_SIZE("download_limit", struct cfg_policy, download_limit, "0", 0, UINT64_C(1) << 50)},
    {CFG_K_DURATION("download_window", struct cfg_policy, download_window_ms, "1h", SEC, 30 * DAY)},
    {CFG_K_DURATION("affinity_ttl", struct cfg_policy, affinity_ttl_ms, "10m", 0, 7 * DAY)},
    {CFG_K_DURATION("drain_poll", struct cfg_policy, drain_poll_ms, "5s", 100, MIN),
     .flags = CFG_RESTART},
    {CFG_K_UINT("local_entries", struct cfg_policy, local_entries, "10000", 16, 10000000),
     .flags = CFG_RESTART},
    {CFG_K_END},
};
static const struct cfg_table policy_table = {.keys = policy_keys, .check = policy_check};

/* ---- routing: (issue 17; docs/routing.md) ------------------------------------------------ */

_Static_assert(sizeof(enum cfg_lookup_type) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_route_else) == sizeof(int), "enum size");
static const struct cfg_enum lookup_type_values[] = {
    {"map", CFG_LOOKUP_MAP}, {"ldap", CFG_LOOKUP_LDAP}, {"http", CFG_LOOKUP_HTTP}, {NULL, 0}};
static const struct cfg_enum route_unknown_values[] = {
    {"hash", CFG_ROUTE_HASH}, {"refuse", CFG_ROUTE_REFUSE}, {NULL, 0}};
static const struct cfg_enum route_on_error_values[] = {
    {"fallback", CFG_ROUTE_HASH}, {"refuse", CFG_ROUTE_REFUSE}, {NULL, 0}};

_Static_assert(sizeof(enum cfg_ldap_scope) == sizeof(int), "enum size");
static const struct cfg_enum ldap_scope_values[] = {
    {"base", CFG_LDAP_BASE}, {"one", CFG_LDAP_ONE}, {"sub", CFG_LDAP_SUB}, {NULL, 0}};

static const struct cfg_key lookup_keys[] = {
    {CFG_K_NAME("name", struct cfg_lookup, name, NULL)},
    {CFG_K_ENUM("type", struct cfg_lookup, type, NULL, lookup_type_values)},
    {CFG_K_OPTSTR("file", struct cfg_lookup, file, "")},
    {CFG_K_DURATION("timeout", struct cfg_lookup, timeout_ms, "2s", 1, MIN)},
    /* network sources (ldap, http): 0 = the type's default */
    {CFG_K_OPTSTR("ca_file", struct cfg_lookup, ca_file, "")},
    {CFG_K_DURATION("connect_timeout", struct cfg_lookup, connect_timeout_ms, "0", 0, MIN)},
    {CFG_K_UINT("connections", struct cfg_lookup, connections, "0", 0, 1024)},
    /* type ldap (ldap_lookup_check) */
    {CFG_K_OPTSTR("uri", struct cfg_lookup, ldap.uri, "")},
    {CFG_K_BOOL("starttls", struct cfg_lookup, ldap.starttls, "false")},
    {CFG_K_OPTSTR("cert_file", struct cfg_lookup, ldap.cert_file, "")},
    {CFG_K_OPTSTR("key_file", struct cfg_lookup, ldap.key_file, "")},
    {CFG_K_BOOL("sasl_external", struct cfg_lookup, ldap.sasl_external, "false")},
    {CFG_K_OPTSTR("bind_dn", struct cfg_lookup, ldap.bind_dn, "")},
    {CFG_K_OPTSTR("bind_password", struct cfg_lookup, ldap.bind_password, ""), .flags = CFG_SECRET},
    {CFG_K_OPTSTR("bind_password_file", struct cfg_lookup, ldap.bind_password_file, "")},
    {CFG_K_OPTSTR("base", struct cfg_lookup, ldap.base, "")},
    {CFG_K_ENUM("scope", struct cfg_lookup, ldap.scope, "sub", ldap_scope_values)},
    {CFG_K_STRING("filter", struct cfg_lookup, ldap.filter, "(uid=%u)")},
    {CFG_K_STRING("attribute", struct cfg_lookup, ldap.attribute, "mailHost")},
    /* type http (http_lookup_check, route_http.c) */
    {CFG_K_OPTSTR("url", struct cfg_lookup, url, "")},
    {CFG_K_STRLIST("headers", struct cfg_lookup, headers, nheaders, 0, 32), .flags = CFG_SECRET},
    {CFG_K_DURATION("max_wait", struct cfg_lookup, max_wait_ms, "10s", 0, HOUR)},
    {CFG_K_END},
};
static const struct cfg_table lookup_table = {.size = sizeof(struct cfg_lookup),
                                              .keys = lookup_keys};

static const struct cfg_key dynamic_backend_keys[] = {
    {CFG_K_ENUM("tls", struct cfg_dynamic_backend, tls, "none", tls_mode_values)},
    {CFG_K_OPTSTR("tls_ca", struct cfg_dynamic_backend, tls_ca, "")},
    {CFG_K_OPTSTR("tls_sni", struct cfg_dynamic_backend, tls_sni, "")},
    {CFG_K_BOOL("tls_verify", struct cfg_dynamic_backend, tls_verify, "true")},
    {CFG_K_BOOL("proxy_protocol", struct cfg_dynamic_backend, proxy_protocol, "false")},
    {CFG_K_UINT("imap_port", struct cfg_dynamic_backend, imap_port, "0", 0, 65535)},
    {CFG_K_UINT("pop3_port", struct cfg_dynamic_backend, pop3_port, "0", 0, 65535)},
    {CFG_K_END},
};
static const struct cfg_table dynamic_backend_table = {.keys = dynamic_backend_keys};

/* ---- type ldap: checks, and the bind password read from its file ---- */

#define LDAP_PASSWORD_MAX 1024

/* Report `fmt` (a message about lookup i) at its key `key`, or at the entry when the key is
 * absent (a required one). */
static bool lookup_fail(struct cfg_ctx *ctx, size_t i, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool lookup_fail(struct cfg_ctx *ctx, size_t i, const char *key, const char *fmt, ...)
{
    char path[96], msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "routing.lookups[%zu].%s", i, key);
    const yaml_node_t *at = cfg_find(ctx, path);
    if (!at) {
        snprintf(path, sizeof path, "routing.lookups[%zu]", i);
        at = cfg_find(ctx, path);
    }
    return cfg_fail(ctx, at, "%s", msg);
}

static bool lookup_readable(struct cfg_ctx *ctx, size_t i, const struct cfg_lookup *l,
                            const char *key, const char *file)
{
    char q[160];
    if (!file || access(file, R_OK) == 0)
        return true;
    return lookup_fail(ctx, i, key, "lookup %s: cannot read %s: %s", l->name,
                       cfg_quote(q, sizeof q, file), strerror(errno));
}

/* Read the password from `file` into l->ldap.bind_password (the file's first line). The copy
 * on the stack is wiped; the snapshot's copy is wiped by cfg_map_free (CFG_SECRET). */
static bool read_password_file(struct cfg_ctx *ctx, size_t i, struct cfg_lookup *l)
{
    char buf[LDAP_PASSWORD_MAX + 2], q[160];
    const char *file = l->ldap.bind_password_file;
    FILE *f = fopen(file, "re");
    if (!f)
        return lookup_fail(ctx, i, "bind_password_file", "lookup %s: cannot read %s: %s", l->name,
                           cfg_quote(q, sizeof q, file), strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool err = ferror(f);
    fclose(f);
    buf[n] = '\0';
    size_t len = strcspn(buf, "\r\n");
    bool bad = err || n > LDAP_PASSWORD_MAX || len == 0 || memchr(buf, '\0', n);
    if (!bad)
        buf[len] = '\0';
    char *pw = bad ? NULL : strdup(buf);
    explicit_bzero(buf, sizeof buf);
    if (bad)
        return lookup_fail(ctx, i, "bind_password_file",
                           "lookup %s: %s must hold one line of 1..%d bytes (the password)",
                           l->name, cfg_quote(q, sizeof q, file), LDAP_PASSWORD_MAX);
    if (!pw)
        return lookup_fail(ctx, i, "bind_password_file", "out of memory");
    l->ldap.bind_password = pw;
    return true;
}

/* An LDAP attribute description (RFC 4512 descr / numericoid, plus options after ';'). */
static bool attribute_ok(const char *a)
{
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-;.";
    return a[0] && strspn(a, ok) == strlen(a);
}

static bool ldap_lookup_check(struct cfg_ctx *ctx, size_t i, struct cfg_lookup *l)
{
    const struct cfg_lookup_ldap *d = &l->ldap;
    const char *err = NULL;
    bool ldaps = d->uri && strncmp(d->uri, "ldaps://", 8) == 0;
    if (!d->uri || (!ldaps && strncmp(d->uri, "ldap://", 7) != 0) || !d->uri[ldaps ? 8 : 7])
        return lookup_fail(ctx, i, "uri",
                           "lookup %s: type ldap needs a uri ldap://HOST[:PORT] or "
                           "ldaps://HOST[:PORT]",
                           l->name);
    if (d->starttls && ldaps)
        return lookup_fail(ctx, i, "starttls",
                           "lookup %s: starttls is for ldap:// (ldaps:// is TLS from the start)",
                           l->name);
    if (!d->base || !d->base[0])
        return lookup_fail(ctx, i, "base", "lookup %s: type ldap needs a search base", l->name);
    if (l->connections > 16)
        return lookup_fail(ctx, i, "connections", "lookup %s: type ldap allows 1..16 connections",
                           l->name);
    if (!ldl_template_check(d->filter, &err))
        return lookup_fail(ctx, i, "filter", "lookup %s: bad filter template: %s", l->name, err);
    if (!attribute_ok(d->attribute))
        return lookup_fail(ctx, i, "attribute", "lookup %s: not an attribute name", l->name);
    if (!d->cert_file != !d->key_file)
        return lookup_fail(ctx, i, d->cert_file ? "cert_file" : "key_file",
                           "lookup %s: cert_file and key_file go together", l->name);
    if (d->sasl_external && !d->cert_file)
        return lookup_fail(ctx, i, "sasl_external",
                           "lookup %s: sasl_external needs cert_file and key_file", l->name);
    if (d->sasl_external && d->bind_dn)
        return lookup_fail(ctx, i, "bind_dn",
                           "lookup %s: bind_dn and sasl_external exclude each other", l->name);
    if (d->bind_password && d->bind_password_file)
        return lookup_fail(ctx, i, "bind_password_file",
                           "lookup %s: bind_password and bind_password_file exclude each other",
                           l->name);
    if ((d->bind_password || d->bind_password_file) && !d->bind_dn)
        return lookup_fail(ctx, i, "bind_dn", "lookup %s: a bind password needs a bind_dn",
                           l->name);
    if (!lookup_readable(ctx, i, l, "ca_file", l->ca_file) ||
        !lookup_readable(ctx, i, l, "cert_file", d->cert_file) ||
        !lookup_readable(ctx, i, l, "key_file", d->key_file))
        return false;
    return !d->bind_password_file || read_password_file(ctx, i, l);
}

/* "Name: value" (RFC 9110 field-name = token); CR/LF and other controls were refused by the
 * string check already. */
static bool header_line_ok(const char *h)
{
    size_t n = strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         "!#$%&'*+-.^_`|~");
    return n > 0 && h[n] == ':';
}

/* A `type: http` lookup (nginx auth_http, route_http.c): a URL libcurl will take, a readable
 * CA file, well-formed extra headers. */
static bool http_lookup_check(struct cfg_ctx *ctx, const struct cfg_lookup *l, size_t i)
{
    char path[96], q[160];
    snprintf(path, sizeof path, "routing.lookups[%zu].url", i);
    if (!l->url)
        return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: type http needs a url", l->name);
    if (strncmp(l->url, "http://", 7) != 0 && strncmp(l->url, "https://", 8) != 0)
        return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: url %s is not http:// or https://",
                        l->name, cfg_quote(q, sizeof q, l->url));
    const char *host = strstr(l->url, "://") + 3;
    if (!*host || *host == '/' || *host == ':')
        return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: url %s has no host", l->name,
                        cfg_quote(q, sizeof q, l->url));
    snprintf(path, sizeof path, "routing.lookups[%zu].ca_file", i);
    if (l->ca_file && access(l->ca_file, R_OK) != 0)
        return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: cannot read %s: %s", l->name,
                        cfg_quote(q, sizeof q, l->ca_file), strerror(errno));
    for (size_t h = 0; h < l->nheaders; h++) {
        if (header_line_ok(l->headers[h]))
            continue;
        snprintf(path, sizeof path, "routing.lookups[%zu].headers[%zu]", i, h);
        /* The value may be a secret (X-Auth-Key): name the entry, not its text. */
        return cfg_fail(ctx, cfg_find(ctx, path),
                        "lookup %s: headers[%zu] is not a \"Name: value\" line", l->name, h);
    }
    return true;
}

static bool routing_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    (void)node;
    struct cfg_routing *r = obj;
    char path[64], q[160];
    for (size_t i = 0; i < r->nlookups; i++) {
        const struct cfg_lookup *l = &r->lookups[i];
        for (size_t j = 0; j < i; j++) {
            if (strcmp(l->name, r->lookups[j].name) == 0) {
                snprintf(path, sizeof path, "routing.lookups[%zu].name", i);
                return cfg_fail(ctx, cfg_find(ctx, path),
                                "duplicate lookup name \"%s\" (also routing.lookups[%zu])", l->name,
                                j);
            }
        }
        if (l->type == CFG_LOOKUP_MAP) {
            snprintf(path, sizeof path, "routing.lookups[%zu].file", i);
            if (!l->file)
                return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: type map needs a file",
                                l->name);
            if (access(l->file, R_OK) != 0)
                return cfg_fail(ctx, cfg_find(ctx, path), "lookup %s: cannot read %s: %s", l->name,
                                cfg_quote(q, sizeof q, l->file), strerror(errno));
        }
        if (l->type == CFG_LOOKUP_LDAP && !ldap_lookup_check(ctx, i, &r->lookups[i]))
            return false;
        if (l->type == CFG_LOOKUP_HTTP && !http_lookup_check(ctx, l, i))
            return false;
    }
    const char *ca = r->dynamic_backend.tls_ca;
    if (ca && access(ca, R_OK) != 0)
        return cfg_fail(ctx, cfg_find(ctx, "routing.dynamic_backend.tls_ca"),
                        "routing.dynamic_backend.tls_ca: cannot read %s: %s",
                        cfg_quote(q, sizeof q, ca), strerror(errno));
    return true;
}

static const struct cfg_key routing_keys[] = {
    {CFG_K_SEQ("lookups", struct cfg_routing, lookups, nlookups, &lookup_table, 0, 16)},
    {CFG_K_ENUM("unknown", struct cfg_routing, unknown, "hash", route_unknown_values)},
    {CFG_K_ENUM("on_error", struct cfg_routing, on_error, "fallback", route_on_error_values)},
    {CFG_K_DURATION("cache_ttl", struct cfg_routing, cache_ttl_ms, "5m", 1, DAY)},
    {CFG_K_DURATION("negative_ttl", struct cfg_routing, negative_ttl_ms, "30s", 1, DAY)},
    {CFG_K_UINT("cache_entries", struct cfg_routing, cache_entries, "10000", 0, 10000000)},
    {CFG_K_BOOL("shared_cache", struct cfg_routing, shared_cache, "true")},
    {CFG_K_DURATION("shared_cache_timeout", struct cfg_routing, shared_cache_timeout_ms, "100ms", 1,
                    MIN)},
    {CFG_K_SIZE("map_max_size", struct cfg_routing, map_max_size, "512M", 1, 4 * GIB - 2)},
    {CFG_K_UINT("map_max_entries", struct cfg_routing, map_max_entries, "5000000", 1, 100000000)},
    {CFG_K_UINT("map_max_backends", struct cfg_routing, map_max_backends, "4096", 1, 1000000)},
    {CFG_K_UINT("max_dynamic_backends", struct cfg_routing, max_dynamic_backends, "64", 1, 4096),
     .flags = CFG_RESTART},
    {CFG_K_DURATION("dynamic_idle_timeout", struct cfg_routing, dynamic_idle_timeout_ms, "10m", SEC,
                    30 * DAY)},
    {CFG_K_UINT("resolve_threads", struct cfg_routing, resolve_threads, "2", 1, 16)},
    {CFG_K_UINT("resolve_max_pending", struct cfg_routing, resolve_max_pending, "64", 1, 10000)},
    {CFG_K_MAP("dynamic_backend", struct cfg_routing, dynamic_backend, &dynamic_backend_table)},
    {CFG_K_END},
};
static const struct cfg_table routing_table = {.keys = routing_keys, .check = routing_check};

const struct cfg_table *cfg_lookup_table(void)
{
    return &lookup_table;
}

static const struct cfg_key top_keys[] = {
    {CFG_K_UINT("workers", struct config, workers, "0", 0, MAX_WORKERS), .flags = CFG_RESTART},
    {CFG_K_STRING("instance", struct config, instance, "")},
    {CFG_K_STRING("greeting_name", struct config, greeting_name, "Portcullis")},
    {CFG_K_BOOL("allow_plaintext_auth", struct config, allow_plaintext_auth, "false")},
    {CFG_K_OPTSTR("user", struct config, user, ""), .flags = CFG_RESTART},
    {CFG_K_OPTSTR("group", struct config, group, ""), .flags = CFG_RESTART},
    {CFG_K_BOOL("run_as_root", struct config, run_as_root, "false"), .flags = CFG_RESTART},
    {CFG_K_FLATMAP("log", &log_table)},
    {CFG_K_SEQ("listeners", struct config, listeners, nlisteners, &listener_table, 1, CFG_SEQ_MAX),
     .flags = CFG_RESTART},
    {CFG_K_MAP("tls", struct config, tls, &tls_table)},
    {CFG_K_SEQ("backends", struct config, backends, nbackends, &backend_table, 0, CFG_SEQ_MAX)},
    {CFG_K_MAP("limits", struct config, limits, &limits_table)},
    {CFG_K_MAP("health", struct config, health, &health_table)},
    {CFG_K_MAP("admin", struct config, admin, &admin_table)},
    {CFG_K_OPTSTR("trusted_proxies", struct config, trusted_proxies, "")},
    {CFG_K_MAP("scan", struct config, scan, &scan_table)},
    {CFG_K_MAP("redis", struct config, redis, &redis_table)},
    {CFG_K_MAP("policy", struct config, policy, &policy_table)},
    {CFG_K_MAP("routing", struct config, routing, &routing_table)},
    {CFG_K_END},
};
static const struct cfg_table config_table = {.keys = top_keys, .check = config_check};

const struct cfg_table *cfg_schema(void)
{
    return &config_table;
}

/* ---- checks a table cannot express ------------------------------------------------------- */

static bool check_readable(struct cfg_ctx *ctx, const char *path, const char *key, const char *file)
{
    if (access(file, R_OK) == 0)
        return true;
    char q[160];
    return cfg_fail(ctx, cfg_find(ctx, path), "%s: cannot read %s: %s", key,
                    cfg_quote(q, sizeof q, file), strerror(errno));
}

/* Backends are resolved here, once, at load: workers never resolve names. The first address
 * wins; AI_ADDRCONFIG stays off so "localhost" still yields ::1/127.0.0.1 in a netns without
 * global addresses. */
static bool backend_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    struct cfg_backend *b = obj;
    char q[96];
    if (b->host[0] == '\0')
        return cfg_fail(ctx, cfg_lookup(ctx, node, "host"), "backend %s: host is empty", b->name);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
#ifdef PORTCULLIS_FUZZ
    /* Fuzzing must not wait on DNS for random names. */
    hints.ai_flags = AI_NUMERICHOST;
#endif
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(b->host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        if (res)
            freeaddrinfo(res);
        return cfg_fail(ctx, cfg_lookup(ctx, node, "host"), "backend %s: cannot resolve %s: %s",
                        b->name, cfg_quote(q, sizeof q, b->host),
                        rc ? gai_strerror(rc) : "no address");
    }
    memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
    b->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    if (b->addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&b->addr)->sin_port = htons(b->port);
    else if (b->addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&b->addr)->sin6_port = htons(b->port);
    if (b->tls_ca && access(b->tls_ca, R_OK) != 0)
        return cfg_fail(ctx, cfg_lookup(ctx, node, "tls_ca"), "backend %s: cannot read %s: %s",
                        b->name, cfg_quote(q, sizeof q, b->tls_ca), strerror(errno));
    return true;
}

/* A message is held whole while it is scanned, so the budget must fit the largest one. The
 * database is only checked for readability here: loading it takes seconds to minutes and
 * belongs to the scanner (`-t` must stay fast). */
/* A share: "N%" of `whole`, or an absolute value (a size when `size`, else a count); "0" = no
 * limit. A non-zero share is raised to `floor`. */
static bool parse_share(struct cfg_ctx *ctx, const char *key, const char *s, uint64_t whole,
                        bool size, uint64_t floor, uint64_t *v_r)
{
    uint64_t v = 0;
    size_t n = strlen(s);
    bool ok;
    if (n > 1 && s[n - 1] == '%') {
        char num[16];
        ok = n - 1 < sizeof num;
        if (ok) {
            memcpy(num, s, n - 1);
            num[n - 1] = '\0';
            ok = cfg_parse_uint(num, &v) && v <= 100;
        }
        v = ok ? (uint64_t)((double)whole * (double)v / 100.0) : 0;
        if (ok && v == 0 && s[0] != '0')
            v = 1;
    } else {
        ok = size ? cfg_parse_size(s, &v) : cfg_parse_uint(s, &v);
    }
    if (!ok)
        return cfg_fail(ctx, cfg_find(ctx, key), "%s: expected a %s or a percentage (\"25%%\")",
                        key, size ? "size" : "count");
    if (v && v < floor)
        v = floor;
    *v_r = v;
    return true;
}

static bool scan_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    (void)node;
    struct cfg_scan *s = obj;
    if (s->threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->threads = n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
    }
    if (s->memory_budget < s->max_scan_size)
        return cfg_fail(ctx, cfg_find(ctx, "scan.memory_budget"),
                        "scan.memory_budget (%zu) is smaller than scan.max_scan_size (%zu)",
                        s->memory_budget, s->max_scan_size);
    uint64_t q = 0;
    if (!parse_share(ctx, "scan.budget_per_user", s->budget_per_user, s->memory_budget, true,
                     s->max_scan_size, &s->budget_per_user_bytes) ||
        !parse_share(ctx, "scan.budget_per_session", s->budget_per_session, s->memory_budget, true,
                     s->max_scan_size, &s->budget_per_session_bytes) ||
        !parse_share(ctx, "scan.queue_per_user", s->queue_per_user, s->queue, false, 1, &q))
        return false;
    s->queue_per_user_jobs = q > s->queue ? s->queue : (unsigned)q;
    if (s->enabled)
        return check_readable(ctx, "scan.database_dir", "signature database", s->database_dir);
    return true;
}

static bool same_addr(const struct cfg_listener *a, const struct cfg_listener *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

static bool check_listeners(struct cfg_ctx *ctx, struct config *c)
{
    char path[64];
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct cfg_listener *l = &c->listeners[i];
        for (size_t j = 0; j < i; j++) {
            if (strcmp(l->name, c->listeners[j].name) == 0) {
                snprintf(path, sizeof path, "listeners[%zu].name", i);
                return cfg_fail(ctx, cfg_find(ctx, path),
                                "duplicate listener name \"%s\" (also listeners[%zu])", l->name, j);
            }
            /* With SO_REUSEPORT a second bind to the same address succeeds and the kernel
             * would spread connections over both, mixing their protocols. */
            if (same_addr(l, &c->listeners[j])) {
                snprintf(path, sizeof path, "listeners[%zu].bind", i);
                return cfg_fail(ctx, cfg_find(ctx, path),
                                "listener \"%s\" binds the same address as \"%s\"", l->name,
                                c->listeners[j].name);
            }
        }
        bool have_backend = false;
        for (size_t j = 0; j < c->nbackends && !have_backend; j++)
            have_backend = c->backends[j].protocol == l->protocol;
        if (!have_backend) {
            snprintf(path, sizeof path, "listeners[%zu].protocol", i);
            return cfg_fail(ctx, cfg_find(ctx, path),
                            "listener \"%s\" speaks %s but no backend has protocol %s", l->name,
                            cfg_proto_name(l->protocol), cfg_proto_name(l->protocol));
        }
        if (l->tls != CFG_TLS_NONE && c->tls.ncerts == 0) {
            snprintf(path, sizeof path, "listeners[%zu].tls", i);
            return cfg_fail(ctx, cfg_find(ctx, path),
                            "listener \"%s\" uses TLS but tls.certificates is empty", l->name);
        }
    }
    return true;
}

static bool config_check(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj)
{
    (void)node;
    struct config *c = obj;
    char path[64];

    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
    }
    if (c->instance[0] == '\0') {
        char host[256];
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "portcullis");
        host[sizeof host - 1] = '\0';
        char *copy = strdup(host);
        if (!copy)
            return cfg_fail(ctx, NULL, "out of memory");
        free(c->instance);
        c->instance = copy;
    }

    for (size_t i = 0; i < c->nbackends; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->backends[i].name, c->backends[j].name) == 0) {
                snprintf(path, sizeof path, "backends[%zu].name", i);
                return cfg_fail(ctx, cfg_find(ctx, path),
                                "duplicate backend name \"%s\" (also backends[%zu])",
                                c->backends[i].name, j);
            }
        }
    }
    if (!check_listeners(ctx, c))
        return false;
    if (c->trusted_proxies) {
        char err[160];
        if (!cfg_parse_cidrs(c->trusted_proxies, &c->trusted, &c->ntrusted, err, sizeof err))
            return cfg_fail(ctx, cfg_find(ctx, "trusted_proxies"), "trusted_proxies: %s", err);
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        if (c->listeners[i].proxy_protocol && c->ntrusted == 0) {
            snprintf(path, sizeof path, "listeners[%zu].proxy_protocol", i);
            return cfg_fail(ctx, cfg_find(ctx, path),
                            "listener %s accepts PROXY headers but trusted_proxies is empty",
                            c->listeners[i].name);
        }
    }

    for (size_t i = 0; i < c->tls.ncerts; i++) {
        snprintf(path, sizeof path, "tls.certificates[%zu].cert", i);
        if (!check_readable(ctx, path, "certificate", c->tls.certs[i].cert))
            return false;
        snprintf(path, sizeof path, "tls.certificates[%zu].key", i);
        if (!check_readable(ctx, path, "private key", c->tls.certs[i].key))
            return false;
    }
    if (c->tls.ticket_key_file &&
        !check_readable(ctx, "tls.ticket_key_file", "ticket key file", c->tls.ticket_key_file))
        return false;
    return true;
}

/* ---- snapshot lifecycle ------------------------------------------------------------------ */

static void config_free(struct config *c)
{
    free(c->trusted);
    free(c->redis.addr);
    free(c->policy.allow_nets);
    free(c->policy.deny_nets);
    free(c->policy.exempt_nets);
    cfg_map_free(&config_table, c);
    free(c->path);
    free(c);
}

struct config *cfg_load_string(const char *text, size_t len, const char *name, char **error_r)
{
    *error_r = NULL;
    struct config *c = calloc(1, sizeof *c);
    if (c)
        c->path = strdup(name ? name : "<string>");
    if (!c || !c->path) {
        free(c);
        *error_r = strdup("out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    if (!cfg_map_document(&config_table, c, text, len, c->path, error_r)) {
        config_free(c);
        return NULL;
    }
    return c;
}

struct config *cfg_load(const char *path, char **error_r)
{
    *error_r = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (asprintf(error_r, "%s: cannot open: %s", path, strerror(errno)) < 0)
            *error_r = NULL;
        return NULL;
    }
    /* Read at most one byte past the limit: enough to know the file is too large, without
     * trusting st_size (the file may be a pipe or change under us). */
    size_t cap = CFG_MAX_INPUT + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        *error_r = strdup("out of memory");
        return NULL;
    }
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (asprintf(error_r, "%s: cannot read: %s", path, strerror(errno)) < 0)
                *error_r = NULL;
            free(buf);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    struct config *c = cfg_load_string(buf, len, path, error_r);
    free(buf);
    return c;
}

struct config *cfg_ref(struct config *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void cfg_unref(struct config **cp)
{
    if (!cp || !*cp)
        return;
    struct config *c = *cp;
    *cp = NULL;
    /* acq_rel: the thread that frees must see every other thread's last use of the snapshot. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        config_free(c);
}

const char *cfg_proto_name(enum cfg_proto p)
{
    return p == CFG_PROTO_POP3 ? "pop3" : "imap";
}
