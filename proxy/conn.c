/*
 * conn — see conn.h.
 *
 * The raw and TLS transports differ only in recv/send/handshake, so they are two small pairs of
 * functions here rather than a vtable: the interesting part, deriving watcher interest from
 * buffer state and OpenSSL's wants, is shared and must not be written twice.
 *
 * Invariants:
 *  - ERR_clear_error() precedes every SSL_* I/O call: SSL_get_error() reads the thread's error
 *    queue, which other sessions on this worker may have left dirty.
 *  - An SSL_write that returned WANT_* is repeated with the same length (retry_len); the buffer
 *    may have moved (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER) but never shrinks meanwhile.
 *  - Blocks are placed by position: a block records how many wbuf and ctl bytes (counted by
 *    wbuf_sent / ctl_sent) must go before it. When those bytes are gone without being sent (a
 *    buffer dropped on a close path), the block does not wait for them.
 *  - CONN_EV_DRAINED is owed (drained_due) from the flush that emptied the output, when ctl
 *    bytes or blocks were part of it (own_pending), until the handler has been called with it;
 * conn_update() feeds the watcher an EV_CUSTOM event while it is owed, after any watcher restart
 * (ev_io_stop() clears a fed event).
 *  - After SSL_read stops with bytes still inside OpenSSL (decrypted, or read ahead and not yet
 *    decrypted: SSL_has_pending), the socket will not become readable for them: conn_update()
 *    feeds a read event to the watcher.
 *  - TLS records wait in tls_out in the order OpenSSL wrote them; only tls_out_send() takes
 *    bytes from its front. The batching BIO's data points at the conn while both live:
 *    conn_close() detaches it before the SSL (which may outlive the conn) is let go.
 *
 * Why a write BIO of our own rather than BIO_f_buffer: a buffer BIO allocates its buffers with
 * the BIO and keeps them for the connection's life (+8 KB or more per idle session), and it has
 * no way to give its storage back when empty. Measured on FETCH through TLS (docs/benchmarks.md):
 * 64 writes per MB before (one per record), about 18 after with the 64 KB default.
 * After the handshake the same BIO also reads (as the socket BIO did), so a TLS connection
 * carries one BIO, not two (issue 19: ~0.2 KB per idle session).
 */
#include "conn.h"
#include "tls.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);

struct conn_block {
    struct conn_block *next;
    char *data; /* owned */
    size_t len, off;
    uint64_t wbuf_at, ctl_at; /* wbuf_sent / ctl_sent values this block waits for */
    conn_block_done *done;
    void *arg;
    size_t val;
    bool copy; /* the proxy's own words (conn_queue_copy): counted in qcopy */
};

static void block_free(struct conn *c, struct conn_block *q)
{
    if (q->copy)
        c->qcopy -= q->len;
    free(q->data);
    if (q->done)
        q->done(q->arg, q->val);
    free(q);
}

/* Drop every queued block (each one's `done` runs). */
static void queue_clear(struct conn *c)
{
    while (c->qhead) {
        struct conn_block *q = c->qhead;
        c->qhead = q->next;
        block_free(c, q);
    }
    c->qtail = NULL;
    c->qbytes = 0;
    c->qcount = 0;
}

void conn_init(struct conn *c, struct ev_loop *loop, int fd, conn_handler *h, void *owner,
               size_t ctl_cap)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->loop = loop;
    c->handler = h;
    c->owner = owner;
    buf_init(&c->ctl, ctl_cap);
    conn_set_tls_batch(c, CONN_TLS_BATCH_DEFAULT);
    ev_io_init(&c->io, io_cb, fd, 0);
    c->io.data = c;
}

/* Room for `batch` bytes of application data as records: each 16 KB record adds up to 29 bytes
 * (TLS 1.2 GCM; 22 with TLS 1.3). Without the slack a 64 KB relay buffer's four records would
 * take a 64 KB send plus one of 88 bytes (measured). */
static size_t batch_storage(size_t batch)
{
    return batch ? batch + batch / 256 + 64 : 0;
}

