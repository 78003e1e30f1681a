/*
 * Unit tests for the session model of issue 15 in proxy/imap_relay.c (imap_allow.c): IDLE/DONE,
 * continuation requests matched to what is pending, literal framing, capability lists of any
 * length, the command and FETCH-item allow-lists. Through the relay harness: every case is
 * replayed whole, byte by byte and split at every byte boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, ...) RH_CASE(fn, title, RH_IMAP, RH_SCAN_OFF, __VA_ARGS__)

#define COMPRESS_BAD "BAD COMPRESS is not available through this proxy.\r\n"

CASE(t_idle_other_line, "a line other than DONE during IDLE: our DONE goes, never the line",
     C("i IDLE\r\n"), EB("i IDLE\r\n"), B("+ idling\r\n"), EC("+ idling\r\n"),
     C("a SELECT Other\r\n"), EB("DONE\r\n"), EC("a BAD Expected DONE.\r\n"),
     B("i OK Idle completed.\r\n"), EC("i OK Idle completed.\r\n"), C("b NOOP\r\n"),
     EB("b NOOP\r\n"), B("b OK\r\n"), EC("b OK\r\n"), EOPEN)

CASE(t_idle_compress, "COMPRESS during IDLE is refused and never reaches the backend",
     C("i IDLE\r\n"), EB("i IDLE\r\n"), B("+ idling\r\n"), EC("+ idling\r\n"),
     C("x COMPRESS DEFLATE\r\n"), EB("DONE\r\n"), EC("x BAD Expected DONE.\r\n"),
     B("i OK Idle completed.\r\n"), EC("i OK Idle completed.\r\n"), C("y COMPRESS DEFLATE\r\n"),
     EB(""), EC("y " COMPRESS_BAD), EOPEN)

CASE(t_idle_lowercase_done, "done (any case) ends IDLE", C("i IDLE\r\n"), EB("i IDLE\r\n"),
     B("+ idling\r\n"), EC("+ idling\r\n"), B("* 2 EXISTS\r\n"), EC("* 2 EXISTS\r\n"),
     C("done\r\n"), EB("done\r\n"), B("i OK done\r\n"), EC("i OK done\r\n"))

CASE(t_idle_pipelined_held, "bytes after IDLE wait for its \"+\": a literal line is no go-ahead",
     C("i IDLE\r\nb APPEND x {20}\r\nc COMPRESS DEFLATE\r\n"), EB("i IDLE\r\n"), B("+ idling\r\n"),
     EB("DONE\r\n"), EC("+ idling\r\nb BAD Expected DONE.\r\nc " COMPRESS_BAD),
     B("i OK Idle completed.\r\n"), EC("i OK Idle completed.\r\n"), EB(""), EOPEN)

CASE(t_idle_done_pipelined, "DONE sent before the \"+\" waits for it", C("i IDLE\r\nDONE\r\n"),
     EB("i IDLE\r\n"), B("+ idling\r\n"), EC("+ idling\r\n"), EB("DONE\r\n"),
     B("i OK Idle completed.\r\n"), EC("i OK Idle completed.\r\n"))

CASE(t_idle_refused, "IDLE refused by the backend: what followed is a command again",
     C("i IDLE\r\nb NOOP\r\n"), EB("i IDLE\r\n"), B("i BAD not now\r\n"), EC("i BAD not now\r\n"),
     EB("b NOOP\r\n"), B("b OK\r\n"), EC("b OK\r\n"))

CASE(t_plus_nothing_pending, "a \"+\" with nothing pending ends the session with BYE",
     C("a NOOP\r\n"), EB("a NOOP\r\n"), B("+ go ahead\r\n"),
     EC("* BYE Backend protocol error.\r\n"), ECLOSED)

CASE(t_plus_after_literal_used, "a second \"+\" for one literal is a protocol error",
     C("a APPEND x {3}\r\n"), EB("a APPEND x {3}\r\n"), B("+ ok\r\n"), EC("+ ok\r\n"), C("abc\r\n"),
     EB("abc\r\n"), B("+ again\r\n"), EC("* BYE Backend protocol error.\r\n"), ECLOSED)

CASE(t_literal_smuggle_refused, "literal bytes sent before a refused literal run as commands here",
     C("a APPEND box {20}\r\nc COMPRESS DEFLATE\r\n"), EB("a APPEND box {20}\r\n"),
     B("a NO [TRYCREATE] no such mailbox\r\n"),
     EC("a NO [TRYCREATE] no such mailbox\r\nc " COMPRESS_BAD), EB(""), EOPEN)

CASE(t_literal_smuggle_data, "after its \"+\" the same bytes are literal data",
     C("a APPEND box {20}\r\nc COMPRESS DEFLATE\r\n"), EB("a APPEND box {20}\r\n"), B("+ ok\r\n"),
     EC("+ ok\r\n"), EB("c COMPRESS DEFLATE\r\n"), C("\r\n"), EB("\r\n"), B("a OK appended\r\n"),
     EC("a OK appended\r\n"))

CASE(t_caps_long, "a CAPABILITY line over the head buffer is filtered whole", C("c CAPABILITY\r\n"),
     EB("c CAPABILITY\r\n"),
     B("* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
       "THREAD=REFERENCES THREAD=REFS MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
       "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
       "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
       "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE COMPRESS=DEFLATE X-FOO\r\nc OK\r\n"),
     EC("* CAPABILITY IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
        "THREAD=REFERENCES THREAD=REFS MULTIAPPEND CATENATE UNSELECT CHILDREN "
        "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE ESEARCH ESORT SEARCHRES "
        "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE "
        "STATUS=SIZE SAVEDATE LITERAL+ SPECIAL-USE\r\nc OK\r\n"))

CASE(t_caps_codes, "[CAPABILITY] response codes, tagged and untagged, are filtered",
     C("n NOOP\r\n"), EB("n NOOP\r\n"),
     B("* OK [CAPABILITY IMAP4rev1 PREVIEW=FUZZY IDLE] hi\r\nn OK [CAPABILITY IMAP4rev1 "
       "URLAUTH NOTIFY MOVE] done\r\n"),
     EC("* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\nn OK [CAPABILITY IMAP4rev1 MOVE] done\r\n"))

CASE(t_refused_commands, "commands outside the allow-list are refused with BAD",
     C("a URLFETCH imap://x/INBOX;UID=1\r\nb GENURLAUTH x INTERNAL\r\nc NOTIFY NONE\r\n"
       "d ENABLE QRESYNC\r\ne XYZZY\r\nf LOGIN u p\r\ng NOOP\r\n"),
     EB("g NOOP\r\n"),
     EC("a BAD URLAUTH is not available through this proxy.\r\n"
        "b BAD URLAUTH is not available through this proxy.\r\n"
        "c BAD NOTIFY is not available through this proxy.\r\n"
        "d BAD Extension not available through this proxy.\r\n"
        "e BAD Command not available through this proxy.\r\n"
        "f BAD Already logged in.\r\n"),
     B("g OK\r\n"), EC("g OK\r\n"))

CASE(t_fetch_items_refused, "FETCH of items the proxy does not model is refused whole",
     C("a FETCH 1 (FLAGS PREVIEW)\r\nb UID FETCH 1 (SNIPPET (FUZZY))\r\n"
       "c FETCH 1 (BODY.PEEK[HEADER.FIELDS {4}\r\nd FETCH 1 (UID BODY[])\r\n"),
     EB("d FETCH 1 (UID BODY[])\r\n"),
     EC("a BAD FETCH item not supported by this proxy.\r\n"
        "b BAD FETCH item not supported by this proxy.\r\n"
        "c BAD Literal in FETCH not supported by this proxy.\r\n"))

CASE(t_enable_allowed, "ENABLE CONDSTORE passes", C("e ENABLE CONDSTORE\r\n"),
     EB("e ENABLE CONDSTORE\r\n"), B("* ENABLED CONDSTORE\r\ne OK\r\n"),
     EC("* ENABLED CONDSTORE\r\ne OK\r\n"))

/* Scanning on: the mailbox a SELECT names is the one the memo and the scan fetcher use. A chunk
 * of a message judged clean passes only while the proxy knows the selected mailbox (else it
 * cannot be judged and is blocked: test_relay_imap_scan.c t_failed_select_forgets). */
