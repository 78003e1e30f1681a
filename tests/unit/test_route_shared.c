/* Unit tests for the shared level of the routing cache (issue 17 item 2): the stored value
 * (route_shared.c: round trips, strict decoding, what is never stored), the key (digest of the
 * lookup configuration, case folding, long users), and the chain with two workers' chains
 * sharing one in-memory store that counts GET and SET: cold GET + SET, warm in another worker
 * GET only, warm in the same worker nothing; errors, credentials and answers a non-cacheable
 * source took part in are never stored; a slow or absent store is a miss; a stored answer this
 * configuration could not give is a miss. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "config.h"
#include "route_chain.h"
#include "route_maps.h"
#include "route_shared.h"

#include "route_fake.c"

static struct config *load_cfg(const char *routing_extra, const char *policy)
{
    char text[2048];
    snprintf(text, sizeof text,
             "listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: none }\n"
             "backends:\n  - { name: b1, host: 127.0.0.1, port: 10143 }\n"
             "%s"
             "routing:\n  negative_ttl: 30s\n  cache_ttl: 5m\n  shared_cache_timeout: 50ms\n%s"
             "  lookups:\n"
             "    - { name: users, type: map, file: %s }\n"
             "    - { name: dir, type: map, file: %s, timeout: 300ms }\n"
             "    - { name: last, type: map, file: %s }\n",
             policy, routing_extra, map_path, map_path, map_path);
    char *err = NULL;
    struct config *c = cfg_load_string(text, strlen(text), "t.yaml", &err);
    if (!c)
        fail_msg("config: %s", err);
    return c;
}

/* ---- the value ---------------------------------------------------------------------------- */

