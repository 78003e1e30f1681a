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

struct cfg_listener {
    char *name;                   /* owned; unique among listeners */
    char *bind;                   /* owned; as written: "127.0.0.1:993", "[::1]:993", "*:993" */
    struct sockaddr_storage addr; /* parsed from bind (numeric only; "*" = 0.0.0.0) */
    socklen_t addrlen;
    enum cfg_proto protocol;
    enum cfg_tls_mode tls;
};

struct cfg_cert {
    char *cert; /* owned; PEM chain file */
    char *key;  /* owned; PEM key file */
};

struct cfg_tls {
    struct cfg_cert *certs; /* owned array; certs[0] is the default; others chosen by SNI */
    size_t ncerts;
    int min_version;        /* TLS1_2_VERSION (default) or TLS1_3_VERSION; "1.2" / "1.3" */
    char *ciphers;          /* owned; TLS <= 1.2 cipher list, OpenSSL syntax; default below */
    char *ciphersuites;     /* owned; TLS 1.3 suites; default OpenSSL's */
    char *ticket_key_file;  /* owned or NULL: 80-byte files (name16|hmac32|aes32), see docs */
    uint64_t handshake_timeout_ms; /* default 30s */
};

struct cfg_backend {
    char *name;    /* owned; unique */
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
};

struct cfg_limits {
    uint64_t preauth_timeout_ms;         /* default 60s: greeting to login complete */
    uint64_t imap_idle_timeout_ms;       /* default 30m (RFC 3501 autologout >= 30 min) */
    uint64_t pop3_idle_timeout_ms;       /* default 10m (RFC 1939 >= 10 min) */
    uint64_t backend_connect_timeout_ms; /* default 10s */
    uint64_t backend_login_timeout_ms;   /* default 30s: greeting, TLS, login answer */
    size_t max_line;                     /* default 8k: one command/response line, no literals */
    size_t max_preauth_literal;          /* default 8k: a literal before login */
    unsigned max_bad_commands;           /* default 10: then BYE */
    unsigned max_connections;            /* default 10000, whole process */
    size_t relay_buffer;                 /* default 64k: queued toward a peer before reads pause */
};

struct config {
    atomic_int refs;
    char *path;          /* owned: file it came from */
    unsigned workers;    /* 0 in the file means "number of cores", resolved at load */
    char *instance;      /* owned; default: hostname; names this instance in logs */
    char *greeting_name; /* owned; default "Portcullis"; shown in greetings */
    bool allow_plaintext_auth; /* default false: LOGIN/USER before TLS refused */
    enum cfg_log_level log_level; /* log.level, default info */
    char *log_file;               /* log.file, owned or NULL = stderr */

    struct cfg_listener *listeners; /* owned array, at least one */
    size_t nlisteners;
    struct cfg_tls tls;             /* required when any listener uses TLS */
    struct cfg_backend *backends;   /* owned array, at least one per protocol listened on */
    size_t nbackends;
    struct cfg_limits limits;
};

/* Parse `path`. On success returns a snapshot with refs == 1. On failure returns NULL and sets
 * *error_r to a malloc'd message "FILE:LINE:COL: what" which the caller frees. */
struct config *cfg_load(const char *path, char **error_r) __attribute__((warn_unused_result));
/* The same from a string (tests, fuzzing); `name` is used in messages. */
struct config *cfg_load_string(const char *text, size_t len, const char *name, char **error_r)
    __attribute__((warn_unused_result));

struct config *cfg_ref(struct config *c);
/* Drops a reference; frees the snapshot at zero and sets *c to NULL. NULL-safe. */
void cfg_unref(struct config **c);

/* Unit parsers, exposed for tests. Return false on junk, overflow or a missing/unknown unit. */
bool cfg_parse_duration_ms(const char *s, uint64_t *ms_r);
bool cfg_parse_size(const char *s, uint64_t *bytes_r);

const char *cfg_proto_name(enum cfg_proto p);

#endif
