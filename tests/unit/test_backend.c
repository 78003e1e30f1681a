/* Unit tests for backend selection (weighted rendezvous hashing), the PROXY protocol parser and
 * builder, and CIDR lists. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    };
    return cmocka_run_group_tests_name("backend", tests, NULL, NULL);
}
