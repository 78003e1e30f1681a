/*
 * relay_harness — drive the authenticated relay (imap_relay, imap_scan, pop3_relay, pop3_scan,
 * msgscan) of one real session without a network: the client and the backend are the far ends
 * of two AF_UNIX socketpairs held by the test, the scanner is a deterministic stub, and every
 * case is replayed whole, with a slow client reader, one byte at a time, and split once at
 * every byte boundary of each sending step (rh_run_case). Include relay_harness.c (not this header
 * alone) from a tests/unit/test_*.c: the Makefile builds each of those as its own binary.
 *
 * Why socketpairs and not fd -1: the issue 14 stalls live in the event wiring (sess_pump()
 * flushing synchronously, no write event armed, the filter never re-run). With real sockets
 * the real conn_flush()/conn_update()/handlers run and a stall shows as missing bytes; an
 * emulated drain would encode the very behaviour under test.
 *
 * What is real (linked from build/libportcullis.a):
 *   - session.c: sess_accept() creates the session (greeting, client_handler/backend_handler,
 *     sess_pump, sess_close, sess_close_after_flush, the CLOSING path);
 *   - conn.c/buf.c: reads, flushes, watcher interest, on the socketpairs (no TLS);
 *   - the protocol modules. The login is cut short: the client sends one pre-auth command the
 *     proxy answers itself (CAPABILITY / CAPA: the pre-auth parser state is a real session's),
 *     then rh_open() does what the backend login script does on the backend's OK — backend
 *     conn fd set, state SESS_BACKEND — and calls the protocol's own "login accepted" entry
 *     (imap_preauth_login_ok / pop3_preauth_login_ok), which answers the client and enters
 *     relay through sess_start_relay(). That block of rh_open() is the one place that knows
 *     how a backend conn is set up (the "dialer" work may move it);
 *   - msgscan.c + scanners/pool.c + scan.c + notice.c: pool threads, the ev_async hand-back,
 *     the per-worker verdict cache, notices;
 *   - config.c/runtime.c: snapshots loaded from RH_CONFIG (plain listeners, scan variants).
 *
 * What is faked:
 *   - the scanner: scanner_clamav_new() is defined by the harness (a link seam: the test's
 *     definition wins and clamav.o is never pulled from the archive), returning a scanner_ops
 *     implementation whose scan() is the verdict function: INFECTED iff the message holds the
 *     EICAR string or RH_MARK_INFECTED (signature RH_SIGNATURE), ERROR iff it holds
 *     RH_MARK_ERROR, LIMIT (MaxRecursion) iff it holds RH_MARK_LIMIT, else CLEAN; engine
 * "harness-stub-1". The last message scanned is kept;
 *   - the worker: a struct worker with the harness's loop and a `wake` async that frees buried
 *     sessions; msgscan_worker_start/stop around each run (a fresh verdict cache per run); no
 *     listeners, no policy (s->pol NULL: no Redis, no limits);
 *   - the peers: the test writes what a client / backend sends and reads what it receives.
 *     rh_client_received() / rh_backend_received() are the ONE place that knows how output
 *     reaches a peer: they read the socketpair, so they do not depend on how the relay queues
 *     output (s->down's [rpos, mark), the conn's ctl, imap_scan's wbuf swap, pop3_scan's
 *     insert, or an output queue with CONN_EV_DRAINED).
 *
 * Quiescence: after every write the loop runs without blocking until nothing moves and two
 * checks in a row, with loop runs between them, find no scan job queued or running (the pool's
 * numbers, read from the scan metrics; the pool signals a result under the same lock that takes
 * a job off `running`). While a job is in the pool it blocks on the loop for the ev_async, for
 * at most 10 s of wall time. A response that never comes is therefore reported as a mismatch,
 * never as a hang.
 */
#ifndef PORTCULLIS_RELAY_HARNESS_H
#define PORTCULLIS_RELAY_HARNESS_H

#include <stdbool.h>
#include <stddef.h>

struct session;

#define RH_EICAR         "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#define RH_MARK_INFECTED "X-Harness-Infected"
#define RH_MARK_ERROR    "X-Harness-Scan-Error"
#define RH_MARK_LIMIT    "X-Harness-Scan-Limit" /* LIMIT Heuristics.Limits.Exceeded.MaxRecursion */
#define RH_SIGNATURE     "Harness.Test.Marker"

