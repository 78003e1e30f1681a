/*
 * Unit tests for proxy/imap_prefetch.c through the relay harness (issue 15): a part or byte
 * range is judged on the whole message the proxy fetches first on the same backend connection
 * (PCJ<n> FETCH <the client's set> (UID BODY.PEEK[])), between the client's commands. The
 * harness plays the backend, so every case scripts the answer to the proxy's own FETCH; each
 * is replayed whole, with a slow reader, byte by byte and split at every byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, ...) RH_CASE(fn, title, RH_IMAP, RH_SCAN_ON, __VA_ARGS__)

#define SEL                                                                                        \
    CW("s SELECT INBOX\r\n"), EB("s SELECT INBOX\r\n"),                                            \
        B("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select "          \
          "done\r\n"),                                                                             \
        EC("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select "         \
           "done\r\n")

#define CLEAN_MSG "Subject: hi\r\n\r\nhello world\r\n"                 /* 28 bytes */
#define BAD_MSG   "Subject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n" /* 42 bytes */

CASE(t_seq_part_clean, "a part by seq: judged on our FETCH, then released byte-identical", SEL,
     C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"), EC(""),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK Fetch completed.\r\n"), EC(""),
     EB("p FETCH 2 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     EC("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"), ESCANNED(CLEAN_MSG), ENSCANS(1))

CASE(t_seq_part_infected, "a part by seq of an infected message: the notice text", SEL,
     C("p FETCH 1 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ1 OK\r\n"), EC(""),
     EB("p FETCH 1 (BODY.PEEK[1])\r\n"), B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n)\r\np OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @NOTICETEXT@)\r\np OK\r\n"), ENSCANS(1))

CASE(t_uid_part_infected, "a part by UID of an infected message: the notice text", SEL,
     C("p UID FETCH 7 (BODY.PEEK[TEXT])\r\n"), EB("PCJ1 UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p UID FETCH 7 (BODY.PEEK[TEXT])\r\n"),
     B("* 1 FETCH (UID 7 BODY[TEXT] {5}\r\nbad\r\n)\r\np OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[TEXT] @NOTICETEXT@)\r\np OK\r\n"))

CASE(t_seq_partial_infected, "a byte range by seq of an infected message: that range of the notice",
     SEL, C("p FETCH 1 (BODY.PEEK[]<0.20>)\r\n"), EB("PCJ1 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p FETCH 1 (BODY.PEEK[]<0.20>)\r\n"),
     B("* 1 FETCH (BODY[]<0> {20}\r\nSubject: x\r\nX-Harnes)\r\np OK\r\n"),
     ECN("* 1 FETCH (BODY[]<0> @CLEANLIT:20@)\r\np OK\r\n"))

CASE(t_seq_map_by_position, "1:* parts: each response judged by the UID our FETCH saw at its seq",
     SEL, C("p FETCH 1:* (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 1:* (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\n* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG
       ")\r\nPCJ1 OK\r\n"),
     EB("p FETCH 1:* (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n)\r\n* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np "
       "OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @NOTICETEXT@)\r\n* 2 FETCH (BODY[1] {13}\r\nhello "
         "world\r\n)\r\np OK\r\n"),
     ENSCANS(2))

CASE(t_pipelined_order, "commands pipelined behind a held FETCH wait, then go on in order", SEL,
     C("p FETCH 2 (BODY.PEEK[1])\r\nn NOOP\r\nq FETCH 2 (FLAGS)\r\n"),
     EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p FETCH 2 (BODY.PEEK[1])\r\nn NOOP\r\nq FETCH 2 (FLAGS)\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\nn OK\r\n* 2 FETCH (FLAGS "
       "())\r\nq OK\r\n"),
     EC("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\nn OK\r\n* 2 FETCH (FLAGS "
        "())\r\nq OK\r\n"))

CASE(t_waits_for_outstanding, "our FETCH waits until the client's earlier command is answered", SEL,
     C("n NOOP\r\n"), EB("n NOOP\r\n"), C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB(""),
     B("* 4 EXISTS\r\nn OK\r\n"), EC("* 4 EXISTS\r\nn OK\r\n"),
     EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p FETCH 2 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     EC("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"))

