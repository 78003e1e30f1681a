/* Unit tests for conn's TLS output (issue 19 item 3): records are coalesced into one send() per
 * flush instead of one write() per 16 KB record; the coalescing buffer keeps the byte order across
 * EAGAIN and partial sends, is released when it empties and taken again for the next output;
 * CONN_EV_DRAINED is reported only once the records are on the wire; close_notify still goes out.
 *
 * The peer is a plain OpenSSL client on the other end of a socketpair. write() and send() are
 * interposed to count the syscalls that put bytes on the proxy's socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "conn.h"

/* The fd whose output syscalls are counted (-1: none). */
static int g_watch_fd = -1;
static unsigned g_writes;

ssize_t write(int fd, const void *p, size_t n)
{
    if (fd == g_watch_fd)
        g_writes++;
    return syscall(SYS_write, fd, p, n);
}

ssize_t send(int fd, const void *p, size_t n, int flags)
{
    if (fd == g_watch_fd)
        g_writes++;
    return syscall(SYS_sendto, fd, p, n, flags, NULL, 0);
}

struct fx {
    struct ev_loop *loop;
    SSL_CTX *sctx, *cctx;
    SSL *peer; /* the client end */
    int peer_fd;
    struct conn c;
    struct buf rbuf, wbuf;
    int drained;
    bool drained_clean; /* every DRAINED came with nothing left to send */
    int writes_empty;   /* CONN_EV_WRITE events after which nothing was left to send */
    bool greet;         /* answer the handshake with a greeting, as a session does */
    int handshakes;     /* CONN_EV_HANDSHAKE events */
};

static void handler(struct conn *c, int events)
{
    struct fx *f = c->owner;
    if (events & CONN_EV_HANDSHAKE) {
        f->handshakes++;
        if (f->greet && !c->error) {
            assert_true(conn_ctl_append(c, "* OK hello\r\n", 12));
            conn_flush(c);
        }
    }
    if ((events & CONN_EV_WRITE) && conn_pending_out(c) == 0)
        f->writes_empty++;
    if (events & CONN_EV_DRAINED) {
        f->drained++;
        if (conn_pending_out(c) != 0)
            f->drained_clean = false;
    }
}

static SSL_CTX *server_ctx(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(key);
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1, 0);
    X509_set_issuer_name(x, nm);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(ctx, x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
    /* as tls.c sets them */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

/* The two ends on a socketpair, TLS not started: the proxy's conn (the server when
 * `proxy_serves`) and the plain OpenSSL peer on the other side. */
static void fx_open(struct fx *f, bool proxy_serves, size_t wbuf_cap)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    f->loop = ev_loop_new(0);
    f->sctx = server_ctx();
    f->cctx = SSL_CTX_new(TLS_client_method());
    f->peer_fd = sv[1];
    f->peer = SSL_new(proxy_serves ? f->cctx : f->sctx);
    SSL_set_fd(f->peer, sv[1]);
    if (proxy_serves)
        SSL_set_connect_state(f->peer);
    else
        SSL_set_accept_state(f->peer);
    f->drained_clean = true;
    buf_init(&f->rbuf, 4096);
    buf_init(&f->wbuf, wbuf_cap);
    conn_init(&f->c, f->loop, sv[0], handler, f, 4096);
    f->c.rbuf = &f->rbuf;
    f->c.wbuf = &f->wbuf;
}

static void fx_close(struct fx *f)
{
    g_watch_fd = -1;
    conn_close(&f->c);
    buf_free(&f->rbuf);
    buf_free(&f->wbuf);
    SSL_free(f->peer);
    close(f->peer_fd);
    SSL_CTX_free(f->sctx);
    SSL_CTX_free(f->cctx);
    ev_loop_destroy(f->loop);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    fx_open(f, true, 1 << 20);
    conn_start_tls(&f->c, SSL_new(f->sctx), true);
    int done = 0;
    for (int i = 0; i < 100000 && (f->c.handshaking || done != 1); i++) {
        if (done != 1) {
            ERR_clear_error();
            done = SSL_do_handshake(f->peer);
        }
        ev_run(f->loop, EVRUN_NOWAIT);
    }
    assert_false(f->c.handshaking);
    assert_false(f->c.error);
    assert_int_equal(done, 1);
    g_watch_fd = f->c.fd;
    g_writes = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    fx_close(f);
    free(f);
    return 0;
}

