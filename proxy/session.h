/*
 * session — one client connection and, after login, its backend connection.
 *
 * The session owns both conns, the two relay buffers (up = client→backend, down =
 * backend→client), its timer and its runtime reference. State changes go through
 * sess_set_state(); every exit goes through sess_close(), which stops all I/O at once, has the
 * protocol cancel its asynchronous work (proto->stop) and defers the free to the worker's
 * ev_check watcher, so closing from inside any callback is safe.
 *
 * Ending a session has three doors, each owning its side effects:
 *   - sess_end(): we end it (timeout, error, shutdown). The protocol stops, the backend is
 *     closed, the farewell follows what was already released, and the session closes when the
 *     client has it (limits.closing_timeout at most).
 *   - sess_backend_lost(): the backend went away. What the filters can still deliver (a
 *     response held for its verdict, bytes not framed yet: proto->holding) goes out first, then
 *     the farewell (limits.backend_lost_timeout at most).
 *   - sess_close(): now, without a word (the peer is gone, or nothing can be said).
 * The farewell ("* BYE" / "-ERR") is placed by the protocol at a response boundary of what the
 * client received; inside a response that was partly sent there is none.
 *
 * Output never depends on a later read: a filter that waits for its output to drain is called
 * again on CONN_EV_DRAINED (see conn.h), also when sess_pump() flushed it synchronously.
 */
#ifndef PORTCULLIS_SESSION_H
#define PORTCULLIS_SESSION_H

#include <ev.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "backend.h"
#include "buf.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "protocol.h"
#include "runtime.h"

struct worker;
struct sess_pol;    /* sess_policy.c */
struct sess_lookup; /* sess_lookup.c */
struct creds;       /* creds.h */

/* Backends tried per login: the user's first choice, then one failover. */
#define SESS_BE_CANDIDATES 2

/* backend_event() flag: the phase deadline passed (or a deferred failure is due). */
#define SESS_EV_TIMEOUT 0x100
/* backend_event() flag: the backend dial finished (connected and ready for the greeting, or a
 * STARTTLS handshake done), or failed for good: s->dial.result says which (sess_route.c). */
#define SESS_EV_DIALED 0x200

enum sess_state {
    SESS_TLS_HANDSHAKE, /* implicit TLS: handshake before the greeting */
    SESS_PREAUTH,       /* the proxy speaks the protocol itself */
    SESS_STARTTLS,      /* flushing the STARTTLS answer, then the handshake */
    SESS_BACKEND,       /* logging in to the backend; the client is paused */
    SESS_RELAY,         /* authenticated: relaying through the filters */
    SESS_CLOSING,       /* flushing the last words to the client, then close */
};

/* "S-" + 8 hex digits + "-" + a 64-bit counter + NUL */
#define SESS_ID_MAX 32

/* What only the way to the relay needs: the accept, a PROXY header, the login check and the
 * backend dial. Allocated with the session and freed when the relay starts, so that an idle
 * relayed session does not carry it (issue 19: memory per idle session). */
struct sess_pre {
    struct sockaddr_storage client_sa; /* the client (after a PROXY header: the real one) */
    struct sockaddr_storage local_sa;  /* where it connected to */
    struct backend_dial dial;          /* opens s->backend (sess_route.c) */
    ev_io pp_io;                       /* reading a PROXY header (listener proxy_protocol) */
    bool proxy_hdr_pending;
};

/* A backend that exists for one session only: a transparent listener's original destination or
 * a routing lookup's dynamic backend. s->be points into it until the session is freed. */
struct sess_be_own {
    struct cfg_backend be;
    char name[LOG_HOSTPORT_MAX];
    char host[INET6_ADDRSTRLEN]; /* the bare address: TLS verifies it as an IP SAN */
};

struct session {
    uint64_t id;
    char sid[SESS_ID_MAX]; /* S-<process>-<id>: the one id of logs, registry and backend */
    struct worker *worker;
    struct rt *rt;                       /* reference held for the whole session */
    const struct config *cfg;            /* rt->cfg */
    const struct cfg_listener *listener; /* in cfg */
    const struct protocol *proto;
    void *pstate; /* protocol state, owned by proto */
    enum sess_state state;

    struct conn client;
    struct conn backend;                /* fd -1 until the backend phase */
    const struct cfg_backend *be;       /* chosen backend, in cfg (or be_orig) */
    int be_index;                       /* in cfg->backends; -1 for transparent */
    struct backend_state *be_state;     /* health record of `be` (NULL: transparent) */
    SSL_CTX *be_ctx;                    /* TLS client context toward `be`, or NULL */
    size_t be_cand[SESS_BE_CANDIDATES]; /* rendezvous order for this user */
    size_t be_ncand, be_try;            /* candidates, the one being tried */
    bool be_pinned;                     /* a routing override chose it: no failover */
    bool be_counted;                    /* counted in be_state->active */
    struct sess_pre *pre;               /* until the relay starts (NULL afterwards) */
    struct sess_be_own *be_own;         /* a backend of this session only, or NULL */
    struct buf up;                      /* client → backend (pre-auth: parser input) */
    struct buf down;                    /* backend → client */

