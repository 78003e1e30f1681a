/* Unit tests for the per-worker free list of server SSL objects (tls.c, issue 19) and for conn's
 * TLS reads with read-ahead: a released object comes back reset — on the default certificate
 * after an SNI switch, without the previous peer's session — and only for the tls_server it was
 * made for; a part record buffered by read-ahead does not make conn feed itself reads (a spin),
 * while whole records buffered behind a full rbuf do.
 *
 * The server side runs on a socketpair under conn; the client is a plain SSL over memory BIOs,
 * its bytes moved to and from the socket by pump(), so a test can deliver half a record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "conn.h"
#include "tls.h"

static char dir[] = "/tmp/test_tls_reuse.XXXXXX";
static char paths[4][128];
static struct cfg_cert certs[2];

/* A self-signed P-256 certificate for `cn` (no SAN: tls.c then takes the CN for SNI). */
static void make_cert(const char *cn, const char *cert_path, const char *key_path)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, k);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(cert_path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

static int group_setup(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(dir));
    const char *names[] = {"one.test", "two.test"};
    for (int i = 0; i < 2; i++) {
        snprintf(paths[2 * i], sizeof paths[0], "%s/c%d.pem", dir, i);
        snprintf(paths[2 * i + 1], sizeof paths[0], "%s/k%d.pem", dir, i);
        make_cert(names[i], paths[2 * i], paths[2 * i + 1]);
        certs[i].cert = paths[2 * i];
        certs[i].key = paths[2 * i + 1];
    }
    tls_global_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tls_thread_done();
    for (int i = 0; i < 4; i++)
        unlink(paths[i]);
    rmdir(dir);
    return 0;
}

static struct tls_server *server(unsigned cache)
{
    struct cfg_tls cfg = {.certs = certs,
                          .ncerts = 2,
                          .min_version = TLS1_2_VERSION,
                          .session_tickets = 1,
                          .ssl_cache = cache};
    char *err = NULL;
    struct tls_server *ts = tls_server_new(&cfg, &err);
    if (!ts)
        fail_msg("tls_server_new: %s", err ? err : "?");
    return ts;
}

struct peer {
    struct ev_loop *loop;
    struct conn c;
    struct buf rbuf;
    int fd;            /* the client's end of the socketpair */
    SSL_CTX *cctx;     /* client */
    SSL *cl;           /* client, on memory BIOs */
    BIO *cin, *cout;   /* what the client reads / has written */
    SSL_SESSION *sess; /* to resume with, or NULL */
};

static void handler(struct conn *c, int events)
{
    (void)c;
    (void)events;
}

/* Move bytes between the client's memory BIOs and the socket. */
static void pump(struct peer *p)
{
    char b[16384];
    int n;
    while ((n = BIO_read(p->cout, b, sizeof b)) > 0)
        assert_int_equal(write(p->fd, b, (size_t)n), n);
    ssize_t r;
    while ((r = read(p->fd, b, sizeof b)) > 0)
        BIO_write(p->cin, b, (int)r);
}

/* Connect a client (SNI `name` or none; `sess` to resume) to a server conn using `ssl`. */
static void peer_open(struct peer *p, SSL *ssl, const char *name, size_t rcap)
{
    memset(p, 0, sizeof *p);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    p->fd = sv[1];
    p->loop = ev_loop_new(0);
    buf_init(&p->rbuf, rcap);
    conn_init(&p->c, p->loop, sv[0], handler, p, 4096);
    p->c.rbuf = &p->rbuf;
    p->cctx = SSL_CTX_new(TLS_client_method());
    p->cl = SSL_new(p->cctx);
    p->cin = BIO_new(BIO_s_mem());
    p->cout = BIO_new(BIO_s_mem());
    SSL_set_bio(p->cl, p->cin, p->cout);
    SSL_set_connect_state(p->cl);
    if (name)
        SSL_set_tlsext_host_name(p->cl, name);
    conn_start_tls(&p->c, ssl, true);
}

