/*
 * conn — one endpoint of a session: a non-blocking socket, an optional OpenSSL object, and the
 * buffers it reads into and writes from.
 *
 * The protocol code never calls SSL_* or recv/send: it calls conn_read()/conn_flush() and looks
 * at buffers. The transport (raw or TLS) turns OpenSSL's WANT_READ/WANT_WRITE into watcher
 * interest, including the cross-direction cases (SSL_read wanting to write, SSL_write wanting to
 * read), and re-feeds reads while OpenSSL holds bytes the socket will never signal (decrypted,
 * or whole records read ahead).
 *
 * Buffers: reads append to *rbuf (owned by the session). Output toward the peer comes from three
 * places, sent as one ordered stream:
 *   - the sendable region [rpos, mark) of *wbuf (owned by the session: the other side's receive
 *     buffer, so relayed bytes are never copied);
 *   - `ctl`, the proxy's own short output (greetings, pre-auth answers, BYE), owned here;
 *   - a queue of owned blocks (conn_queue): held responses put back by a filter, notices,
 *     keep-alives, the relay's own answers. Each block is placed where it was queued: after
 *     every wbuf byte released and every ctl byte appended before it, before anything released
 *     or appended after it. So a filter may release bytes, queue a held response, and release
 *     the bytes after it, and the peer gets them in that order.
 * Without blocks, wbuf's sendable bytes go before ctl (a filter that appends to ctl must not
 * release more until ctl has drained — or use a block instead). Released bytes are never
 * dropped while blocks are queued (close paths drop only held bytes, buf_drop_held); if they
 * were, the blocks would still go out in their own order, but not in order with later
 * releases.
 *
 * Events: after a conn_flush() — from the I/O callback or called synchronously by the session —
 * leaves nothing queued (wbuf sendable region, ctl, blocks) after output of our own (ctl bytes
 * or blocks) was queued, the handler receives CONN_EV_DRAINED once, from the loop (conn_update()
 * feeds the watcher an event, so a flush inside sess_pump() is reported too). A filter that
 * pauses until its own output is out is resumed by it; nothing depends on a later read. (Relayed
 * bytes alone raise no DRAINED: their drain re-arms the other side's reads, and a streaming
 * relay should not pay a loop callback per buffer turn; CONN_EV_WRITE still reports them.)
 *
 * TLS output (issue 19): once the handshake is done, OpenSSL writes its records into `tls_out`
 * (a write BIO of ours) instead of the socket, and conn_flush() hands the kernel all of them in
 * one send() — one syscall per up to `limits.tls_write_batch` bytes instead of one per 16 KB
 * record. Records not yet accepted by the socket count as pending output (conn_pending_out), so
 * watcher interest and CONN_EV_DRAINED mean "on the wire", as for plaintext. The storage is
 * taken on the first record and released when it empties, so an idle session holds none.
 *
 * Watcher interest is derived from buffer state in conn_update(): a full rbuf stops reading —
 * that is the backpressure. A *wbuf that conn_flush() leaves empty is released
 * (buf_release_if_empty), so code must not keep pointers into a relay buffer across flushes.
 */
#ifndef PORTCULLIS_CONN_H
#define PORTCULLIS_CONN_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"

struct conn;
/* Called after I/O on the conn: `events` is a mask of CONN_EV_*. The handler may close the
 * session (deferred free makes that safe) and must not free the conn itself. */
typedef void conn_handler(struct conn *c, int events);

enum {
    CONN_EV_READ = 1,      /* new bytes in rbuf, or eof/error set */
    CONN_EV_WRITE = 2,     /* some output was sent (room freed in wbuf/ctl, or TLS records) */
    CONN_EV_HANDSHAKE = 4, /* the TLS handshake finished (or failed: error set) */
    CONN_EV_CONNECT = 8,   /* an outgoing connect finished (or failed: error set) */
    CONN_EV_DRAINED = 16,  /* everything queued toward the peer has been written */
};

/* A queued block was sent or dropped (conn_close): called once, then the conn frees the
 * block. `val` is the caller's (e.g. the scan budget the block holds). */
typedef void conn_block_done(void *arg, size_t val);
struct conn_block;

