/*
 * Unit tests for the smaller items of issue 16 in the relay (through the relay harness):
 *   a. capability lists over the framer's 128-byte head, split anywhere between reads (every
 *      case is replayed whole, byte by byte and split at every byte boundary), with and
 *      without scanning, as "* CAPABILITY" and as "[CAPABILITY" codes (tagged with a long tag,
 *      untagged);
 *   b. the proxy's own lines (BYE / -ERR) go to the client only at a response boundary: a
 *      backend protocol error, a kick or a timeout while a line or a literal is half relayed
 *      close the session without splicing anything into it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define LONG_CAPS                                                                                  \
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "        \
    "THREAD=REFS MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "            \
    "LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH "   \
    "LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "   \
    "NOTIFY SPECIAL-USE COMPRESS=DEFLATE X-FOO"
#define LONG_CAPS_OUT                                                                              \
    "IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "    \
    "MULTIAPPEND CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "          \
    "CONDSTORE ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE "             \
    "STATUS=SIZE SAVEDATE LITERAL+ SPECIAL-USE"
#define LONG_TAG "t0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"

/* ---- a. capability lists split between reads ---- */

RH_CASE(t_caps_long_scan, "a long CAPABILITY line is filtered whole with scanning on", RH_IMAP,
        RH_SCAN_ON, C("c CAPABILITY\r\n"), EB("c CAPABILITY\r\n"),
        B("* CAPABILITY " LONG_CAPS "\r\nc OK done\r\n"),
        EC("* CAPABILITY " LONG_CAPS_OUT "\r\nc OK done\r\n"))

RH_CASE(t_caps_code_long_tag, "a [CAPABILITY] code behind a tag over the head is filtered", RH_IMAP,
        RH_SCAN_OFF, C(LONG_TAG " NOOP\r\n"), EB(LONG_TAG " NOOP\r\n"),
        B(LONG_TAG " OK [CAPABILITY " LONG_CAPS "] done\r\n"),
        EC(LONG_TAG " OK [CAPABILITY " LONG_CAPS_OUT "] done\r\n"))

RH_CASE(t_caps_code_untagged_long, "a long untagged [CAPABILITY] code is filtered", RH_IMAP,
        RH_SCAN_ON, C("n NOOP\r\n"), EB("n NOOP\r\n"),
        B("* OK [CAPABILITY " LONG_CAPS "] hello\r\nn OK done\r\n"),
        EC("* OK [CAPABILITY " LONG_CAPS_OUT "] hello\r\nn OK done\r\n"))

RH_CASE(t_caps_lowercase_long, "a lower-case capability response is filtered too", RH_IMAP,
        RH_SCAN_OFF, C("c capability\r\n"), EB("c capability\r\n"),
        B("* capability " LONG_CAPS "\r\nc ok done\r\n"),
        EC("* capability " LONG_CAPS_OUT "\r\nc ok done\r\n"))

RH_CASE(t_pop3_capa_long, "POP3 CAPA lines are decided whole however they arrive", RH_POP3,
        RH_SCAN_OFF, C("CAPA\r\n"), EB("CAPA\r\n"),
        B("+OK\r\nTOP\r\nSASL PLAIN LOGIN " LONG_CAPS "\r\nIMPLEMENTATION " LONG_CAPS
          "\r\nSTLS\r\n.\r\n"),
        EC("+OK\r\nTOP\r\nIMPLEMENTATION " LONG_CAPS "\r\n.\r\n"))

/* ---- b. our lines only at a boundary ---- */

static void expect_client(struct rh *h, const char *want)
{
    size_t n;
    char *got = rh_client_received(h, &n);
    if (n != strlen(want) || memcmp(got, want, n) != 0)
        fail_msg("client received [%s], expected [%s]", got, want);
    free(got);
}

static void drop_b(struct rh *h)
{
    size_t n;
    free(rh_backend_received(h, &n));
}

static void send_b(struct rh *h, const char *t)
{
    rh_backend_send(h, t, strlen(t), 0);
}

static void send_c(struct rh *h, const char *t)
{
    rh_client_send(h, t, strlen(t), 0);
}