static void test_value_roundtrip(void **state)
{
    (void)state;
    char v[ROUTE_SHARED_VAL_MAX];
    struct route_shared_entry e;
    struct route_target pool = {.text = "b1", .pool = true};
    struct route_answer a = {
        .status = ROUTE_FOUND, .source = "dir", .rule = "uid=a b%c", .target = &pool};
    size_t n = route_shared_encode(&a, 1700000000123, v, sizeof v);
    assert_string_equal(v, "v1 F 1700000000123 dir uid=a%20b%25c p b1");
    assert_int_equal(n, strlen(v));
    assert_true(route_shared_decode(v, n, &e));
    assert_int_equal(e.status, ROUTE_FOUND);
    assert_int_equal(e.expires_ms, 1700000000123);
    assert_string_equal(e.source, "dir");
    assert_string_equal(e.rule, "uid=a b%c");
    assert_true(e.target.pool);
    assert_string_equal(e.target.text, "b1");
    struct route_answer back;
    route_shared_answer(&e, &back);
    assert_true(back.cached && back.shared);
    assert_string_equal(back.target->text, "b1");

    /* A dynamic backend carries its resolved address: the reader resolves nothing. */
    struct route_target dyn = {.text = "mail3.example:1143", .host = "mail3.example", .port = 1143};
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&dyn.addr;
    s6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::7", &s6->sin6_addr);
    dyn.addrlen = sizeof *s6;
    a.target = &dyn;
    a.rule = "";
    n = route_shared_encode(&a, 5, v, sizeof v);
    assert_string_equal(v, "v1 F 5 dir % d mail3.example:1143 mail3.example 1143 2001:db8::7");
    assert_true(route_shared_decode(v, n, &e));
    assert_false(e.target.pool);
    assert_string_equal(e.rule, "");
    assert_string_equal(e.target.host, "mail3.example");
    assert_int_equal(e.target.port, 1143);
    assert_int_equal(e.target.addrlen, sizeof(struct sockaddr_in6));
    assert_memory_equal(&((struct sockaddr_in6 *)&e.target.addr)->sin6_addr, &s6->sin6_addr, 16);

    struct route_answer none = {.status = ROUTE_NOT_FOUND, .source = "", .rule = "none"};
    n = route_shared_encode(&none, 9, v, sizeof v);
    assert_string_equal(v, "v1 N 9 % none");
    assert_true(route_shared_decode(v, n, &e));
    assert_int_equal(e.status, ROUTE_NOT_FOUND);

    /* Never stored: errors, other statuses, credentials, an unresolved host, no room. */
    struct route_answer err = {.status = ROUTE_ERROR, .source = "dir", .reason = "down"};
    assert_int_equal(route_shared_encode(&err, 9, v, sizeof v), 0);
    struct route_answer other = {.status = (enum route_status)7, .source = "dir", .rule = "x"};
    assert_int_equal(route_shared_encode(&other, 9, v, sizeof v), 0);
    struct route_answer creds = {.status = ROUTE_FOUND,
                                 .source = "dir",
                                 .rule = "x",
                                 .target = &pool,
                                 .user = "master",
                                 .pass = "secret"};
    assert_int_equal(route_shared_encode(&creds, 9, v, sizeof v), 0);
    struct route_target unresolved = {.text = "h", .host = "h"};
    a.target = &unresolved;
    assert_int_equal(route_shared_encode(&a, 9, v, sizeof v), 0);
    a.target = &pool;
    assert_int_equal(route_shared_encode(&a, 9, v, 10), 0);

    /* Strict decoding: anything odd is a miss. */
    static const char *bad[] = {
        "",
        "v1",
        "v2 N 9 % none",
        "v1 X 9 % none",
        "v1 N 9 % none ",
        "v1 N 9 % none extra",
        "v1 N -9 % none",
        "v1 N 9x % none",
        "v1 N 9  none",
        "v1 F 9 dir r",
        "v1 F 9 dir r q b1",
        "v1 F 9 dir r p b1 extra",
        "v1 F 9 dir r d h h 70000 10.0.0.1",
        "v1 F 9 dir r d h h 143 not-an-address",
        "v1 F 9 dir r d h h 143",
        "v1 F 9 dir r%2 p b1",
        "v1 F 9 dir r%00 p b1",
        "v1 F 9 dir r\tx p b1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (route_shared_decode(bad[i], strlen(bad[i]), &e))
            fail_msg("accepted \"%s\"", bad[i]);
}

/* ---- the key ------------------------------------------------------------------------------ */

static void test_key_digest(void **state)
{
    (void)state;
    struct config *a = load_cfg("", ""), *b = load_cfg("", "");
    char sa[ROUTE_SHARED_SUFFIX_MAX], sb[ROUTE_SHARED_SUFFIX_MAX];
    route_shared_suffix(a, sa);
    route_shared_suffix(b, sb);
    assert_int_equal(strlen(sa), 1 + ROUTE_SHARED_DIGEST_HEX);
    assert_int_equal(sa[0], ':');
    assert_string_equal(sa, sb); /* the same lookups: every instance finds the same entries */
    /* Keys outside the lookups do not matter... */
    struct config *c = load_cfg("  cache_entries: 5\n", "");
    route_shared_suffix(c, sb);
    assert_string_equal(sa, sb);
    cfg_unref(&c);
    /* ... any lookup setting does, and so does case folding. */
    c = load_cfg("", "");
    c->routing.lookups[1].timeout_ms = 301;
    route_shared_suffix(c, sb);
    assert_string_not_equal(sa, sb);
    cfg_unref(&c);
    c = load_cfg("", "policy:\n  user_case_insensitive: false\n");
    route_shared_suffix(c, sb);
    assert_string_not_equal(sa, sb);

    char tag[ROUTE_SHARED_TAG_MAX];
    assert_true(route_shared_tag(a, "Alice@Example.COM", tag));
    assert_string_equal(tag, "alice@example.com");
    assert_true(route_shared_tag(c, "Alice {x}", tag)); /* not folded; braces escaped */
    assert_string_equal(tag, "Alice%20%7Bx%7D");
    char longu[400];
    memset(longu, 'a', sizeof longu - 1);
    longu[sizeof longu - 1] = '\0';
    assert_false(route_shared_tag(a, longu, tag)); /* would be cut: never shared */
    cfg_unref(&a);
    cfg_unref(&b);
    cfg_unref(&c);
}

/* ---- the chain with a shared store -------------------------------------------------------- */

/* An in-memory store standing in for Redis: answers from the loop after `delay`, counts. */
#define STORE_MAX 16
struct store {
    struct ev_loop *loop;
    int gets, puts, cancels;
    bool down;    /* get() answers NULL at once (not connected) */
    double delay; /* answer after this long */
    struct {
        char key[ROUTE_SHARED_TAG_MAX + ROUTE_SHARED_SUFFIX_MAX];
        char val[ROUTE_SHARED_VAL_MAX];
        uint64_t ttl_ms;
    } e[STORE_MAX];
    size_t n;
    uint64_t last_ttl_ms;
};

struct store_get {
    ev_timer t;
    struct store *st;
    char key[ROUTE_SHARED_TAG_MAX + ROUTE_SHARED_SUFFIX_MAX];
    route_shared_got_fn *cb;
    void *arg;
};

static int store_find(const struct store *st, const char *key)
{
    for (size_t i = 0; i < st->n; i++)
        if (strcmp(st->e[i].key, key) == 0)
            return (int)i;
    return -1;
}

static void store_fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct store_get *g = t->data;
    int i = store_find(g->st, g->key);
    if (i >= 0)
        g->cb(g->arg, g->st->e[i].val, strlen(g->st->e[i].val));
    else
        g->cb(g->arg, NULL, 0);
    free(g);
}

