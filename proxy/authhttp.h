/*
 * authhttp — an HTTP lookup speaking nginx's mail `auth_http` protocol
 * (nginx.org/docs/mail/ngx_mail_auth_http_module.html), so an admin can point Portcullis at the
 * auth service they already run for nginx's mail proxy.
 *
 * Two halves:
 *   - the response parser (authhttp_parse.c): pure, no I/O, bounded; fed one header line at a
 *     time (libcurl's header callback gives whole lines), fuzzed by tests/fuzz/fuzz_authhttp.c;
 *   - the client (authhttp.c): asynchronous on the worker's libev loop through libcurl's multi
 *     interface (curl_multi_socket_action bridged to ev_io/ev_timer). One multi handle per client
 *     (= per worker) keeps connections alive across lookups; DNS goes through libcurl's threaded
 *     resolver (Debian's libcurl4 has AsynchDNS without c-ares), so nothing blocks the loop.
 *
 * What it does not do: caching, choosing between lookups, logging (the routing chain logs the
 * result with the session prefix), resolving Auth-Server names (nginx requires an IP address
 * there, and so do we). The password is never logged and the request headers holding it are
 * wiped before free.
 */
#ifndef PORTCULLIS_AUTHHTTP_H
#define PORTCULLIS_AUTHHTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ev_loop;

/* Proposed config keys (routing.lookups[] entry `type: http`; parsing belongs to config.c):
 *   url               http:// or https:// URL of the auth service (required)
 *   timeout           whole request, connect included          default 5s (nginx: 60s)
 *   connect_timeout   TCP + TLS connect                         default 2s
 *   ca_file           CA bundle for https (verification is always on); default: system store
 *   max_connections   kept-alive connections per worker         default 8
 *   max_header_bytes  bound on the response header block        default 8192
 *   headers           extra request headers (nginx auth_http_header), e.g. X-Auth-Key
 */
struct ah_config {
    const char *url;             /* borrowed: must outlive the client */
    unsigned timeout_ms;         /* whole request */
    unsigned connect_timeout_ms; /* connect (TCP + TLS) */
    const char *ca_file;         /* borrowed; NULL: the system's CA store */
    unsigned max_connections;    /* per client: curl's connection cache and host limit */
    size_t max_header_bytes;     /* the response's header block; larger is an error */
    const char *const *headers;  /* borrowed, NULL-terminated "Name: value" lines, or NULL */
};

#define AH_TIMEOUT_MS_DEFAULT         5000
#define AH_CONNECT_TIMEOUT_MS_DEFAULT 2000
#define AH_MAX_CONNECTIONS_DEFAULT    8
#define AH_MAX_HEADER_BYTES_DEFAULT   8192
#define AH_MAX_HEADER_BYTES_MIN       512

/* Fill *c with the defaults above (url NULL). */
void ah_config_defaults(struct ah_config *c);

/* One login to ask about. Strings are borrowed for the duration of ah_lookup() only (the
 * request is built and copied before it returns). NULL or empty optional fields are omitted. */
struct ah_query {
    const char *method;      /* Auth-Method: "plain" (IMAP LOGIN, POP3 USER/PASS, AUTH PLAIN),
                                "cram-md5", "apop", "external", "xoauth2", "oauthbearer" */
    const char *user;        /* Auth-User (URL-escaped as nginx does) */
    const char *pass;        /* Auth-Pass (URL-escaped), may be "" for external */
    const char *salt;        /* Auth-Salt (apop/cram-md5 challenge), optional */
    const char *protocol;    /* Auth-Protocol: "imap" or "pop3" */
    unsigned login_attempt;  /* Auth-Login-Attempt, 1 for the first in a session */
    const char *client_ip;   /* Client-IP, numeric */
    const char *client_host; /* Client-Host, optional */
    const char *server_ip;   /* Server-IP (Portcullis extension: the address the client hit) */
    unsigned server_port;    /* Server-Port (extension), 0 to omit */
    bool ssl;                /* Auth-SSL: on (the client connection is TLS) */
    const char *ssl_verify;  /* Auth-SSL-Verify (client certificate result), optional */
};

enum ah_status {
    AH_OK,    /* Auth-Status: OK; server/port set, user/pass override when non-NULL */
    AH_FAIL,  /* the service refused the login (Auth-Status: any other text) */
    AH_ERROR, /* transport error, timeout, non-200, malformed answer: `message` says which */
};

#define AH_SERVER_MAX 64 /* text of an IPv6 address with scope, NUL included */

