/*
 * config — the immutable, refcounted configuration snapshot.
 *
 * cfg_load() parses one YAML file with libyaml's document API and maps it onto `struct config`
 * through a strict, table-driven mapper: unknown keys, duplicate keys, junk in numbers
 * ("6379x"), out-of-range values and wrong types are errors reported with line and column.
 * Durations take units (ms, s, m, h, d; a bare number is seconds), sizes take units (k, M, G;
 * binary multiples; a bare number is bytes).
 *
 * A snapshot is never modified after cfg_load() returns. Sessions hold a reference for their
 * whole life (cfg_ref/cfg_unref), so a reload builds a new snapshot and swaps the global pointer
 * while sessions in flight keep theirs. cfg_unref() is thread-safe (atomic count).
 *
 * Host names in `backends` are resolved here, at load time, off the worker loops (workers never
 * resolve names). Listener addresses must be numeric.
 */
#ifndef PORTCULLIS_CONFIG_H
#define PORTCULLIS_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum cfg_proto { CFG_PROTO_IMAP, CFG_PROTO_POP3 };
/* none: plaintext; starttls: plaintext then STARTTLS/STLS; implicit: TLS from the first byte */
enum cfg_tls_mode { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT };
enum cfg_log_level { CFG_LOG_DEBUG, CFG_LOG_INFO, CFG_LOG_WARN, CFG_LOG_ERROR };

/* A network: address + prefix length (IPv4 kept as IPv4). */
struct cfg_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned prefix;
};

/* Parse a list of CIDRs ("10.0.0.0/8 192.0.2.1, 2001:db8::/32"); a bare address is a host.
 * Returns false with a message in err (cap bytes) on junk. *out is malloc'd (NULL when empty). */
bool cfg_parse_cidrs(const char *text, struct cfg_cidr **out, size_t *n, char *err, size_t cap);
/* Is `sa` (AF_INET/AF_INET6, v4-mapped IPv6 counts as IPv4) inside any of the networks? */
bool cfg_cidr_match(const struct cfg_cidr *nets, size_t n, const struct sockaddr *sa);

struct cfg_listener {
    char *name;                   /* owned; unique among listeners */
    char *bind;                   /* owned; as written: "127.0.0.1:993", "[::1]:993", "*:993" */
    struct sockaddr_storage addr; /* parsed from bind (numeric only; "*" = 0.0.0.0) */
    socklen_t addrlen;
    enum cfg_proto protocol;
    enum cfg_tls_mode tls;
    bool proxy_protocol;     /* default false: a PROXY v1/v2 header from a trusted_proxies
                                address is required first; anyone else is refused */
    bool transparent;        /* default false: the backend is the original destination */
    bool transparent_source; /* default false: connect from the client's address */
    enum cfg_tls_mode transparent_backend_tls; /* default none */
    bool transparent_backend_verify;           /* default true (system CA store) */
};

struct cfg_cert {
    char *cert; /* owned; PEM chain file */
    char *key;  /* owned; PEM key file */
};

struct cfg_tls {
    struct cfg_cert *certs; /* owned array; certs[0] is the default; others chosen by SNI */
    size_t ncerts;
    int min_version;          /* TLS1_2_VERSION (default) or TLS1_3_VERSION; "1.2" / "1.3" */
    char *ciphers;            /* owned; TLS <= 1.2 cipher list, OpenSSL syntax; default below */
    char *ciphersuites;       /* owned or NULL (= OpenSSL's order); TLS 1.3 suites, AES-128 first */
    char *groups;             /* owned or NULL (= OpenSSL's list); key exchange, X25519 first */
    char *ticket_key_file;    /* owned or NULL: 80-byte files (name16|hmac32|aes32), see docs */
    uint32_t session_tickets; /* TLS 1.3 tickets sent per full handshake (default 1) */
    uint32_t ssl_cache;       /* free SSL objects kept per worker for reuse (default 64; 0 off) */
    uint64_t handshake_timeout_ms; /* default 30s */
};