static void *store_get(void *ctx, const char *tag, const char *suffix, route_shared_got_fn *cb,
                       void *arg)
{
    struct store *st = ctx;
    if (st->down)
        return NULL;
    st->gets++;
    struct store_get *g = calloc(1, sizeof *g);
    g->st = st;
    g->cb = cb;
    g->arg = arg;
    snprintf(g->key, sizeof g->key, "%s%s", tag, suffix);
    ev_timer_init(&g->t, store_fire, st->delay, 0.);
    g->t.data = g;
    ev_timer_start(st->loop, &g->t);
    return g;
}

static void store_cancel(void *ctx, void *h)
{
    struct store *st = ctx;
    struct store_get *g = h;
    st->cancels++;
    ev_timer_stop(st->loop, &g->t);
    free(g);
}

static void store_put(void *ctx, const char *tag, const char *suffix, const char *val, size_t len,
                      uint64_t ttl_ms)
{
    struct store *st = ctx;
    st->puts++;
    st->last_ttl_ms = ttl_ms;
    char key[sizeof st->e[0].key];
    snprintf(key, sizeof key, "%s%s", tag, suffix);
    int i = store_find(st, key);
    if (i < 0) {
        assert_true(st->n < STORE_MAX);
        i = (int)st->n++;
    }
    snprintf(st->e[i].key, sizeof st->e[i].key, "%s", key);
    snprintf(st->e[i].val, sizeof st->e[i].val, "%.*s", (int)len, val);
    st->e[i].ttl_ms = ttl_ms;
}

static const struct route_shared_ops store_ops = {
    .get = store_get, .cancel = store_cancel, .put = store_put};

struct got {
    int calls;
    enum route_status status;
    bool cached, shared;
    char source[32];
};

static void on_answer(void *arg, const struct route_answer *a)
{
    struct got *g = arg;
    g->calls++;
    g->status = a->status;
    g->cached = a->cached;
    g->shared = a->shared;
    snprintf(g->source, sizeof g->source, "%s", a->source);
}

/* Look `user` up on `c` and run the loop until answered; returns 1 if answered at once. */
static int ask(struct route_chain *c, const char *user, struct got *g)
{
    struct route_query q = {.user = user, .proto = CFG_PROTO_IMAP, .client_ip = "192.0.2.1"};
    struct route_answer a;
    struct route_chain_req *req = NULL;
    int rc = route_chain_lookup(c, &q, &a, &req, on_answer, g);
    if (rc == 1)
        on_answer(g, &a);
    else
        ev_run(EV_DEFAULT, 0);
    return rc;
}

/* Two workers' chains over the same configuration: [users (map), dir (cacheable), last]. */
struct two {
    struct config *cfg;
    struct route_chain *w1, *w2;
    struct fake_source *dir1, *dir2;
    struct store st;
};