enum rh_proto { RH_IMAP, RH_POP3 };

/* Scanner and config variants (one config snapshot each, built by rh_group_setup). */
enum rh_scan {
    RH_SCAN_OFF,         /* the worker does not scan (no msgscan worker: msgscan_on false) */
    RH_SCAN_ON,          /* defaults: error_action block, oversize_action pass */
    RH_SCAN_SMALL_PASS,  /* max_scan_size 1k, oversize pass */
    RH_SCAN_SMALL_BLOCK, /* max_scan_size 1k, oversize block */
    RH_SCAN_DOT_NOTICE,  /* a notice template whose lines start with "." (dot-stuffing) */
    RH_SCAN_LIMITS_PASS, /* limits_action pass */
    RH_SCAN_PREFETCH2,   /* max_prefetch_messages 2 (issue 15) */
    RH_SCAN_VARIANTS
};

/* One step of a case. */
enum rh_op {
    RH_C,        /* the client sends `text` */
    RH_B,        /* the backend sends `text` */
    RH_C_WHOLE,  /* the client sends `text` in one write in every mode (setup, not under test) */
    RH_EXPECT_C, /* the client has received exactly `text` since the last client check */
    RH_EXPECT_B, /* the backend has received exactly `text` since the last backend check */
    /* the client has received `text` (since the last client check), where placeholders stand
     * for generated bytes:
     *   @NOTICE@       an IMAP literal "{n}\r\n" + n bytes holding RH_SIGNATURE (remembered)
     *   @BLOCKED@      an IMAP literal holding a notice without a signature (error/oversize)
     *   @SLICE:o:n@    a literal of bytes [o, o+n) of the remembered notice (n 0: to its end)
     *   @BODYSLICE:o:n@  the same within the notice's body (after its header)
     *   @POPNOTICE@    a dot-stuffed POP3 body up to and including "\r\n.\r\n" holding
     *                  RH_SIGNATURE, every line CRLF-ended, no line a lone "."
     *   @POPBLOCKED@   the same for a notice without a signature (error/oversize)
     *   @NUM@          one or more digits
     *   @NOTICETEXT@   a literal holding an infected notice's text (no header block)
     *   @CLEANLIT:n@   a literal of exactly n bytes with no infected content */
    RH_EXPECT_C_NOTICE,
    RH_EXPECT_CLOSED,  /* the session has closed (both peers see EOF) */
    RH_EXPECT_OPEN,    /* the session is still open */
    RH_EXPECT_SCANNED, /* the stub's last scanned message is exactly `text` */
    RH_EXPECT_NSCANS,  /* `n` scans ran since the run started */
    RH_B_EOF,          /* the backend closes its side */
    RH_C_EOF,          /* the client closes its side */
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
    bool big; /* large messages: whole, slow reader and six splits only, not byte by byte */
};

/* Slow-reader mode: the client reads this much per loop run. */
#define RH_SLOW_READ 256

#define C(t)                                                                                       \
    {                                                                                              \
        RH_C, (t), 0                                                                               \
    }
#define B(t)                                                                                       \
    {                                                                                              \
        RH_B, (t), 0                                                                               \
    }
#define CW(t)                                                                                      \
    {                                                                                              \
        RH_C_WHOLE, (t), 0                                                                         \
    }
#define EC(t)                                                                                      \
    {                                                                                              \
        RH_EXPECT_C, (t), 0                                                                        \
    }
#define EB(t)                                                                                      \
    {                                                                                              \
        RH_EXPECT_B, (t), 0                                                                        \
    }
#define ECN(t)                                                                                     \
    {                                                                                              \
        RH_EXPECT_C_NOTICE, (t), 0                                                                 \
    }
#define ECLOSED                                                                                    \
    {                                                                                              \
        RH_EXPECT_CLOSED, NULL, 0                                                                  \
    }
#define EOPEN                                                                                      \
    {                                                                                              \
        RH_EXPECT_OPEN, NULL, 0                                                                    \
    }
#define ESCANNED(t)                                                                                \
    {                                                                                              \
        RH_EXPECT_SCANNED, (t), 0                                                                  \
    }