static void t_imap_error_mid_line(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_OFF);
    send_c(h, "n NOOP\r\n");
    drop_b(h);
    send_b(h, "* 1 FETCH (FLAGS (\\Seen) ");
    expect_client(h, "* 1 FETCH (FLAGS (\\Seen) ");
    /* The framing breaks inside the line: no BYE can follow half a line. */
    send_b(h, "X {99999999999999999999}\r\n");
    expect_client(h, "");
    assert_true(rh_closed(h));
    rh_free(&h);
}

static void t_imap_error_at_boundary(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_OFF);
    send_c(h, "n NOOP\r\n");
    drop_b(h);
    send_b(h, "* 1 EXISTS\r\n");
    expect_client(h, "* 1 EXISTS\r\n");
    send_b(h, "* 2 FETCH {99999999999999999999}\r\n");
    expect_client(h, "* BYE Backend protocol error.\r\n");
    assert_true(rh_closed(h));
    rh_free(&h);
}

/* A kick (sess_policy.c) or a timeout (session.c) ends the session through sess_end. */
static void kick_mid(enum rh_scan scan, const char *part, const char *farewell)
{
    struct rh *h = rh_open(RH_IMAP, scan);
    send_c(h, "f FETCH 1 (FLAGS)\r\n");
    drop_b(h);
    send_b(h, part);
    expect_client(h, part);
    sess_end(rh_session(h), "kicked", farewell);
    rh_settle(h);
    expect_client(h, "");
    assert_true(rh_closed(h));
    rh_free(&h);
}

static void t_kick_mid_line(void **state)
{
    (void)state;
    kick_mid(RH_SCAN_OFF, "* 1 FETCH (FLAGS (\\Seen) ", "Session terminated by an administrator.");
    kick_mid(RH_SCAN_ON, "* SEARCH 1 2 3 ", "Autologout; idle for too long");
}

static void t_kick_mid_literal(void **state)
{
    (void)state;
    kick_mid(RH_SCAN_OFF, "* 1 FETCH (BODY[HEADER] {20}\r\n0123456789",
             "Session terminated by an administrator.");
}

static void t_kick_at_boundary(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_OFF);
    send_c(h, "f FETCH 1 (FLAGS)\r\n");
    drop_b(h);
    send_b(h, "* 1 FETCH (FLAGS (\\Seen))\r\n");
    expect_client(h, "* 1 FETCH (FLAGS (\\Seen))\r\n");
    sess_end(rh_session(h), "kicked", "Session terminated by an administrator.");
    rh_settle(h);
    expect_client(h, "* BYE Session terminated by an administrator.\r\n");
    assert_true(rh_closed(h));
    rh_free(&h);
}

/* The backend breaks a POP3 multi-line answer after its status line went out: an -ERR there
 * would read as a line of the answer. */
static void t_pop3_error_mid_multiline(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_POP3, RH_SCAN_OFF);
    send_c(h, "CAPA\r\n");
    drop_b(h);
    send_b(h, "+OK\r\nTOP\r\n");
    expect_client(h, "+OK\r\nTOP\r\n");
    char *big = malloc(6001);
    assert_non_null(big);
    memset(big, 'x', 6000);
    big[6000] = '\0';
    send_b(h, big);
    free(big);
    expect_client(h, "");
    assert_true(rh_closed(h));
    rh_free(&h);
}

static void t_pop3_kick_mid_multiline(void **state)
{
    (void)state;
    struct rh *h = rh_open(RH_POP3, RH_SCAN_OFF);
    send_c(h, "LIST\r\n");
    drop_b(h);
    send_b(h, "+OK 2 messages\r\n1 100\r\n");
    expect_client(h, "+OK 2 messages\r\n1 100\r\n");
    sess_end(rh_session(h), "kicked", "Session terminated by an administrator.");
    rh_settle(h);
    expect_client(h, "");
    assert_true(rh_closed(h));
    rh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_caps_long_scan),           cmocka_unit_test(t_caps_code_long_tag),
        cmocka_unit_test(t_caps_code_untagged_long),  cmocka_unit_test(t_caps_lowercase_long),
        cmocka_unit_test(t_pop3_capa_long),           cmocka_unit_test(t_imap_error_mid_line),
        cmocka_unit_test(t_imap_error_at_boundary),   cmocka_unit_test(t_kick_mid_line),
        cmocka_unit_test(t_kick_mid_literal),         cmocka_unit_test(t_kick_at_boundary),
        cmocka_unit_test(t_pop3_error_mid_multiline), cmocka_unit_test(t_pop3_kick_mid_multiline),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
