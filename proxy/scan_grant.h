/*
 * scan_grant — one request for scan budget, with one owner and an explicit state.
 *
 * A relay asks for the bytes it will hold for scanning (a whole IMAP literal, a POP3 body) with
 * scan_grant_acquire(). The grant is then in exactly one state:
 *
 *   IDLE ──acquire──▶ WAITING ──pool grants──▶ GRANTED ──take──▶ IDLE (bytes moved on)
 *     │                  │                        └──release/cancel──▶ IDLE (bytes given back)
 *     └──acquire (fits)──┴──────────────────────▶ GRANTED       WAITING ──cancel──▶ IDLE
 *
 * The grant arrives on the loop (the pool's ev_async). The owner's callback returns whether it
 * still wants the bytes: a session that is closing, or that has moved on, says no, and the grant
 * is given back right there — never dropped on the floor (issue 16: a grant handed to a closing
 * session leaked, 258 MB used with no connection). `take` hands the bytes to whatever holds
 * the message from then on (msg_budget → the scan job → the outcome → the output block), each
 * of which gives them back exactly once with msgscan_budget_release(owner, bytes).
 *
 * Every transition is asserted: releasing a grant never acquired, taking one not granted, or
 * acquiring twice aborts in debug builds (the unit and integration tests run those).
 */
#ifndef PORTCULLIS_SCAN_GRANT_H
#define PORTCULLIS_SCAN_GRANT_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msgscan.h"

struct session;
struct scan_grant;
/* On the loop, when a waited-for grant arrives. Return true to keep it (then take it or
 * release it later), false to give it back at once (closing, or no longer wanted). */
typedef bool scan_grant_fn(void *arg, struct scan_grant *g);

enum scan_grant_state { SCAN_GRANT_IDLE, SCAN_GRANT_WAITING, SCAN_GRANT_GRANTED };

/* Embed in the owner's state; idle when zeroed. */
struct scan_grant {
    struct msgscan_wait w; /* private */
    enum scan_grant_state state;
    size_t bytes;
    pool_owner owner;
    scan_grant_fn *cb;
    void *arg;
};

/* Ask for `bytes` for session `s`. OK: GRANTED now (no callback); WAIT: cb(arg) later on the loop
 * (pause input meanwhile); TOO_BIG: more than the whole budget, stays IDLE. `g` must be IDLE. */
enum msgscan_budget_rc scan_grant_acquire(struct scan_grant *g, struct session *s, size_t bytes,
                                          scan_grant_fn *cb, void *arg);
/* GRANTED → IDLE: the bytes move to the caller, who releases them with msgscan_budget_release
 * (g->owner, n) where and when the message they cover goes away. Returns the bytes. */
size_t scan_grant_take(struct scan_grant *g);
/* GRANTED → IDLE, bytes given back. */
void scan_grant_release(struct scan_grant *g);
/* Whatever the state: WAITING stops waiting (a grant on its way is given back), GRANTED gives
 * the bytes back; IDLE is a no-op. For a session's stop. */
void scan_grant_cancel(struct scan_grant *g);

/* ---- held output: a client that does not read what holds budget ----
 *
 * A scanned response put back for the client keeps its budget until it is written. A client
 * that does not read would keep it forever (issue 16: 13 such sessions of one user held the
 * whole budget). While `holding(s)` says budget waits on the client, this watchdog looks at the
 * client conn's bytes_out; with no progress for scan.held_timeout it calls `expire(s)` (which
 * ends the session: the budget is given back when its output is dropped). */
typedef bool scan_held_fn(struct session *s);
struct scan_held {
    ev_timer t; /* private */
    struct session *s;
    scan_held_fn *holding, *expire;
    uint64_t last_out;
    ev_tstamp since;
};
/* Start watching (no-op while already watching). */
void scan_held_arm(struct scan_held *h, struct session *s, scan_held_fn *holding,
                   scan_held_fn *expire);
void scan_held_stop(struct scan_held *h);

#endif