void conn_set_tls_batch(struct conn *c, size_t batch)
{
    if (!c->tls_out.data) {
        c->tls_batch = (uint32_t)batch;
        buf_init(&c->tls_out, batch_storage(batch));
    }
}

/* Send what tls_out holds, oldest first. Returns bytes sent (0 when the socket is full), or -1
 * on an error with errno kept. Does not release the storage (the caller may append next). */
static long tls_out_send(struct conn *c)
{
    long total = 0;
    while (!buf_empty(&c->tls_out)) {
        ssize_t n = send(c->fd, buf_rptr(&c->tls_out), buf_len(&c->tls_out), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->tls_out_full = true;
                break;
            }
            return -1;
        }
        buf_consume(&c->tls_out, (size_t)n);
        c->tls_out_sent = true;
        total += n;
    }
    return total;
}

/* The batching write BIO: OpenSSL's records are appended to tls_out; only a full tls_out costs
 * a send() here, and one the socket cannot take turns into a retry (SSL_ERROR_WANT_WRITE). A
 * record may be taken in part: OpenSSL repeats the rest (ssl3_write_pending). */
static int batch_write(BIO *b, const char *p, int len)
{
    struct conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c || c->fd < 0) {
        errno = EPIPE;
        return -1;
    }
    if (len <= 0)
        return 0;
    if (buf_room(&c->tls_out) == 0) {
        if (tls_out_send(c) < 0)
            return -1;
        if (buf_room(&c->tls_out) == 0) {
            BIO_set_retry_write(b);
            return -1;
        }
    }
    size_t n = buf_room(&c->tls_out);
    if (n > (size_t)len)
        n = (size_t)len;
    if (!buf_append(&c->tls_out, p, n)) {
        errno = ENOMEM;
        return -1;
    }
    return (int)n;
}

/* Reading, as OpenSSL's socket BIO does (read(), retry on EAGAIN/EINTR, EOF flagged for
 * BIO_eof), so that one BIO serves both directions after the handshake: the socket BIO, with its
 * lock, is freed (issue 19: memory per idle session). */
static int batch_read(BIO *b, char *out, int len)
{
    struct conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c || c->fd < 0) {
        errno = EBADF;
        return -1;
    }
    if (!out || len <= 0)
        return 0;
    errno = 0;
    ssize_t n = read(c->fd, out, (size_t)len);
    if (n <= 0) {
        if (BIO_sock_should_retry((int)n))
            BIO_set_retry_read(b);
        else if (n == 0)
            BIO_set_flags(b, BIO_FLAGS_IN_EOF);
        return n < 0 ? -1 : 0;
    }
    return (int)n;
}

static long batch_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        /* OpenSSL flushes after handshake messages and fatal alerts: try now; what the socket
         * does not take stays queued and counted as pending output. During the handshake
         * do_handshake() sends once SSL_do_handshake() returns instead, so that the flight
         * which completes it (the TLS 1.3 ticket) leaves with the session's first words (the
         * greeting) in one send. */
        if (c && c->handshaking)
            return 1;
        if (c && c->fd >= 0 && tls_out_send(c) < 0)
            return 0;
        return 1;
    case BIO_CTRL_WPENDING:
        return c ? (long)buf_len(&c->tls_out) : 0;
    case BIO_CTRL_EOF:
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0;
    }
}

static int batch_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *batch_method;
static int batch_type;
static void batch_method_init(void)
{
    batch_type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
    BIO_METHOD *m = BIO_meth_new(batch_type, "portcullis batch");
    if (m && BIO_meth_set_write(m, batch_write) && BIO_meth_set_read(m, batch_read) &&
        BIO_meth_set_ctrl(m, batch_ctrl) && BIO_meth_set_create(m, batch_create))
        batch_method = m;
    else
        BIO_meth_free(m);
}

/* From the start of the handshake: OpenSSL's writes go to tls_out (the flight that ends the
 * handshake leaves with the greeting), and its reads come through the same BIO, so the socket
 * BIO SSL_set_fd made, with its lock, is freed at once (issue 19: memory per idle session). On
 * failure the socket BIO stays (each record is then written as OpenSSL makes it — slower, not
 * wrong). */
