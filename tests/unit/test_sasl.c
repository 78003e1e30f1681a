/* Unit tests for sasl: strict base64 and the SASL message splitters, and log_q sanitising. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"
#include "sasl.h"

static void test_b64_roundtrip(void **state)
{
    (void)state;
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char enc[32];
        unsigned char dec[32];
        b64_encode((const unsigned char *)in[i], strlen(in[i]), enc);
        assert_string_equal(enc, out[i]);
        long n = b64_decode(out[i], strlen(out[i]), dec, sizeof dec);
        assert_int_equal(n, (long)strlen(in[i]));
        assert_memory_equal(dec, in[i], (size_t)n);
    }
}

static void test_b64_strict(void **state)
{
    (void)state;
    unsigned char d[16];
    assert_int_equal(b64_decode("Zm9", 3, d, sizeof d), -1);      /* length */
    assert_int_equal(b64_decode("Zm 9", 4, d, sizeof d), -1);     /* whitespace */
    assert_int_equal(b64_decode("Z=9v", 4, d, sizeof d), -1);     /* early pad */
    assert_int_equal(b64_decode("Zg==Zg==", 8, d, sizeof d), -1); /* data after pad */
    assert_int_equal(b64_decode("Zm9vYmFy", 8, d, 5), -1);        /* too small */
}

static void test_plain_split(void **state)
{
    (void)state;
    struct sasl_span z, c, p;
    const unsigned char m1[] = "\0alice\0secret";
    assert_true(sasl_plain_split(m1, sizeof m1 - 1, &z, &c, &p));
    assert_int_equal(z.len, 0);
    assert_int_equal(c.len, 5);
    assert_memory_equal(c.p, "alice", 5);
    assert_memory_equal(p.p, "secret", 6);
    const unsigned char m2[] = "admin\0alice\0pw";
    assert_true(sasl_plain_split(m2, sizeof m2 - 1, &z, &c, &p));
    assert_memory_equal(z.p, "admin", 5);
    const unsigned char bad1[] = "alice\0secret"; /* one NUL */
    assert_false(sasl_plain_split(bad1, sizeof bad1 - 1, &z, &c, &p));
    const unsigned char bad2[] = "\0\0secret"; /* empty authcid */
    assert_false(sasl_plain_split(bad2, sizeof bad2 - 1, &z, &c, &p));
    const unsigned char bad3[] = "\0alice\0"; /* empty password */
    assert_false(sasl_plain_split(bad3, sizeof bad3 - 1, &z, &c, &p));
    const unsigned char bad4[] = "\0alice\0pw\0x"; /* NUL in password */
    assert_false(sasl_plain_split(bad4, sizeof bad4 - 1, &z, &c, &p));
}

static void test_oauth_users(void **state)
{
    (void)state;
    struct sasl_span u;
    const unsigned char x[] = "user=bob@example.org\001auth=Bearer tok\001\001";
    assert_true(sasl_xoauth2_user(x, sizeof x - 1, &u));
    assert_int_equal(u.len, 15);
    assert_memory_equal(u.p, "bob@example.org", 15);
    assert_false(sasl_xoauth2_user((const unsigned char *)"usr=x\001", 6, &u));
    const unsigned char o[] = "n,a=carol@example.org,\001host=x\001auth=Bearer t\001\001";
    assert_true(sasl_oauthbearer_user(o, sizeof o - 1, &u));
    assert_memory_equal(u.p, "carol@example.org", 17);
    assert_false(sasl_oauthbearer_user((const unsigned char *)"n,,\001", 4, &u));
}

static void test_log_q(void **state)
{
    (void)state;
    char b[64];
    assert_string_equal(log_qs(b, sizeof b, "bob"), "\"bob\"");
    assert_string_equal(log_qs(b, sizeof b, "a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_string_equal(log_q(b, sizeof b, "x\r\ny=1", 6), "\"x\\x0d\\x0ay=1\"");
    assert_string_equal(log_qs(b, sizeof b, "j\xc3\xbcrgen"), "\"j\xc3\xbcrgen\"");
    assert_string_equal(log_q(b, sizeof b, "\xff", 1), "\"\\xff\"");
    char small[12];
    log_qs(small, sizeof small, "abcdefghijklmnop");
    assert_true(strlen(small) < sizeof small);
    assert_int_equal(small[strlen(small) - 1], '"');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_roundtrip), cmocka_unit_test(test_b64_strict),
        cmocka_unit_test(test_plain_split),   cmocka_unit_test(test_oauth_users),
        cmocka_unit_test(test_log_q),
    };
    return cmocka_run_group_tests_name("sasl", tests, NULL, NULL);
}
