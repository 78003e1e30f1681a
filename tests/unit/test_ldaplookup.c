/* Unit tests for the LDAP lookup source: RFC 4515 escaping, filter template checks and
 * expansion (%u %n %d %%), host value parsing (ldapfilter.c), and the pool's contract without a
 * directory (ldaplookup.c): config validation, no synchronous callback, exactly one callback
 * with an error when the server refuses, no callback after ldl_cancel(). The searches against
 * a real slapd are in tests/integration/test_ldaplookup.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ldaplookup.h"

static void expect_escape(const char *in, size_t len, const char *want)
{
    char out[256];
    size_t pos = 0;
    assert_true(ldl_escape(out, sizeof out, &pos, in, len));
    assert_string_equal(out, want);
    assert_int_equal(pos, strlen(want));
}

static void test_escape_specials(void **state)
{
    (void)state;
    expect_escape("alice", 5, "alice");
    expect_escape("*", 1, "\\2a");
    expect_escape("(", 1, "\\28");
    expect_escape(")", 1, "\\29");
    expect_escape("\\", 1, "\\5c");
    expect_escape("a\0b", 3, "a\\00b");
    expect_escape(")(uid=*", 7, "\\29\\28uid=\\2a");
    expect_escape("\r\n\x7f", 3, "\\0d\\0a\\7f");
    /* UTF-8 passes through (RFC 4515 UTFMB). */
    expect_escape("j\xc3\xbcrgen", 7, "j\xc3\xbcrgen");
}

static void test_escape_overflow(void **state)
{
    char out[4];
    size_t pos = 0;
    (void)state;
    assert_false(ldl_escape(out, 3, &pos, "*", 1)); /* needs 3 + NUL */
    assert_string_equal(out, "");
    assert_true(ldl_escape(out, 4, &pos, "*", 1));
    assert_string_equal(out, "\\2a");
    pos = 0;
    assert_true(ldl_escape(out, sizeof out, &pos, "abc", 3));
    assert_string_equal(out, "abc");
    assert_false(ldl_escape(out, sizeof out, &pos, "d", 1));
    assert_string_equal(out, "abc");
}

static void expect_expand(const char *tmpl, const char *user, const char *want)
{
    char out[512];
    const char *err = NULL;
    assert_true(ldl_template_check(tmpl, &err));
    assert_int_equal(ldl_template_expand(out, sizeof out, tmpl, user, strlen(user)),
                     (long)strlen(want));
    assert_string_equal(out, want);
}

static void test_template_expand(void **state)
{
    (void)state;
    expect_expand("(uid=%u)", "alice", "(uid=alice)");
    expect_expand("(&(uid=%n)(dc=%d))", "bob@example.org", "(&(uid=bob)(dc=example.org))");
    expect_expand("(&(uid=%n)(dc=%d))", "bob", "(&(uid=bob)(dc=))");
    /* The last '@' splits: "a@b" is the local part of "a@b@c". */
    expect_expand("(&(uid=%n)(dc=%d))", "a@b@c", "(&(uid=a@b)(dc=c))");
    expect_expand("(mail=%u)", "admin)(|(uid=*", "(mail=admin\\29\\28|\\28uid=\\2a)");
    expect_expand("(cn=100%%)", "x", "(cn=100%)");
    expect_expand("(cn=a\\2ab%u)", "*", "(cn=a\\2ab\\2a)");
}

static void test_template_check_errors(void **state)
{
    const char *err = NULL;
    const char *bad[] = {"uid=%u",    "(uid=%x)", "(uid=%u",   "(uid=%u))", "(uid=%)",
                         "(cn=\\zz)", "(cn=\\2)", "(cn=a\tb)", "",          NULL};
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = NULL;
        assert_false(ldl_template_check(bad[i], &err));
        assert_non_null(err);
    }
}

static void test_template_expand_too_long(void **state)
{
    char out[16];
    (void)state;
    assert_int_equal(ldl_template_expand(out, sizeof out, "(uid=%u)", "abcdefghij", 10), -1);
    assert_int_equal(ldl_template_expand(out, sizeof out, "(uid=%u)", "abcd", 4), 10);
    /* Each '*' triples: 3 fit exactly (15 bytes + NUL), 4 do not. */
    assert_int_equal(ldl_template_expand(out, sizeof out, "(uid=%u)", "***", 3), 15);
    assert_int_equal(ldl_template_expand(out, sizeof out, "(uid=%u)", "****", 4), -1);
}

static void expect_host(const char *val, const char *host, unsigned port)
{
    char h[LDL_HOST_MAX + 1];
    unsigned p = 99;
    const char *err = NULL;
    assert_true(ldl_parse_host(val, strlen(val), h, &p, &err));
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

static void test_parse_host_ok(void **state)
{
    (void)state;
    expect_host("imap1.example.org", "imap1.example.org", 0);
    expect_host("10.0.0.7:1143", "10.0.0.7", 1143);
    expect_host("backend-b", "backend-b", 0);
    expect_host("[2001:db8::1]", "2001:db8::1", 0);
    expect_host("[2001:db8::1]:993", "2001:db8::1", 993);
    expect_host("h:65535", "h", 65535);
}

static void test_parse_host_bad(void **state)
{
    const char *bad[] = {"",       ":143",     "h:",   "h:0",         "h:65536",
                         "h:14a",  "h:123456", "a b",  "2001:db8::1", "[::1",
                         "[::1]x", "h\n",      "[]:1", "h/x",         "u@h"};
    char h[LDL_HOST_MAX + 1];
    char longv[LDL_HOST_MAX + 2];
    unsigned p;
    const char *err;
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = NULL;
        assert_false(ldl_parse_host(bad[i], strlen(bad[i]), h, &p, &err));
        assert_non_null(err);
    }
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    assert_false(ldl_parse_host(longv, strlen(longv), h, &p, &err));
    assert_true(ldl_parse_host(longv, strlen(longv) - 1, h, &p, &err));
    /* A NUL inside the attribute value is not a host. */
    assert_false(ldl_parse_host("ab\0c", 4, h, &p, &err));
}