#define ENSCANS(k)                                                                                 \
    {                                                                                              \
        RH_EXPECT_NSCANS, NULL, (k)                                                                \
    }
#define BEOF                                                                                       \
    {                                                                                              \
        RH_B_EOF, NULL, 0                                                                          \
    }
#define CEOF                                                                                       \
    {                                                                                              \
        RH_C_EOF, NULL, 0                                                                          \
    }
#define END                                                                                        \
    {                                                                                              \
        RH_END, NULL, 0                                                                            \
    }

/* One cmocka test function per case: the test files define CASE() with their protocol (and
 * scan variant) over this. */
#define RH_CASE(fn, title, proto_, variant, ...)                                                   \
    static void fn(void **state)                                                                   \
    {                                                                                              \
        (void)state;                                                                               \
        static const struct rh_step steps[] = {__VA_ARGS__, END};                                  \
        rh_run_case(                                                                               \
            &(struct rh_case){.name = title, .proto = proto_, .scan = variant, .steps = steps});   \
    }

/* A 1161-byte message the stub scanner calls infected (its marker header), larger than the
 * RH_SCAN_SMALL_* variants' max_scan_size: the oversize cases of both protocols use it. */
#define RH_HEX80 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define RH_BIG_MSG                                                                                 \
    "Subject: big\r\nX-Harness-Infected: 1\r\n\r\n" RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80   \
        RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 "\r\n"

/* Run one case: whole; with a slow client reader (the proxy's send buffer to the client at its
 * minimum, the client reading RH_SLOW_READ bytes per loop run, so output goes out on write
 * events); byte by byte; and split once at every byte boundary of each sending step (the
 * same k for every step). Fails the cmocka test (with the mode, the step and both byte
 * strings) on the first mismatch. */
void rh_run_case(const struct rh_case *c);

/* Lower-level API, for cases that need custom checks. */
struct rh;
/* A session in relay (login done, greeting and login answer already read and discarded). */
struct rh *rh_open(enum rh_proto proto, enum rh_scan scan);
/* A client that stops (true) or resumes reading: its output stays in the proxy (held). */
void rh_client_deaf(struct rh *h, bool deaf);
/* The same, logged in as `user` (rh_open: "alice"). */
struct rh *rh_open_as(enum rh_proto proto, enum rh_scan scan, const char *user);
/* Send bytes from the client / backend in chunks of at most `chunk` (0 = whole), settling the
 * loop after each chunk. */
void rh_client_send(struct rh *h, const char *p, size_t len, size_t chunk);
void rh_backend_send(struct rh *h, const char *p, size_t len, size_t chunk);
/* Everything the client / backend received since the last call (malloc'd, NUL-terminated;
 * *len_r its length). The one place that knows where relay output goes. */
char *rh_client_received(struct rh *h, size_t *len_r);
char *rh_backend_received(struct rh *h, size_t *len_r);
bool rh_closed(struct rh *h);
/* Run the loop until nothing moves (no bytes to either peer, no scan job queued or running). */
void rh_settle(struct rh *h);
struct session *rh_session(struct rh *h); /* NULL once closed */
unsigned rh_scans(struct rh *h);          /* stub scans since rh_open */
/* Close (if open), free the session, stop the worker's scan client, free `h`. */
void rh_free(struct rh **h);

/* Test data: a message of about `n` bytes (header lines, `extra` (may be NULL) as one more
 * header line, then 70-character CRLF lines, every 37th one starting with "."). malloc'd. */
char *rh_message(size_t n, const char *extra);
/* `m` dot-stuffed for POP3 (a "." at a line start doubled), malloc'd. */
char *rh_stuff(const char *m);
/* printf into a malloc'd string. */
char *rh_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The last message the stub scanner was given (malloc'd copy; NULL if none). */
char *rh_last_scanned(size_t *len_r);

/* Check "@NOTICE@" / "@POPNOTICE@" patterns (see RH_EXPECT_C_NOTICE); false + *why on mismatch. */
bool rh_match_notice(const char *pattern, const char *got, size_t got_len, const char **why);

/* cmocka setup/teardown for the whole group: config snapshots, scan pool, loop. */
int rh_group_setup(void **state);
int rh_group_teardown(void **state);

#endif