struct ah_result {
    enum ah_status status;
    char server[AH_SERVER_MAX]; /* AH_OK: numeric IPv4 or IPv6 address (no brackets) */
    uint16_t port;              /* AH_OK: 1..65535 */
    const char *user;           /* AH_OK: Auth-User toward the backend, or NULL */
    const char *pass;           /* AH_OK: Auth-Pass toward the backend, or NULL (secret) */
    bool has_wait;              /* Auth-Wait was present and valid */
    unsigned wait_s;            /* Auth-Wait seconds (capped at AH_WAIT_MAX) */
    const char *error_code;     /* Auth-Error-Code, or NULL */
    const char *message;        /* AH_FAIL: the Auth-Status text; AH_ERROR: the reason */
    long http_status;           /* the HTTP status seen, 0 if none */
};

#define AH_WAIT_MAX 3600

/* ---- the parser (authhttp_parse.c) ---------------------------------------------------- */

#define AH_STATUS_TEXT_MAX 256
#define AH_USER_MAX        512
#define AH_PASS_MAX        1024
#define AH_ERRCODE_MAX     64

/* State of one response being parsed. Bounded by construction: every value has a fixed cap,
 * and the header block as a whole is capped at `max_bytes`. */
struct ah_parse {
    size_t max_bytes;  /* cap on the whole header block */
    size_t seen_bytes; /* header bytes so far */
    long http_status;  /* from the last status line */
    bool in_block;     /* a status line started a header block */
    bool done;         /* the blank line ending the final block was seen */
    bool have_status, have_server, have_port, have_user, have_pass, have_errcode, have_wait;
    bool bad_server, bad_port;
    char status[AH_STATUS_TEXT_MAX];
    char server[AH_SERVER_MAX];
    unsigned port;
    char user[AH_USER_MAX];
    char pass[AH_PASS_MAX]; /* secret: wiped by ah_parse_clear() */
    char errcode[AH_ERRCODE_MAX];
    unsigned wait_s;
    const char *error; /* static reason once the parse failed, else NULL */
};

/* Start a parse with a header-block cap (0: the default). */
void ah_parse_init(struct ah_parse *p, size_t max_bytes);

/* Feed one header line as libcurl delivers it: the status line, a header, or the blank line,
 * with or without its CRLF/LF. A new status line (after a 1xx) starts a new block. Returns 1
 * when the blank line ending a final (non-1xx) block was seen, 0 when more lines are expected,
 * -1 on error (p->error says why; further lines return -1). */
int ah_parse_line(struct ah_parse *p, const char *line, size_t len);

/* Turn a finished parse into a result. Strings in *r point into *p (valid while *p lives).
 * Anything short of a complete, valid 200 answer is AH_ERROR with the reason in r->message. */
void ah_parse_result(const struct ah_parse *p, struct ah_result *r);

/* Wipe the state (the password in particular). */
void ah_parse_clear(struct ah_parse *p);

/* nginx's escaping of Auth-User/Auth-Pass (ngx_escape_uri NGX_ESCAPE_MAIL_AUTH): " ", "%" and
 * bytes 0x00-0x1F become %XX (upper-case hex); everything else, UTF-8 included, is kept.
 * Writes at most `cap` bytes including the NUL; returns the escaped length, or (size_t)-1 if it
 * does not fit. */
size_t ah_escape(const char *in, size_t len, char *out, size_t cap);

/* ---- the client (authhttp.c) ---------------------------------------------------------- */

struct ah_client;
struct ah_req;

/* Called exactly once per ah_lookup() that returned a request, never after ah_cancel(), never
 * before ah_lookup() returned. *r and its strings are valid only during the call. The request
 * handle is gone when the callback runs (do not cancel it there). */
typedef void ah_done_fn(void *arg, const struct ah_result *r);

/* A client on `loop` (one per worker). Copies nothing from *cfg but the numbers: cfg->url,
 * ca_file and headers are borrowed. Returns NULL with *error_r set on a bad config or when
 * libcurl cannot be initialised. */
struct ah_client *ah_client_new(struct ev_loop *loop, const struct ah_config *cfg,
                                const char **error_r) __attribute__((warn_unused_result));

/* Start a lookup. Never calls back synchronously. Returns NULL (and calls nothing) only when
 * out of memory or the query lacks user/protocol; the caller treats that as AH_ERROR. */
struct ah_req *ah_lookup(struct ah_client *c, const struct ah_query *q, ah_done_fn *cb, void *arg);

/* Stop a pending lookup: its callback will not be called. NULL-safe. */
void ah_cancel(struct ah_req *req);

/* Cancel every pending lookup (no callbacks), close connections, free. NULL-safe; *c = NULL.
 * Not from inside an ah_done_fn of this client. */
void ah_client_free(struct ah_client **c);

/* Number of lookups in flight (for metrics and tests). */
unsigned ah_client_pending(const struct ah_client *c);

#endif
