/* Unit tests for the routing lookups (issue 17): the map-file parser and table (precedence,
 * case folding, every error with FILE:LINE), binding targets to pool entries or host:port, the
 * per-worker LRU cache (capacity, TTL), and the chain driven by a scripted asynchronous source
 * on a real libev loop (answers from the loop, timeout, cancel, positive and negative caching,
 * errors never cached, the map published by route_maps and swapped under the chain). */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "route_cache.h"
#include "route_chain.h"
#include "route_explain.h"
#include "route_ldap.h"
#include "route_map.h"
#include "route_maps.h"
#include "route_resolve.h"

#include "route_fake.c"

static const struct route_map_limits LIM = {
    .max_size = 1 << 20, .max_entries = 100, .max_targets = 8, .fold_case = true};

static struct route_map *parse(const char *text, const struct route_map_limits *lim, char **err)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    memcpy(buf, text, n + 1);
    return route_map_parse(buf, n, "t.map", lim ? lim : &LIM, err);
}

static const char *lookup(const struct route_map *m, const char *user, const char **rule)
{
    const struct route_target *t = route_map_lookup(m, user, rule);
    return t ? t->text : NULL;
}

/* ---- the map ----------------------------------------------------------------------------- */

static void test_map_precedence(void **state)
{
    (void)state;
    char *err = NULL;
    struct route_map *m = parse("# comment\n"
                                "\n"
                                "alice@Example.COM   b1\r\n"
                                "  @example.com\tb2  \n"
                                "carol b3\n"
                                "*  10.0.0.9:1143\n"
                                "@other.test [::1]:993",
                                NULL, &err);
    assert_null(err);
    assert_non_null(m);
    assert_int_equal(m->nentries, 4);
    assert_int_equal(m->ntargets, 5);
    const char *rule;
    assert_string_equal(lookup(m, "alice@example.com", &rule), "b1");
    assert_string_equal(rule, "user");
    assert_string_equal(lookup(m, "ALICE@example.com", &rule), "b1"); /* folded */
    assert_string_equal(lookup(m, "bob@EXAMPLE.com", &rule), "b2");
    assert_string_equal(rule, "domain");
    assert_string_equal(lookup(m, "carol", &rule), "b3");
    assert_string_equal(lookup(m, "dave", &rule), "10.0.0.9:1143");
    assert_string_equal(rule, "default");
    assert_string_equal(lookup(m, "x@other.test", NULL), "[::1]:993");
    /* A user name never matches a domain entry exactly; the last @ picks the domain. */
    assert_string_equal(lookup(m, "@example.com", &rule), "b2");
    assert_string_equal(lookup(m, "a@b@example.com", &rule), "b2");
    assert_string_equal(lookup(m, "", &rule), "10.0.0.9:1143");
    route_map_unref(&m);
    assert_null(m);

    /* Case-sensitive maps keep case; no `*`: unknown users are not found. */
    struct route_map_limits cs = LIM;
    cs.fold_case = false;
    m = parse("Alice b1\n", &cs, &err);
    assert_non_null(m);
    assert_string_equal(lookup(m, "Alice", NULL), "b1");
    assert_null(lookup(m, "alice", &rule));
    assert_null(rule);
    route_map_unref(&m);
}

static void expect_error(const char *text, const struct route_map_limits *lim, const char *want)
{
    char *err = NULL;
    struct route_map *m = parse(text, lim, &err);
    assert_null(m);
    assert_non_null(err);
    if (!strstr(err, want))
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
    free(err);
}