static void batch_install(struct conn *c)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (c->tls_out.cap == 0 || pthread_once(&once, batch_method_init) != 0 || !batch_method)
        return;
    BIO *w = SSL_get_wbio(c->ssl);
    if (w && BIO_method_type(w) == batch_type)
        return;
    BIO *b = BIO_new(batch_method);
    if (!b)
        return;
    BIO_set_data(b, c);
    /* SSL_set_fd put one socket BIO in both places with a reference for each (SSL_set_bio);
     * SSL_set0_wbio drops the wbio's, SSL_set0_rbio the rbio's (which frees it), and the batch
     * BIO gets one reference for each place (SSL_free releases both). */
    SSL_set0_wbio(c->ssl, b);
    if (BIO_up_ref(b) == 1)
        SSL_set0_rbio(c->ssl, b);
}

/* Before the SSL goes: the batching BIO must not point at this conn any more. */
static void batch_detach(struct conn *c)
{
    BIO *w = SSL_get_wbio(c->ssl);
    if (w && batch_method && BIO_method_type(w) == batch_type)
        BIO_set_data(w, NULL);
}

void conn_close(struct conn *c)
{
    /* Also when not started: ev_io_stop() clears an event fed to the watcher. */
    if (c->fd >= 0)
        ev_io_stop(c->loop, &c->io);
    c->events = 0;
    c->drained_due = c->own_pending = false;
    queue_clear(c);
    if (c->ssl) {
        /* A clean end sends close_notify (one non-blocking attempt: the socket has room, and
         * nothing waits for the peer's reply), so peers can tell it from a truncation. */
        if (!c->error && !c->handshaking && c->fd >= 0) {
            ERR_clear_error();
            SSL_shutdown(c->ssl);
            ERR_clear_error();
            /* close_notify is in tls_out (a warning alert is not flushed by OpenSSL) */
            (void)tls_out_send(c);
        }
        batch_detach(c);
        tls_ssl_release(c->ssl);
        c->ssl = NULL;
    }
    if (c->wipe_ctl && c->ctl.data)
        explicit_bzero(c->ctl.data, c->ctl.cap);
    buf_free(&c->ctl);
    buf_free(&c->tls_out);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

bool conn_connect(struct conn *c, const struct sockaddr *sa, socklen_t len)
{
    if (connect(c->fd, sa, len) == 0 || errno == EINPROGRESS) {
        c->connecting = true;
        conn_update(c);
        return true;
    }
    c->error = true;
    c->err = strerror(errno);
    return false;
}

void conn_start_tls(struct conn *c, SSL *ssl, bool server)
{
    c->ssl = ssl;
    SSL_set_fd(ssl, c->fd);
    c->handshaking = true;
    batch_install(c);
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    c->tls_starved = false;
    c->read_wants_write = c->write_wants_read = false;
    c->drained_due = false; /* (the answer before STARTTLS): the handshake reports itself */
    /* Start right away: a client's ClientHello may already be in the socket buffer, and our
     * own ClientHello must go out first.  Feed after conn_update(): ev_io_stop() there would
     * clear a pending fed event. */
    conn_update(c);
    ev_feed_event(c->loop, &c->io, EV_READ | EV_WRITE);
}

/* Map an SSL result into our flags. Returns 1 for WANT_* (try later), 0 for clean EOF, -1 for
 * an error. `for_write` tells which cross-direction flag a WANT sets. */
static int ssl_outcome(struct conn *c, int rc, bool for_write)
{
    int e = SSL_get_error(c->ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (for_write)
            c->write_wants_read = true;
        return 1;
    case SSL_ERROR_WANT_WRITE:
        if (!for_write)
            c->read_wants_write = true;
        return 1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == EAGAIN || errno == EINTR)
            return 1;
        c->ssl_err = ERR_peek_last_error();
        if (errno == 0 || errno == ECONNRESET || errno == EPIPE)
            return 0; /* the peer went away without close_notify */
        c->err = strerror(errno);
        return -1;
    default: {
        unsigned long code = ERR_peek_last_error();
        c->ssl_err = code;
        /* libs-notes pitfall 12: a peer that closes without close_notify shows up as an SSL
         * error "unexpected eof while reading"; that is an ordinary disconnect. */
        if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return 0;
        c->err = code ? ERR_reason_error_string(code) : "TLS error";
        if (!c->err)
            c->err = "TLS error";
        return -1;
    }
    }
}

