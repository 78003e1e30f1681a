/*
 * backend — which backend a user's session goes to, and what the process knows about each
 * backend's health.
 *
 * Selection is weighted rendezvous (highest-random-weight) hashing of the user name over the
 * healthy, non-draining backends of the session's protocol: every instance computes the same
 * order without talking to the others, the same user lands on the same server (its caches, its
 * IMAP state), and adding, removing or losing a backend moves only the users whose best choice it
 * was. Weights scale a backend's share (score = -weight / ln(u), u uniform in (0,1) from the
 * hash: the standard weighted form, whose shares are proportional to the weights).
 *
 * Health lives outside the config snapshot, in a process-wide table keyed by backend name, so
 * that it survives reloads; workers read it with atomics, the main thread's active checks and the
 * workers' connect failures write it.
 *
 * The dialer (struct backend_dial) is the one way a worker opens a connection to a backend: the
 * session's login connection (IMAP, POP3; issue 15 removed the scan fetcher's second one). It
 * does socket + TCP_NODELAY, the transparent source bind (IP_TRANSPARENT, leave from the client's
 * address), the non-blocking connect under a timeout, the PROXY v2 header, implicit TLS with
 * certificate verification, the failure log lines (event=backend_connect_failed,
 * event=backend_tls_failed with the verification error, event=backend_error for local causes)
 * and passive health (backend_note_connect). It knows no session: the caller fills in the target
 * and gets one callback. Contract:
 *  - The caller embeds the struct (zeroed = idle), calls backend_dial_init() once, and owns the
 *    struct conn it names. Before each backend_dial_start() it sets the target fields. The conn
 *    is reopened in place: what the caller put on it (handler, owner, rbuf, wbuf, ctl capacity)
 *    is kept; while a dial runs the dialer's own handler is on the conn, and the caller's is put
 *    back before `done` runs.
 *  - `done` runs exactly once per backend_dial_start() / backend_dial_starttls(), from an I/O or
 *    timer callback on `loop`, never from inside those calls (an immediate failure is delivered
 *    on the next loop turn), and not after backend_dial_cancel(). In `done`, `result` says how it
 *    went; on failure the conn is already closed (fd -1) and the failure already logged and
 *    counted. `done` may start the next dial or close the conn; like any conn handler it must
 *    not free the conn (nor the struct) itself — the session's deferred free covers that.
 *  - BACKEND_DIAL_OK means: connected, the PROXY header (if configured) written, TLS
 *    established and verified if the backend uses implicit TLS — ready for the greeting, with
 *    `reading` off (the caller turns it on). STARTTLS/STLS is negotiated by the caller's login
 *    script, which then calls backend_dial_starttls() on the same struct.
 *  - backend_dial_cancel() (idempotent, safe on a zeroed struct) stops the timer and gives the
 *    conn its handler back; closing the conn stays the caller's job.
 */
#ifndef PORTCULLIS_BACKEND_H
#define PORTCULLIS_BACKEND_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "conn.h"
#include "log.h"

#define BACKEND_MAX 256 /* distinct backend names over the process's life */

struct backend_state {
    char name[72];                  /* CFG_NAME_MAX + 1 */
    atomic_bool up;                 /* takes new sessions (health); starts true */
    atomic_uint fails;              /* consecutive failures (active checks and connects) */
    atomic_uint oks;                /* consecutive successful active checks while down */
    atomic_uint active;             /* live sessions on this backend, this process */
    atomic_ullong connect_failures; /* total, for metrics */
    atomic_bool admin_drain; /* drained with portcullis-ctl (Redis), on top of the config's */
};

/* The names drained by an administrator right now (every other backend is undrained). */
void backend_set_admin_drained(const char **names, size_t n);

/* The state record of a backend name (created on first use, never freed; NULL only when more
 * than BACKEND_MAX names were ever configured). Thread-safe. */
struct backend_state *backend_state_get(const char *name);

/* Candidates for `user` among cfg's backends of `proto`, best first: healthy and not draining,
 * in rendezvous order. Writes up to `max` indexes into cfg->backends; returns how many. If no
 * backend is healthy, unhealthy (but not draining) ones are returned in the same order: a pool
 * that is entirely down is more likely misjudged than really down, and the client gets a prompt
 * error from the connect anyway. */
size_t backend_candidates(const struct config *cfg, struct backend_state *const *states,
                          enum cfg_proto proto, const char *user, size_t *out, size_t max);

/* The rendezvous score of (user, backend name, weight); exposed for tests. */
double backend_score(const char *user, const char *name, unsigned weight);