static void peer_handshake(struct peer *p)
{
    for (int i = 0; i < 100 && (p->c.handshaking || !SSL_is_init_finished(p->cl)); i++) {
        SSL_do_handshake(p->cl);
        pump(p);
        ev_run(p->loop, EVRUN_NOWAIT);
        pump(p);
    }
    assert_false(p->c.handshaking);
    assert_false(p->c.error);
    assert_int_equal(SSL_is_init_finished(p->cl), 1);
    /* TLS 1.3 tickets follow the handshake: read them so the session can be resumed. */
    char b[16];
    ev_run(p->loop, EVRUN_NOWAIT);
    pump(p);
    SSL_read(p->cl, b, sizeof b);
}

static char *peer_cn(struct peer *p, char *out, size_t cap)
{
    X509 *x = SSL_get1_peer_certificate(p->cl);
    assert_non_null(x);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)cap);
    X509_free(x);
    return out;
}

static void peer_close(struct peer *p)
{
    conn_close(&p->c); /* hands the server SSL to tls_ssl_release */
    buf_free(&p->rbuf);
    close(p->fd);
    SSL_shutdown(p->cl); /* a session ended without close_notify is not resumable */
    SSL_free(p->cl);
    SSL_CTX_free(p->cctx);
    ev_loop_destroy(p->loop);
}

static void test_reused_after_sni_on_default_certificate(void **state)
{
    (void)state;
    struct tls_server *ts = server(4);
    SSL *s1 = tls_server_ssl(ts);
    SSL_CTX *dflt = SSL_get_SSL_CTX(s1);
    struct peer p;
    char cn[64];
    peer_open(&p, s1, "two.test", 4096);
    peer_handshake(&p);
    assert_string_equal(peer_cn(&p, cn, sizeof cn), "two.test");
    assert_ptr_not_equal(SSL_get_SSL_CTX(s1), dflt); /* SNI switched it */
    peer_close(&p);

    SSL *s2 = tls_server_ssl(ts);
    assert_ptr_equal(s2, s1);                    /* the same object again */
    assert_ptr_equal(SSL_get_SSL_CTX(s2), dflt); /* ... back on the default context */
    peer_open(&p, s2, NULL, 4096);
    peer_handshake(&p);
    assert_string_equal(peer_cn(&p, cn, sizeof cn), "one.test");
    assert_int_equal(SSL_session_reused(s2), 0);
    peer_close(&p);
    tls_server_free(&ts);
    tls_thread_done();
}

static void test_resumption_only_with_own_ticket(void **state)
{
    (void)state;
    struct tls_server *ts = server(4);
    struct peer p;
    peer_open(&p, tls_server_ssl(ts), "two.test", 4096);
    peer_handshake(&p);
    SSL_SESSION *sess = SSL_get1_session(p.cl);
    assert_non_null(sess);
    assert_int_equal(SSL_SESSION_has_ticket(sess), 1);
    SSL_CTX *cctx = p.cctx;
    SSL_CTX_up_ref(cctx);
    peer_close(&p);

    /* a new client without a ticket on the reused object: a full handshake */
    SSL *s = tls_server_ssl(ts);
    peer_open(&p, s, "two.test", 4096);
    peer_handshake(&p);
    assert_int_equal(SSL_session_reused(s), 0);
    peer_close(&p);

    /* the ticket holder resumes on the reused object */
    s = tls_server_ssl(ts);
    peer_open(&p, s, "two.test", 4096);
    SSL_free(p.cl);
    SSL_CTX_free(p.cctx);
    p.cctx = cctx;
    p.cl = SSL_new(cctx);
    p.cin = BIO_new(BIO_s_mem());
    p.cout = BIO_new(BIO_s_mem());
    SSL_set_bio(p.cl, p.cin, p.cout);
    SSL_set_connect_state(p.cl);
    SSL_set_tlsext_host_name(p.cl, "two.test");
    SSL_set_session(p.cl, sess);
    peer_handshake(&p);
    assert_int_equal(SSL_session_reused(s), 1);
    assert_int_equal(SSL_session_reused(p.cl), 1);
    SSL_SESSION_free(sess);
    peer_close(&p);
    tls_server_free(&ts);
    tls_thread_done();
}

