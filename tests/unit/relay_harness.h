/*
 * relay_harness — drive the authenticated relay (imap_relay, imap_scan, pop3_relay, pop3_scan,
 * msgscan) of one real session without a network: the client and the backend are the far ends
 * of two socketpairs held by the test, the scanner is a deterministic stub, and every case is
 * replayed whole, one byte at a time, and split at every byte boundary of each step.
 *
 * What is real (linked from build/libportcullis.a):
 *   - session.c: sess_accept() creates the session (greeting, client_handler/backend_handler,
 *     sess_pump, sess_close, sess_close_after_flush, the CLOSING path) — the real event wiring,
 *     so a filter that pauses and is never woken stalls here as it does in production;
 *   - conn.c/buf.c: reads, flushes, watcher interest, on the socketpairs (AF_UNIX, no TLS);
 *   - the protocol modules: the login is cut short by calling the protocol's own "backend
 *     accepted the login" entry (imap_preauth_login_ok / pop3_preauth_login_ok), which enters
 *     relay exactly as after a real login (tagged OK / +OK to the client, then sess_start_relay);
 *   - msgscan.c + scanners/pool.c + scan.c: the pool threads, the ev_async hand-back, the
 *     per-worker verdict cache, notices (notice.c);
 *   - config.c: a snapshot loaded from RH_CONFIG (plain listeners, no TLS, scan on or off).
 *
 * What is faked:
 *   - the scanner: scanner_clamav_new() is defined by the harness (a link seam: the test's
 *     definition is used and clamav.o is never pulled from the archive). Its scan() is
 *     rh_verdict(): INFECTED iff the message holds the EICAR string or RH_MARK_INFECTED, ERROR
 *     iff it holds RH_MARK_ERROR, else CLEAN. The last bytes it was given are kept for asserts;
 *   - the worker: a struct worker with the harness's loop, a `wake` async that frees buried
 *     sessions, and msgscan_worker_start/stop around each run (a fresh verdict cache per run);
 *     no listeners, no policy (s->pol stays NULL: no Redis, no limits);
 *   - the peers: the test writes the bytes a client / backend would send and reads what they
 *     would receive. rh_client_received() is the ONE place that knows how output reaches the
 *     client: it reads the client's socketpair end, so it does not depend on how the relay
 *     queues its output (wbuf, ctl, an output queue).
 *
 * Quiescence: after every write the harness runs the loop without blocking until nothing moves;
 * while a scan is on a pool thread or its result not yet taken by the loop, it blocks on the
 * loop (bounded) for the ev_async. A response that never comes is therefore reported as a
 * mismatch, never as a hang.
 */
#ifndef PORTCULLIS_RELAY_HARNESS_H
#define PORTCULLIS_RELAY_HARNESS_H

#include <stdbool.h>
#include <stddef.h>

struct session;

#define RH_EICAR         "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#define RH_MARK_INFECTED "X-Harness-Infected"
#define RH_MARK_ERROR    "X-Harness-Scan-Error"
#define RH_SIGNATURE     "Harness.Test.Marker"

enum rh_proto { RH_IMAP, RH_POP3 };

/* Scanner and config variants (one config snapshot each, built on first use). */
enum rh_scan {
    RH_SCAN_OFF,        /* scan.enabled: false */
    RH_SCAN_ON,         /* defaults: error_action block, oversize_action pass */
    RH_SCAN_SMALL_PASS, /* max_scan_size 1k, oversize pass */
    RH_SCAN_SMALL_BLOCK /* max_scan_size 1k, oversize block */
};

/* One step of a case. */
enum rh_op {
    RH_C,        /* the client sends `text` */
    RH_B,        /* the backend sends `text` */
    RH_EXPECT_C, /* the client has received exactly `text` since the last client check */
    RH_EXPECT_B, /* the backend has received exactly `text` since the last backend check */
    /* the client has received `text` where each "@NOTICE@" stands for an IMAP literal
     * "{n}\r\n" + n bytes holding RH_SIGNATURE, and each "@POPNOTICE@" for a dot-stuffed POP3
     * notice body up to and including "\r\n.\r\n" holding RH_SIGNATURE (no line a lone ".") */
    RH_EXPECT_C_NOTICE,
    RH_EXPECT_CLOSED,   /* the session has closed (both peers see EOF) */
    RH_EXPECT_OPEN,     /* the session is still open */
    RH_EXPECT_SCANNED,  /* the stub's last scanned message is exactly `text` */
    RH_EXPECT_NSCANS,   /* `n` scans ran since the run started */
    RH_B_EOF,           /* the backend closes its side */
    RH_C_EOF,           /* the client closes its side */
    RH_END,
};

struct rh_step {
    enum rh_op op;
    const char *text;
    unsigned n;
};

struct rh_case {
    const char *name;
    enum rh_proto proto;
    enum rh_scan scan;
    const struct rh_step *steps; /* ends with RH_END */
};

#define C(t)         {RH_C, (t), 0}
#define B(t)         {RH_B, (t), 0}
#define EC(t)        {RH_EXPECT_C, (t), 0}
#define EB(t)        {RH_EXPECT_B, (t), 0}
#define ECN(t)       {RH_EXPECT_C_NOTICE, (t), 0}
#define ECLOSED      {RH_EXPECT_CLOSED, NULL, 0}
#define EOPEN        {RH_EXPECT_OPEN, NULL, 0}
#define ESCANNED(t)  {RH_EXPECT_SCANNED, (t), 0}
#define ENSCANS(k)   {RH_EXPECT_NSCANS, NULL, (k)}
#define BEOF         {RH_B_EOF, NULL, 0}
#define CEOF         {RH_C_EOF, NULL, 0}
#define END          {RH_END, NULL, 0}

/* Run one case: whole, byte by byte, and split at every byte boundary of each sending step.
 * Fails the cmocka test (with the mode, the step and both byte strings) on the first mismatch. */
void rh_run_case(const struct rh_case *c);

/* Lower-level API, for cases that need custom checks. */
struct rh;
/* A session in relay (login done, greeting and login answer already read and discarded). */
struct rh *rh_open(enum rh_proto proto, enum rh_scan scan);
/* Send bytes from the client / backend in chunks of at most `chunk` (0 = whole), settling the
 * loop after each chunk. */
void rh_client_send(struct rh *h, const char *p, size_t len, size_t chunk);
void rh_backend_send(struct rh *h, const char *p, size_t len, size_t chunk);
/* Everything the client / backend received since the last call (malloc'd, NUL-terminated;
 * *len_r its length). The one place that knows where relay output goes. */
char *rh_client_received(struct rh *h, size_t *len_r);
char *rh_backend_received(struct rh *h, size_t *len_r);
bool rh_closed(struct rh *h);
struct session *rh_session(struct rh *h); /* NULL once closed */
unsigned rh_scans(struct rh *h);          /* stub scans since rh_open */
/* Close (if open), free the session, stop the worker's scan client, free `h`. */
void rh_free(struct rh **h);

/* The last message the stub scanner was given (malloc'd copy; NULL if none). */
char *rh_last_scanned(size_t *len_r);

/* Check "@NOTICE@" / "@POPNOTICE@" patterns (see RH_EXPECT_C_NOTICE); false + *why on mismatch. */
bool rh_match_notice(const char *pattern, const char *got, size_t got_len, const char **why);

/* cmocka setup/teardown for the whole group: config snapshots, scan pool, loop. */
int rh_group_setup(void **state);
int rh_group_teardown(void **state);

#endif