struct cfg_backend {
    char *name;    /* owned; unique */
    char *server;  /* owned or NULL (= name): the mail server this is, for hashing and affinity;
                      an IMAP and a POP3 entry of one server share it, so a user's sessions of
                      both protocols land on the same server */
    char *host;    /* owned; name or address as written */
    uint16_t port; /* required */
    struct sockaddr_storage addr; /* resolved at load */
    socklen_t addrlen;
    enum cfg_proto protocol; /* which pool this backend belongs to; default imap */
    unsigned weight;         /* 1..1000, default 1 */
    enum cfg_tls_mode tls;   /* default none */
    char *tls_ca;            /* owned or NULL (NULL = system default CA store) */
    char *tls_sni;           /* owned or NULL (NULL = host if it is a name) */
    bool tls_verify;         /* default true */
    bool drain;              /* default false */
    bool proxy_protocol;     /* default false: send a PROXY v2 header after connecting */
};

/* admin: — the HTTP listener for /metrics and /healthz (docs/metrics.md). */
struct cfg_admin {
    bool enabled; /* default true */
    char *bind;   /* owned; default "127.0.0.1:9190" (loopback: no auth) */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t idle_timeout_ms; /* default 5s: to send the request and take the answer */
    unsigned max_connections; /* default 64; when full the oldest idle one is evicted */
};

/* health: — active checks of every backend from the main thread (docs/backends.md). */
struct cfg_health {
    bool enabled;         /* default true */
    uint64_t interval_ms; /* default 10s between checks of one backend */
    uint64_t timeout_ms;  /* default 3s: connect + greeting (+ TLS for implicit backends) */
    unsigned rise;        /* default 2 consecutive good checks mark a down backend up */
    unsigned fall;        /* default 3 consecutive failures (checks or connects) mark it down */
};

struct cfg_limits {
    uint64_t preauth_timeout_ms;          /* default 60s: greeting to login complete */
    uint64_t imap_idle_timeout_ms;        /* default 30m (RFC 3501 autologout >= 30 min) */
    uint64_t pop3_idle_timeout_ms;        /* default 10m (RFC 1939 >= 10 min) */
    uint64_t backend_connect_timeout_ms;  /* default 10s */
    uint64_t backend_login_timeout_ms;    /* default 30s: greeting, TLS, login answer */
    size_t max_line;                      /* default 64k: a line the proxy parses itself
                                             (pre-auth, backend login, POP3 commands), no
                                             literals; relayed lines after login: no cap */
    size_t max_preauth_literal;           /* default 8k: a literal before login */
    unsigned max_bad_commands;            /* default 10: then BYE */
    unsigned max_connections;             /* default 10000, whole process */
    unsigned max_connections_per_address; /* default 100 (0 = no cap): one address, whole
                                             process, exempt networks aside */
    size_t relay_buffer;                  /* default 64k: queued toward a peer before reads pause */
    size_t tls_write_batch;               /* default 64k: TLS records sent in one send() (0 = one
                                             write per record) */
    uint64_t drain_timeout_ms;            /* default 30s: SIGTERM waits this long for sessions */
    uint64_t closing_timeout_ms;          /* default 5s: a session ending on our side (timeout,
                                             error, shutdown) sends its last words this long */
    uint64_t backend_lost_timeout_ms;     /* default 10s: after the backend went away, the client
                                             gets what it sent (and held verdicts) this long */
};

/* scan: — virus scanning of downloaded mail (docs/configuration.md, docs/scanning.md). */
enum cfg_scan_action { CFG_SCAN_PASS, CFG_SCAN_BLOCK };
enum cfg_scan_reload { CFG_SCAN_RELOAD_CONCURRENT, CFG_SCAN_RELOAD_LOWMEM };