static void pattern(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (i * 7 + seed) % 26);
}

static void release_bytes(struct fx *f, const char *p, size_t n)
{
    assert_true(buf_append(&f->wbuf, p, n));
    buf_release(&f->wbuf, n);
}

/* Run the loop and read the peer until `want` bytes arrived (and DRAINED came, if `drain`). */
static size_t pump(struct fx *f, char *out, size_t want, bool drain)
{
    size_t n = 0;
    conn_update(&f->c);
    for (int i = 0; i < 200000 && (n < want || (drain && !f->drained)); i++) {
        ERR_clear_error();
        int k = SSL_read(f->peer, out + n, (int)(want - n > 0 ? want - n : 1));
        if (k > 0)
            n += (size_t)k;
        ev_run(f->loop, EVRUN_NOWAIT);
    }
    return n;
}

static void test_records_coalesced(void **state)
{
    struct fx *f = *state;
    size_t big = 256 << 10;
    char *in = malloc(big), *out = malloc(big);
    pattern(in, big, 1);
    release_bytes(f, in, big);
    conn_flush(&f->c);
    assert_int_equal(pump(f, out, big, false), big);
    assert_memory_equal(out, in, big);
    /* 16 records of 16 KB: one write() each before; now a send() per 64 KB (the socket pair
     * takes less than 256 KB at once, so a few more on partial sends) */
    assert_true(g_writes <= 8);
    free(in);
    free(out);
}

static void test_batch_released_and_retaken(void **state)
{
    struct fx *f = *state;
    char out[256];
    release_bytes(f, "relayed-1.", 10);
    assert_true(conn_ctl_append(&f->c, "ctl-1.", 6));
    conn_flush(&f->c);
    assert_int_equal(pump(f, out, 16, true), 16);
    assert_memory_equal(out, "relayed-1.ctl-1.", 16);
    assert_int_equal(f->drained, 1);
    assert_true(f->drained_clean);
    /* idle: no record storage held */
    assert_null(f->c.tls_out.data); /*TLSOUT*/
    assert_int_equal(conn_pending_out(&f->c), 0);
    /* the next output takes it again, in order with blocks and ctl */
    release_bytes(f, "relayed-2.", 10);
    assert_true(conn_queue_copy(&f->c, "block.", 6));
    release_bytes(f, "relayed-3.", 10);
    assert_true(conn_ctl_append(&f->c, "ctl-2.", 6));
    conn_flush(&f->c);
    assert_int_equal(pump(f, out, 32, true), 32);
    assert_memory_equal(out, "relayed-2.block.relayed-3.ctl-2.", 32);
    assert_int_equal(f->drained, 2);
    assert_true(f->drained_clean);
    assert_null(f->c.tls_out.data); /*TLSOUT*/
}

