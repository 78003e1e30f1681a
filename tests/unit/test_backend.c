/* Unit tests for backend selection (weighted rendezvous hashing), the PROXY protocol parser and
 * builder, CIDR lists, and the backend dialer (on socketpairs and loopback sockets: the header
 * it writes, how it classifies and reports failures, that it never calls back synchronously). */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
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

#include "backend.h"
#include "config.h"
#include "proxy_proto.h"

static char names[4][16] = {"b0", "b1", "b2", "b3"};

static void pool(struct config *cfg, struct cfg_backend *bs, size_t n, const unsigned *weights)
{
    memset(cfg, 0, sizeof *cfg);
    memset(bs, 0, n * sizeof *bs);
    for (size_t i = 0; i < n; i++) {
        bs[i].name = names[i];
        bs[i].protocol = CFG_PROTO_IMAP;
        bs[i].weight = weights ? weights[i] : 1;
    }
    cfg->backends = bs;
    cfg->nbackends = n;
}

static size_t pick(const struct config *cfg, struct backend_state *const *st, const char *user)
{
    size_t out[2];
    size_t n = backend_candidates(cfg, st, CFG_PROTO_IMAP, user, out, 2);
    assert_true(n >= 1);
    return out[0];
}

/* The same user always gets the same backend; removing one backend moves only its users. */
static void test_rendezvous_stable_and_minimal(void **state)
{
    (void)state;
    struct config cfg;
    struct cfg_backend bs[3];
    pool(&cfg, bs, 3, NULL);
    size_t before[3000];
    size_t moved = 0, lost = 0;
    for (int u = 0; u < 3000; u++) {
        char user[32];
        snprintf(user, sizeof user, "user%d@example.org", u);
        before[u] = pick(&cfg, NULL, user);
        assert_int_equal(pick(&cfg, NULL, user), before[u]);
    }
    bs[1].drain = true; /* b1 takes no new sessions */
    for (int u = 0; u < 3000; u++) {
        char user[32];
        snprintf(user, sizeof user, "user%d@example.org", u);
        size_t now = pick(&cfg, NULL, user);
        assert_int_not_equal(now, 1);
        if (before[u] == 1)
            lost++;
        else if (now != before[u])
            moved++;
    }
    assert_int_equal(moved, 0); /* only b1's users moved */
    assert_true(lost > 800 && lost < 1200);
}

/* Shares follow the weights (1:1:2 → 25/25/50 %). */
static void test_rendezvous_weights(void **state)
{
    (void)state;
    struct config cfg;
    struct cfg_backend bs[3];
    unsigned w[3] = {1, 1, 2};
    pool(&cfg, bs, 3, w);
    unsigned count[3] = {0};
    for (int u = 0; u < 20000; u++) {
        char user[32];
        snprintf(user, sizeof user, "u%d", u);
        count[pick(&cfg, NULL, user)]++;
    }
    assert_in_range(count[0], 4500, 5500);
    assert_in_range(count[1], 4500, 5500);
    assert_in_range(count[2], 9400, 10600);
}

/* Down backends are skipped; when all are down, the order is kept anyway. */
static void test_rendezvous_health(void **state)
{
    (void)state;
    struct config cfg;
    struct cfg_backend bs[2];
    pool(&cfg, bs, 2, NULL);
    struct backend_state *st[2] = {backend_state_get("test-h0"), backend_state_get("test-h1")};
    assert_non_null(st[0]);
    assert_ptr_equal(backend_state_get("test-h0"), st[0]);
    size_t first = pick(&cfg, st, "alice");
    atomic_store(&st[first]->up, false);
    assert_int_equal(pick(&cfg, st, "alice"), 1 - first);
    atomic_store(&st[1 - first]->up, false);
    assert_int_equal(pick(&cfg, st, "alice"), first);
    /* passive marking: `fall` failures take a backend down, a success resets the count */
    atomic_store(&st[0]->up, true);
    backend_note_connect(st[0], false, 3);
    backend_note_connect(st[0], false, 3);
    backend_note_connect(st[0], true, 3);
    backend_note_connect(st[0], false, 3);
    assert_true(atomic_load(&st[0]->up));
    backend_note_connect(st[0], false, 3);
    backend_note_connect(st[0], false, 3);
    assert_false(atomic_load(&st[0]->up));
}

