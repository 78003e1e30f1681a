/* Unit tests for authhttp: the auth_http response parser (OK, refusal, errors, limits, 1xx
 * blocks, byte-by-byte header splits) and nginx's escaping; and, when AH_LIVE_URL is set (by
 * tests/integration/test_authhttp.py, which runs a real HTTP responder), the asynchronous client
 * on a libev loop: answers, keep-alive, timeout, HTTP 500, connection refused, cancel.
 *
 *   build/tests/test_authhttp                         parser tests
 *   AH_LIVE_URL=http://127.0.0.1:P AH_LIVE_CASE=name   one live case (see live_cases below)
 *   AH_LIVE_CA=ca.pem                                  CA file for an https:// AH_LIVE_URL
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ev.h>

#include "authhttp.h"

/* Feed a whole response, split into lines at LF; returns the last ah_parse_line result. */
static int feed(struct ah_parse *p, const char *text)
{
    int rc = 0;
    const char *s = text;
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s + 1) : strlen(s);
        rc = ah_parse_line(p, s, len);
        if (rc != 0)
            return rc;
        s += len;
    }
    return rc;
}

static void parse_text(const char *text, struct ah_parse *p, struct ah_result *r)
{
    ah_parse_init(p, 0);
    feed(p, text);
    ah_parse_result(p, r);
}

static void test_ok(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    parse_text("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 198.51.100.1\r\n"
               "auth-port:  143 \r\nServer: x\r\n\r\n",
               &p, &r);
    assert_int_equal(r.status, AH_OK);
    assert_string_equal(r.server, "198.51.100.1");
    assert_int_equal(r.port, 143);
    assert_null(r.user);
    assert_null(r.pass);
    assert_false(r.has_wait);
}

static void test_ok_credentials_ipv6(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    parse_text("HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: ::1\r\nAuth-Port: 993\r\n"
               "Auth-User: master*alice\r\nAuth-Pass: s3cr et\r\n\r\n",
               &p, &r);
    assert_int_equal(r.status, AH_OK);
    assert_string_equal(r.server, "::1");
    assert_string_equal(r.user, "master*alice");
    assert_string_equal(r.pass, "s3cr et"); /* verbatim, as nginx uses it */
    ah_parse_clear(&p);
    assert_int_equal(p.pass[0], 0);
}