static void test_map_errors(void **state)
{
    (void)state;
    expect_error("a b1\nb\n", NULL, "t.map:2: expected \"USER BACKEND\"");
    expect_error("a b1 c\n", NULL, "t.map:1: unexpected text after the backend");
    expect_error("\n\nA b1\na b2\n", NULL, "t.map:4: duplicate entry \"a\"");
    expect_error("* b1\n* b2\n", NULL, "t.map:2: duplicate entry \"*\"");
    expect_error("@a@b b1\n", NULL, "t.map:1: invalid user or @domain");
    expect_error("@ b1\n", NULL, "t.map:1: invalid user or @domain");
    expect_error("a b/1\n", NULL, "t.map:1: invalid backend");
    expect_error("a\x01 b1\n", NULL, "t.map:1: invalid user");
    char nul[] = "a b1\nc\0d b2\n";
    char *buf = malloc(sizeof nul);
    memcpy(buf, nul, sizeof nul);
    char *err = NULL;
    assert_null(route_map_parse(buf, sizeof nul - 1, "t.map", &LIM, &err));
    assert_non_null(strstr(err, "t.map:2: NUL byte"));
    free(err);
    struct route_map_limits small = LIM;
    small.max_entries = 2;
    expect_error("a x\nb x\nc x\n", &small, "t.map:3: more than 2 entries");
    small.max_targets = 2;
    expect_error("a x\nb y\nc z\n", &small, "t.map:3: more than 2 distinct backends");
    small.max_size = 4;
    expect_error("a x\nb y\n", &small, "larger than 4 bytes");
    char long_user[400];
    memset(long_user, 'u', 300);
    strcpy(long_user + 300, " b1\n");
    expect_error(long_user, NULL, "t.map:1: invalid user");
}

static struct config *load_cfg(const char *extra)
{
    char text[2048];
    snprintf(text, sizeof text,
             "listeners:\n  - { name: imap, bind: \"127.0.0.1:143\", tls: none }\n"
             "  - { name: pop3, bind: \"127.0.0.1:110\", tls: none, protocol: pop3 }\n"
             "backends:\n  - { name: b1, host: 127.0.0.1, port: 10143 }\n"
             "  - { name: b1-pop3, server: b1, host: 127.0.0.1, port: 10110, protocol: pop3 }\n"
             "%s",
             extra);
    char *err = NULL;
    struct config *c = cfg_load_string(text, strlen(text), "t.yaml", &err);
    if (!c)
        fail_msg("config: %s", err);
    return c;
}

static void test_map_bind(void **state)
{
    (void)state;
    struct config *cfg = load_cfg("");
    char *err = NULL;
    struct route_map *m = parse("a b1\nb 192.0.2.7\nc 192.0.2.8:1143\nd [2001:db8::1]:993\n"
                                "e 2001:db8::2\n",
                                NULL, &err);
    assert_non_null(m);
    assert_true(route_map_bind(m, cfg, &err));
    const struct route_target *t = route_map_lookup(m, "a", NULL);
    assert_true(t->pool);
    t = route_map_lookup(m, "b", NULL);
    assert_false(t->pool);
    assert_string_equal(t->host, "192.0.2.7");
    assert_int_equal(t->port, 0);
    assert_int_equal(t->addr.ss_family, AF_INET);
    t = route_map_lookup(m, "c", NULL);
    assert_int_equal(t->port, 1143);
    t = route_map_lookup(m, "d", NULL);
    assert_string_equal(t->host, "2001:db8::1");
    assert_int_equal(t->port, 993);
    assert_int_equal(t->addr.ss_family, AF_INET6);
    t = route_map_lookup(m, "e", NULL);
    assert_string_equal(t->host, "2001:db8::2");
    assert_int_equal(t->port, 0);
    route_map_unref(&m);

    static const char *bad[] = {"x 192.0.2.1:0\n", "x 192.0.2.1:70000\n", "x [::1\n", "x [::1]x\n",
                                "x a:b\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = parse(bad[i], NULL, &err);
        assert_non_null(m);
        assert_false(route_map_bind(m, cfg, &err));
        if (!strstr(err, "t.map:1: backend"))
            fail_msg("%s: %s", bad[i], err);
        free(err);
        route_map_unref(&m);
    }
    cfg_unref(&cfg);
}

/* ---- the cache --------------------------------------------------------------------------- */

static void test_cache_lru_ttl(void **state)
{
    (void)state;
    struct route_cache *c = route_cache_new(2, true);
    struct route_target t = {.text = "b1", .pool = true};
    struct route_answer found = {
        .status = ROUTE_FOUND, .source = "m", .rule = "user", .target = &t};
    struct route_answer none = {.status = ROUTE_NOT_FOUND, .source = "", .rule = "none"};
    struct route_answer err = {.status = ROUTE_ERROR, .source = "m", .reason = "down"};
    struct route_answer a;
    route_cache_put(c, "Alice", &found, 0, 10);
    route_cache_put(c, "bob", &none, 0, 1);
    route_cache_put(c, "eve", &err, 0, 10); /* errors are never kept */
    assert_int_equal(route_cache_size(c), 2);
    assert_true(route_cache_get(c, "alice", 5, &a)); /* folded; now most recent */
    assert_int_equal(a.status, ROUTE_FOUND);
    assert_true(a.cached);
    assert_string_equal(a.target->text, "b1");
    assert_true(a.target->pool);
    assert_false(route_cache_get(c, "bob", 1, &a)); /* expired: dropped */
    assert_int_equal(route_cache_size(c), 1);
    route_cache_put(c, "carol", &none, 5, 10);
    route_cache_put(c, "dave", &none, 5, 10); /* full: evicts the least recent (alice) */
    assert_false(route_cache_get(c, "alice", 6, &a));
    assert_true(route_cache_get(c, "carol", 6, &a));
    assert_int_equal(a.status, ROUTE_NOT_FOUND);
    route_cache_flush(c);
    assert_int_equal(route_cache_size(c), 0);
    route_cache_free(&c);
    assert_null(c);
    assert_null(route_cache_new(0, true)); /* no cache */
}

