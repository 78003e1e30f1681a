/*
 * Unit tests for proxy/imap_fetchitem.c: which FETCH item a literal belongs to.
 *
 * Every response is fed whole and one byte at a time (the relay feeds whatever the framer
 * hands it); the literal's kind is asked where the relay asks, right after its "{n}\r\n".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "imap_fetchitem.h"

/* Feed `text` (ending in a literal header) and return the kind; both feeding styles agree. */
static enum fi_kind kind_of(const char *text, uint64_t *origin_r, uint64_t *uid_r)
{
    struct fetch_items a, b;
    fi_init(&a);
    fi_init(&b);
    fi_feed(&a, text, strlen(text));
    for (size_t i = 0; text[i]; i++)
        fi_feed(&b, text + i, 1);
    uint64_t oa, ob;
    enum fi_kind ka = fi_literal_kind(&a, &oa), kb = fi_literal_kind(&b, &ob);
    assert_int_equal(ka, kb);
    assert_int_equal(oa, ob);
    assert_int_equal(a.uid, b.uid);
    *origin_r = oa;
    if (uid_r)
        *uid_r = a.uid;
    return ka;
}

static void test_whole(void **state)
{
    (void)state;
    uint64_t o, uid;
    assert_int_equal(kind_of("* 1 FETCH (BODY[] {12}\r\n", &o, &uid), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (RFC822 {12}\r\n", &o, NULL), FI_WHOLE);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[] ~{12}\r\n", &o, NULL), FI_WHOLE);
    assert_int_equal(
        kind_of("* 7 FETCH (UID 42 FLAGS (\\Seen \\Answered) body[] {3}\r\n", &o, &uid), FI_WHOLE);
    assert_int_equal(uid, 42);
    assert_int_equal(kind_of("* 7 FETCH (FLAGS () RFC822.SIZE 100 INTERNALDATE \"01-Jan-2025 "
                             "10:00:00 +0000\" UID 9 BODY[] {3}\r\n",
                             &o, &uid),
                     FI_WHOLE);
    assert_int_equal(uid, 9);
}

static void test_partial_and_parts(void **state)
{
    (void)state;
    uint64_t o;
    assert_int_equal(kind_of("* 1 FETCH (UID 3 BODY[]<65536> {100}\r\n", &o, NULL), FI_PARTIAL);
    assert_int_equal(o, 65536);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2] {100}\r\n", &o, NULL), FI_PART);
    assert_int_equal(o, 0);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2.1]<10> {100}\r\n", &o, NULL), FI_PART);
    assert_int_equal(o, 10);
    assert_int_equal(kind_of("* 1 FETCH (BODY[TEXT] {100}\r\n", &o, NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (RFC822.TEXT {100}\r\n", &o, NULL), FI_PART);
    assert_int_equal(kind_of("* 1 FETCH (BINARY[2] ~{100}\r\n", &o, NULL), FI_PART);
}

static void test_not_content(void **state)
{
    (void)state;
    uint64_t o;
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER] {100}\r\n", &o, NULL), FI_NONE);
    assert_int_equal(
        kind_of("* 1 FETCH (BODY[HEADER.FIELDS (FROM TO \"SUBJECT\")] {100}\r\n", &o, NULL),
        FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (BODY[2.MIME] {100}\r\n", &o, NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (BODY[1.HEADER] {100}\r\n", &o, NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (RFC822.HEADER {100}\r\n", &o, NULL), FI_NONE);
    /* nested strings of ENVELOPE / BODYSTRUCTURE */
    assert_int_equal(kind_of("* 1 FETCH (ENVELOPE (\"date\" {100}\r\n", &o, NULL), FI_NONE);
    assert_int_equal(kind_of("* 1 FETCH (BODY[] \"x\" ENVELOPE (NIL {5}\r\n", &o, NULL), FI_NONE);
    /* a quoted value that looks like a name must not count */
    assert_int_equal(kind_of("* 1 FETCH (X-GM-LABELS (\"BODY[]\") BODY[HEADER] {5}\r\n", &o, NULL),
                     FI_NONE);
    /* a very long HEADER.FIELDS list: the name is cut, still not content */
    assert_int_equal(kind_of("* 1 FETCH (BODY[HEADER.FIELDS (A1 A2 A3 A4 A5 A6 A7 A8 A9 B1 B2 "
                             "B3 B4 B5 B6 B7 B8 B9 C1 C2 C3 C4 C5 C6)] {5}\r\n",
                             &o, NULL),
                     FI_NONE);
}

static void test_after_literal(void **state)
{
    (void)state;
    /* the tokenizer continues after a literal's bytes (which are not fed) */
    struct fetch_items f;
    uint64_t o;
    fi_init(&f);
    const char *a = "* 3 FETCH (ENVELOPE (\"d\" {4}\r\n";
    fi_feed(&f, a, strlen(a));
    assert_int_equal(fi_literal_kind(&f, &o), FI_NONE);
    const char *b = " NIL NIL NIL NIL NIL NIL NIL NIL NIL) UID 77 BODY[]<0> {10}\r\n";
    fi_feed(&f, b, strlen(b));
    assert_int_equal(fi_literal_kind(&f, &o), FI_PARTIAL);
    assert_int_equal(f.uid, 77);
}

static void test_is_fetch(void **state)
{
    (void)state;
    uint64_t seq = 0;
    assert_int_equal(fi_is_fetch("* 12 FETCH (", 12, &seq), 1);
    assert_int_equal(seq, 12);
    assert_int_equal(fi_is_fetch("* 12 fetch (", 12, &seq), 1);
    assert_int_equal(fi_is_fetch("* 12 FET", 8, &seq), -1);
    assert_int_equal(fi_is_fetch("* 1", 3, &seq), -1);
    assert_int_equal(fi_is_fetch("* 12 EXISTS", 11, &seq), 0);
    assert_int_equal(fi_is_fetch("* OK [UIDVALIDITY 1]", 20, &seq), 0);
    assert_int_equal(fi_is_fetch("A1 OK FETCH done", 16, &seq), 0);
    assert_int_equal(fi_is_fetch("*", 1, &seq), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole),       cmocka_unit_test(test_partial_and_parts),
        cmocka_unit_test(test_not_content), cmocka_unit_test(test_after_literal),
        cmocka_unit_test(test_is_fetch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