/* The handshake's records waiting in tls_out (see batch_ctrl): 0 when all are sent, 1 when the
 * socket is full (the rest waits for writability), -1 on an error (errno kept). */
static int handshake_send(struct conn *c)
{
    if (!c->tls_out.data)
        return 0;
    c->tls_out_full = false;
    if (tls_out_send(c) < 0)
        return -1;
    bool left = !buf_empty(&c->tls_out);
    buf_release_if_empty(&c->tls_out); /* no batch storage held while the peer thinks */
    return left ? 1 : 0;
}

static void do_handshake(struct conn *c)
{
    c->read_wants_write = c->write_wants_read = false;
    /* A flight the socket did not take goes first: OpenSSL counts it as sent. */
    int sent = handshake_send(c);
    if (sent != 0) {
        if (sent > 0) {
            c->read_wants_write = true;
            return;
        }
        c->handshaking = false;
        c->error = true;
        c->err = "connection closed during TLS handshake"; /* as OpenSSL's own write reported */
        c->handler(c, CONN_EV_HANDSHAKE);
        return;
    }
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->handshaking = false;
        c->handler(c, CONN_EV_HANDSHAKE);
        /* The handler's first flush took the last flight along; if it wrote nothing (a TLS
         * client waiting for the server's greeting), the flight goes alone. */
        if (c->fd >= 0 && !c->error && !c->tls_out_full && c->tls_out.data &&
            !buf_empty(&c->tls_out)) {
            (void)conn_flush(c);
            if (c->error)
                c->handler(c, CONN_EV_READ);
        }
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (e == SSL_ERROR_WANT_WRITE)
            c->read_wants_write = true;
        sent = handshake_send(c);
        if (sent > 0)
            c->read_wants_write = true;
        if (sent >= 0)
            return;
        e = SSL_ERROR_SYSCALL;
    } else {
        (void)handshake_send(c); /* the fatal alert, if OpenSSL wrote one: best effort */
    }
    c->handshaking = false;
    c->error = true;
    unsigned long code = ERR_peek_last_error();
    c->ssl_err = code;
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    c->err = r ? r
               : (e == SSL_ERROR_SYSCALL ? "connection closed during TLS handshake"
                                         : "TLS handshake failed");
    c->handler(c, CONN_EV_HANDSHAKE);
}

long conn_read(struct conn *c)
{
    long total = 0;
    if (c->fd < 0 || c->eof || c->error || c->handshaking || c->connecting)
        return 0;
    for (;;) {
        long room = buf_reserve(c->rbuf);
        if (room < 0) {
            c->error = true;
            c->err = "out of memory";
            break;
        }
        if (room == 0)
            break;
        char *dst = buf_wptr(c->rbuf);
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            c->read_wants_write = false;
            int rc = SSL_read(c->ssl, dst, (int)(room > (1 << 30) ? (1 << 30) : room));
            if (rc <= 0) {
                int o = ssl_outcome(c, rc, false);
                if (o == 0)
                    c->eof = true;
                else if (o < 0)
                    c->error = true;
                /* OpenSSL waits for the socket: what it holds is an incomplete record. */
                c->tls_starved = o == 1 && !c->read_wants_write;
                break;
            }
            c->tls_starved = false;
            n = rc;
        } else {
            n = recv(c->fd, dst, (size_t)room, 0);
            if (n == 0) {
                c->eof = true;
                break;
            }
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    c->error = true;
                    c->err = strerror(errno);
                    if (errno == ECONNRESET) {
                        c->error = false;
                        c->eof = true;
                    }
                }
                break;
            }
        }
        buf_commit(c->rbuf, (size_t)n);
        c->bytes_in += (uint64_t)n;
        total += n;
        /* A short plaintext read means the socket is drained. TLS reads return one record at
         * a time; with read-ahead (tls.c) OpenSSL reads the socket a buffer at a time, so when
         * nothing is left in it the last socket read was short or the socket has more: either
         * way epoll (level-triggered) says so, and a read that would only return EAGAIN is
         * saved (issue 19: one per wake-up on the login path). */
        if (!c->ssl && n < room)
            break;
        if (c->ssl && !SSL_has_pending(c->ssl))
            break;
    }
    return total;
}

