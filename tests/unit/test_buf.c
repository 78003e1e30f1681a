/* Unit tests for buf: lazy allocation, hard capacity, marks across compaction, release. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"

static void test_lazy_and_release(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 64);
    assert_null(b.data);
    assert_true(buf_empty(&b));
    assert_int_equal(buf_room(&b), 64);
    assert_true(buf_append(&b, "hello", 5));
    assert_non_null(b.data);
    assert_int_equal(buf_len(&b), 5);
    buf_consume(&b, 5);
    assert_true(buf_empty(&b));
    buf_release_if_empty(&b);
    assert_null(b.data);
    buf_free(&b);
}

static void test_capacity_is_hard(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    assert_true(buf_append(&b, "12345678", 8));
    assert_false(buf_append(&b, "9", 1));
    assert_int_equal(buf_reserve(&b), 0);
    buf_consume(&b, 3);
    assert_int_equal(buf_room(&b), 3);
    assert_true(buf_append(&b, "abc", 3)); /* needs compaction */
    assert_memory_equal(buf_rptr(&b), "45678abc", 8);
    buf_free(&b);
}

static void test_mark_survives_compaction(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    assert_true(buf_append(&b, "0123456789abcdef", 16));
    b.mark = b.rpos + 12; /* 12 sendable, 4 held */
    buf_consume(&b, 10);
    assert_int_equal(buf_sendable(&b), 2);
    long room = buf_reserve(&b); /* tail is empty: compacts */
    assert_true(room >= 10);
    assert_int_equal(buf_sendable(&b), 2);
    assert_memory_equal(buf_rptr(&b), "abcdef", 6);
    /* consuming past the mark drags it along */
    buf_consume(&b, 4);
    assert_int_equal(buf_sendable(&b), 0);
    assert_int_equal(buf_len(&b), 2);
    buf_free(&b);
}

static void test_printf_bounds(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 10);
    assert_true(buf_printf(&b, "%s %d", "ab", 42));
    assert_int_equal(buf_len(&b), 5);
    assert_false(buf_printf(&b, "%s", "too long now"));
    assert_int_equal(buf_len(&b), 5);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_and_release),
        cmocka_unit_test(test_capacity_is_hard),
        cmocka_unit_test(test_mark_survives_compaction),
        cmocka_unit_test(test_printf_bounds),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
