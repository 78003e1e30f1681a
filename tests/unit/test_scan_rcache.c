/* The shared verdict cache's value format: round trips, and every malformed or hostile value is
 * refused (a refused value is a miss: the message is scanned, never trusted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "scan_rcache.h"

static void test_round_trip(void **state)
{
    (void)state;
    struct msgscan_cached in = {.verdict = MSGSCAN_INFECTED, .date = 1795000000};
    snprintf(in.ref, sizeof in.ref, "20261123-0123456789ab");
    snprintf(in.signature, sizeof in.signature, "Portcullis.Test EICAR-NDB.UNOFFICIAL");
    char buf[256];
    size_t n = scan_rcache_encode(&in, buf, sizeof buf);
    assert_true(n > 0);
    struct msgscan_cached out;
    assert_true(scan_rcache_decode(buf, n, &out));
    assert_int_equal(out.verdict, MSGSCAN_INFECTED);
    assert_int_equal(out.date, in.date);
    assert_string_equal(out.ref, in.ref);
    assert_string_equal(out.signature, in.signature); /* spaces in a name survive */

    struct msgscan_cached clean = {.verdict = MSGSCAN_CLEAN, .date = 7};
    n = scan_rcache_encode(&clean, buf, sizeof buf);
    assert_string_equal(buf, "v1 C 7 - -");
    assert_true(scan_rcache_decode(buf, n, &out));
    assert_int_equal(out.verdict, MSGSCAN_CLEAN);
    assert_string_equal(out.ref, "");
    assert_string_equal(out.signature, "");

    struct msgscan_cached err = {.verdict = MSGSCAN_ERROR};
    assert_int_equal(scan_rcache_encode(&err, buf, sizeof buf), 0); /* never cached */
    assert_int_equal(scan_rcache_encode(&in, buf, 10), 0);          /* does not fit */
}

static void test_refused(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "v1",
        "v2 C 7 - -",
        "v1 X 7 - -",
        "v1 C -7 - -",
        "v1 C 7x - -",
        "v1 C 7 -",
        "v1 I 7 - Sig",                   /* infected needs a reference */
        "v1 I 7 20261123-zz Sig",         /* reference outside [0-9a-f-] */
        "v1 I 7 20261123-ab Sig\r\nX: y", /* CR/LF in the signature */
        "v1 I 7 20261123-ab ",
        "v1  C 7 - -",
    };
    struct msgscan_cached out;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(scan_rcache_decode(bad[i], strlen(bad[i]), &out));
    char big[600];
    memset(big, 'A', sizeof big);
    memcpy(big, "v1 I 7 ab-1 ", 12);
    assert_false(scan_rcache_decode(big, sizeof big, &out)); /* signature too long */
    /* NUL inside: the length counts, not the terminator. */
    assert_false(scan_rcache_decode("v1 I 7 ab-1 S\0ig", 16, &out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