/* Send one chunk; returns bytes sent, 0 for "try later", -1 on error. */
static long send_chunk(struct conn *c, const char *p, size_t len)
{
    if (c->ssl) {
        if (c->retry_len && c->retry_len <= len)
            len = c->retry_len;
        if (len > (1u << 30))
            len = 1u << 30;
        ERR_clear_error();
        c->write_wants_read = false;
        int rc = SSL_write(c->ssl, p, (int)len);
        if (rc > 0) {
            c->retry_len = 0;
            return rc;
        }
        int o = ssl_outcome(c, rc, true);
        if (o == 1) {
            c->retry_len = (uint32_t)len;
            return 0;
        }
        c->error = true;
        if (!c->err)
            c->err = "connection closed";
        return -1;
    }
    for (;;) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        c->error = true;
        c->err = strerror(errno);
        return -1;
    }
}

static long flush_buf(struct conn *c, struct buf *b, size_t limit)
{
    long total = 0;
    while (limit > 0) {
        long n = send_chunk(c, buf_rptr(b), limit);
        if (n <= 0)
            break;
        buf_consume(b, (size_t)n);
        limit -= (size_t)n;
        total += n;
    }
    return total;
}

/* Send a block's unsent bytes; returns bytes sent (stops at "try later" or an error). */
static long flush_block(struct conn *c, struct conn_block *q)
{
    long total = 0;
    while (q->off < q->len) {
        long n = send_chunk(c, q->data + q->off, q->len - q->off);
        if (n <= 0)
            break;
        q->off += (size_t)n;
        total += n;
    }
    return total;
}

/* Bytes still to go before a block placed at `at`, `sent` having gone. */
static size_t ahead(uint64_t at, uint64_t sent)
{
    return at > sent ? (size_t)(at - sent) : 0;
}

long conn_flush(struct conn *c)
{
    if (c->fd < 0 || c->error || c->handshaking || c->connecting)
        return 0;
    /* Only output of our own (ctl, blocks) is reported drained: a filter never waits for
     * relayed bytes alone (their drain re-arms the other side's reads), and a relay that
     * streams must not pay one more loop callback per buffer turn. */
    if (buf_len(&c->ctl) || c->qcount)
        c->own_pending = true;
    c->tls_out_full = c->tls_out_sent = false;
    long total = 0;
    for (;;) {
        struct conn_block *q = c->qhead;
        /* The released relay bytes that go before the next block (all of them if none). */
        size_t want = c->wbuf ? buf_sendable(c->wbuf) : 0;
        if (q && want > ahead(q->wbuf_at, c->wbuf_sent))
            want = ahead(q->wbuf_at, c->wbuf_sent);
        if (want) {
            long n = flush_buf(c, c->wbuf, want);
            total += n;
            c->wbuf_sent += (uint64_t)n;
            if ((size_t)n < want)
                break;
        }
        /* Drained relay buffers go back to malloc: an idle session then holds no relay
         * memory (measured: -11 kB RSS and -128 kB heap per idle session, no throughput
         * cost). Only empty ones: a filter may still hold bytes after mark. */
        if (c->wbuf)
            buf_release_if_empty(c->wbuf);
        /* Then our own words queued before the block. */
        size_t cw = buf_len(&c->ctl);
        if (q && cw > ahead(q->ctl_at, c->ctl_sent))
            cw = ahead(q->ctl_at, c->ctl_sent);
        if (cw) {
            long n = flush_buf(c, &c->ctl, cw);
            total += n;
            c->ctl_sent += (uint64_t)n;
            if ((size_t)n < cw)
                break;
        }
        if (!q)
            break;
        /* What was to go before it is out, or gone (a buffer dropped): the block is next. */
        if (c->wbuf_sent < q->wbuf_at)
            c->wbuf_sent = q->wbuf_at;
        if (c->ctl_sent < q->ctl_at)
            c->ctl_sent = q->ctl_at;
        size_t before = q->off;
        total += flush_block(c, q);
        c->qbytes -= q->off - before;
        if (q->off < q->len)
            break;
        c->qhead = q->next;
        if (!c->qhead)
            c->qtail = NULL;
        c->qcount--;
        block_free(c, q);
    }
    /* One send for every record this flush made (OpenSSL's writes filled tls_out) — unless the
     * socket already said it is full during this flush, or the connection failed. */
    if (c->tls_out.data && !c->tls_out_full && !c->error) {
        if (tls_out_send(c) < 0) {
            c->error = true;
            c->err = strerror(errno);
        }
    }
    buf_release_if_empty(&c->tls_out);
    c->bytes_out += (uint64_t)total;
    /* explicit_bzero (libc's vector memset, kept by the compiler) rather than OPENSSL_cleanse's
     * word loop: the whole capacity is wiped at every login (issue 19). */
    if (c->wipe_ctl && c->ctl.data && buf_empty(&c->ctl))
        explicit_bzero(c->ctl.data, c->ctl.cap);
    buf_release_if_empty(&c->ctl);
    if (c->own_pending && conn_pending_out(c) == 0) {
        c->own_pending = false;
        c->drained_due = true;
    }
    return total;
}