struct cfg_scan {
    bool enabled;             /* default false (needs a signature database) */
    char *database_dir;       /* owned; default /var/lib/clamav */
    unsigned threads;         /* scan threads; 0 in the file = cores, resolved at load */
    unsigned queue;           /* default 256: scan jobs waiting for a thread */
    unsigned thread_nice;     /* default 5: scan threads' nice, relative to the process */
    size_t max_scan_size;     /* default 25M: larger messages are not scanned */
    size_t max_file_size;     /* default 25M: one extracted part/member */
    unsigned max_recursion;   /* default 16: archive/MIME nesting */
    unsigned max_files;       /* default 10000: members per message */
    bool engine_cache;        /* default true: libclamav's clean-object cache (MD5 per object) */
    uint64_t scan_timeout_ms; /* default 60s: libclamav's own time limit per scan */
    char *tmpdir;             /* owned or NULL = $TMPDIR; a private 0700 dir is made in it */
    enum cfg_scan_action oversize_action; /* default pass */
    enum cfg_scan_action error_action;    /* default block (engine errors) */
    enum cfg_scan_action limits_action;   /* default block: recursion, files, scan time, ... */
    size_t memory_budget;                 /* default 256M: bytes held for scanning, whole process */
    enum cfg_scan_reload reload;          /* default concurrent */
    uint64_t keepalive_interval_ms;       /* default 15s: IMAP "* OK" while a response is held */
    char *quarantine_dir;                 /* owned or NULL = no quarantine */
    char *notice_template;                /* owned or NULL = built-in template; may hold LF */
    uint64_t verdict_cache_ttl_ms;        /* default 1d */
    uint64_t canary_interval_ms;          /* default 5m: scanner self-test period */
    size_t tmpdir_min_free;               /* default 1M: free space the work dir needs */
    unsigned max_prefetch_messages;       /* default 1000: messages one part FETCH may judge */
    /* Fairness (docs/scanning.md): shares of memory_budget and queue, as written ("25%" or a
     * size / count; "0" = no limit) and resolved at load (a budget share is at least one
     * max_scan_size message, a queue share at least one job). */
    char *budget_per_user, *budget_per_session, *queue_per_user; /* owned */
    uint64_t budget_per_user_bytes, budget_per_session_bytes;    /* resolved; 0 = no limit */
    unsigned queue_per_user_jobs;                                /* resolved; 0 = no limit */
    uint64_t held_timeout_ms; /* default 60s: scanned output the client does not read */
};

/* redis: — shared policy state (docs/redis.md). Absent: local in-memory limits only. The
 * connection settings are read when a worker starts (restart to change them). */
enum cfg_fail_mode { CFG_FAIL_OPEN, CFG_FAIL_CLOSED };
struct cfg_redis {
    bool enabled;                 /* the section is present */
    char *host;                   /* owned; default 127.0.0.1; a name is resolved at load */
    char *addr;                   /* owned: `host` as a numeric address (set at load) */
    uint16_t port;                /* default 6379 */
    char *socket;                 /* owned or NULL: unix socket instead of host/port */
    char *username;               /* owned or NULL: ACL user (AUTH user pass) */
    char *password;               /* owned or NULL: never logged, never sent elsewhere */
    unsigned db;                  /* default 0 */
    char *prefix;                 /* owned; default "pc:" */
    uint64_t connect_timeout_ms;  /* default 1s */
    uint64_t command_timeout_ms;  /* default 500ms */
    uint64_t reconnect_min_ms;    /* default 100ms, doubling to */
    uint64_t reconnect_max_ms;    /* default 5s */
    enum cfg_fail_mode fail_mode; /* default open */
};

/* policy: — login limits and the session registry (docs/redis.md). */
struct cfg_policy {
    char *allow;  /* owned or NULL: CIDRs allowed to log in (empty: everyone) */
    char *deny;   /* owned or NULL: CIDRs refused (checked first) */
    char *exempt; /* owned or NULL: CIDRs without per-address limits */
    struct cfg_cidr *allow_nets, *deny_nets, *exempt_nets; /* parsed from the above */
    size_t nallow, ndeny, nexempt;
    unsigned ipv4_prefix, ipv6_prefix; /* default 32, 64: per-address aggregation */
    bool user_case_insensitive;        /* default true */
    uint64_t tarpit_ms;                /* default 2s before a refusal is answered */
    unsigned user_login_burst;         /* default 10 (0 = no bucket) */
    uint64_t user_login_interval_ms;   /* default 6s per token */
    unsigned addr_login_burst;         /* default 30 */
    uint64_t addr_login_interval_ms;   /* default 2s */
    unsigned user_fail_limit;          /* default 100: per-user ceiling (0 = none) */
    unsigned user_addr_fail_limit;     /* default 5: per (user, network) (0 = none) */
    uint64_t known_addr_ttl_ms;        /* default 30d: a network stays known after a login */
    unsigned known_addr_max;           /* default 16 networks per user (0 = none known) */
    uint64_t pending_ttl_ms;           /* default 1m: reserved attempt without a result */
    unsigned addr_fail_limit;          /* default 20 */
    uint64_t fail_window_ms;           /* default 15m */
    uint64_t lockout_ms;               /* default 1m, doubling per lock-out, up to */
    uint64_t lockout_max_ms;           /* default 1h */
    unsigned user_max_sessions;        /* default 20 (0 = no cap) */
    unsigned addr_max_sessions;        /* default 0 */
    uint64_t heartbeat_ms;             /* default 30s (restart) */
    uint64_t session_ttl_ms;           /* default 90s (restart) */
    size_t download_limit;             /* default 0 = none; bytes per window per user */
    uint64_t download_window_ms;       /* default 1h */
    uint64_t affinity_ttl_ms; /* default 10m: user → backend kept after the last session */
    uint64_t drain_poll_ms;   /* default 5s (restart): how often `P drained` (portcullis-ctl
                                 drain) is read; a drain takes effect within this time */
    unsigned local_entries;   /* default 10000 (restart) */
};