struct conn {
    int fd; /* owned; -1 when closed */
    struct ev_loop *loop;
    ev_io io;
    SSL *ssl;           /* owned or NULL (plaintext) */
    struct buf *rbuf;   /* not owned: reads append here */
    struct buf *wbuf;   /* not owned, may be NULL: its [rpos, mark) is sent first */
    struct buf ctl;     /* owned: proxy-generated output, sent after wbuf's sendable part */
    struct buf tls_out; /* owned: TLS records not yet sent (cap 0 = off) */
    uint32_t tls_batch; /* application bytes per send() that tls_out is sized for */
    conn_handler *handler;
    void *owner;           /* the session */
    const char *err;       /* static description of the error, when error is set */
    unsigned long ssl_err; /* OpenSSL error code of the failure, if any */
    uint64_t bytes_in;     /* application bytes received / sent */
    uint64_t bytes_out;
    uint32_t retry_len;    /* length of an SSL_write to repeat after WANT_* */
    int events;            /* current libev interest */
    bool reading;          /* the owner wants input */
    bool eof;              /* the peer closed its side (or close_notify) */
    bool error;            /* fatal I/O or TLS error */
    bool connecting;       /* outgoing connect() in progress */
    bool handshaking;      /* TLS handshake in progress */
    bool read_wants_write; /* SSL_read returned WANT_WRITE */
    bool write_wants_read; /* SSL_write returned WANT_READ */
    bool wipe_ctl;         /* ctl carries secrets (backend login): cleanse before freeing */
    bool drained_due;      /* output drained: CONN_EV_DRAINED not yet delivered */
    bool own_pending;      /* ctl bytes or blocks queued since the last DRAINED */
    bool tls_starved;      /* the last SSL_read wanted socket input (buffered: a part record) */
    bool tls_out_full;     /* this flush met a full socket sending tls_out: no second try */
    bool tls_out_sent;     /* this flush sent records from tls_out (progress: CONN_EV_WRITE) */
    struct conn_block *qhead, *qtail; /* owned: queued blocks, oldest first */
    size_t qbytes;                    /* unsent bytes in queued blocks */
    size_t qcopy;                     /* bytes of queued conn_queue_copy blocks (<= ctl.cap) */
    unsigned qcount;                  /* queued blocks */
    uint64_t wbuf_sent, ctl_sent;     /* bytes sent from wbuf / ctl: where blocks go between */
};

void conn_init(struct conn *c, struct ev_loop *loop, int fd, conn_handler *h, void *owner,
               size_t ctl_cap);
/* Stop watchers, free the SSL and ctl buffer, close the fd. Idempotent. */
void conn_close(struct conn *c);

/* Coalesce TLS records into sends of up to `cap` bytes (0: one write per record, as OpenSSL
 * does). Set before conn_start_tls(): it takes effect with the handshake, whose flights are sent
 * when SSL_do_handshake() returns (the last one with what the handler writes first); the
 * default is CONN_TLS_BATCH_DEFAULT. */
#define CONN_TLS_BATCH_DEFAULT (64u << 10)
void conn_set_tls_batch(struct conn *c, size_t cap);

/* Start a non-blocking connect; completion is reported as CONN_EV_CONNECT. Returns false with
 * c->err set when it fails immediately. */
bool conn_connect(struct conn *c, const struct sockaddr *sa, socklen_t len);

/* Put an SSL object on the conn and start the handshake (server or client side). The result is
 * reported as CONN_EV_HANDSHAKE. `ssl` ownership passes to the conn. */
void conn_start_tls(struct conn *c, SSL *ssl, bool server);

/* Read as much as fits into rbuf. Returns bytes read (0 when nothing); sets eof/error. */
long conn_read(struct conn *c);
/* Send what is queued. Returns bytes sent; sets error. */
long conn_flush(struct conn *c);
/* Bytes still queued toward this peer (sendable wbuf region, ctl, blocks). */
size_t conn_pending_out(const struct conn *c);
/* Recompute watcher interest from buffer state and flags. Call after any buffer change. */
void conn_update(struct conn *c);
/* Queue proxy output. Returns false if ctl is full (the caller treats that as fatal). */
bool conn_ctl_append(struct conn *c, const void *p, size_t len);
bool conn_ctl_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Queue a block of `len` bytes (`data` malloc'd) after everything queued so far. Ownership of
 * `data` passes to the conn in every case: on failure (out of memory) it is freed and `done`
 * called at once. `done` may be NULL. */
bool conn_queue(struct conn *c, char *data, size_t len, conn_block_done *done, void *arg,
                size_t val);
/* Queue a copy of p[0 .. len): the proxy's own words. False when out of memory or when the
 * copies queued and unsent would exceed the ctl capacity (a peer that does not read). */
bool conn_queue_copy(struct conn *c, const void *p, size_t len);
/* Unsent bytes / number of queued blocks. */
static inline size_t conn_queued_bytes(const struct conn *c)
{
    return c->qbytes;
}
static inline unsigned conn_queued_blocks(const struct conn *c)
{
    return c->qcount;
}
/* Is the TLS layer holding decrypted input the socket will not signal? */
bool conn_has_pending_input(const struct conn *c);

#endif