#define MEMO_STEPS                                                                                 \
    C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),           \
        B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),      \
        EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),     \
        C("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),                                            \
        EB("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),                                           \
        B("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"),                           \
        EC("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n")

#define SELECTED "* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select done\r\n"

#define LONG_NAME                                                                                  \
    "\"a mailbox name with spaces and a \\\"quote\\\" that is much longer than the framer's "      \
    "head of 128 bytes, so that no fixed-size copy can hold it whole\""

RH_CASE(t_select_literal_name, "a SELECT whose name is a literal names the mailbox", RH_IMAP,
        RH_SCAN_ON, C("s SELECT {11}\r\n"), EB("s SELECT {11}\r\n"), B("+ ok\r\n"), EC("+ ok\r\n"),
        C("Other Box\"1\r\n"), EB("Other Box\"1\r\n"), B(SELECTED), EC(SELECTED), MEMO_STEPS)

RH_CASE(t_select_long_quoted_name, "a quoted name longer than the head names the mailbox", RH_IMAP,
        RH_SCAN_ON, C("s SELECT " LONG_NAME "\r\n"), EB("s SELECT " LONG_NAME "\r\n"), B(SELECTED),
        EC(SELECTED), MEMO_STEPS)

RH_CASE(t_select_name_too_long, "a literal name over 1 KiB is refused, nothing selected", RH_IMAP,
        RH_SCAN_ON, C("s SELECT {1025}\r\n"), EB(""),
        EC("s BAD Mailbox name too long for this proxy.\r\n"), EOPEN)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_idle_other_line),
        cmocka_unit_test(t_idle_compress),
        cmocka_unit_test(t_idle_lowercase_done),
        cmocka_unit_test(t_idle_pipelined_held),
        cmocka_unit_test(t_idle_done_pipelined),
        cmocka_unit_test(t_idle_refused),
        cmocka_unit_test(t_plus_nothing_pending),
        cmocka_unit_test(t_plus_after_literal_used),
        cmocka_unit_test(t_literal_smuggle_refused),
        cmocka_unit_test(t_literal_smuggle_data),
        cmocka_unit_test(t_caps_long),
        cmocka_unit_test(t_caps_codes),
        cmocka_unit_test(t_refused_commands),
        cmocka_unit_test(t_fetch_items_refused),
        cmocka_unit_test(t_enable_allowed),
        cmocka_unit_test(t_select_literal_name),
        cmocka_unit_test(t_select_long_quoted_name),
        cmocka_unit_test(t_select_name_too_long),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