static void test_refusal(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    parse_text("HTTP/1.0 200 OK\nAuth-Status: Invalid login or password\nAuth-Wait: 3\n"
               "Auth-Error-Code: 535 5.7.8\n\n",
               &p, &r);
    assert_int_equal(r.status, AH_FAIL);
    assert_string_equal(r.message, "Invalid login or password");
    assert_true(r.has_wait);
    assert_int_equal(r.wait_s, 3);
    assert_string_equal(r.error_code, "535 5.7.8");
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *why;
    } cases[] = {
        {"HTTP/1.1 500 Oops\r\nAuth-Status: OK\r\n\r\n", "HTTP status is not 200"},
        {"HTTP/1.1 200 OK\r\n\r\n", "no Auth-Status header"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Port: 143\r\n\r\n",
         "Auth-Status OK without Auth-Server or Auth-Port"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail.example\r\nAuth-Port: 1\r\n\r\n",
         "Auth-Server is not an IP address"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\nAuth-Port: 65536\r\n\r\n",
         "Auth-Port is not a port number"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\nAuth-Port: 0\r\n\r\n",
         "Auth-Port is not a port number"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: WAIT\r\n\r\n", "Auth-Status WAIT is not supported"},
        {"HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n", "malformed header line"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: O\001K\r\n\r\n", "control byte in a header value"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n folded\r\n\r\n", "folded header line"},
        {"ICY 200 OK\r\n\r\n", "malformed HTTP status line"},
        {"HTTP/1.1 2x0 OK\r\n\r\n", "malformed HTTP status code"},
        {"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n", "incomplete response header"},
        {"HTTP/1.1 200 OK\r\nAuth-User: \r\n\r\n", "Auth-User empty or too long"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ah_parse p;
        struct ah_result r;
        parse_text(cases[i].text, &p, &r);
        assert_int_equal(r.status, AH_ERROR);
        assert_string_equal(r.message, cases[i].why);
    }
}

static void test_interim_block_and_last_wins(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    parse_text("HTTP/1.1 100 Continue\r\nAuth-Status: OK\r\n\r\n"
               "HTTP/1.1 200 OK\r\nAuth-Status: Bad\r\nAuth-Status: Locked\r\n\r\n",
               &p, &r);
    assert_int_equal(r.status, AH_FAIL);
    assert_string_equal(r.message, "Locked");
    assert_int_equal(r.http_status, 200);
}

static void test_limits(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    /* the header block cap */
    ah_parse_init(&p, AH_MAX_HEADER_BYTES_MIN);
    assert_int_equal(ah_parse_line(&p, "HTTP/1.1 200 OK\r\n", 17), 0);
    char line[128];
    memset(line, 'a', sizeof(line));
    memcpy(line, "X-Pad: ", 7);
    line[126] = '\r';
    line[127] = '\n';
    int rc = 0;
    for (int i = 0; i < 8 && rc == 0; i++)
        rc = ah_parse_line(&p, line, sizeof(line));
    assert_int_equal(rc, -1);
    ah_parse_result(&p, &r);
    assert_string_equal(r.message, "response header block too large");
    /* a value over its field cap */
    char big[AH_PASS_MAX + 64];
    int n = snprintf(big, sizeof(big), "Auth-Pass: ");
    memset(big + n, 'p', AH_PASS_MAX);
    memcpy(big + n + AH_PASS_MAX, "\r\n", 3);
    ah_parse_init(&p, 0);
    assert_int_equal(ah_parse_line(&p, "HTTP/1.1 200 OK\r\n", 17), 0);
    assert_int_equal(ah_parse_line(&p, big, strlen(big)), -1);
    /* Auth-Wait: garbage ignored (nginx), huge capped */
    parse_text("HTTP/1.1 200 OK\r\nAuth-Status: no\r\nAuth-Wait: -1\r\n\r\n", &p, &r);
    assert_false(r.has_wait);
    parse_text("HTTP/1.1 200 OK\r\nAuth-Status: no\r\nAuth-Wait: 999999\r\n\r\n", &p, &r);
    assert_int_equal(r.wait_s, AH_WAIT_MAX);
    /* after the end, more lines are an error */
    ah_parse_init(&p, 0);
    assert_int_equal(feed(&p, "HTTP/1.1 200 OK\r\n\r\n"), 1);
    assert_int_equal(ah_parse_line(&p, "X: y\r\n", 6), -1);
}

/* Bare LF endings and a line handed without its ending parse as CRLF ones; a CR inside a line
 * (header splitting) is an error. */
static void test_line_endings(void **state)
{
    (void)state;
    struct ah_parse p;
    struct ah_result r;
    parse_text("HTTP/1.1 200 OK\nAuth-Status: OK\nAuth-Server: 10.1.2.3\nAuth-Port: 110\n\n", &p,
               &r);
    assert_int_equal(r.status, AH_OK);
    ah_parse_init(&p, 0);
    assert_int_equal(ah_parse_line(&p, "HTTP/1.1 200 OK", 15), 0);
    assert_int_equal(ah_parse_line(&p, "Auth-Status: a\rb\r\n", 18), -1);
}

static void test_escape(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(ah_escape("a b%c", 5, out, sizeof(out)), 9);
    assert_string_equal(out, "a%20b%25c");
    assert_int_equal(ah_escape("x\r\n\t\x7f", 5, out, sizeof(out)), 11);
    assert_string_equal(out, "x%0D%0A%09\x7f");
    /* UTF-8 and quotes are kept as nginx keeps them */
    assert_int_equal(ah_escape("j\xc3\xbcrgen\"'", 9, out, sizeof(out)), 9);
    assert_int_equal(ah_escape("a b", 3, out, 5), (size_t)-1);
    assert_int_equal(ah_escape("ab", 2, out, 3), 2);
    assert_int_equal(ah_escape("abc", 3, out, 3), (size_t)-1);
}

/* ---- live cases: the client against tests/integration/authhttp_responder.py --------------- */

struct live {
    struct ev_loop *loop;
    int done;
    struct ah_result r;
    char server[AH_SERVER_MAX];
    char user[64], pass[64], msg[256];
};

static void on_done(void *arg, const struct ah_result *r)
{
    struct live *l = arg;
    l->done++;
    l->r = *r;
    snprintf(l->server, sizeof(l->server), "%s", r->server);
    snprintf(l->user, sizeof(l->user), "%s", r->user ? r->user : "");
    snprintf(l->pass, sizeof(l->pass), "%s", r->pass ? r->pass : "");
    snprintf(l->msg, sizeof(l->msg), "%s", r->message ? r->message : "");
    ev_break(l->loop, EVBREAK_ALL);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static char live_url[256];

static struct ah_client *live_client(struct live *l, const char *path, unsigned timeout_ms)
{
    static struct ah_config cfg;
    static char url[300];
    memset(l, 0, sizeof(*l));
    l->loop = EV_DEFAULT;
    snprintf(url, sizeof(url), "%s%s", live_url, path);
    ah_config_defaults(&cfg);
    cfg.url = url;
    cfg.timeout_ms = timeout_ms;
    static const char *const extra[] = {"X-Auth-Key: secret_string", NULL};
    cfg.headers = extra;
    cfg.ca_file = getenv("AH_LIVE_CA"); /* https responders: the test CA */
    const char *err = NULL;
    struct ah_client *c = ah_client_new(l->loop, &cfg, &err);
    assert_non_null(c);
    return c;
}

/* Run the loop until one callback or `secs`; returns the callbacks seen. */
static int live_run(struct live *l, double secs)
{
    ev_timer t;
    ev_timer_init(&t, on_deadline, secs, 0.);
    ev_timer_start(l->loop, &t);
    int before = l->done;
    ev_run(l->loop, 0);
    ev_timer_stop(l->loop, &t);
    return l->done - before;
}

static struct ah_query query(const char *user)
{
    return (struct ah_query){.method = "plain",
                             .user = user,
                             .pass = "p a%ss",
                             .protocol = "imap",
                             .login_attempt = 1,
                             .client_ip = "192.0.2.42",
                             .server_ip = "127.0.0.1",
                             .server_port = 993,
                             .ssl = true};
}

/* alice (OK with backend credentials), bob (refused with Auth-Wait), then alice again: one
 * client, sequential lookups; the pytest side checks one TCP connection served them all. */
static void live_keepalive(void **state)
{
    (void)state;
    struct live l;
    struct ah_client *c = live_client(&l, "/auth", 2000);
    const char *users[] = {"alice", "bob", "alice", "nobody", "alice"};
    for (size_t i = 0; i < 5; i++) {
        struct ah_query q = query(users[i]);
        assert_non_null(ah_lookup(c, &q, on_done, &l));
        assert_int_equal(l.done, (int)i); /* never synchronous */
        assert_int_equal(live_run(&l, 3.0), 1);
        if (strcmp(users[i], "alice") == 0) {
            assert_int_equal(l.r.status, AH_OK);
            assert_string_equal(l.server, "127.0.0.1");
            assert_int_equal(l.r.port, 1143);
            assert_string_equal(l.user, "master*alice");
            assert_string_equal(l.pass, "masterpw");
        } else {
            assert_int_equal(l.r.status, AH_FAIL);
            assert_string_equal(l.msg, "Invalid login or password");
            assert_true(l.r.has_wait);
        }
    }
    assert_int_equal(ah_client_pending(c), 0);
    ah_client_free(&c);
    assert_null(c);
}

/* Several lookups in flight at once all complete. */
static void live_concurrent(void **state)
{
    (void)state;
    struct live l;
    struct ah_client *c = live_client(&l, "/auth", 2000);
    struct ah_query q = query("alice");
    for (int i = 0; i < 4; i++)
        assert_non_null(ah_lookup(c, &q, on_done, &l));
    for (int i = 0; i < 4 && l.done < 4; i++)
        live_run(&l, 3.0);
    assert_int_equal(l.done, 4);
    assert_int_equal(l.r.status, AH_OK);
    ah_client_free(&c);
}

/* One lookup of `user` at `path` on a fresh client; the answer is left in *l. */
static void live_one(struct live *l, const char *path, unsigned timeout_ms, const char *user)
{
    struct ah_client *c = live_client(l, path, timeout_ms);
    struct ah_query q = query(user);
    assert_non_null(ah_lookup(c, &q, on_done, l));
    assert_int_equal(live_run(l, 3.0), 1);
    ah_client_free(&c);
}

static void live_timeout(void **state)
{
    (void)state;
    struct live l;
    ev_tstamp t0 = ev_time();
    live_one(&l, "/auth", 300, "slow");
    assert_int_equal(l.r.status, AH_ERROR);
    assert_string_equal(l.msg, "timeout");
    assert_true(ev_time() - t0 < 1.5);
}

static void live_http500(void **state)
{
    (void)state;
    struct live l;
    live_one(&l, "/status/500", 2000, "alice");
    assert_int_equal(l.r.status, AH_ERROR);
    assert_int_equal(l.r.http_status, 500);
    assert_string_equal(l.msg, "HTTP status is not 200");
}

/* A transport failure: AH_LIVE_URL at a closed port, or an https responder whose certificate
 * does not verify (no AH_LIVE_CA). */
static void live_transport_error(void **state)
{
    (void)state;
    struct live l;
    live_one(&l, "/auth", 2000, "alice");
    assert_int_equal(l.r.status, AH_ERROR);
    assert_int_equal(l.r.http_status, 0);
    assert_true(strlen(l.msg) > 0);
}

/* A cancelled lookup never calls back; the client stays usable. */
static void live_cancel(void **state)
{
    (void)state;
    struct live l;
    struct ah_client *c = live_client(&l, "/auth", 2000);
    struct ah_query q = query("slow");
    struct ah_req *r = ah_lookup(c, &q, on_done, &l);
    assert_non_null(r);
    live_run(&l, 0.2);
    ah_cancel(r);
    assert_int_equal(ah_client_pending(c), 0);
    assert_int_equal(live_run(&l, 0.3), 0);
    q = query("alice");
    assert_non_null(ah_lookup(c, &q, on_done, &l));
    assert_int_equal(live_run(&l, 3.0), 1);
    assert_int_equal(l.r.status, AH_OK);
    /* a lookup still pending when the client is freed is cancelled too */
    q = query("slow");
    assert_non_null(ah_lookup(c, &q, on_done, &l));
    ah_client_free(&c);
    assert_int_equal(l.done, 1);
}

int main(void)
{
    const char *url = getenv("AH_LIVE_URL");
    if (url && *url) {
        snprintf(live_url, sizeof(live_url), "%s", url);
        const char *want = getenv("AH_LIVE_CASE");
        const struct CMUnitTest live_cases[] = {
            cmocka_unit_test(live_keepalive),       cmocka_unit_test(live_concurrent),
            cmocka_unit_test(live_timeout),         cmocka_unit_test(live_http500),
            cmocka_unit_test(live_transport_error), cmocka_unit_test(live_cancel),
        };
        if (want && *want)
            cmocka_set_test_filter(want);
        return cmocka_run_group_tests_name("authhttp_live", live_cases, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok),
        cmocka_unit_test(test_ok_credentials_ipv6),
        cmocka_unit_test(test_refusal),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_interim_block_and_last_wins),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests_name("authhttp", tests, NULL, NULL);
}
