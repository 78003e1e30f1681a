/*
 * Unit tests for the replacement slices of a blocked message (proxy/imap_scan_memo.c:
 * sc_replacement, sc_item_ranged, sc_body_offset).
 *
 * The contract (imap_scan.h): not ranged = the whole notice (BODY[], RFC822) or its whole text
 * (BODY[1], BODY[TEXT]); ranged = exactly [origin, origin + len) of the notice (BODY[]<o>) or
 * of its text (BODY[1]<o>, BINARY[1]<o>), clipped to it, empty when origin is past its end, and
 * never longer than `len`, the server's literal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "imap_scan.h"

static const char NOTICE[] = "From: a\r\nSubject: b\r\n\r\n0123456789abcdefghij\r\n";
#define NLEN (sizeof NOTICE - 1)

static size_t body_off(void)
{
    return sc_body_offset(NOTICE, NLEN);
}

static void slice(enum fi_kind k, bool ranged, uint64_t o, uint64_t len, const char **p, size_t *n)
{
    sc_replacement(NOTICE, NLEN, body_off(), k, ranged, o, len, p, n);
}

static void test_body_offset(void **state)
{
    (void)state;
    assert_int_equal(body_off(), 23);
    assert_int_equal(sc_body_offset("abc", 3), 3);
    assert_int_equal(sc_body_offset("a\r\n\r\n", 5), 5);
}

static void test_whole_and_part_not_ranged(void **state)
{
    (void)state;
    const char *p;
    size_t n;
    slice(FI_WHOLE, false, 0, 5, &p, &n);
    assert_ptr_equal(p, NOTICE);
    assert_int_equal(n, NLEN);
    slice(FI_PART, false, 0, 5, &p, &n); /* BODY[1]: the notice's whole text */
    assert_ptr_equal(p, NOTICE + 23);
    assert_int_equal(n, NLEN - 23);
}

/* The case: BODY.PEEK[1]<0.34> answered with 34 bytes gave a 503-byte literal. */
static void test_part_range_never_longer_than_server(void **state)
{
    (void)state;
    const char *p;
    size_t n;
    slice(FI_PART, true, 0, 5, &p, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(p, "01234", 5);
    slice(FI_PART, true, 3, 4, &p, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(p, "3456", 4);
    slice(FI_PART, true, 20, 100, &p, &n); /* clipped to the text */
    assert_int_equal(n, 2);
    assert_memory_equal(p, "\r\n", 2);
    slice(FI_PART, true, 22, 10, &p, &n); /* at the end: {0} */
    assert_int_equal(n, 0);
    slice(FI_PART, true, 1000, 10, &p, &n);
    assert_int_equal(n, 0);
    slice(FI_PART, true, 0, 0, &p, &n);
    assert_int_equal(n, 0);
}

static void test_partial_of_whole(void **state)
{
    (void)state;
    const char *p;
    size_t n;
    slice(FI_PARTIAL, true, 0, 4, &p, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(p, "From", 4);
    slice(FI_PARTIAL, true, 6, 100, &p, &n);
    assert_int_equal(n, NLEN - 6);
    assert_ptr_equal(p, NOTICE + 6);
    slice(FI_PARTIAL, true, NLEN, 5, &p, &n);
    assert_int_equal(n, 0);
    /* PARTIAL is ranged even if the caller says otherwise */
    slice(FI_PARTIAL, false, 2, 3, &p, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(p, "om:", 3);
}

/* Every ranged slice is inside the source and at most len long; consecutive chunks rebuild
 * the source exactly. */
static void test_chunks_rebuild(void **state)
{
    (void)state;
    for (uint64_t chunk = 1; chunk <= NLEN + 2; chunk++) {
        for (int k = 0; k < 2; k++) {
            enum fi_kind kind = k ? FI_PART : FI_PARTIAL;
            const char *src = kind == FI_PART ? NOTICE + 23 : NOTICE;
            size_t srclen = kind == FI_PART ? NLEN - 23 : NLEN;
            char got[NLEN + 1];
            size_t have = 0;
            for (uint64_t o = 0; o < srclen + chunk; o += chunk) {
                const char *p;
                size_t n;
                slice(kind, true, o, chunk, &p, &n);
                assert_true(n <= chunk);
                assert_true(p >= src && p + n <= src + srclen);
                memcpy(got + have, p, n);
                have += n;
            }
            assert_int_equal(have, srclen);
            assert_memory_equal(got, src, srclen);
        }
    }
}

static struct fetch_items named(const char *name)
{
    /* the tokenizer fed a response up to the literal the item's value is */
    struct fetch_items f;
    fi_init(&f);
    char text[256];
    int n = snprintf(text, sizeof text, "* 1 FETCH (UID 7 %s {3}\r\n", name);
    fi_feed(&f, text, (size_t)n);
    return f;
}

static void test_item_ranged(void **state)
{
    (void)state;
    struct fetch_items f = named("BODY[1]<0>");
    assert_true(sc_item_ranged(FI_PART, &f));
    f = named("BINARY[1]<10>");
    assert_true(sc_item_ranged(FI_PART, &f));
    f = named("BODY[1]");
    assert_false(sc_item_ranged(FI_PART, &f));
    f = named("RFC822.TEXT");
    assert_false(sc_item_ranged(FI_PART, &f));
    f = named("BODY[]<100>");
    assert_true(sc_item_ranged(FI_PARTIAL, &f));
    f = named("BODY[]");
    assert_false(sc_item_ranged(FI_WHOLE, &f));
    f = named("X-AN-ITEM-NAME-LONGER-THAN-THE-BOUND"); /* unknown: default deny, clip */
    assert_true(sc_item_ranged(FI_PART, &f));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_offset),
        cmocka_unit_test(test_whole_and_part_not_ranged),
        cmocka_unit_test(test_part_range_never_longer_than_server),
        cmocka_unit_test(test_partial_of_whole),
        cmocka_unit_test(test_chunks_rebuild),
        cmocka_unit_test(test_item_ranged),
    };
    return cmocka_run_group_tests_name("imap_slice", tests, NULL, NULL);
}