static void test_candidates_order(void **state)
{
    (void)state;
    struct config cfg;
    struct cfg_backend bs[4];
    pool(&cfg, bs, 4, NULL);
    size_t out[4];
    assert_int_equal(backend_candidates(&cfg, NULL, CFG_PROTO_IMAP, "bob", out, 4), 4);
    for (int i = 0; i < 3; i++)
        assert_true(backend_score("bob", names[out[i]], 1) >=
                    backend_score("bob", names[out[i + 1]], 1));
    bs[2].protocol = CFG_PROTO_POP3;
    assert_int_equal(backend_candidates(&cfg, NULL, CFG_PROTO_POP3, "bob", out, 4), 1);
    assert_int_equal(out[0], 2);
}

/* ---- PROXY protocol ---- */

static void feed_split(const unsigned char *h, size_t len, struct proxy_addrs *pa)
{
    /* every prefix is MORE, the whole is DONE with exact consumption */
    const char *err;
    size_t used;
    for (size_t k = 1; k < len; k++) {
        enum proxy_result r = proxy_parse(h, k, &used, pa, &err);
        assert_int_equal(r, PROXY_MORE);
    }
    unsigned char more[600];
    memcpy(more, h, len);
    memcpy(more + len, "* OK junk", 9);
    assert_int_equal(proxy_parse(more, len + 9, &used, pa, &err), PROXY_DONE);
    assert_int_equal(used, len);
}

static void test_proxy_v1(void **state)
{
    (void)state;
    struct proxy_addrs pa;
    const char *h = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 993\r\n";
    feed_split((const unsigned char *)h, strlen(h), &pa);
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&pa.src;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(ntohs(s4->sin_port), 56324);
    char ip[64];
    inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
    assert_string_equal(ip, "192.0.2.10");
    h = "PROXY TCP6 2001:db8::1 2001:db8::2 1 143\r\n";
    feed_split((const unsigned char *)h, strlen(h), &pa);
    assert_int_equal(pa.src.ss_family, AF_INET6);
    h = "PROXY UNKNOWN\r\n";
    feed_split((const unsigned char *)h, strlen(h), &pa);
    assert_true(pa.local);

    const char *bad[] = {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       /* no CR */
                         "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       /* fields */
                         "PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",   /* address */
                         "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", /* port */
                         "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    /* leading zero */
                         "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* protocol */
                         "a1 LOGIN x y\r\n"};                      /* not a header */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t used;
        const char *err = NULL;
        assert_int_equal(
            proxy_parse((const unsigned char *)bad[i], strlen(bad[i]), &used, &pa, &err),
            PROXY_BAD);
        assert_non_null(err);
    }
    /* an endless v1 line is refused at 107 bytes, not buffered */
    char longl[200];
    memset(longl, 'A', sizeof longl);
    memcpy(longl, "PROXY ", 6);
    size_t used;
    const char *err;
    assert_int_equal(proxy_parse((const unsigned char *)longl, sizeof longl, &used, &pa, &err),
                     PROXY_BAD);
}