/* Passive health: a connect to this backend failed / succeeded. `fall` consecutive failures
 * mark it down (logged once). */
void backend_note_connect(struct backend_state *st, bool ok, unsigned fall);

/* ---- the dialer (see the contract at the top) ---- */

enum backend_dial_result {
    BACKEND_DIAL_OK,      /* ready for the greeting (TLS done if asked) */
    BACKEND_DIAL_CONNECT, /* connect refused, unreachable, timed out or broken at once: the
                             backend's fault, counted in its health; another may do */
    BACKEND_DIAL_TLS,     /* TLS handshake failed or timed out (verification included) */
    BACKEND_DIAL_LOCAL,   /* our side: no socket, source bind refused, no SSL object, or
                             nothing to dial (backend_dial_fail) */
    BACKEND_DIAL_REFUSED, /* nothing to dial because the user is refused (a routing lookup
                             does not know them, issue 17): a failed login, counted */
};

struct backend_dial;
typedef void backend_dial_done_fn(struct backend_dial *d);
/* One log line (`msg` starts with "event=..."): the caller adds its own prefix. */
typedef void backend_dial_log_fn(struct backend_dial *d, enum log_level lvl, const char *msg);

struct backend_dial {
    /* Set once by backend_dial_init(). */
    struct ev_loop *loop;
    struct conn *conn; /* the caller's (see the contract) */
    backend_dial_done_fn *done;
    backend_dial_log_fn *log;
    void *arg; /* the caller's, for done and log */

    /* The target: set by the caller before backend_dial_start(); read again by
     * backend_dial_starttls(), so they must stay valid while the connection is used. */
    const struct cfg_backend *be;             /* address, tls, proxy_protocol, name */
    struct backend_state *state;              /* health record, or NULL (not counted) */
    unsigned fall;                            /* health.fall */
    SSL_CTX *ctx;                             /* TLS client context toward be, or NULL */
    const struct sockaddr_storage *client_sa; /* PROXY v2 source; the transparent bind */
    const struct sockaddr_storage *local_sa;  /* PROXY v2 destination */
    bool bind_client;                         /* leave from the client's address */
    double connect_timeout, tls_timeout;      /* seconds */

    /* Valid in done(). */
    enum backend_dial_result result;
    const char *err;        /* static text of a failure */
    bool starttls;          /* the verb that finished was backend_dial_starttls() */
    ev_tstamp connected_at; /* when the TCP connect completed (ev_now) */

    /* private */
    ev_timer timer;
    conn_handler *handler; /* the caller's, put back on the conn before done */
    void *owner;
    bool active;
};

void backend_dial_init(struct backend_dial *d, struct ev_loop *loop, struct conn *c,
                       backend_dial_done_fn *done, backend_dial_log_fn *log, void *arg);
/* Open the conn to d->be (closing whatever it held): outcome in done(). */
void backend_dial_start(struct backend_dial *d);
/* Start TLS now on the connected conn, verifying d->be as configured (after the login script's
 * STARTTLS/STLS was accepted): outcome in done(), with the same failure logging. */
void backend_dial_starttls(struct backend_dial *d);
/* Stop a dial in progress without calling done (see the contract). */
void backend_dial_cancel(struct backend_dial *d);
/* Report a failure the caller found before any dial (no backend to try, no original
 * destination) through the same path: done() with `r` and `err` (static) on the next loop turn. */
void backend_dial_fail(struct backend_dial *d, enum backend_dial_result r, const char *err);
/* What a finished dial's failure means for the login ("cannot connect to backend", "TLS to
 * backend failed", or the local cause); NULL after BACKEND_DIAL_OK. Static text. */
const char *backend_dial_why(const struct backend_dial *d);

/* For the protocol logins reading a backend's capabilities (IMAP CAPABILITY, POP3 CAPA's SASL
 * line): is `want` one of the space-separated words of list[0, len), case-insensitively? */
bool backend_cap_has(const char *list, size_t len, const char *want);

/* Set the port of `a` to 0 (any) and return its length for bind(): the transparent source
 * bind and transparent.c's local-address probe. */
socklen_t backend_addr_any_port(struct sockaddr_storage *a);

/* Write the PROXY v2 header for (client_sa → local_sa) on `fd` with one send(): on a freshly
 * connected socket, before any TLS, so it is the first bytes the backend sees; an empty send
 * buffer always takes its at most 232 bytes. Exposed for tests. */
bool backend_send_proxy_v2(int fd, const struct sockaddr_storage *client_sa,
                           const struct sockaddr_storage *local_sa);

#endif