/* ---- the pool without a directory ---- */

static int closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd); /* nothing listens there now: connect is refused at once */
    return ntohs(a.sin_port);
}

struct seen {
    int calls;
    enum ldl_status status;
    char reason[256];
};

static void on_answer(void *arg, const struct ldl_answer *a)
{
    struct seen *s = arg;
    s->calls++;
    s->status = a->status;
    snprintf(s->reason, sizeof s->reason, "%s", a->reason ? a->reason : "");
}

static void config_for(struct ldl_config *c, char *uri, size_t cap)
{
    ldl_config_init(c);
    snprintf(uri, cap, "ldap://127.0.0.1:%d", closed_port());
    c->uri = uri;
    c->base = "dc=test";
    c->max_conns = 1;
    c->timeout = 1.0;
    c->backoff_min = 5.0; /* no retry during the test */
    c->backoff_max = 5.0;
}

static void test_pool_config_errors(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct ldl_config c;
    char uri[64];
    const char *err;
    (void)state;

    config_for(&c, uri, sizeof uri);
    c.uri = "http://x";
    err = NULL;
    assert_null(ldl_pool_new(loop, &c, &err));
    assert_non_null(err);
    config_for(&c, uri, sizeof uri);
    c.filter = "(uid=%s)";
    assert_null(ldl_pool_new(loop, &c, &err));
    config_for(&c, uri, sizeof uri);
    c.uri = "ldaps://h";
    c.starttls = true;
    assert_null(ldl_pool_new(loop, &c, &err));
    config_for(&c, uri, sizeof uri);
    c.max_conns = 0;
    assert_null(ldl_pool_new(loop, &c, &err));
    config_for(&c, uri, sizeof uri);
    c.sasl_external = true;
    assert_null(ldl_pool_new(loop, &c, &err));
    ev_loop_destroy(loop);
}

static void test_pool_refused_answers_error_once(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct ldl_config c;
    char uri[64];
    const char *err = NULL;
    struct seen a = {0}, b = {0};
    struct ldl_pool *p;
    struct ldl_req *ra, *rb;
    (void)state;

    config_for(&c, uri, sizeof uri);
    c.bind_password = "s3cret";
    p = ldl_pool_new(loop, &c, &err);
    assert_non_null(p);
    ra = ldl_lookup(p, "alice", 5, on_answer, &a);
    rb = ldl_lookup(p, "bob", 3, on_answer, &b);
    assert_non_null(ra);
    assert_non_null(rb);
    assert_int_equal(a.calls, 0); /* never synchronous */
    for (int i = 0; i < 200 && (a.calls == 0 || b.calls == 0); i++)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(a.status, LDL_ERROR);
    assert_non_null(strstr(a.reason, "unavailable"));
    assert_null(strstr(a.reason, "s3cret"));
    assert_int_equal(ldl_pool_ready(p), 0);
    /* While every connection waits out its back-off, a new lookup fails at once (deferred). */
    memset(&a, 0, sizeof a);
    ra = ldl_lookup(p, "alice", 5, on_answer, &a);
    assert_int_equal(a.calls, 0);
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(a.calls, 1);
    ldl_pool_free(&p);
    assert_null(p);
    ev_loop_destroy(loop);
}

static void test_pool_cancel_never_calls_back(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct ldl_config c;
    char uri[64];
    const char *err = NULL;
    struct seen a = {0}, b = {0}, d = {0};
    struct ldl_pool *p;
    struct ldl_req *ra, *rb, *rd;
    (void)state;

    config_for(&c, uri, sizeof uri);
    p = ldl_pool_new(loop, &c, &err);
    assert_non_null(p);
    ra = ldl_lookup(p, "alice", 5, on_answer, &a);
    rb = ldl_lookup(p, "", 0, on_answer, &b); /* answered early: still cancellable */
    rd = ldl_lookup(p, "carol", 5, on_answer, &d);
    ldl_cancel(&ra);
    ldl_cancel(&rb);
    assert_null(ra);
    assert_null(rb);
    for (int i = 0; i < 200 && d.calls == 0; i++)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(d.calls, 1);
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 0);
    /* Freeing the pool with lookups outstanding drops them without a callback. */
    memset(&a, 0, sizeof a);
    ra = ldl_lookup(p, "alice", 5, on_answer, &a);
    (void)rd;
    ldl_pool_free(&p);
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(a.calls, 0);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_specials),
        cmocka_unit_test(test_escape_overflow),
        cmocka_unit_test(test_template_expand),
        cmocka_unit_test(test_template_check_errors),
        cmocka_unit_test(test_template_expand_too_long),
        cmocka_unit_test(test_parse_host_ok),
        cmocka_unit_test(test_parse_host_bad),
        cmocka_unit_test(test_pool_config_errors),
        cmocka_unit_test(test_pool_refused_answers_error_once),
        cmocka_unit_test(test_pool_cancel_never_calls_back),
    };
    return cmocka_run_group_tests_name("ldaplookup", tests, NULL, NULL);
}