static void two_init(struct two *t, const char *routing_extra)
{
    t->cfg = load_cfg(routing_extra, "");
    char *err = NULL;
    assert_true(route_maps_load(t->cfg, &err)); /* the map knows alice only */
    t->st = (struct store){.loop = EV_DEFAULT};
    t->w1 = route_chain_new(EV_DEFAULT, t->cfg);
    t->w2 = route_chain_new(EV_DEFAULT, t->cfg);
    t->dir1 = fake_at(t->w1, t->cfg, 1, &fake_cacheable_ops, 0.005, ROUTE_FOUND);
    t->dir2 = fake_at(t->w2, t->cfg, 1, &fake_cacheable_ops, 0.005, ROUTE_FOUND);
    route_chain_set_shared(t->w1, &store_ops, &t->st);
    route_chain_set_shared(t->w2, &store_ops, &t->st);
}

static void two_done(struct two *t)
{
    route_chain_release(&t->w1);
    route_chain_release(&t->w2);
    cfg_unref(&t->cfg);
    route_maps_stop();
}

static void test_chain_shared_levels(void **state)
{
    (void)state;
    struct two t;
    two_init(&t, "");
    struct got g = {0};

    /* Cold: the worker misses, the store misses (GET), the source answers, SET with cache_ttl. */
    assert_int_equal(ask(t.w1, "bob", &g), 0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_false(g.cached);
    assert_int_equal(t.st.gets, 1);
    assert_int_equal(t.st.puts, 1);
    assert_int_equal(t.st.last_ttl_ms, 5 * 60 * 1000);
    assert_int_equal(t.dir1->started, 1);
    assert_non_null(strstr(t.st.e[0].val, "v1 F "));
    assert_non_null(strstr(t.st.e[0].val, " dir fake p b1"));
    /* Warm in the same worker: nothing at all goes to the store. */
    assert_int_equal(ask(t.w1, "BOB", &g), 1);
    assert_true(g.cached);
    assert_false(g.shared);
    assert_int_equal(t.st.gets, 1);
    assert_int_equal(t.st.puts, 1);
    /* Warm in another worker (or instance): one GET, a hit, the source is not asked. */
    assert_int_equal(ask(t.w2, "bob", &g), 0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_true(g.cached);
    assert_true(g.shared);
    assert_string_equal(g.source, "dir");
    assert_int_equal(t.st.gets, 2);
    assert_int_equal(t.st.puts, 1);
    assert_int_equal(t.dir2->started, 0);
    /* ... and that worker keeps it too. */
    assert_int_equal(ask(t.w2, "bob", &g), 1);
    assert_int_equal(t.st.gets, 2);

    /* A user the map knows never reaches the cacheable source: no GET. */
    assert_int_equal(ask(t.w1, "alice", &g), 1);
    assert_string_equal(g.source, "users");
    assert_int_equal(t.st.gets, 2);

    /* Not found by dir, then by the map `last`: the map took part (its table could change on
     * one instance only), so the answer stays in the worker. */
    t.dir1->status = ROUTE_NOT_FOUND;
    assert_int_equal(ask(t.w1, "cleo", &g), 0);
    assert_int_equal(g.status, ROUTE_NOT_FOUND);
    assert_int_equal(t.st.puts, 1);
    /* Not found by cacheable sources only: stored with negative_ttl, reused elsewhere. */
    fake_at(t.w1, t.cfg, 2, &fake_cacheable_ops, 0.005, ROUTE_NOT_FOUND);
    fake_at(t.w2, t.cfg, 2, &fake_cacheable_ops, 0.005, ROUTE_NOT_FOUND);
    assert_int_equal(ask(t.w1, "carol", &g), 0);
    assert_int_equal(g.status, ROUTE_NOT_FOUND);
    assert_int_equal(t.st.puts, 2);
    assert_int_equal(t.st.last_ttl_ms, 30 * 1000);
    assert_int_equal(ask(t.w2, "carol", &g), 0);
    assert_int_equal(g.status, ROUTE_NOT_FOUND);
    assert_true(g.shared);

    /* Errors and answers with credentials are never stored. */
    t.dir1->status = ROUTE_ERROR;
    assert_int_equal(ask(t.w1, "dave", &g), 0);
    assert_int_equal(g.status, ROUTE_ERROR);
    t.dir1->status = ROUTE_FOUND;
    t.dir1->creds = true;
    assert_int_equal(ask(t.w1, "erin", &g), 0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_int_equal(t.st.puts, 2);
    t.dir1->creds = false;

    /* Store down: the source is asked at once, no wait. */
    t.st.down = true;
    assert_int_equal(ask(t.w1, "frank", &g), 0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_false(g.cached);
    t.st.down = false;

    /* Store slower than shared_cache_timeout (50 ms): a miss, the GET is cancelled, the source
     * answers. */
    t.st.delay = 2.0;
    int started = t.dir1->started;
    ev_tstamp t0 = ev_time();
    assert_int_equal(ask(t.w1, "gina", &g), 0);
    assert_true(ev_time() - t0 < 1.0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_false(g.shared);
    assert_int_equal(t.dir1->started, started + 1);
    assert_int_equal(t.st.cancels, 1);
    t.st.delay = 0;

    /* Cancelled by its session while the GET is pending: no callback, the GET cancelled. */
    struct route_query q = {.user = "hank", .proto = CFG_PROTO_IMAP, .client_ip = "192.0.2.1"};
    struct route_answer a;
    struct route_chain_req *req = NULL;
    int calls = g.calls;
    assert_int_equal(route_chain_lookup(t.w1, &q, &a, &req, on_answer, &g), 0);
    route_chain_cancel(&req);
    ev_run(EV_DEFAULT, 0);
    assert_int_equal(g.calls, calls);
    assert_int_equal(t.st.cancels, 2);
    two_done(&t);
}

static void test_chain_shared_never_wrong(void **state)
{
    (void)state;
    struct two t;
    two_init(&t, "");
    struct got g = {0};
    /* [users, dir (cacheable), last (not cacheable)]: dir does not know ivy, `last` does. The
     * answer involves a source whose data another instance could not flush: worker only. */
    struct fake_source *last = fake_at(t.w1, t.cfg, 2, &fake_uncached_ops, 0.005, ROUTE_FOUND);
    t.dir1->status = ROUTE_NOT_FOUND;
    assert_int_equal(ask(t.w1, "ivy", &g), 0);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_string_equal(g.source, "last");
    assert_int_equal(last->started, 1);
    assert_int_equal(t.st.puts, 0);
    assert_int_equal(ask(t.w1, "ivy", &g), 1); /* the worker cache still has it */
    assert_true(g.cached);

    /* A stored answer this configuration cannot give is a miss: a pool entry not in the pool,
     * a lookup name it does not have, an expired entry, garbage. */
    char tag[ROUTE_SHARED_TAG_MAX], suffix[ROUTE_SHARED_SUFFIX_MAX];
    route_shared_suffix(t.cfg, suffix);
    static const char *users[] = {"jo", "kim", "lee", "max"};
    static const char *vals[] = {"v1 F 99999999999999 dir fake p gone",
                                 "v1 F 99999999999999 ldap x p b1", "v1 N 1 dir x", "garbage"};
    for (size_t i = 0; i < 4; i++) {
        assert_true(route_shared_tag(t.cfg, users[i], tag));
        store_put(&t.st, tag, suffix, vals[i], strlen(vals[i]), 1000);
        int started = t.dir2->started;
        assert_int_equal(ask(t.w2, users[i], &g), 0);
        assert_false(g.shared);
        assert_int_equal(g.status, ROUTE_FOUND);
        assert_int_equal(t.dir2->started, started + 1);
    }
    two_done(&t);

    /* routing.shared_cache: false — the store is never asked. */
    two_init(&t, "  shared_cache: false\n");
    assert_int_equal(ask(t.w1, "bob", &g), 0);
    assert_int_equal(t.st.gets + t.st.puts, 0);
    two_done(&t);
}

static int setup(void **state)
{
    (void)state;
    fake_map_create("test_route_shared", "alice b1\n");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_value_roundtrip),
        cmocka_unit_test_setup_teardown(test_key_digest, setup, fake_map_teardown),
        cmocka_unit_test_setup_teardown(test_chain_shared_levels, setup, fake_map_teardown),
        cmocka_unit_test_setup_teardown(test_chain_shared_never_wrong, setup, fake_map_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
