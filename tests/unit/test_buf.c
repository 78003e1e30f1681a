/* Unit tests for buf: lazy allocation, hard capacity, marks across compaction, release, and the
 * filter verbs (release, cut, drop, insert, commit) with their invariant rpos <= mark <= wpos. */
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
    buf_release(&b, 12); /* 12 sendable, 4 held */
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

static void check_inv(const struct buf *b)
{
    assert_true(b->rpos <= b->mark);
    assert_true(b->mark <= b->wpos);
    assert_true(b->wpos <= b->cap);
}

static void test_release(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 32);
    assert_true(buf_append(&b, "abcdefgh", 8));
    assert_int_equal(buf_held(&b), 8);
    assert_int_equal(buf_sendable(&b), 0);
    buf_release(&b, 3);
    assert_int_equal(buf_sendable(&b), 3);
    assert_int_equal(buf_held(&b), 5);
    assert_memory_equal(buf_mptr(&b), "defgh", 5);
    buf_release(&b, 0); /* a no-op */
    assert_int_equal(buf_sendable(&b), 3);
    buf_release(&b, 5);
    assert_int_equal(buf_held(&b), 0);
    assert_int_equal(buf_sendable(&b), 8);
    check_inv(&b);
    buf_free(&b);
}

static void test_cut_held(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 32);
    assert_true(buf_append(&b, "0123456789", 10));
    buf_release(&b, 2);     /* "01" sendable */
    buf_cut_held(&b, 2, 3); /* held "23456789" minus "456" */
    assert_int_equal(buf_len(&b), 7);
    assert_memory_equal(buf_rptr(&b), "0123789", 7);
    assert_int_equal(buf_sendable(&b), 2);
    buf_cut_held(&b, 0, 2); /* at mark */
    assert_memory_equal(buf_mptr(&b), "789", 3);
    buf_cut_held(&b, 3, 0); /* empty cut at the end */
    buf_cut_held(&b, 1, 2); /* up to wpos */
    assert_int_equal(buf_held(&b), 1);
    assert_memory_equal(buf_rptr(&b), "017", 3);
    check_inv(&b);
    buf_free(&b);
}

static void test_cut_held_after_consume(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    assert_true(buf_append(&b, "abcdefghij", 10));
    buf_release(&b, 4);
    buf_consume(&b, 3); /* rpos moved: held offsets still count from mark */
    buf_cut_held(&b, 1, 2);
    assert_memory_equal(buf_rptr(&b), "dehij", 5);
    assert_int_equal(buf_sendable(&b), 1);
    check_inv(&b);
    buf_free(&b);
}

static void test_drop_held(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    buf_drop_held(&b); /* empty, unallocated */
    assert_true(buf_empty(&b));
    assert_true(buf_append(&b, "sendheld", 8));
    buf_release(&b, 4);
    buf_drop_held(&b);
    assert_int_equal(buf_len(&b), 4);
    assert_int_equal(buf_sendable(&b), 4);
    assert_memory_equal(buf_rptr(&b), "send", 4);
    assert_true(buf_append(&b, "more", 4)); /* appends after the sendable part */
    assert_int_equal(buf_held(&b), 4);
    check_inv(&b);
    buf_free(&b);
}

static void test_insert(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    assert_true(buf_insert(&b, "hi", 2)); /* allocates */
    assert_int_equal(buf_sendable(&b), 2);
    assert_true(buf_append(&b, "held", 4));
    assert_true(buf_insert(&b, "XY", 2)); /* in front of the held bytes, after "hi" */
    assert_memory_equal(buf_rptr(&b), "hiXYheld", 8);
    assert_int_equal(buf_sendable(&b), 4);
    assert_int_equal(buf_held(&b), 4);
    check_inv(&b);
    buf_free(&b);
}

static void test_insert_compacts_and_refuses(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 12);
    assert_true(buf_append(&b, "0123456789", 10));
    buf_release(&b, 6);
    buf_consume(&b, 6);                     /* tail has 2 free bytes, front 6 */
    assert_true(buf_insert(&b, "abcd", 4)); /* compacts */
    assert_int_equal(b.rpos, 0);
    assert_memory_equal(buf_rptr(&b), "abcd6789", 8);
    assert_int_equal(buf_sendable(&b), 4);
    assert_false(buf_insert(&b, "12345", 5)); /* 4 free: refused, nothing changed */
    assert_memory_equal(buf_rptr(&b), "abcd6789", 8);
    assert_true(buf_insert(&b, "wxyz", 4)); /* exactly full */
    assert_int_equal(buf_room(&b), 0);
    assert_memory_equal(buf_rptr(&b), "abcdwxyz6789", 12);
    check_inv(&b);
    buf_free(&b);
}

static void test_commit(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    long room = buf_reserve(&b);
    assert_int_equal(room, 8);
    memcpy(buf_wptr(&b), "abc", 3);
    buf_commit(&b, 3);
    assert_int_equal(buf_held(&b), 3);
    assert_memory_equal(buf_mptr(&b), "abc", 3);
    buf_release(&b, 3);
    buf_consume(&b, 3);
    assert_true(buf_empty(&b));
    assert_int_equal(b.wpos, 0); /* an empty buffer rewinds */
    check_inv(&b);
    buf_free(&b);
}

/* Byte by byte: release, cut and insert interleaved keep the stream and the invariant. */
static void test_verbs_interleaved(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 64);
    const char *in = "A1B2C3D4E5F6";
    char out[64];
    size_t on = 0;
    for (size_t i = 0; in[i]; i++) {
        assert_true(buf_append(&b, in + i, 1));
        /* letters pass, digits are replaced by '#' put in front of the held bytes */
        if (in[i] >= 'A' && in[i] <= 'Z') {
            buf_release(&b, 1);
        } else {
            buf_cut_held(&b, 0, 1);
            assert_true(buf_insert(&b, "#", 1));
        }
        check_inv(&b);
        if (i % 3 == 2) { /* the peer takes what is sendable */
            size_t n = buf_sendable(&b);
            memcpy(out + on, buf_rptr(&b), n);
            on += n;
            buf_consume(&b, n);
        }
    }
    size_t n = buf_sendable(&b);
    memcpy(out + on, buf_rptr(&b), n);
    on += n;
    assert_int_equal(on, 12);
    assert_memory_equal(out, "A#B#C#D#E#F#", 12);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_and_release),
        cmocka_unit_test(test_capacity_is_hard),
        cmocka_unit_test(test_mark_survives_compaction),
        cmocka_unit_test(test_printf_bounds),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_cut_held),
        cmocka_unit_test(test_cut_held_after_consume),
        cmocka_unit_test(test_drop_held),
        cmocka_unit_test(test_insert),
        cmocka_unit_test(test_insert_compacts_and_refuses),
        cmocka_unit_test(test_commit),
        cmocka_unit_test(test_verbs_interleaved),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