/* ---- the chain, with a scripted asynchronous source -------------------------------------- */

struct got {
    int calls;
    enum route_status status;
    char text[64];
    char reason[64];
    bool cached;
};

static void on_answer(void *arg, const struct route_answer *a)
{
    struct got *g = arg;
    g->calls++;
    g->status = a->status;
    g->cached = a->cached;
    snprintf(g->text, sizeof g->text, "%s", a->target ? a->target->text : "");
    snprintf(g->reason, sizeof g->reason, "%s", a->reason ? a->reason : "");
}

static struct config *chain_cfg(void)
{
    char extra[512];
    snprintf(extra, sizeof extra,
             "routing:\n  negative_ttl: 200ms\n  lookups:\n"
             "    - { name: users, type: map, file: %s }\n"
             "    - { name: dir, type: map, file: %s, timeout: 100ms }\n",
             map_path, map_path);
    return load_cfg(extra);
}

static int lookup_now(struct route_chain *c, const char *user, struct route_answer *a,
                      struct route_chain_req **req, struct got *g)
{
    struct route_query q = {.user = user, .proto = CFG_PROTO_IMAP, .client_ip = "192.0.2.1"};
    return route_chain_lookup(c, &q, a, req, on_answer, g);
}

static void test_chain_async_cache_timeout(void **state)
{
    (void)state;
    struct ev_loop *loop = EV_DEFAULT;
    struct config *cfg = chain_cfg();
    char *err = NULL;
    assert_true(route_maps_load(cfg, &err)); /* map: "alice b1", "@corp.test 192.0.2.5" */
    struct route_chain *c = route_chain_new(loop, cfg);
    assert_non_null(c);
    struct fake_source *fs = fake_at(c, cfg, 1, &fake_cacheable_ops, 0.01, ROUTE_FOUND);
    struct route_answer a;
    struct route_chain_req *req = NULL;
    struct got g = {0};

    /* The map knows alice: answered at once, the async source is not asked. */
    assert_int_equal(lookup_now(c, "alice", &a, &req, &g), 1);
    assert_int_equal(a.status, ROUTE_FOUND);
    assert_string_equal(a.source, "users");
    assert_string_equal(a.target->text, "b1");
    assert_int_equal(fs->started, 0);

    /* Unknown to the map: the async source answers from the loop, never before. */
    assert_int_equal(lookup_now(c, "bob", &a, &req, &g), 0);
    assert_non_null(req);
    assert_int_equal(g.calls, 0);
    ev_run(loop, 0);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.status, ROUTE_FOUND);
    assert_false(g.cached);
    /* ... and is cached: the second lookup is answered at once, without the source. */
    assert_int_equal(lookup_now(c, "BOB", &a, &req, &g), 1);
    assert_true(a.cached);
    assert_string_equal(a.target->text, "b1");
    assert_int_equal(fs->started, 1);

    /* Not found: cached for negative_ttl (200 ms) only. */
    fs->status = ROUTE_NOT_FOUND;
    assert_int_equal(lookup_now(c, "carol", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(g.status, ROUTE_NOT_FOUND);
    assert_int_equal(lookup_now(c, "carol", &a, &req, &g), 1);
    assert_int_equal(a.status, ROUTE_NOT_FOUND);
    usleep(250 * 1000);
    ev_now_update(loop);
    assert_int_equal(lookup_now(c, "carol", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(fs->started, 3);

    /* Errors are never cached. */
    fs->status = ROUTE_ERROR;
    assert_int_equal(lookup_now(c, "dave", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(g.status, ROUTE_ERROR);
    assert_string_equal(g.reason, "fake error");
    assert_int_equal(lookup_now(c, "dave", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(fs->started, 5);

    /* A source slower than its timeout (100 ms): cancelled, ERROR "timeout". */
    fs->delay = 5.0;
    int calls = g.calls;
    assert_int_equal(lookup_now(c, "erin", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(g.calls, calls + 1);
    assert_int_equal(g.status, ROUTE_ERROR);
    assert_string_equal(g.reason, "timeout");
    assert_int_equal(fs->cancelled, 1);

    /* Cancelled by its session: no callback, the source's request cancelled too. */
    assert_int_equal(lookup_now(c, "frank", &a, &req, &g), 0);
    route_chain_cancel(&req);
    assert_null(req);
    ev_run(loop, 0);
    assert_int_equal(g.calls, calls + 1);
    assert_int_equal(fs->cancelled, 2);

    /* The chain outlives the worker's reference while a request is pending. */
    fs->delay = 0.01;
    fs->status = ROUTE_FOUND;
    assert_int_equal(lookup_now(c, "gina", &a, &req, &g), 0);
    route_chain_release(&c);
    ev_run(loop, 0);
    assert_int_equal(g.calls, calls + 2);
    cfg_unref(&cfg);
    route_maps_stop();
}

static void test_chain_map_swap(void **state)
{
    (void)state;
    struct ev_loop *loop = EV_DEFAULT;
    struct config *cfg = chain_cfg();
    char *err = NULL;
    assert_true(route_maps_load(cfg, &err));
    struct route_chain *c = route_chain_new(loop, cfg);
    struct fake_source *fs = fake_at(c, cfg, 1, &fake_cacheable_ops, 0.01, ROUTE_NOT_FOUND);
    struct route_answer a;
    struct route_chain_req *req = NULL;
    struct got g = {0};
    assert_int_equal(lookup_now(c, "x@corp.test", &a, &req, &g), 1);
    assert_string_equal(a.rule, "domain");
    assert_false(a.target->pool);
    assert_string_equal(a.target->host, "192.0.2.5");
    /* Cached not-found from the async source... */
    assert_int_equal(lookup_now(c, "zed", &a, &req, &g), 0);
    ev_run(loop, 0);
    assert_int_equal(lookup_now(c, "zed", &a, &req, &g), 1);
    assert_true(a.cached);
    /* ... until a new map is published: the reload moves zed at once. */
    FILE *f = fopen(map_path, "w");
    fputs("zed b1\n", f);
    fclose(f);
    route_maps_reload(cfg);
    for (int i = 0; i < 200 && lookup_now(c, "zed", &a, &req, &g) == 1 && a.status != ROUTE_FOUND;
         i++)
        usleep(10 * 1000);
    assert_int_equal(a.status, ROUTE_FOUND);
    assert_false(a.cached);
    assert_string_equal(a.source, "users");
    /* A broken map on reload keeps the old one. */
    f = fopen(map_path, "w");
    fputs("zed\n", f);
    fclose(f);
    route_maps_reload(cfg);
    route_maps_stop(); /* waits for the loader; drops the tables */
    (void)fs;
    route_chain_release(&c);
    cfg_unref(&cfg);
}

/* auth_http (route_http.c): a refusal (REJECT) and an answer marked nocache are never cached,
 * even when a cacheable source took part in the walk: each login asks the service again. */
static void test_chain_reject_and_nocache_not_cached(void **state)
{
    (void)state;
    struct ev_loop *loop = EV_DEFAULT;
    struct config *cfg = chain_cfg();
    char *err = NULL;
    assert_true(route_maps_load(cfg, &err));
    struct route_chain *c = route_chain_new(loop, cfg);
    struct fake_source *fs = fake_at(c, cfg, 1, &fake_cacheable_ops, 0.001, ROUTE_REJECT);
    struct route_answer a;
    struct route_chain_req *req = NULL;
    struct got g = {0};
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(lookup_now(c, "mallory", &a, &req, &g), 0); /* asked each time */
        ev_run(loop, 0);
        assert_int_equal(g.status, ROUTE_REJECT);
        assert_int_equal(fs->started, i);
    }
    fs->status = ROUTE_FOUND;
    fs->nocache = true;
    for (int i = 3; i <= 4; i++) {
        assert_int_equal(lookup_now(c, "mallory", &a, &req, &g), 0);
        ev_run(loop, 0);
        assert_int_equal(g.status, ROUTE_FOUND);
        assert_int_equal(fs->started, i);
    }
    route_maps_stop();
    route_chain_release(&c);
    cfg_unref(&cfg);
}

/* `portcullis-ctl route show` with an http lookup: it cannot ask (no password) and says so,
 * instead of treating the lookup as a map file. */
static void test_explain_http_lookup(void **state)
{
    (void)state;
    struct config *cfg = load_cfg("routing:\n  on_error: refuse\n  lookups:\n"
                                  "    - { name: authsvc, type: http, url: \"http://a/auth\" }\n");
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    route_explain(f, cfg, "alice", NULL);
    fclose(f);
    assert_non_null(strstr(out, "lookup authsvc (http http://a/auth): asked at each login"));
    assert_non_null(strstr(out, "refused with NO [UNAVAILABLE] (routing.on_error: refuse)"));
    free(out);
    cfg_unref(&cfg);
}

static void test_chain_keeps_old_map_on_error(void **state)
{
    (void)state;
    FILE *f = fopen(map_path, "w");
    fputs("alice b1\n", f);
    fclose(f);
    struct config *cfg = chain_cfg();
    char *err = NULL;
    assert_true(route_maps_load(cfg, &err));
    f = fopen(map_path, "w");
    fputs("alice b1\nbroken\n", f);
    fclose(f);
    unsigned gen = route_maps_generation();
    route_maps_reload(cfg);
    while (route_maps_generation() == gen) /* prune() bumps it after the failed load */
        usleep(1000);
    struct route_map *m = route_maps_get("users");
    assert_non_null(m);
    assert_string_equal(lookup(m, "alice", NULL), "b1");
    route_map_unref(&m);
    /* Start-up refuses a bad map with FILE:LINE. */
    assert_false(route_maps_load(cfg, &err));
    assert_non_null(strstr(err, ":2: expected"));
    free(err);
    route_maps_stop();
    cfg_unref(&cfg);
}

static int setup(void **state)
{
    (void)state;
    fake_map_create("test_route", "alice b1\n@corp.test 192.0.2.5\n");
    return 0;
}

/* ---- the LDAP source (route_ldap.c) ------------------------------------------------------ */

/* An attribute value becomes a target as a map file's would, without DNS (on the loop). */
static void test_ldap_target(void **state)
{
    (void)state;
    struct config *cfg = load_cfg("");
    static const struct {
        const char *host;
        unsigned port;
        bool ok, pool;
        const char *text;
    } cases[] = {
        {"b1", 0, true, true, "b1"},
        {"10.0.0.7", 0, true, false, "10.0.0.7"},
        {"10.0.0.7", 1143, true, false, "10.0.0.7:1143"},
        {"2001:db8::7", 143, true, false, "[2001:db8::7]:143"},
        {"imap.example.test", 0, false, false, "imap.example.test"},
        {"localhost", 143, false, false, "localhost:143"}, /* a name: resolved off the loop */
        {"b1", 1143, false, false, "b1:1143"},             /* a pool entry has no port */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[300];
        struct route_target t;
        const char *why = NULL;
        bool ok = route_ldap_target(cfg, cases[i].host, cases[i].port, buf, sizeof buf, &t,
                                    AI_NUMERICHOST, &why) == 0;
        if (ok != cases[i].ok)
            fail_msg("%s:%u: %s", cases[i].host, cases[i].port, why ? why : "bound");
        assert_string_equal(t.text, cases[i].text);
        if (ok) {
            assert_int_equal(t.pool, cases[i].pool);
            assert_int_equal(t.port, cases[i].pool ? 0 : cases[i].port);
            assert_true(cases[i].pool || t.addrlen > 0);
        } else {
            assert_non_null(strstr(why, "not"));
        }
        free((char *)t.host);
    }
    cfg_unref(&cfg);
}

/* A directory that does not answer: the chain's lookup fails (never cached, never a crash),
 * also when the worker drops the chain while the lookup is pending (route_ldap.c defers the
 * pool's free out of ldaplookup's callback). */
static void test_ldap_source_down(void **state)
{
    (void)state;
    struct config *cfg =
        load_cfg("routing:\n  lookups:\n"
                 "    - { name: dir, type: ldap, uri: \"ldap://127.0.0.1:1\", base: dc=x,\n"
                 "        timeout: 150ms, connect_timeout: 100ms }\n");
    for (int drop = 0; drop < 2; drop++) {
        struct route_chain *c = route_chain_new(EV_DEFAULT, cfg);
        assert_non_null(c);
        struct route_answer a;
        struct route_chain_req *req = NULL;
        struct got g = {0};
        assert_int_equal(lookup_now(c, "alice", &a, &req, &g), 0);
        if (drop)
            route_chain_release(&c); /* the pending request keeps the chain alive */
        while (g.calls == 0)
            ev_run(EV_DEFAULT, EVRUN_ONCE);
        assert_int_equal(g.status, ROUTE_ERROR);
        assert_true(g.reason[0] != '\0');
        if (!drop) { /* errors are not cached: asked again, pending again */
            assert_int_equal(lookup_now(c, "alice", &a, &req, &g), 0);
            route_chain_cancel(&req);
            route_chain_release(&c);
        }
        /* Until nothing is active: a dropped source's deferred free has run. */
        ev_run(EV_DEFAULT, 0);
    }
    cfg_unref(&cfg);
}

/* ---- host names resolved off the loop (route_resolve.c) ---------------------------------- */

struct resolved {
    int calls;
    bool ok;
    char host[64];
    unsigned port;
    struct sockaddr_storage addr;
    char error[160];
};

static void on_resolved(void *arg, const struct route_target *t, const char *error)
{
    struct resolved *r = arg;
    r->calls++;
    r->ok = t != NULL;
    if (t) {
        snprintf(r->host, sizeof r->host, "%s", t->host);
        r->port = t->port;
        memcpy(&r->addr, &t->addr, t->addrlen);
    } else {
        snprintf(r->error, sizeof r->error, "%s", error ? error : "");
    }
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* Run the loop for `secs` or until *a (and *b when given) have been called. The resolver's
 * ev_async does not keep a loop alive: a ticking timer does. */
static void run_until(double secs, const struct resolved *a, const struct resolved *b)
{
    ev_timer tick;
    ev_timer_init(&tick, on_tick, 0.01, 0.01);
    ev_timer_start(EV_DEFAULT, &tick);
    double end = ev_time() + secs;
    while (ev_time() < end && !(a && a->calls && (!b || b->calls)))
        ev_run(EV_DEFAULT, EVRUN_ONCE);
    ev_timer_stop(EV_DEFAULT, &tick);
}

static void wait_no_resolver(void)
{
    for (int i = 0; i < 500 && route_resolve_live() != 0; i++)
        usleep(10000);
    assert_int_equal(route_resolve_live(), 0);
}

/* A name resolves to its address off the loop (route_map.c's resolution: the first address),
 * with the port of host:port; a name that cannot resolve answers getaddrinfo's reason. */
static void test_resolve_names(void **state)
{
    (void)state;
    struct route_resolver *r = route_resolver_new(EV_DEFAULT, 2, 8);
    assert_non_null(r);
    struct resolved lo = {0}, bad = {0};
    const char *err = NULL;
    struct route_resolve_req *q1 = route_resolve_start(r, "localhost:1143", on_resolved, &lo, &err);
    struct route_resolve_req *q2 =
        route_resolve_start(r, "nonexistent.invalid", on_resolved, &bad, &err);
    assert_non_null(q1);
    assert_non_null(q2);
    assert_int_equal(lo.calls + bad.calls, 0); /* never before returning */
    run_until(10., &lo, &bad);
    assert_int_equal(lo.calls, 1);
    assert_true(lo.ok);
    assert_string_equal(lo.host, "localhost");
    assert_int_equal(lo.port, 1143);
    if (lo.addr.ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)&lo.addr;
        assert_int_equal(ntohl(v4->sin_addr.s_addr), INADDR_LOOPBACK);
    } else {
        assert_int_equal(lo.addr.ss_family, AF_INET6);
    }
    assert_int_equal(bad.calls, 1);
    assert_false(bad.ok);
    assert_true(bad.error[0] != '\0');
    route_resolver_free(&r);
    assert_null(r);
    wait_no_resolver();
}

/* Cancelled requests never call back (queued, resolving or answered but not delivered); the
 * number pending is bounded; freeing the resolver with a name in flight never blocks, and its
 * thread frees everything once getaddrinfo returns. */
static void test_resolve_cancel_bound_free(void **state)
{
    (void)state;
    struct route_resolver *r = route_resolver_new(EV_DEFAULT, 1, 2);
    assert_non_null(r);
    struct resolved a = {0}, b = {0}, c = {0};
    const char *err = NULL;
    struct route_resolve_req *qa = route_resolve_start(r, "localhost", on_resolved, &a, &err);
    struct route_resolve_req *qb =
        route_resolve_start(r, "nonexistent.invalid", on_resolved, &b, &err);
    assert_non_null(qa);
    assert_non_null(qb);
    assert_null(route_resolve_start(r, "localhost", on_resolved, &c, &err));
    assert_non_null(strstr(err, "resolve_max_pending"));
    route_resolve_cancel(&qb);
    usleep(50000); /* qa is most likely answered by now, waiting for the loop */
    route_resolve_cancel(&qa);
    assert_null(qa);
    route_resolve_cancel(&qa); /* idempotent */
    run_until(0.2, NULL, NULL);
    assert_int_equal(a.calls + b.calls + c.calls, 0);
    /* Room again: a new request is taken, then dropped by the free while in flight. */
    assert_non_null(route_resolve_start(r, "nonexistent.invalid", on_resolved, &c, &err));
    double t0 = ev_time();
    route_resolver_free(&r);
    assert_true(ev_time() - t0 < 0.05);
    run_until(0.2, NULL, NULL);
    assert_int_equal(c.calls, 0);
    wait_no_resolver();
}

static atomic_int slow_entered;

/* A resolution that takes 300 ms: long enough to act on a request while it runs. */
static int slow_resolve(struct route_target *t, int ai_flags, const char **gai_error_r)
{
    atomic_fetch_add(&slow_entered, 1);
    usleep(300000);
    return route_target_resolve(t, ai_flags, gai_error_r);
}

static void wait_entered(int n)
{
    for (int i = 0; i < 500 && atomic_load(&slow_entered) < n; i++)
        usleep(2000);
    assert_int_equal(atomic_load(&slow_entered), n);
}

/* While a thread is inside getaddrinfo: a cancelled request never calls back (the thread frees
 * it), and freeing the resolver returns at once — the thread finishes, then frees it all (ASan
 * sees no leak and no use after free). */
static void test_resolve_cancel_while_resolving(void **state)
{
    (void)state;
    atomic_store(&slow_entered, 0);
    struct route_resolver *r = route_resolver_new(EV_DEFAULT, 1, 4);
    assert_non_null(r);
    route_resolver_set_impl(r, slow_resolve);
    struct resolved a = {0}, b = {0};
    const char *err = NULL;
    struct route_resolve_req *qa = route_resolve_start(r, "localhost", on_resolved, &a, &err);
    assert_non_null(qa);
    wait_entered(1);
    route_resolve_cancel(&qa);
    run_until(0.5, NULL, NULL);
    assert_int_equal(a.calls, 0);
    /* The same thread takes the next one; free while it resolves. */
    assert_non_null(route_resolve_start(r, "localhost", on_resolved, &b, &err));
    wait_entered(2);
    double t0 = ev_time();
    route_resolver_free(&r);
    assert_true(ev_time() - t0 < 0.1);
    assert_int_equal(route_resolve_live(), 1); /* still resolving */
    run_until(0.5, NULL, NULL);
    assert_int_equal(b.calls, 0);
    wait_no_resolver();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_precedence),
        cmocka_unit_test(test_resolve_names),
        cmocka_unit_test(test_resolve_cancel_bound_free),
        cmocka_unit_test(test_resolve_cancel_while_resolving),
        cmocka_unit_test(test_map_errors),
        cmocka_unit_test(test_map_bind),
        cmocka_unit_test(test_cache_lru_ttl),
        cmocka_unit_test_setup_teardown(test_chain_async_cache_timeout, setup, fake_map_teardown),
        cmocka_unit_test_setup_teardown(test_chain_map_swap, setup, fake_map_teardown),
        cmocka_unit_test_setup_teardown(test_chain_keeps_old_map_on_error, setup,
                                        fake_map_teardown),
        cmocka_unit_test(test_ldap_target),
        cmocka_unit_test(test_ldap_source_down),
        cmocka_unit_test_setup_teardown(test_chain_reject_and_nocache_not_cached, setup,
                                        fake_map_teardown),
        cmocka_unit_test(test_explain_http_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
