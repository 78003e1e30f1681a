/* Unit tests for creds: decoding LOGIN and SASL credentials, building the PLAIN initial
 * response (round trips through the decoder), authzid handling, malformed SASL rejected, and
 * the wipe on clear. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sasl.h"

/* The wipe is checked where it matters: at free(), the bytes of every watched secret (and its
 * NUL) must already be zero. creds.c is compiled into this test with free() routed here. */
struct watched {
    const char *p;
    size_t len;
    bool freed_wiped;
};
static struct watched watched[8];
static int watch_n;

static void watch(const char *p, size_t len)
{
    watched[watch_n++] = (struct watched){p, len, false};
}

static void checked_free(void *p)
{
    for (int i = 0; i < watch_n; i++) {
        if (watched[i].p == p) {
            bool zero = true;
            for (size_t k = 0; k <= watched[i].len; k++)
                zero = zero && watched[i].p[k] == 0;
            watched[i].freed_wiped = zero;
        }
    }
    free(p);
}

#define free(p) checked_free(p)
#include "../../proxy/creds.c"
#undef free

static const char *b64(const void *m, size_t len, char *out)
{
    b64_encode(m, len, out);
    return out;
}

static void test_login(void **state)
{
    (void)state;
    struct creds c = {0};
    assert_int_equal(creds_from_login(&c, "alice", 5, "s3cret", 6), CREDS_OK);
    assert_int_equal(c.mech, CREDS_LOGIN);
    assert_string_equal(c.user, "alice");
    assert_int_equal(c.user_len, 5);
    assert_string_equal(c.pass, "s3cret");
    assert_int_equal(c.pass_len, 6);
    assert_null(c.authz);
    assert_null(c.token);
    /* LOGIN credentials sent as SASL PLAIN (a POP3 backend offering only that) */
    assert_string_equal(creds_sasl_name(c.mech), "PLAIN");
    size_t n;
    const char *ir = creds_response(&c, &n);
    char want[64];
    assert_string_equal(ir, b64("\0alice\0s3cret", 13, want));
    assert_int_equal(n, strlen(want));
    /* a second call returns the same (kept) response */
    assert_ptr_equal(creds_response(&c, &n), ir);
    /* a new login replaces the old one */
    assert_int_equal(creds_from_login(&c, "bob", 3, "pw", 2), CREDS_OK);
    assert_string_equal(c.user, "bob");
    assert_null(c.ir);
    creds_clear(&c);
}

static void test_login_rejected(void **state)
{
    (void)state;
    struct creds c = {0};
    assert_int_equal(creds_from_login(&c, "", 0, "pw", 2), CREDS_MALFORMED);
    assert_int_equal(creds_from_login(&c, "al\rice", 6, "pw", 2), CREDS_MALFORMED);
    assert_int_equal(creds_from_login(&c, "al\nice", 6, "pw", 2), CREDS_MALFORMED);
    assert_int_equal(creds_from_login(&c, "al\0ce", 5, "pw", 2), CREDS_MALFORMED);
    assert_int_equal(creds_from_login(&c, "alice", 5, "", 0), CREDS_MALFORMED);
    assert_int_equal(creds_from_login(&c, "alice", 5, "p\0w", 3), CREDS_MALFORMED);
    /* a failure leaves nothing behind */
    assert_int_equal(creds_from_login(&c, "alice", 5, "pw", 2), CREDS_OK);
    assert_int_equal(creds_from_login(&c, "alice", 5, "", 0), CREDS_MALFORMED);
    assert_null(c.user);
    assert_null(c.pass);
    assert_true(creds_user_ok("a b", 3)); /* RFC 1939: spaces are the server's business */
}

/* Decode PLAIN, build it again: the same bytes (no authzid, and authzid = user dropped). */
static void test_plain_roundtrip(void **state)
{
    (void)state;
    char in[128], out[128];
    struct creds c = {0};
    b64("\0alice\0pa ss", 12, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_OK);
    assert_int_equal(c.mech, CREDS_PLAIN);
    assert_string_equal(c.user, "alice");
    assert_string_equal(c.pass, "pa ss");
    assert_null(c.authz);
    size_t n;
    assert_string_equal(creds_response(&c, &n), in);

    /* authzid equal to the user: no request to act as someone else, dropped */
    b64("alice\0alice\0pw", 14, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_OK);
    assert_null(c.authz);
    assert_string_equal(creds_response(&c, &n), b64("\0alice\0pw", 9, out));

    /* a different authzid is kept and replayed */
    b64("admin\0alice\0pw", 14, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_OK);
    assert_string_equal(c.authz, "admin");
    assert_string_equal(c.user, "alice");
    const char *ir = creds_response(&c, &n);
    assert_string_equal(ir, in);
    /* and decoding the built response gives the same fields */
    struct creds d = {0};
    assert_int_equal(creds_from_sasl(&d, CREDS_PLAIN, ir, n), CREDS_OK);
    assert_string_equal(d.authz, "admin");
    assert_string_equal(d.user, "alice");
    assert_string_equal(d.pass, "pw");
    creds_clear(&d);
    creds_clear(&c);
}