static void test_proxy_v2_roundtrip(void **state)
{
    (void)state;
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons(40000)};
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(993)};
    inet_pton(AF_INET, "203.0.113.7", &src.sin_addr);
    inet_pton(AF_INET, "198.51.100.1", &dst.sin_addr);
    unsigned char h[PROXY_V2_MAX];
    size_t n = proxy_v2_build(h, sizeof h, (struct sockaddr *)&src, (struct sockaddr *)&dst);
    assert_int_equal(n, 28);
    struct proxy_addrs pa;
    feed_split(h, n, &pa);
    assert_false(pa.local);
    assert_memory_equal(&((struct sockaddr_in *)&pa.src)->sin_addr, &src.sin_addr, 4);
    assert_int_equal(((struct sockaddr_in *)&pa.dst)->sin_port, dst.sin_port);

    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(1)};
    inet_pton(AF_INET6, "2001:db8::5", &s6.sin6_addr);
    n = proxy_v2_build(h, sizeof h, (struct sockaddr *)&s6, (struct sockaddr *)&dst);
    assert_int_equal(n, 52);
    feed_split(h, n, &pa);
    assert_int_equal(pa.src.ss_family, AF_INET6);
    assert_memory_equal(&((struct sockaddr_in6 *)&pa.src)->sin6_addr, &s6.sin6_addr, 16);
    /* dst was IPv4: sent v4-mapped */
    assert_true(IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&pa.dst)->sin6_addr));

    /* LOCAL command, TLVs after the addresses, version and length checks */
    unsigned char local[16];
    memcpy(local, h, 12);
    local[12] = 0x20;
    local[13] = 0;
    local[14] = local[15] = 0;
    feed_split(local, 16, &pa);
    assert_true(pa.local);
    unsigned char tlv[64];
    n = proxy_v2_build(tlv, sizeof tlv, (struct sockaddr *)&src, (struct sockaddr *)&dst);
    tlv[15] = 12 + 4;
    memcpy(tlv + 28, "\x04\x00\x01X", 4); /* PP2_TYPE_NOOP */
    feed_split(tlv, 32, &pa);
    unsigned char badv[16];
    memcpy(badv, local, 16);
    badv[12] = 0x31;
    size_t used;
    const char *err;
    assert_int_equal(proxy_parse(badv, 16, &used, &pa, &err), PROXY_BAD);
    badv[12] = 0x21;
    badv[14] = 0xFF; /* 65280-byte body: over PROXY_HDR_MAX */
    assert_int_equal(proxy_parse(badv, 16, &used, &pa, &err), PROXY_BAD);
}

/* ---- CIDR lists ---- */