/* routing: — per-user routing lookups (issue 17, docs/routing.md). */
enum cfg_lookup_type { CFG_LOOKUP_MAP, CFG_LOOKUP_LDAP, CFG_LOOKUP_HTTP };
/* What to do when no lookup knows the user (unknown) or a lookup failed (on_error). */
enum cfg_route_else { CFG_ROUTE_HASH, CFG_ROUTE_REFUSE };

/* type ldap (route_ldap.c, ldaplookup.h); strings owned or NULL. */
enum cfg_ldap_scope { CFG_LDAP_BASE, CFG_LDAP_ONE, CFG_LDAP_SUB };
struct cfg_lookup_ldap {
    char *uri;                 /* required: ldap://host[:port] or ldaps://host[:port] */
    bool starttls;             /* default false: ldap:// + StartTLS (must succeed) */
    char *cert_file;           /* client certificate (TLS client auth / SASL EXTERNAL) */
    char *key_file;            /* its key */
    bool sasl_external;        /* default false: bind with SASL EXTERNAL */
    char *bind_dn;             /* NULL = anonymous */
    char *bind_password;       /* secret: inline, or read from bind_password_file at load;
                                  wiped when the snapshot is freed; never logged */
    char *bind_password_file;  /* read at load (and at every reload) */
    char *base;                /* required: search base */
    enum cfg_ldap_scope scope; /* default sub */
    char *filter;              /* default "(uid=%u)": %u user, %n local part, %d domain */
    char *attribute;           /* default "mailHost": pool entry name, host or host:port */
};

struct cfg_lookup {
    char *name;                /* owned; unique among lookups (logs, metrics) */
    enum cfg_lookup_type type; /* map, ldap or http */
    char *file;                /* owned or NULL: map file path (type map) */
    uint64_t timeout_ms;       /* default 2s: an asynchronous source's answer */
    /* Network sources (ldap, http): */
    char *ca_file;               /* owned or NULL = system store; verification always on */
    uint64_t connect_timeout_ms; /* 0 (default) = the type's (ldap: 3s, http: 2s) */
    unsigned connections;        /* per worker; 0 (default) = the type's (ldap: 2, http: 8) */
    struct cfg_lookup_ldap ldap; /* type ldap */
    /* type http (nginx auth_http, route_http.c) */
    char *url;      /* owned or NULL: http:// or https:// auth service */
    char **headers; /* owned, NULL-terminated or NULL: extra request headers */
    size_t nheaders;
    uint64_t max_wait_ms; /* default 10s: cap on an http refusal's Auth-Wait */
};

/* The settings a backend named by a lookup as host[:port] is dialled with. */
struct cfg_dynamic_backend {
    enum cfg_tls_mode tls;         /* default none */
    char *tls_ca;                  /* owned or NULL = system CA store */
    char *tls_sni;                 /* owned or NULL = the host when it is a name */
    bool tls_verify;               /* default true */
    bool proxy_protocol;           /* default false */
    unsigned imap_port, pop3_port; /* 0 (default) = 143/110, or 993/995 with implicit TLS */
};