size_t conn_pending_out(const struct conn *c)
{
    return (c->wbuf ? buf_sendable(c->wbuf) : 0) + buf_len(&c->ctl) + c->qbytes +
           buf_len(&c->tls_out);
}

bool conn_queue(struct conn *c, char *data, size_t len, conn_block_done *done, void *arg,
                size_t val)
{
    struct conn_block *q = calloc(1, sizeof *q);
    if (!q) {
        free(data);
        if (done)
            done(arg, val);
        return false;
    }
    q->data = data;
    q->len = len;
    q->done = done;
    q->arg = arg;
    q->val = val;
    q->wbuf_at = c->wbuf_sent + (c->wbuf ? buf_sendable(c->wbuf) : 0);
    q->ctl_at = c->ctl_sent + buf_len(&c->ctl);
    /* Never before an earlier block (bytes ahead of it may have been dropped meanwhile). */
    if (c->qtail && q->wbuf_at < c->qtail->wbuf_at)
        q->wbuf_at = c->qtail->wbuf_at;
    if (c->qtail && q->ctl_at < c->qtail->ctl_at)
        q->ctl_at = c->qtail->ctl_at;
    if (c->qtail)
        c->qtail->next = q;
    else
        c->qhead = q;
    c->qtail = q;
    c->qbytes += len;
    c->qcount++;
    return true;
}

bool conn_queue_copy(struct conn *c, const void *p, size_t len)
{
    /* The proxy's own answers (refusals, BYE, keep-alives) are bounded like ctl was: a client
     * that pipelines refused commands and never reads must not grow this queue without end. */
    if (c->qcopy + len > c->ctl.cap)
        return false;
    char *d = malloc(len ? len : 1);
    if (!d)
        return false;
    memcpy(d, p, len);
    if (!conn_queue(c, d, len, NULL, NULL, 0))
        return false;
    c->qtail->copy = true;
    c->qcopy += len;
    return true;
}

bool conn_has_pending_input(const struct conn *c)
{
    /* Not only SSL_pending: with read-ahead (tls.c) whole records may wait undecrypted in
     * OpenSSL's buffer, which SSL_pending does not count. But when the last SSL_read asked for
     * the socket, what is buffered is part of a record, and feeding reads for it would spin:
     * the socket signals the rest. */
    if (!c->ssl || c->handshaking)
        return false;
    return SSL_pending(c->ssl) > 0 || (!c->tls_starved && SSL_has_pending(c->ssl));
}