    ev_timer timer;
    ev_tstamp deadline_at;  /* absolute time the current phase ends (0 = none) */
    ev_tstamp idle_timeout; /* relay: seconds without client activity */
    ev_tstamp last_activity;
    ev_tstamp started;

    char client_ip[INET6_ADDRSTRLEN];
    uint16_t client_port;
    char *user;        /* owned, NUL-terminated, set at login */
    char *failed_user; /* owned or NULL: the user of the last login that failed or was refused
                          (sess_forget_user), named on the close line */
    bool client_tls;   /* the client side is encrypted */
    bool closing;
    bool logged_in;
    const char *close_reason;
    const char *action; /* static: what the session is doing, for logs */

    size_t lidx;          /* listener index, for metrics */
    bool draining;        /* the process is shutting down: end at the next idle point */
    bool addr_counted;    /* holds a per-address connection slot */
    unsigned scans;       /* messages judged (scanned or from the verdict cache) */
    unsigned blocked;     /* messages replaced by a notice (infected or blocked) */
    const char *farewell; /* static: said once the filters are done (sess_backend_lost) */
    uint32_t addr_slot;

    struct sess_pol *pol;       /* owned by sess_policy.c: login check, registry entry */
    struct sess_lookup *lookup; /* owned by sess_lookup.c: routing lookup (issue 17) */
    /* Set by the protocol when a login starts, for lookups that judge it (auth_http): */
    struct creds *login_creds;   /* borrowed from pstate (lives as long as it), or NULL */
    unsigned login_attempts;     /* logins started in this session (Auth-Login-Attempt) */
    struct session *prev, *next; /* worker's list */
};

/* Take over an accepted socket. Returns false (socket closed) if it cannot be set up. */
bool sess_accept(struct worker *w, int fd, const struct cfg_listener *l, struct rt *rt,
                 const struct sockaddr *peer, socklen_t peerlen);
void sess_set_state(struct session *s, enum sess_state st);
/* End the session: stops I/O now, frees later. `reason` is static text for the summary line. */
void sess_close(struct session *s, const char *reason);
/* A login failed or was refused: s->user is cleared (the dialogue goes on as before login),
 * and kept as failed_user, so the session's close line still says who tried. */
void sess_forget_user(struct session *s);
/* Shutdown: end the session at its next idle point (pre-auth ones at once, with a BYE). */
void sess_drain(struct session *s);
void sess_drain_check(struct session *s);
/* Free a closed session (from the worker's graveyard, after the callbacks have returned). */
void sess_free(struct session *s);
/* End the session from our side: proto->stop, the backend closed, `farewell` (NULL: none, the
 * caller queued its own words) after what the client was already sent or released, then close
 * once that is out (limits.closing_timeout at most). `reason` is static text for the summary. */
void sess_end(struct session *s, const char *reason, const char *farewell);
/* sess_end() without a farewell: the words are already queued (pre-auth answers). */
void sess_close_after_flush(struct session *s, const char *reason);
/* The backend closed or broke the connection (relay): stop reading the client, close the
 * backend, let the filters deliver what they hold (proto->holding), then `farewell` (static, may
 * be NULL), then close (limits.backend_lost_timeout at most). */
void sess_backend_lost(struct session *s, const char *reason, const char *farewell);
/* Arm the phase timer: fires `secs` from now unless re-armed. 0 disarms. */
void sess_set_deadline(struct session *s, double secs);
/* Relay: arm the idle timer (seconds) measured from the last client activity. */
void sess_set_idle(struct session *s, double secs);

/* sess_route.c: choose the user's backend (Redis routing, rendezvous order, or the original
 * destination in transparent mode) and dial it, failing over once to the next candidate when
 * the connect fails or times out (unless the route is pinned or transparent). The outcome
 * reaches the protocol as backend_event(s, SESS_EV_DIALED), never before this returns; on
 * success the login deadline (backend_login_timeout, counted from the TCP connect) is armed. */
void sess_backend_connect(struct session *s);
/* The pool member of this session's protocol that `name` designates (a backend name of either
 * protocol, or a server), or -1 (sess_route.c). */
int sess_route_pool_index(const struct session *s, const char *name);
/* sess_route.c: start TLS on the connected backend now (after the login script's STARTTLS/STLS
 * was accepted), verifying it as configured; the outcome arrives as SESS_EV_DIALED. */
void sess_backend_start_tls(struct session *s);
/* transparent.c: make the connection's original destination the session's backend (s->be,
 * s->be_ctx). False (logged) when there is none. */
bool sess_transparent_target(struct session *s);
/* s->be_own, allocated (zeroed) on first use; NULL when out of memory. */
struct sess_be_own *sess_be_own(struct session *s);
/* Stop a dial in progress and close the backend connection. */
void sess_backend_drop(struct session *s);
/* Start TLS on the client side (after a STARTTLS answer has been flushed). */
void sess_client_start_tls(struct session *s);
/* Enter relay: the protocol's filters take over both directions. */
void sess_start_relay(struct session *s);
/* Push queued output both ways and refresh watcher interest; closes a closing session whose
 * output is out. Never calls the filters (they run again on CONN_EV_DRAINED/WRITE). */
void sess_pump(struct session *s);

/* logfmt line prefixed with sess=, client=, user= */
void sess_log(struct session *s, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