struct cfg_routing {
    struct cfg_lookup *lookups; /* owned array, tried in order; empty = hash only */
    size_t nlookups;
    enum cfg_route_else unknown;      /* default hash */
    enum cfg_route_else on_error;     /* default fallback (= hash) */
    uint64_t cache_ttl_ms;            /* default 5m: a found answer, per worker */
    uint64_t negative_ttl_ms;         /* default 30s: a not-found answer */
    unsigned cache_entries;           /* default 10000 per worker (0 = no cache) */
    bool shared_cache;                /* default true: answers also in Redis (with `redis:`) */
    uint64_t shared_cache_timeout_ms; /* default 100ms: a slower Redis GET is a miss */
    size_t map_max_size;              /* default 512M: bytes of one map file */
    unsigned map_max_entries;         /* default 5000000 */
    unsigned map_max_backends;        /* default 4096 distinct targets in one map */
    unsigned max_dynamic_backends;    /* default 64 at once, whole process (restart) */
    uint64_t dynamic_idle_timeout_ms; /* default 10m: an unused dynamic backend is forgotten */
    unsigned resolve_threads;         /* default 2 per LDAP lookup and worker: host names */
    unsigned resolve_max_pending;     /* default 64: names being resolved at once, same scope */
    struct cfg_dynamic_backend dynamic_backend;
};

struct config {
    atomic_int refs;
    char *path;                /* owned: file it came from */
    unsigned workers;          /* 0 in the file means "number of cores", resolved at load */
    char *instance;            /* owned; default: hostname; names this instance in logs */
    char *greeting_name;       /* owned; default "Portcullis"; shown in greetings */
    bool allow_plaintext_auth; /* default false: LOGIN/USER before TLS refused */
    char *user;                /* owned or NULL: drop to this user after binding (restart only) */
    char *group;               /* owned or NULL: its primary group when NULL */
    bool run_as_root;          /* default false: started as root without `user`, refuse to run */
    enum cfg_log_level log_level; /* log.level, default info */
    char *log_file;               /* log.file, owned or NULL = stderr */
    bool log_syslog;              /* log.syslog: to syslog (facility mail) instead */
    size_t log_queue_size;        /* log.queue_size, default 1M: lines waiting for the writer
                                     thread (restart); beyond it lines are dropped and counted */

    struct cfg_listener *listeners; /* owned array, at least one */
    size_t nlisteners;
    struct cfg_tls tls;           /* required when any listener uses TLS */
    struct cfg_backend *backends; /* owned array, at least one per protocol listened on */
    size_t nbackends;
    struct cfg_limits limits;
    struct cfg_health health;
    struct cfg_admin admin;
    char *trusted_proxies; /* owned or NULL: CIDRs, space/comma separated, allowed to send PROXY
                              headers; parsed into `trusted` */
    struct cfg_cidr *trusted;
    size_t ntrusted;
    struct cfg_scan scan;
    struct cfg_redis redis;     /* issue 5 */
    struct cfg_policy policy;   /* issue 5 */
    struct cfg_routing routing; /* issue 17 */
};

/* The schema of one `routing.lookups` entry (route_shared.c digests a lookup's settings by
 * walking it, so a key added for a new lookup type is covered without being listed twice). */
const struct cfg_table *cfg_lookup_table(void);

/* Parse `path`. On success returns a snapshot with refs == 1. On failure returns NULL and sets
 * *error_r to a malloc'd message "FILE:LINE:COL: what" which the caller frees. */
struct config *cfg_load(const char *path, char **error_r) __attribute__((warn_unused_result));
/* The same from a string (tests, fuzzing); `name` is used in messages. */
struct config *cfg_load_string(const char *text, size_t len, const char *name, char **error_r)
    __attribute__((warn_unused_result));

/* The schema cfg_load() maps with (cfg_map.h): for walking its keys (cfg_walk.h). */
struct cfg_table;
const struct cfg_table *cfg_schema(void);

struct config *cfg_ref(struct config *c);
/* Drops a reference; frees the snapshot at zero and sets *c to NULL. NULL-safe. */
void cfg_unref(struct config **c);

/* Unit parsers, exposed for tests. Return false on junk, overflow or a missing/unknown unit. */
bool cfg_parse_duration_ms(const char *s, uint64_t *ms_r);
bool cfg_parse_size(const char *s, uint64_t *bytes_r);

const char *cfg_proto_name(enum cfg_proto p);

#endif