static void test_tokens(void **state)
{
    (void)state;
    char in[256];
    struct creds c = {0};
    const char x[] = "user=alice\001auth=Bearer tok123\001\001";
    b64(x, sizeof x - 1, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_XOAUTH2, in, strlen(in)), CREDS_OK);
    assert_string_equal(c.user, "alice");
    assert_null(c.pass);
    assert_string_equal(c.token, in);
    assert_string_equal(creds_sasl_name(c.mech), "XOAUTH2");
    size_t n;
    assert_string_equal(creds_response(&c, &n), in); /* replayed untouched */
    assert_int_equal(n, strlen(in));

    const char o[] = "n,a=bob@example.org,\001host=x\001auth=Bearer t\001\001";
    b64(o, sizeof o - 1, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_OAUTHBEARER, in, strlen(in)), CREDS_OK);
    assert_string_equal(c.user, "bob@example.org");
    assert_string_equal(creds_sasl_name(c.mech), "OAUTHBEARER");
    assert_string_equal(creds_response(&c, &n), in);
    creds_clear(&c);
}

static void test_sasl_rejected(void **state)
{
    (void)state;
    char in[128];
    struct creds c = {0};
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, "not base64!", 11), CREDS_BAD_BASE64);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, "Zm9", 3), CREDS_BAD_BASE64);
    /* "=" is the empty response: not a PLAIN message */
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, "=", 1), CREDS_MALFORMED);
    b64("alice\0secret", 12, in); /* one NUL */
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_MALFORMED);
    b64("\0\0secret", 8, in); /* empty user */
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_MALFORMED);
    b64("\0alice\0", 7, in); /* empty password */
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_MALFORMED);
    b64("\0al\nice\0pw", 10, in); /* LF in the user: would forge a log or a command line */
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_MALFORMED);
    b64("auth=Bearer x\001\001", 15, in); /* XOAUTH2 without user= */
    assert_int_equal(creds_from_sasl(&c, CREDS_XOAUTH2, in, strlen(in)), CREDS_MALFORMED);
    b64("n,,auth=x", 9, in); /* OAUTHBEARER without a= */
    assert_int_equal(creds_from_sasl(&c, CREDS_OAUTHBEARER, in, strlen(in)), CREDS_MALFORMED);
    b64("\0alice\0pw", 9, in); /* LOGIN has no SASL message */
    assert_int_equal(creds_from_sasl(&c, CREDS_LOGIN, in, strlen(in)), CREDS_MALFORMED);
    /* a rejected response clears what was there */
    assert_int_equal(creds_from_login(&c, "alice", 5, "pw", 2), CREDS_OK);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, "@@@@", 4), CREDS_BAD_BASE64);
    assert_null(c.user);
    assert_null(c.pass);
    size_t n;
    assert_null(creds_response(&c, &n));
}

static void test_wipe(void **state)
{
    (void)state;
    struct creds c = {0};
    char in[64];
    b64("admin\0alice\0hunter2", 19, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_PLAIN, in, strlen(in)), CREDS_OK);
    size_t n;
    assert_non_null(creds_response(&c, &n));
    watch_n = 0;
    watch(c.user, c.user_len);
    watch(c.pass, c.pass_len);
    watch(c.authz, strlen(c.authz));
    watch(c.ir, c.ir_len);
    creds_clear(&c);
    for (int i = 0; i < watch_n; i++)
        assert_true(watched[i].freed_wiped);
    assert_null(c.user);
    assert_null(c.pass);
    assert_null(c.authz);
    assert_null(c.ir);
    creds_clear(&c); /* twice is harmless */
    creds_clear(NULL);

    const char x[] = "user=alice\001auth=Bearer tok123\001\001";
    b64(x, sizeof x - 1, in);
    assert_int_equal(creds_from_sasl(&c, CREDS_XOAUTH2, in, strlen(in)), CREDS_OK);
    watch_n = 0;
    watch(c.token, strlen(c.token));
    creds_clear(&c);
    assert_true(watched[0].freed_wiped);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login),           cmocka_unit_test(test_login_rejected),
        cmocka_unit_test(test_plain_roundtrip), cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_sasl_rejected),   cmocka_unit_test(test_wipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