static void test_full_socket_keeps_order(void **state)
{
    struct fx *f = *state;
    int small = 4096;
    setsockopt(f->c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    size_t big = 1 << 20;
    char *in = malloc(big), *out = malloc(big + 16);
    pattern(in, big - 16, 3);
    release_bytes(f, in, big - 16);
    assert_true(conn_ctl_append(&f->c, "* OK done\r\n", 11));
    conn_flush(&f->c);
    assert_true(conn_pending_out(&f->c) > 0); /* the socket is full: records wait */
    assert_int_equal(f->drained, 0);
    size_t n = pump(f, out, big - 16 + 11, true);
    assert_int_equal(n, big - 16 + 11);
    assert_memory_equal(out, in, big - 16);
    assert_memory_equal(out + big - 16, "* OK done\r\n", 11);
    assert_int_equal(f->drained, 1);
    assert_true(f->drained_clean);
    free(in);
    free(out);
}

/* Relayed bytes alone raise no DRAINED: the handler learns that the last of them left from
 * CONN_EV_WRITE (a closing session waits for it), also when only records were left to send. */
static void test_last_records_raise_write(void **state)
{
    struct fx *f = *state;
    int small = 4096;
    setsockopt(f->c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    size_t big = 256 << 10;
    char *in = malloc(big), *out = malloc(big);
    pattern(in, big, 5);
    release_bytes(f, in, big);
    conn_flush(&f->c);
    assert_int_equal(pump(f, out, big, false), big);
    for (int i = 0; i < 100; i++)
        ev_run(f->loop, EVRUN_NOWAIT);
    assert_memory_equal(out, in, big);
    assert_int_equal(conn_pending_out(&f->c), 0);
    assert_int_equal(f->drained, 0);
    assert_true(f->writes_empty >= 1);
    free(in);
    free(out);
}

static void test_close_notify_sent(void **state)
{
    struct fx *f = *state;
    char out[16];
    release_bytes(f, "bye.", 4);
    conn_flush(&f->c);
    assert_int_equal(pump(f, out, 4, false), 4);
    conn_close(&f->c);
    int rc = 0;
    for (int i = 0; i < 1000 && rc <= 0; i++) {
        ERR_clear_error();
        rc = SSL_read(f->peer, out, sizeof out);
        if (rc <= 0 && SSL_get_error(f->peer, rc) != SSL_ERROR_WANT_READ)
            break;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(SSL_get_error(f->peer, rc), SSL_ERROR_ZERO_RETURN);
}

/* issue 19: the handshake's last flight (TLS 1.3: the session tickets) waits for the session's
 * first words and leaves with them in one send; the first flight goes at once. */
static void test_ticket_leaves_with_greeting(void **state)
{
    (void)state;
    struct fx f = {.greet = true};
    fx_open(&f, true, 4096);
    g_watch_fd = f.c.fd;
    g_writes = 0;
    conn_start_tls(&f.c, SSL_new(f.sctx), true);
    char out[32];
    size_t n = 0;
    for (int i = 0; i < 100000 && n < 12; i++) {
        ERR_clear_error();
        int k = SSL_read(f.peer, out + n, (int)(sizeof out - n));
        if (k > 0)
            n += (size_t)k;
        ev_run(f.loop, EVRUN_NOWAIT);
    }
    assert_int_equal(n, 12);
    assert_memory_equal(out, "* OK hello\r\n", 12);
    assert_int_equal(f.handshakes, 1);
    assert_false(f.c.error);
    assert_int_equal(SSL_version(f.peer), TLS1_3_VERSION);
    /* the tickets came (before the greeting, in the same send) */
    assert_true(SSL_SESSION_is_resumable(SSL_get0_session(f.peer)));
    /* ServerHello..Finished, then tickets + greeting (3 sends before) */
    assert_int_equal(g_writes, 2);
    assert_null(f.c.tls_out.data); /*TLSOUT*/
    fx_close(&f);
}

/* A TLS client (backend side) whose handler writes nothing after the handshake: its Finished
 * still leaves in the iteration that completed the handshake, not on a later write event. */
static void test_client_finished_not_held(void **state)
{
    (void)state;
    struct fx f = {0};
    fx_open(&f, false, 4096);
    conn_start_tls(&f.c, SSL_new(f.cctx), false);
    int done = 0;
    bool checked = false;
    for (int i = 0; i < 100000 && (f.c.handshaking || done != 1); i++) {
        if (done != 1) {
            ERR_clear_error();
            done = SSL_do_handshake(f.peer);
        }
        bool was = f.c.handshaking;
        ev_run(f.loop, EVRUN_NOWAIT);
        if (was && !f.c.handshaking) {
            assert_int_equal(conn_pending_out(&f.c), 0);
            checked = true;
        }
    }
    assert_true(checked);
    assert_int_equal(done, 1);
    assert_int_equal(f.handshakes, 1);
    assert_false(f.c.error);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_records_coalesced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_released_and_retaken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_socket_keeps_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_records_raise_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_notify_sent, setup, teardown),
        cmocka_unit_test(test_ticket_leaves_with_greeting),
        cmocka_unit_test(test_client_finished_not_held),
    };
    return cmocka_run_group_tests_name("conn_tls", tests, NULL, NULL);
}