static void test_list_serves_one_generation(void **state)
{
    (void)state;
    struct tls_server *a = server(4), *b = server(4);
    SSL *sa = tls_server_ssl(a);
    SSL_CTX *ca = SSL_get_SSL_CTX(sa);
    tls_ssl_release(sa); /* kept for a */
    SSL *sb = tls_server_ssl(b);
    assert_ptr_not_equal(SSL_get_SSL_CTX(sb), ca); /* a reload's object, not a's */
    SSL *sa2 = tls_server_ssl(a);                  /* the list now serves b: a new one */
    assert_ptr_equal(SSL_get_SSL_CTX(sa2), ca);
    tls_ssl_release(sb);
    tls_ssl_release(sa2);           /* a's generation: freed, not kept */
    SSL *again = tls_server_ssl(a); /* the list follows a again */
    assert_ptr_equal(SSL_get_SSL_CTX(again), ca);
    tls_ssl_release(again);
    tls_thread_done();
    tls_server_free(&a);
    tls_server_free(&b);
}

/* Half a record buffered by read-ahead must not look like pending input: conn_update() would
 * feed a read, SSL_read would want the socket, and so on without end. */
static void test_part_record_is_not_pending_input(void **state)
{
    (void)state;
    struct tls_server *ts = server(0);
    struct peer p;
    peer_open(&p, tls_server_ssl(ts), NULL, 4096);
    peer_handshake(&p);
    p.c.reading = true;
    assert_int_equal(SSL_write(p.cl, "a NOOP\r\n", 8), 8);
    char rec[512];
    int n = BIO_read(p.cout, rec, sizeof rec);
    assert_true(n > 8);
    assert_int_equal(write(p.fd, rec, (size_t)n / 2), n / 2);
    assert_int_equal(conn_read(&p.c), 0);
    assert_false(p.c.error);
    assert_false(conn_has_pending_input(&p.c));
    assert_int_equal(write(p.fd, rec + n / 2, (size_t)(n - n / 2)), n - n / 2);
    assert_int_equal(conn_read(&p.c), 8);
    peer_close(&p);
    tls_server_free(&ts);
}

/* Two whole records arrive in one socket read; rbuf has room for the first only: the second is
 * in OpenSSL's buffer (read ahead, not decrypted) and the socket will not signal it again. */
static void test_whole_record_behind_full_rbuf_is_pending(void **state)
{
    (void)state;
    struct tls_server *ts = server(0);
    struct peer p;
    peer_open(&p, tls_server_ssl(ts), NULL, 8);
    peer_handshake(&p);
    p.c.reading = true;
    assert_int_equal(SSL_write(p.cl, "a NOOP\r\n", 8), 8);
    assert_int_equal(SSL_write(p.cl, "b NOOP\r\n", 8), 8);
    pump(&p);
    assert_int_equal(conn_read(&p.c), 8);
    assert_true(conn_has_pending_input(&p.c));
    buf_consume(&p.rbuf, 8);
    assert_int_equal(conn_read(&p.c), 8);
    assert_memory_equal(buf_rptr(&p.rbuf), "b NOOP\r\n", 8);
    peer_close(&p);
    tls_server_free(&ts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reused_after_sni_on_default_certificate),
        cmocka_unit_test(test_resumption_only_with_own_ticket),
        cmocka_unit_test(test_list_serves_one_generation),
        cmocka_unit_test(test_part_record_is_not_pending_input),
        cmocka_unit_test(test_whole_record_behind_full_rbuf_is_pending),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