void conn_update(struct conn *c)
{
    if (c->fd < 0)
        return;
    int ev = 0;
    bool feed = false;
    if (c->connecting) {
        /* Both: a failed connect reports EPOLLERR/EPOLLHUP, which libev turns into read and
         * write at once, so write alone means connected (finish_connect). */
        ev = EV_READ | EV_WRITE;
    } else if (c->handshaking) {
        ev = c->read_wants_write ? EV_WRITE : EV_READ;
    } else if (!c->error) {
        bool want_read = c->reading && !c->eof && c->rbuf && buf_room(c->rbuf) > 0;
        bool want_write = conn_pending_out(c) > 0;
        if (want_read)
            ev |= c->read_wants_write ? EV_WRITE : EV_READ;
        if (want_write)
            ev |= c->write_wants_read ? EV_READ : EV_WRITE;
        /* OpenSSL may hold decrypted bytes the socket will never signal again. */
        feed = want_read && conn_has_pending_input(c);
    }
    if (ev != c->events) {
        if (c->events)
            ev_io_stop(c->loop, &c->io);
        c->events = ev;
        if (ev) {
            ev_io_set(&c->io, c->fd, ev);
            ev_io_start(c->loop, &c->io);
        }
    }
    /* After the restart: ev_io_stop() clears a pending fed event. */
    if (feed)
        ev_feed_event(c->loop, &c->io, EV_READ);
    if (c->drained_due)
        ev_feed_event(c->loop, &c->io, EV_CUSTOM);
}

bool conn_ctl_append(struct conn *c, const void *p, size_t len)
{
    return buf_append(&c->ctl, p, len);
}

bool conn_ctl_printf(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool ok = buf_vprintf(&c->ctl, fmt, ap);
    va_end(ap);
    return ok;
}

static void finish_connect(struct conn *c, int revents)
{
    int err = 0;
    socklen_t len = sizeof err;
    c->connecting = false;
    /* Writable and not readable: connected, no error to ask for (issue 19: one getsockopt
     * per backend connection saved). Readable too: an error, or the greeting already. */
    if ((revents & EV_READ) && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        c->error = true;
        c->err = strerror(err);
    }
    c->handler(c, CONN_EV_CONNECT);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct conn *c = w->data;
    if (c->fd < 0)
        return;
    if (c->connecting) {
        if (revents & EV_WRITE)
            finish_connect(c, revents);
        /* Connected and readable already (on loopback the backend's greeting often comes with
         * the connect): read it now rather than one loop iteration later (issue 19). */
        if (c->fd < 0 || c->connecting || c->handshaking || c->error || !(revents & EV_READ)) {
            if (c->fd >= 0 && !c->handshaking)
                conn_update(c);
            return;
        }
        revents = EV_READ;
    }
    if (c->handshaking) {
        do_handshake(c);
        if (c->fd >= 0)
            conn_update(c);
        return;
    }
    int events = 0;
    /* A read is due on readability, or on writability when SSL_read asked to write; a write is
     * due on writability, or on readability when SSL_write asked to read. */
    bool try_read = c->reading && (((revents & EV_READ) && !c->read_wants_write) ||
                                   ((revents & EV_WRITE) && c->read_wants_write));
    bool try_write = ((revents & EV_WRITE) && !c->write_wants_read) ||
                     ((revents & EV_READ) && c->write_wants_read);
    if (try_write && conn_pending_out(c)) {
        /* Records leaving tls_out are progress too: the last of a relayed stream may be only
         * records, and a closing session waits for the output to be gone. */
        if (conn_flush(c) > 0 || c->tls_out_sent)
            events |= CONN_EV_WRITE;
    }
    if (try_read) {
        bool was = c->eof || c->error;
        if (conn_read(c) > 0 || (!was && (c->eof || c->error)))
            events |= CONN_EV_READ;
    }
    if (c->error)
        events |= CONN_EV_READ;
    if (c->drained_due) {
        c->drained_due = false;
        events |= CONN_EV_DRAINED;
    }
    if (events)
        c->handler(c, events);
    if (c->fd >= 0)
        conn_update(c);
}