CASE(t_prefetch_fails_blocked, "our FETCH answered NO: the part is unjudged and blocked", SEL,
     C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("PCJ1 NO [SERVERBUG] Internal error\r\n"), EC(""), EB("p FETCH 2 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     ECN("* 2 FETCH (BODY[1] @BLOCKED@)\r\np OK\r\n"), ENSCANS(0))

CASE(t_untagged_forwarded, "untagged EXPUNGE/EXISTS/RECENT during our FETCH reach the client", SEL,
     C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("* 3 EXPUNGE\r\n* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG
       ")\r\n* 4 EXISTS\r\n* 1 RECENT\r\nPCJ1 OK\r\n"),
     EC("* 3 EXPUNGE\r\n* 4 EXISTS\r\n* 1 RECENT\r\n"), EB("p FETCH 2 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     EC("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"))

CASE(t_merged_flags_forwarded, "a FLAGS item merged into our FETCH's response goes to the client",
     SEL, C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 FLAGS (\\Seen $Junk) BODY[] {28}\r\n" CLEAN_MSG ")\r\n* 1 FETCH (FLAGS "
       "(\\Deleted))\r\nPCJ1 OK\r\n"),
     EC("* 2 FETCH (FLAGS (\\Seen $Junk))\r\n* 1 FETCH (FLAGS (\\Deleted))\r\n"),
     EB("p FETCH 2 (BODY.PEEK[1])\r\n"), B("p OK\r\n"), EC("p OK\r\n"))

CASE(t_nil_body_dropped, "BODY[] NIL in our FETCH's answer is ours: not forwarded, part blocked",
     SEL, C("p FETCH 2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 2 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] NIL)\r\nPCJ1 OK\r\n"), EC(""), EB("p FETCH 2 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     ECN("* 2 FETCH (BODY[1] @BLOCKED@)\r\np OK\r\n"))

CASE(t_uid_not_in_prefetch_blocked, "a part whose UID our FETCH did not judge is blocked", SEL,
     C("p UID FETCH 7:9 (BODY.PEEK[1])\r\n"), EB("PCJ1 UID FETCH 7:9 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p UID FETCH 7:9 (BODY.PEEK[1])\r\n"),
     B("* 2 FETCH (UID 8 BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     ECN("* 2 FETCH (UID 8 BODY[1] @BLOCKED@)\r\np OK\r\n"))

CASE(t_map_ends_with_command, "the seq map is the held command's only: a later seq part re-fetches",
     SEL, C("p FETCH 1 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p FETCH 1 (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
     EC("* 1 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"), C("x EXPUNGE\r\n"),
     EB("x EXPUNGE\r\n"), B("* 1 EXPUNGE\r\nx OK\r\n"), EC("* 1 EXPUNGE\r\nx OK\r\n"),
     C("q FETCH 1 (BODY.PEEK[1])\r\n"), EB("PCJ2 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 9 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ2 OK\r\n"),
     EB("q FETCH 1 (BODY.PEEK[1])\r\n"), B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n)\r\nq OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @NOTICETEXT@)\r\nq OK\r\n"))

CASE(t_uid_memo_no_refetch, "a UID part of a message judged in this selection: no second fetch",
     SEL, C("p UID FETCH 7 (BODY.PEEK[1])\r\n"), EB("PCJ1 UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\n" BAD_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p UID FETCH 7 (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (UID 7 BODY[1] {5}\r\nbad\r\n)\r\np OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[1] @NOTICETEXT@)\r\np OK\r\n"),
     C("q UID FETCH 7 (BODY.PEEK[2])\r\n"), EB("q UID FETCH 7 (BODY.PEEK[2])\r\n"),
     B("* 1 FETCH (UID 7 BODY[2] {5}\r\nbad\r\n)\r\nq OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[2] @NOTICETEXT@)\r\nq OK\r\n"), ENSCANS(1))

CASE(t_reselect_forgets, "after a new SELECT the memo is gone: the UID is fetched again", SEL,
     C("p UID FETCH 7 (BODY.PEEK[1])\r\n"), EB("PCJ1 UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK\r\n"),
     EB("p UID FETCH 7 (BODY.PEEK[1])\r\n"), B("p OK\r\n"), EC("p OK\r\n"), C("t SELECT Other\r\n"),
     EB("t SELECT Other\r\n"), B("t OK [READ-WRITE] done\r\n"), EC("t OK [READ-WRITE] done\r\n"),
     C("q UID FETCH 7 (BODY.PEEK[1])\r\n"), EB("PCJ2 UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("PCJ2 OK\r\n"), EB("q UID FETCH 7 (BODY.PEEK[1])\r\n"))

CASE(t_unparsable_fetch_bad, "a FETCH the proxy cannot parse is refused with BAD, not forwarded",
     SEL, C("p FETCH 1 (BODY.PEEK[1]\r\n"), EC("p BAD FETCH item not supported by this proxy.\r\n"),
     EB(""), C("n NOOP\r\n"), EB("n NOOP\r\n"))

CASE(t_fetch_literal_bad, "a FETCH line with a literal is refused with BAD; the next command goes",
     SEL, C("p FETCH 1 (BODY.PEEK[HEADER.FIELDS ({7}\r\n"),
     EC("p BAD Literal in FETCH not supported by this proxy.\r\n"), EB(""), C("n NOOP\r\n"),
     EB("n NOOP\r\n"))

CASE(t_too_many_refused, "an explicit set over max_prefetch_messages: NO [LIMIT], not forwarded",
     SEL, C("p FETCH 1:1001 (BODY.PEEK[1])\r\n"),
     EC("p NO [LIMIT] Too many messages in one part fetch; fetch fewer at a time.\r\n"), EB(""))

CASE(t_whole_only_not_held, "a whole-message FETCH is not held (judged in-band)", SEL,
     C("f FETCH 2 (FLAGS BODY.PEEK[])\r\n"), EB("f FETCH 2 (FLAGS BODY.PEEK[])\r\n"))

CASE(t_header_only_not_held, "header sections and ALL are not held", SEL,
     C("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From \"To\")] ENVELOPE)\r\n"),
     EB("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From \"To\")] ENVELOPE)\r\n"),
     C("g FETCH 1 ALL\r\n"), EB("g FETCH 1 ALL\r\n"))

CASE(t_expunge_in_uid_prefetch_moves_map,
     "an EXPUNGE during our UID FETCH moves the map as it moves the client's view", SEL,
     C("p UID FETCH 7:8 (BODY.PEEK[1])\r\n"), EB("PCJ1 UID FETCH 7:8 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {28}\r\n" CLEAN_MSG ")\r\n* 2 FETCH (UID 8 BODY[] {42}\r\n" BAD_MSG
       ")\r\n* 1 EXPUNGE\r\nPCJ1 OK\r\n"),
     EC("* 1 EXPUNGE\r\n"), EB("p UID FETCH 7:8 (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n UID 8)\r\np OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @NOTICETEXT@ UID 8)\r\np OK\r\n"))

CASE(t_vanished_in_prefetch_voids_map,
     "a VANISHED during our UID FETCH: a response without UID is not judged by the map", SEL,
     C("p UID FETCH 7:8 (BODY.PEEK[1])\r\n"), EB("PCJ1 UID FETCH 7:8 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {28}\r\n" CLEAN_MSG
       ")\r\n* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG ")\r\n* VANISHED 7\r\nPCJ1 OK\r\n"),
     EC("* VANISHED 7\r\n"), EB("p UID FETCH 7:8 (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (BODY[1] {13}\r\nhello world\r\n UID 8)\r\np OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @BLOCKED@ UID 8)\r\np OK\r\n"))

RH_CASE(t_prefetch_limit, "past max_prefetch_messages our FETCH's answers are dropped unjudged",
        RH_IMAP, RH_SCAN_PREFETCH2, SEL, C("p FETCH 1:* (BODY.PEEK[1])\r\n"),
        EB("PCJ1 FETCH 1:* (UID BODY.PEEK[])\r\n"),
        B("* 1 FETCH (UID 7 BODY[] {28}\r\n" CLEAN_MSG
          ")\r\n* 2 FETCH (UID 8 BODY[] {28}\r\n" CLEAN_MSG
          ")\r\n* 3 FETCH (UID 9 BODY[] {28}\r\n" CLEAN_MSG ")\r\nPCJ1 OK\r\n"),
        EC(""), EB("p FETCH 1:* (BODY.PEEK[1])\r\n"),
        B("* 1 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\n* 2 FETCH (BODY[1] {13}\r\nhello "
          "world\r\n)\r\n* 3 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\np OK\r\n"),
        ECN("* 1 FETCH (BODY[1] {13}\r\nhello world\r\n)\r\n* 2 FETCH (BODY[1] {13}\r\nhello "
            "world\r\n)\r\n* 3 FETCH (BODY[1] @BLOCKED@)\r\np OK\r\n"),
        ENSCANS(1))

RH_CASE(t_prefetch_limit_up_front, "an explicit set over the limit is refused before anything",
        RH_IMAP, RH_SCAN_PREFETCH2, SEL, C("p FETCH 1:3 (BODY.PEEK[1])\r\n"),
        EC("p NO [LIMIT] Too many messages in one part fetch; fetch fewer at a time.\r\n"), EB(""),
        C("q FETCH 1:2 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 1:2 (UID BODY.PEEK[])\r\n"))

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_seq_part_clean),
        cmocka_unit_test(t_seq_part_infected),
        cmocka_unit_test(t_uid_part_infected),
        cmocka_unit_test(t_seq_partial_infected),
        cmocka_unit_test(t_seq_map_by_position),
        cmocka_unit_test(t_pipelined_order),
        cmocka_unit_test(t_waits_for_outstanding),
        cmocka_unit_test(t_prefetch_fails_blocked),
        cmocka_unit_test(t_untagged_forwarded),
        cmocka_unit_test(t_merged_flags_forwarded),
        cmocka_unit_test(t_nil_body_dropped),
        cmocka_unit_test(t_uid_not_in_prefetch_blocked),
        cmocka_unit_test(t_map_ends_with_command),
        cmocka_unit_test(t_uid_memo_no_refetch),
        cmocka_unit_test(t_reselect_forgets),
        cmocka_unit_test(t_unparsable_fetch_bad),
        cmocka_unit_test(t_fetch_literal_bad),
        cmocka_unit_test(t_too_many_refused),
        cmocka_unit_test(t_whole_only_not_held),
        cmocka_unit_test(t_header_only_not_held),
        cmocka_unit_test(t_expunge_in_uid_prefetch_moves_map),
        cmocka_unit_test(t_vanished_in_prefetch_voids_map),
        cmocka_unit_test(t_prefetch_limit),
        cmocka_unit_test(t_prefetch_limit_up_front),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