static void test_cidrs(void **state)
{
    (void)state;
    struct cfg_cidr *nets;
    size_t n;
    char err[128];
    assert_true(cfg_parse_cidrs("10.0.0.0/8, 192.0.2.1 2001:db8::/32", &nets, &n, err, sizeof err));
    assert_int_equal(n, 3);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.200.3.4", &a.sin_addr);
    assert_true(cfg_cidr_match(nets, n, (struct sockaddr *)&a));
    inet_pton(AF_INET, "192.0.2.2", &a.sin_addr);
    assert_false(cfg_cidr_match(nets, n, (struct sockaddr *)&a));
    struct sockaddr_in6 b = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8:ffff::1", &b.sin6_addr);
    assert_true(cfg_cidr_match(nets, n, (struct sockaddr *)&b));
    inet_pton(AF_INET6, "::ffff:10.1.1.1", &b.sin6_addr); /* v4-mapped counts as IPv4 */
    assert_true(cfg_cidr_match(nets, n, (struct sockaddr *)&b));
    inet_pton(AF_INET6, "2001:db9::1", &b.sin6_addr);
    assert_false(cfg_cidr_match(nets, n, (struct sockaddr *)&b));
    free(nets);
    const char *bad[] = {"10.0.0.0/33", "10.0.0/8",  "2001:db8::/129",
                         "x",           "10.0.0.0/", "1.2.3.4/08x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(cfg_parse_cidrs(bad[i], &nets, &n, err, sizeof err));
    assert_true(cfg_parse_cidrs(" , ", &nets, &n, err, sizeof err));
    assert_int_equal(n, 0);
}

/* ---- the dialer ---- */

/* The PROXY v2 header the dialer writes, read back from the other end of a socketpair. */
static void test_dial_proxy_v2_on_socketpair(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct sockaddr_storage client = {0}, local = {0};
    struct sockaddr_in6 *c6 = (struct sockaddr_in6 *)&client;
    c6->sin6_family = AF_INET6;
    c6->sin6_port = htons(51234);
    inet_pton(AF_INET6, "2001:db8::7", &c6->sin6_addr);
    struct sockaddr_in *l4 = (struct sockaddr_in *)&local;
    l4->sin_family = AF_INET;
    l4->sin_port = htons(993);
    inet_pton(AF_INET, "198.51.100.1", &l4->sin_addr);
    assert_true(backend_send_proxy_v2(sv[0], &client, &local));
    unsigned char h[PROXY_V2_MAX + 1];
    ssize_t n = recv(sv[1], h, sizeof h, 0);
    assert_int_equal(n, 52); /* one send: the whole header, IPv6 (the v4 side mapped) */
    struct proxy_addrs pa;
    size_t used;
    const char *err = NULL;
    assert_int_equal(proxy_parse(h, (size_t)n, &used, &pa, &err), PROXY_DONE);
    assert_int_equal(used, 52);
    assert_false(pa.local);
    assert_memory_equal(&((struct sockaddr_in6 *)&pa.src)->sin6_addr, &c6->sin6_addr, 16);
    assert_int_equal(((struct sockaddr_in6 *)&pa.src)->sin6_port, htons(51234));
    assert_int_equal(((struct sockaddr_in6 *)&pa.dst)->sin6_port, htons(993));

    /* An address family PROXY v2 cannot carry: refused, nothing written. */
    struct sockaddr_storage unix_sa = {.ss_family = AF_UNIX};
    assert_false(backend_send_proxy_v2(sv[0], &unix_sa, &local));
    assert_int_equal(recv(sv[1], h, sizeof h, MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
    close(sv[0]);
    close(sv[1]);
}

/* A dial's world: a loop, the caller's conn with its own handler, a backend, a health record. */
struct dial_t {
    struct ev_loop *loop;
    struct backend_dial d;
    struct conn c;
    struct buf in;
    struct cfg_backend be;
    char name[16];
    char host[16];
    struct backend_state *st;
    struct sockaddr_storage client, local;
    int calls;
    char log[2048];
};

static void owner_handler(struct conn *c, int events)
{
    (void)c;
    (void)events;
}

static void on_done(struct backend_dial *d)
{
    struct dial_t *t = d->arg;
    t->calls++;
}

static void on_log(struct backend_dial *d, enum log_level lvl, const char *msg)
{
    struct dial_t *t = d->arg;
    (void)lvl;
    size_t l = strlen(t->log);
    snprintf(t->log + l, sizeof t->log - l, "%s\n", msg);
}

static unsigned dial_seq;

static void dial_setup(struct dial_t *t, uint16_t port)
{
    memset(t, 0, sizeof *t);
    t->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(t->loop);
    /* a fresh health record per test: the table is process-wide */
    snprintf(t->name, sizeof t->name, "dial%u", dial_seq++);
    snprintf(t->host, sizeof t->host, "127.0.0.1");
    t->st = backend_state_get(t->name);
    assert_non_null(t->st);
    t->be.name = t->name;
    t->be.host = t->host;
    t->be.port = port;
    struct sockaddr_in *a = (struct sockaddr_in *)&t->be.addr;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a->sin_addr);
    t->be.addrlen = sizeof *a;
    struct sockaddr_in *c = (struct sockaddr_in *)&t->client;
    c->sin_family = AF_INET;
    c->sin_port = htons(40001);
    inet_pton(AF_INET, "192.0.2.9", &c->sin_addr);
    struct sockaddr_in *l = (struct sockaddr_in *)&t->local;
    l->sin_family = AF_INET;
    l->sin_port = htons(143);
    inet_pton(AF_INET, "192.0.2.1", &l->sin_addr);
    buf_init(&t->in, 4096);
    conn_init(&t->c, t->loop, -1, owner_handler, t, 512);
    t->c.rbuf = &t->in;
    backend_dial_init(&t->d, t->loop, &t->c, on_done, on_log, t);
    t->d.be = &t->be;
    t->d.state = t->st;
    t->d.fall = 2;
    t->d.client_sa = &t->client;
    t->d.local_sa = &t->local;
    t->d.connect_timeout = 5;
    t->d.tls_timeout = 5;
}

static void dial_run(struct dial_t *t)
{
    for (int i = 0; i < 200 && t->calls == 0; i++)
        ev_run(t->loop, EVRUN_ONCE);
    assert_int_equal(t->calls, 1);
}

static void dial_teardown(struct dial_t *t)
{
    backend_dial_cancel(&t->d);
    conn_close(&t->c);
    buf_free(&t->in);
    ev_loop_destroy(t->loop);
}

/* A listening loopback socket; its port in *port_r. */
static int listener(uint16_t *port_r)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port_r = ntohs(a.sin_port);
    return fd;
}

/* Connected with a PROXY header: ready for the greeting, the caller's handler, owner and
 * buffers back on the conn, reading off, health reset, and no callback from inside start. */
static void test_dial_ok_with_proxy_header(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = listener(&port);
    struct dial_t t;
    dial_setup(&t, port);
    t.be.proxy_protocol = true;
    atomic_store(&t.st->fails, 1);
    backend_dial_start(&t.d);
    assert_int_equal(t.calls, 0);
    dial_run(&t);
    assert_int_equal(t.d.result, BACKEND_DIAL_OK);
    assert_null(backend_dial_why(&t.d));
    assert_false(t.d.starttls);
    assert_true(t.d.connected_at > 0);
    assert_true(t.c.fd >= 0);
    assert_ptr_equal(t.c.handler, owner_handler);
    assert_ptr_equal(t.c.owner, &t);
    assert_ptr_equal(t.c.rbuf, &t.in);
    assert_int_equal(t.c.ctl.cap, 512);
    assert_false(t.c.reading);
    assert_int_equal(atomic_load(&t.st->fails), 0);
    assert_string_equal(t.log, "");
    int afd = accept(lfd, NULL, NULL);
    assert_true(afd >= 0);
    unsigned char h[64];
    ssize_t n = recv(afd, h, sizeof h, 0);
    assert_int_equal(n, 28);
    struct proxy_addrs pa;
    size_t used;
    const char *err;
    assert_int_equal(proxy_parse(h, (size_t)n, &used, &pa, &err), PROXY_DONE);
    assert_memory_equal(&((struct sockaddr_in *)&pa.src)->sin_addr,
                        &((struct sockaddr_in *)&t.client)->sin_addr, 4);
    assert_int_equal(((struct sockaddr_in *)&pa.dst)->sin_port, htons(143));
    close(afd);
    close(lfd);
    dial_teardown(&t);
}

/* Refused: classified as a connect failure, logged, counted in health (down after `fall`), the
 * conn closed; reported from the loop, never from inside start. */
static void test_dial_refused_counted(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = listener(&port);
    close(lfd); /* nobody listens there now */
    struct dial_t t;
    dial_setup(&t, port);
    for (int round = 1; round <= 2; round++) {
        t.calls = 0;
        backend_dial_start(&t.d);
        assert_int_equal(t.calls, 0);
        dial_run(&t);
        assert_int_equal(t.d.result, BACKEND_DIAL_CONNECT);
        assert_string_equal(backend_dial_why(&t.d), "cannot connect to backend");
        assert_int_equal(t.c.fd, -1);
        assert_ptr_equal(t.c.handler, owner_handler);
        assert_int_equal(atomic_load(&t.st->connect_failures), round);
        assert_int_equal(atomic_load(&t.st->up), round < 2); /* fall = 2 */
    }
    char want[128];
    snprintf(want, sizeof want, "event=backend_connect_failed backend=%s error=", t.name);
    assert_non_null(strstr(t.log, want));
    dial_teardown(&t);
}

/* Implicit TLS toward a peer that accepts and never answers: the handshake deadline, classified
 * as a TLS failure with its log line; the TCP connect itself counted as healthy. */
static void test_dial_tls_timeout(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = listener(&port);
    struct dial_t t;
    dial_setup(&t, port);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    t.be.tls = CFG_TLS_IMPLICIT;
    t.d.ctx = ctx;
    t.d.tls_timeout = 0.05;
    backend_dial_start(&t.d);
    assert_int_equal(t.calls, 0);
    dial_run(&t);
    assert_int_equal(t.d.result, BACKEND_DIAL_TLS);
    assert_string_equal(backend_dial_why(&t.d), "TLS to backend failed");
    assert_string_equal(t.d.err, "handshake timeout");
    assert_int_equal(t.c.fd, -1);
    assert_int_equal(atomic_load(&t.st->connect_failures), 0);
    char want[160];
    snprintf(want, sizeof want,
             "event=backend_tls_failed backend=%s error=\"handshake timeout\" verify=\"ok\"",
             t.name);
    assert_non_null(strstr(t.log, want));
    dial_teardown(&t);
    SSL_CTX_free(ctx);
    close(lfd);
}

/* Local causes: no TLS context for an implicit-TLS backend, STARTTLS on a closed conn, and a
 * failure the caller reports through the dialer; none counts against the backend. */
static void test_dial_local_failures(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = listener(&port);
    struct dial_t t;
    dial_setup(&t, port);
    t.be.tls = CFG_TLS_IMPLICIT; /* and d.ctx NULL */
    backend_dial_start(&t.d);
    dial_run(&t);
    assert_int_equal(t.d.result, BACKEND_DIAL_LOCAL);
    assert_string_equal(backend_dial_why(&t.d), "cannot set up TLS to backend");
    assert_int_equal(atomic_load(&t.st->connect_failures), 0);
    assert_non_null(strstr(t.log, "event=backend_error"));

    t.calls = 0;
    backend_dial_starttls(&t.d); /* the conn is closed now */
    assert_int_equal(t.calls, 0);
    dial_run(&t);
    assert_int_equal(t.d.result, BACKEND_DIAL_LOCAL);
    assert_true(t.d.starttls);

    t.calls = 0;
    backend_dial_fail(&t.d, BACKEND_DIAL_LOCAL, "no backend available");
    assert_int_equal(t.calls, 0);
    dial_run(&t);
    assert_string_equal(backend_dial_why(&t.d), "no backend available");
    assert_false(t.d.starttls);
    dial_teardown(&t);
    close(lfd);
}

/* Cancelled: no callback ever, the caller's handler back on the conn. */
static void test_dial_cancel(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = listener(&port);
    struct dial_t t;
    dial_setup(&t, port);
    backend_dial_start(&t.d);
    assert_ptr_not_equal(t.c.handler, owner_handler);
    backend_dial_cancel(&t.d);
    backend_dial_cancel(&t.d); /* idempotent */
    assert_ptr_equal(t.c.handler, owner_handler);
    conn_close(&t.c);
    for (int i = 0; i < 5; i++)
        ev_run(t.loop, EVRUN_NOWAIT);
    assert_int_equal(t.calls, 0);
    struct backend_dial zero = {0};
    backend_dial_cancel(&zero); /* a zeroed dialer is idle */
    dial_teardown(&t);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rendezvous_stable_and_minimal),
        cmocka_unit_test(test_rendezvous_weights),
        cmocka_unit_test(test_rendezvous_health),
        cmocka_unit_test(test_candidates_order),
        cmocka_unit_test(test_proxy_v1),
        cmocka_unit_test(test_proxy_v2_roundtrip),
        cmocka_unit_test(test_cidrs),
        cmocka_unit_test(test_dial_proxy_v2_on_socketpair),
        cmocka_unit_test(test_dial_ok_with_proxy_header),
        cmocka_unit_test(test_dial_refused_counted),
        cmocka_unit_test(test_dial_tls_timeout),
        cmocka_unit_test(test_dial_local_failures),
        cmocka_unit_test(test_dial_cancel),
    };
    return cmocka_run_group_tests_name("backend", tests, NULL, NULL);
}
