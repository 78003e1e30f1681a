/*
 * Unit tests for proxy/imap_scan.c (FETCH content scanning) through the relay harness: clean
 * content byte-identical, infected content replaced by the notice with the right literal
 * length, parts and chunks from the session's verdict memory, oversize and error actions.
 * The stub scanner calls a message infected iff it holds RH_MARK_INFECTED or EICAR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, variant, ...) RH_CASE(fn, title, RH_IMAP, variant, __VA_ARGS__)

#define SEL                                                                                        \
    CW("s SELECT INBOX\r\n"), EB("s SELECT INBOX\r\n"),                                            \
        B("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select "          \
          "done\r\n"),                                                                             \
        EC("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select "         \
           "done\r\n")

CASE(t_clean_whole, "clean BODY[] is byte-identical and scanned as the literal", RH_SCAN_ON, SEL,
     C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK done\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK done\r\n"),
     ESCANNED("Subject: hi\r\n\r\nhello world\r\n"), ENSCANS(1))

CASE(t_infected_whole, "infected BODY[] replaced by the notice with its literal length", RH_SCAN_ON,
     SEL, C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK done\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK done\r\n"),
     ESCANNED("Subject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n"))

CASE(t_eicar_rfc822, "RFC822 with the EICAR string replaced", RH_SCAN_ON, C("f FETCH 2 RFC822\r\n"),
     EB("f FETCH 2 RFC822\r\n"),
     B("* 2 FETCH (RFC822 {84}\r\nSubject: "
       "e\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n)\r\nf "
       "OK done\r\n"),
     ECN("* 2 FETCH (RFC822 @NOTICE@)\r\nf OK done\r\n"))

CASE(t_items_around_literal, "items before and after the replaced literal are kept", RH_SCAN_ON,
     SEL, C("f UID FETCH 7 (UID FLAGS RFC822.SIZE BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (UID FLAGS RFC822.SIZE BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 42 BODY[] {42}\r\nSubject: "
       "x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n INTERNALDATE \"01-Jan-2026 00:00:00 "
       "+0000\")\r\nf OK done\r\n"),
     ECN("* 1 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 42 BODY[] @NOTICE@ INTERNALDATE "
         "\"01-Jan-2026 00:00:00 +0000\")\r\nf OK done\r\n"))

CASE(t_header_literal_not_scanned, "a header-section literal streams without a scan", RH_SCAN_ON,
     SEL, C("h UID FETCH 7 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"),
     EB("h UID FETCH 7 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"),
     B("* 1 FETCH (UID 7 BODY[HEADER.FIELDS (SUBJECT)] {14}\r\nSubject: x\r\n\r\n)\r\nh OK\r\n"),
     EC("* 1 FETCH (UID 7 BODY[HEADER.FIELDS (SUBJECT)] {14}\r\nSubject: x\r\n\r\n)\r\nh OK\r\n"),
     ENSCANS(0))

CASE(t_envelope_literal_then_body, "an ENVELOPE literal passes, the BODY[] after it is replaced",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 (ENVELOPE BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (ENVELOPE BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 ENVELOPE (NIL {5}\r\nhello NIL NIL NIL NIL NIL NIL NIL NIL) BODY[] "
       "{42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (UID 7 ENVELOPE (NIL {5}\r\nhello NIL NIL NIL NIL NIL NIL NIL NIL) BODY[] "
         "@NOTICE@)\r\nf OK\r\n"))

CASE(t_two_messages, "FETCH 1:2: the clean one identical, the infected one replaced", RH_SCAN_ON,
     SEL, C("f FETCH 1:2 (UID BODY.PEEK[])\r\n"), EB("f FETCH 1:2 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\n* 2 FETCH (UID 7 "
       "BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf OK done\r\n"),
     ECN("* 1 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\n* 2 FETCH (UID 7 "
         "BODY[] @NOTICE@)\r\nf OK done\r\n"),
     ENSCANS(2))

CASE(t_order_kept, "responses after a held FETCH keep their order", RH_SCAN_ON, SEL,
     C("f FETCH 1 (BODY.PEEK[])\r\n"), EB("f FETCH 1 (BODY.PEEK[])\r\n"),
     B("* 1 FETCH (BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\n* 4 "
       "EXISTS\r\n* 1 RECENT\r\nf OK done\r\n"),
     ECN("* 1 FETCH (BODY[] @NOTICE@)\r\n* 4 EXISTS\r\n* 1 RECENT\r\nf OK done\r\n"))

CASE(t_scan_error_blocked, "a scan error applies error_action block", RH_SCAN_ON, SEL,
     C("f FETCH 3 BODY.PEEK[]\r\n"), EB("f FETCH 3 BODY.PEEK[]\r\n"),
     B("* 3 FETCH (BODY[] {44}\r\nSubject: err\r\nX-Harness-Scan-Error: 1\r\n\r\nx\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 3 FETCH (BODY[] @BLOCKED@)\r\nf OK\r\n"))

CASE(t_oversize_pass, "over max_scan_size with oversize_action pass: streamed, not scanned",
     RH_SCAN_SMALL_PASS, C("f FETCH 1 BODY.PEEK[]\r\n"), EB("f FETCH 1 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (BODY[] {1161}\r\n" RH_BIG_MSG ")\r\nf OK\r\n"),
     EC("* 1 FETCH (BODY[] {1161}\r\n" RH_BIG_MSG ")\r\nf OK\r\n"), ENSCANS(0))

CASE(t_oversize_block, "over max_scan_size with oversize_action block: a notice, no scan",
     RH_SCAN_SMALL_BLOCK, C("f FETCH 1 BODY.PEEK[]\r\n"), EB("f FETCH 1 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (BODY[] {1161}\r\n" RH_BIG_MSG ")\r\nf OK\r\n"),
     ECN("* 1 FETCH (BODY[] @BLOCKED@)\r\nf OK\r\n"), ENSCANS(0))

CASE(t_small_under_limit, "under a small max_scan_size: still scanned and replaced",
     RH_SCAN_SMALL_BLOCK, C("f FETCH 1 BODY.PEEK[]\r\n"), EB("f FETCH 1 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (BODY[] @NOTICE@)\r\nf OK\r\n"), ENSCANS(1))

CASE(t_verdict_cache, "the same message again: judged from the verdict cache, same answer",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 BODY.PEEK[]\r\n"), EB("f UID FETCH 7 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"), C("g UID FETCH 9 BODY.PEEK[]\r\n"),
     EB("g UID FETCH 9 BODY.PEEK[]\r\n"),
     B("* 3 FETCH (UID 9 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\ng "
       "OK\r\n"),
     ECN("* 3 FETCH (UID 9 BODY[] @NOTICE@)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_memo_partial_first, "a chunk of a judged infected message: the same range of its notice",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"),
     C("g UID FETCH 7 (UID BODY.PEEK[]<0.20>)\r\n"),
     EB("g UID FETCH 7 (UID BODY.PEEK[]<0.20>)\r\n"),
     B("* 1 FETCH (UID 7 BODY[]<0> {20}\r\nSubject: x\r\nX-Harnes)\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[]<0> @SLICE:0:20@)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_memo_partial_last,
     "the last chunk of a judged infected message: the same range, never longer than the server's",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"),
     C("g UID FETCH 7 (UID BODY.PEEK[]<20.100>)\r\n"),
     EB("g UID FETCH 7 (UID BODY.PEEK[]<20.100>)\r\n"),
     B("* 1 FETCH (UID 7 BODY[]<20> {22}\r\ns-Infected: 1\r\n\r\nbad\r\n)\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[]<20> @SLICE:20:22@)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_memo_part, "a MIME part of a judged infected message: the notice text", RH_SCAN_ON, SEL,
     C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"),
     C("g UID FETCH 7 (UID BODY.PEEK[1])\r\n"), EB("g UID FETCH 7 (UID BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (UID 7 BODY[1] {5}\r\nbad\r\n)\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[1] @BODYSLICE:0:0@)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_memo_part_range,
     "a byte range of a part of a judged infected message: that range of the "
     "notice text, no longer than the server's literal (issue 15)",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"),
     C("g UID FETCH 7 (UID BODY.PEEK[1]<1.3>)\r\n"),
     EB("g UID FETCH 7 (UID BODY.PEEK[1]<1.3>)\r\n"),
     B("* 1 FETCH (UID 7 BODY[1]<1> {3}\r\nad\r)\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[1]<1> @BODYSLICE:1:3@)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_memo_partial_clean, "a chunk of a judged clean message passes byte-identical", RH_SCAN_ON,
     SEL, C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     EB("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     B("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_part_unjudgeable_blocked,
     "a part whose whole message the backend would not give us: error_action block", RH_SCAN_ON,
     C("p FETCH 1 (BODY.PEEK[1])\r\n"), EB("PCJ1 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("PCJ1 BAD No mailbox selected.\r\n"), EB("p FETCH 1 (BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n)\r\np OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @BLOCKED@)\r\np OK\r\n"), ENSCANS(0))

CASE(t_failed_select_forgets, "a failed SELECT leaves nothing selected: the memo no longer applies",
     RH_SCAN_ON, SEL, C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("t SELECT Nope\r\n"), EB("t SELECT Nope\r\n"), B("t NO Mailbox doesn't exist\r\n"),
     EC("t NO Mailbox doesn't exist\r\n"), C("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     EB("PCJ1 UID FETCH 8 (UID BODY.PEEK[])\r\n"), B("PCJ1 BAD No mailbox selected.\r\n"),
     EB("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     B("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"),
     /* the first 10 bytes of the blocked notice (From: is ours: no original header here) */
     ECN("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nFrom: Port)\r\ng OK\r\n"))

CASE(t_flags_fetch_untouched, "a FETCH without content passes unchanged, no scan", RH_SCAN_ON, SEL,
     C("f FETCH 1:2 (FLAGS UID)\r\n"), EB("f FETCH 1:2 (FLAGS UID)\r\n"),
     B("* 1 FETCH (FLAGS (\\Seen) UID 7)\r\n* 2 FETCH (FLAGS () UID 8)\r\nf OK\r\n"),
     EC("* 1 FETCH (FLAGS (\\Seen) UID 7)\r\n* 2 FETCH (FLAGS () UID 8)\r\nf OK\r\n"), ENSCANS(0))

CASE(t_binary_literal8, "a BINARY[] literal8 nobody judged (the server's decoding) is blocked",
     RH_SCAN_ON, SEL, C("f FETCH 1 (FLAGS)\r\n"), EB("f FETCH 1 (FLAGS)\r\n"),
     B("* 1 FETCH (BINARY[] ~{42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (BINARY[] ~@BLOCKED@)\r\nf OK\r\n"))

CASE(t_second_content_literal,
     "a second content literal of the replaced message gets the notice text", RH_SCAN_ON, SEL,
     C("f UID FETCH 7 (BODY.PEEK[] BODY.PEEK[TEXT])\r\n"),
     EB("PCJ1 UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\n"
       "PCJ1 OK\r\n"),
     EB("f UID FETCH 7 (BODY.PEEK[] BODY.PEEK[TEXT])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n "
       "BODY[TEXT] {5}\r\nbad\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@ BODY[TEXT] @BODYSLICE:0:0@)\r\nf OK\r\n"))

CASE(t_clean_two_literals, "a clean message with two content literals is byte-identical",
     RH_SCAN_ON, SEL, C("f UID FETCH 8 (BODY.PEEK[] BODY.PEEK[TEXT])\r\n"),
     EB("PCJ1 UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nPCJ1 OK\r\n"),
     EC(""), EB("f UID FETCH 8 (BODY.PEEK[] BODY.PEEK[TEXT])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n BODY[TEXT] "
       "{13}\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n BODY[TEXT] "
        "{13}\r\nhello world\r\n)\r\nf OK\r\n"),
     ENSCANS(1))

CASE(t_pipelined_whole_fetches, "two pipelined whole-message FETCHes answered in one write",
     RH_SCAN_ON, SEL, C("a FETCH 1 BODY.PEEK[]\r\nb FETCH 2 BODY.PEEK[]\r\n"),
     EB("a FETCH 1 BODY.PEEK[]\r\nb FETCH 2 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\na OK\r\n* "
       "2 FETCH (BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nb OK\r\n"),
     ECN("* 1 FETCH (BODY[] @NOTICE@)\r\na OK\r\n* 2 FETCH (BODY[] {28}\r\nSubject: "
         "hi\r\n\r\nhello world\r\n)\r\nb OK\r\n"),
     ENSCANS(2))

CASE(t_nil_body, "BODY[] NIL (expunged meanwhile) passes", RH_SCAN_ON, SEL,
     C("f FETCH 1 BODY.PEEK[]\r\n"), EB("f FETCH 1 BODY.PEEK[]\r\n"),
     B("* 1 FETCH (BODY[] NIL)\r\nf OK\r\n"), EC("* 1 FETCH (BODY[] NIL)\r\nf OK\r\n"), ENSCANS(0))

CASE(t_append_not_scanned, "an APPEND literal (client to backend) streams", RH_SCAN_ON, SEL,
     C("a APPEND INBOX {42+}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n\r\n"),
     EB("a APPEND INBOX {42}\r\n"), B("+ go\r\n"),
     EB("Subject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n\r\n"), B("a OK appended\r\n"),
     EC("a OK appended\r\n"), ENSCANS(0))

CASE(t_select_split_mailbox,
     "a SELECT split anywhere (even after \"SELECT \") still names the mailbox: the memo applies",
     RH_SCAN_ON, C("s SELECT INBOX\r\n"), EB("s SELECT INBOX\r\n"),
     B("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select done\r\n"),
     EC("* 3 EXISTS\r\n* OK [UIDVALIDITY 1234] UIDs valid\r\ns OK [READ-WRITE] Select done\r\n"),
     C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     EB("g UID FETCH 8 (UID BODY.PEEK[]<0.10>)\r\n"),
     B("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[]<0> {10}\r\nSubject: h)\r\ng OK\r\n"))

CASE(t_cached_pipelined,
     "pipelined whole FETCHes of messages already judged (cache hits) in one burst", RH_SCAN_ON,
     SEL, C("f UID FETCH 7:8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7:8 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\n* 2 "
       "FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\n* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: "
         "hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("g UID FETCH 7 (UID BODY.PEEK[])\r\nh UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     EB("g UID FETCH 7 (UID BODY.PEEK[])\r\nh UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\ng "
       "OK\r\n* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nh OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\ng OK\r\n* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: "
         "hi\r\n\r\nhello world\r\n)\r\nh OK\r\n"),
     ENSCANS(2))

/* Large messages (over the 64k relay buffer and the inline-hash limit): whole, slow reader
 * and six splits (rh_case.big). */
static void t_big_clean_and_infected(void **state)
{
    (void)state;
    char *clean = rh_message(150000, NULL);
    char *bad = rh_message(150000, RH_MARK_INFECTED ": 1");
    char *r1 = rh_strf("* 1 FETCH (UID 8 BODY[] {%zu}\r\n%s)\r\nf OK\r\n", strlen(clean), clean);
    char *r2 = rh_strf("* 2 FETCH (UID 7 BODY[] {%zu}\r\n%s FLAGS (\\Seen))\r\ng OK\r\n",
                       strlen(bad), bad);
    const struct rh_step steps[] = {
        SEL,
        C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
        EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
        B(r1),
        EC(r1),
        ESCANNED(clean),
        C("g UID FETCH 7 (UID BODY[])\r\n"),
        EB("g UID FETCH 7 (UID BODY[])\r\n"),
        B(r2),
        ECN("* 2 FETCH (UID 7 BODY[] @NOTICE@ FLAGS (\\Seen))\r\ng OK\r\n"),
        ENSCANS(2),
        END};
    rh_run_case(&(struct rh_case){.name = "150 kB messages: the clean one identical, the infected "
                                          "one replaced",
                                  .proto = RH_IMAP,
                                  .scan = RH_SCAN_ON,
                                  .steps = steps,
                                  .big = true});
    free(clean), free(bad), free(r1), free(r2);
}

/* Issue 15: response lines are framed without a cap after login, but an untagged FETCH is held
 * until its content is judged. One whose text before the literal fits the hold bound (relay
 * buffer minus 4k: 60k) is delivered identical and scanned; a longer one ends the session
 * without one byte of it — above all not the BODY[] literal, which was never judged. */
static void t_long_fetch_lines(void **state)
{
    (void)state;
    char *pad_ok = malloc(40001), *pad_long = malloc(70001);
    assert_non_null(pad_ok);
    assert_non_null(pad_long);
    memset(pad_ok, 'p', 40000);
    pad_ok[40000] = '\0';
    memset(pad_long, 'p', 70000);
    pad_long[70000] = '\0';
    const char *msg = "Subject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n";
    char *ok = rh_strf("* 2 FETCH (UID 8 BODYSTRUCTURE (\"text\" \"plain\" (\"name\" \"%s\") NIL "
                       "NIL \"7bit\" 13 1) BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\n"
                       "f OK\r\n",
                       pad_ok);
    char *bad = rh_strf("* 1 FETCH (UID 7 BODYSTRUCTURE (\"text\" \"plain\" (\"name\" \"%s\") NIL "
                        "NIL \"7bit\" 13 1) BODY[] {%zu}\r\n%s)\r\ng OK\r\n",
                        pad_long, strlen(msg), msg);
    /* The long text before the literal holds no content (the tokenizer proves it): its start
     * streams and the literal is still judged. Quoted content over the hold bound cannot be
     * proven harmless: the session ends, nothing of it goes out. */
    char *bad_out = rh_strf("* 1 FETCH (UID 7 BODYSTRUCTURE (\"text\" \"plain\" (\"name\" \"%s\") "
                            "NIL NIL \"7bit\" 13 1) BODY[] @NOTICE@)\r\ng OK\r\n",
                            pad_long);
    char *quoted = rh_strf("* 1 FETCH (UID 7 PREVIEW \"%s\")\r\nh OK\r\n", pad_long);
    const struct rh_step steps[] = {SEL,
                                    C("f UID FETCH 8 (UID BODYSTRUCTURE BODY.PEEK[])\r\n"),
                                    EB("f UID FETCH 8 (UID BODYSTRUCTURE BODY.PEEK[])\r\n"),
                                    B(ok),
                                    EC(ok),
                                    ESCANNED("Subject: hi\r\n\r\nhello world\r\n"),
                                    C("g UID FETCH 7 (UID BODYSTRUCTURE BODY.PEEK[])\r\n"),
                                    EB("g UID FETCH 7 (UID BODYSTRUCTURE BODY.PEEK[])\r\n"),
                                    B(bad),
                                    ECN(bad_out),
                                    C("h UID FETCH 7 (FLAGS)\r\n"),
                                    EB("h UID FETCH 7 (FLAGS)\r\n"),
                                    B(quoted),
                                    EC("* BYE FETCH response too long to scan.\r\n"),
                                    ECLOSED,
                                    ENSCANS(2),
                                    END};
    rh_run_case(&(struct rh_case){.name = "a 40 kB FETCH line held and passed; a 70 kB one "
                                          "streams its proven non-content start; 70 kB of quoted "
                                          "content fails closed",
                                  .proto = RH_IMAP,
                                  .scan = RH_SCAN_ON,
                                  .steps = steps,
                                  .big = true});
    free(pad_ok), free(pad_long), free(ok), free(bad), free(bad_out), free(quoted);
}

/* Issue 14 (regressions, named test_regress_14_* in the integration tests): the stall. The
 * verdict of a part or chunk was found at once (session memo, or "cannot be judged"); the
 * filter paused because s->down still held the previous answer, sess_pump() flushed that
 * answer synchronously and never ran the filter again, and no write event was armed: the
 * second answer never reached the client. Failed in the "whole" mode (both answers in one
 * backend read). Fixed by CONN_EV_DRAINED and the conn's ordered block queue. */

CASE(t_regress_14_pipelined_parts_memo,
     "issue 14 stall: two pipelined part fetches of a judged message", RH_SCAN_ON, SEL,
     C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 1 FETCH (UID 7 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("c UID FETCH 7 (UID BODY.PEEK[1])\r\nd UID FETCH 7 (UID BODY.PEEK[TEXT])\r\n"),
     EB("c UID FETCH 7 (UID BODY.PEEK[1])\r\nd UID FETCH 7 (UID BODY.PEEK[TEXT])\r\n"),
     B("* 1 FETCH (UID 7 BODY[1] {13}\r\nhello world\r\n)\r\nc OK\r\n* 1 FETCH (UID 7 BODY[TEXT] "
       "{13}\r\nhello world\r\n)\r\nd OK\r\n"),
     EC("* 1 FETCH (UID 7 BODY[1] {13}\r\nhello world\r\n)\r\nc OK\r\n* 1 FETCH (UID 7 BODY[TEXT] "
        "{13}\r\nhello world\r\n)\r\nd OK\r\n"),
     ENSCANS(1))

CASE(t_regress_14_pipelined_chunks_memo,
     "issue 14 stall: pipelined <0.n> and <n.n> chunks of a judged infected message", RH_SCAN_ON,
     SEL, C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\nf "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n"),
     C("c UID FETCH 7 (UID BODY.PEEK[]<0.20>)\r\nd UID FETCH 7 (UID BODY.PEEK[]<20.100>)\r\n"),
     EB("c UID FETCH 7 (UID BODY.PEEK[]<0.20>)\r\nd UID FETCH 7 (UID BODY.PEEK[]<20.100>)\r\n"),
     B("* 1 FETCH (UID 7 BODY[]<0> {20}\r\nSubject: x\r\nX-Harnes)\r\nc OK\r\n* 1 FETCH (UID 7 "
       "BODY[]<20> {22}\r\ns-Infected: 1\r\n\r\nbad\r\n)\r\nd OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[]<0> @SLICE:0:20@)\r\nc OK\r\n* 1 FETCH (UID 7 BODY[]<20> "
         "@SLICE:20:22@)\r\nd OK\r\n"),
     ENSCANS(1))

CASE(t_regress_14_refetch_two_messages,
     "issue 14 stall: re-fetching parts of two messages already judged, in one burst", RH_SCAN_ON,
     SEL, C("f UID FETCH 7:8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7:8 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n)\r\n* 2 "
       "FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\n* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: "
         "hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("g UID FETCH 7:8 (UID BODY.PEEK[1])\r\n"), EB("g UID FETCH 7:8 (UID BODY.PEEK[1])\r\n"),
     B("* 1 FETCH (UID 7 BODY[1] {5}\r\nbad\r\n)\r\n* 2 FETCH (UID 8 BODY[1] {13}\r\nhello "
       "world\r\n)\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[1] @BODYSLICE:0:0@)\r\n* 2 FETCH (UID 8 BODY[1] {13}\r\nhello "
         "world\r\n)\r\ng OK\r\n"),
     ENSCANS(2))

CASE(t_regress_14_pipelined_parts_unjudged,
     "issue 14 stall: two pipelined parts that cannot be judged (no mailbox)", RH_SCAN_ON,
     C("c FETCH 1 (BODY.PEEK[1])\r\nd FETCH 1 (BODY.PEEK[2])\r\n"),
     EB("PCJ1 FETCH 1 (UID BODY.PEEK[])\r\n"), B("PCJ1 BAD No mailbox selected.\r\n"),
     EB("c FETCH 1 (BODY.PEEK[1])\r\n"), B("* 1 FETCH (BODY[1] {5}\r\nbad\r\n)\r\nc OK\r\n"),
     ECN("* 1 FETCH (BODY[1] @BLOCKED@)\r\nc OK\r\n"), EB("PCJ2 FETCH 1 (UID BODY.PEEK[])\r\n"),
     B("PCJ2 BAD No mailbox selected.\r\n"), EB("d FETCH 1 (BODY.PEEK[2])\r\n"),
     B("* 1 FETCH (BODY[2] {5}\r\nbad\r\n)\r\nd OK\r\n"),
     ECN("* 1 FETCH (BODY[2] @BLOCKED@)\r\nd OK\r\n"))

/* ---- issue 15: the FETCH response tokenizer ---- */

#define JUDGE_7_INFECTED                                                                           \
    C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),           \
        B("* 1 FETCH (UID 7 BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: "                     \
          "1\r\n\r\nbad\r\n)\r\n"                                                                  \
          "f OK\r\n"),                                                                             \
        ECN("* 1 FETCH (UID 7 BODY[] @NOTICE@)\r\nf OK\r\n")

CASE(t_i15_keyword_bracket_whole, "a keyword foo[ in FLAGS before BODY[]: still scanned, replaced",
     RH_SCAN_ON, SEL, C("f UID FETCH 7 (FLAGS BODY.PEEK[])\r\n"),
     EB("f UID FETCH 7 (FLAGS BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 FLAGS (foo[) BODY[] {42}\r\nSubject: x\r\nX-Harness-Infected: "
       "1\r\n\r\nbad\r\n)\r\nf OK\r\n"),
     ECN("* 1 FETCH (UID 7 FLAGS (foo[) BODY[] @NOTICE@)\r\nf OK\r\n"), ENSCANS(1))

CASE(t_i15_keyword_brackets_part, "keywords x] and y[ before BODY[1]: judged as a part", RH_SCAN_ON,
     C("p FETCH 1 (FLAGS)\r\n"), EB("p FETCH 1 (FLAGS)\r\n"),
     B("* 1 FETCH (FLAGS (\\Seen x] y[) BODY[1] {5}\r\nbad\r\n)\r\np OK\r\n"),
     ECN("* 1 FETCH (FLAGS (\\Seen x] y[) BODY[1] @BLOCKED@)\r\np OK\r\n"), ENSCANS(0))

CASE(t_i15_quoted_preview_blocked, "PREVIEW \"...\" of a blocked message: the string becomes NIL",
     RH_SCAN_ON, SEL, JUDGE_7_INFECTED, C("g UID FETCH 7 (FLAGS)\r\n"),
     EB("g UID FETCH 7 (FLAGS)\r\n"), B("* 1 FETCH (UID 7 PREVIEW \"bad text\")\r\ng OK\r\n"),
     ECN("* 1 FETCH (UID 7 PREVIEW NIL)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_i15_quoted_part_unjudged, "a part sent as a quoted string, message unjudgeable: NIL",
     RH_SCAN_ON, C("p FETCH 1 (FLAGS)\r\n"), EB("p FETCH 1 (FLAGS)\r\n"),
     B("* 1 FETCH (BODY[1] \"bad\" SNIPPET (FUZZY \"a \\\"b\\\" c\") FLAGS (\\Seen))\r\np OK\r\n"),
     EC("* 1 FETCH (BODY[1] NIL SNIPPET (FUZZY NIL) FLAGS (\\Seen))\r\np OK\r\n"), ENSCANS(0))

CASE(t_i15_quoted_after_header_literal,
     "PREVIEW after a header literal of a blocked message: the literal streams, the string is NIL",
     RH_SCAN_ON, SEL, JUDGE_7_INFECTED, C("g UID FETCH 7 (BODY.PEEK[HEADER])\r\n"),
     EB("g UID FETCH 7 (BODY.PEEK[HEADER])\r\n"),
     B("* 1 FETCH (UID 7 BODY[HEADER] {12}\r\nSubject: x\r\n PREVIEW \"bad\" FLAGS (a[))\r\ng "
       "OK\r\n"),
     ECN("* 1 FETCH (UID 7 BODY[HEADER] {12}\r\nSubject: x\r\n PREVIEW NIL FLAGS (a[))\r\ng "
         "OK\r\n"),
     ENSCANS(1))

CASE(t_i15_quoted_clean, "quoted content of a judged clean message is byte-identical", RH_SCAN_ON,
     SEL, C("f UID FETCH 8 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 8 (UID BODY.PEEK[])\r\n"),
     B("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     EC("* 2 FETCH (UID 8 BODY[] {28}\r\nSubject: hi\r\n\r\nhello world\r\n)\r\nf OK\r\n"),
     C("g UID FETCH 8 (FLAGS)\r\n"), EB("g UID FETCH 8 (FLAGS)\r\n"),
     B("* 2 FETCH (PREVIEW \"hello world\" UID 8)\r\ng OK\r\n"),
     EC("* 2 FETCH (PREVIEW \"hello world\" UID 8)\r\ng OK\r\n"), ENSCANS(1))

CASE(t_i15_quoted_then_literal_blocked,
     "quoted content before a literal of a blocked message: the session ends, nothing leaks",
     RH_SCAN_ON, SEL, JUDGE_7_INFECTED, C("g UID FETCH 7 (BODY.PEEK[HEADER])\r\n"),
     EB("g UID FETCH 7 (BODY.PEEK[HEADER])\r\n"),
     B("* 1 FETCH (UID 7 PREVIEW \"bad text\" BODY[HEADER] {12}\r\n"), /* ends here */
     EC("* BYE FETCH response carries content the proxy cannot replace.\r\n"), ECLOSED)

CASE(t_i15_unparsable_blocked,
     "an unparsable FETCH (\"(\" in FLAGS) of a blocked message is dropped", RH_SCAN_ON, SEL,
     JUDGE_7_INFECTED, C("g UID FETCH 7 (FLAGS)\r\n"), EB("g UID FETCH 7 (FLAGS)\r\n"),
     B("* 1 FETCH (UID 7 FLAGS (y() PREVIEW \"bad\"))\r\ng OK\r\n"), EC("g OK\r\n"), ENSCANS(1))

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_clean_whole),
        cmocka_unit_test(t_long_fetch_lines),
        cmocka_unit_test(t_i15_keyword_bracket_whole),
        cmocka_unit_test(t_i15_keyword_brackets_part),
        cmocka_unit_test(t_i15_quoted_preview_blocked),
        cmocka_unit_test(t_i15_quoted_part_unjudged),
        cmocka_unit_test(t_i15_quoted_after_header_literal),
        cmocka_unit_test(t_i15_quoted_clean),
        cmocka_unit_test(t_i15_quoted_then_literal_blocked),
        cmocka_unit_test(t_i15_unparsable_blocked),
        cmocka_unit_test(t_infected_whole),
        cmocka_unit_test(t_eicar_rfc822),
        cmocka_unit_test(t_items_around_literal),
        cmocka_unit_test(t_header_literal_not_scanned),
        cmocka_unit_test(t_envelope_literal_then_body),
        cmocka_unit_test(t_two_messages),
        cmocka_unit_test(t_order_kept),
        cmocka_unit_test(t_scan_error_blocked),
        cmocka_unit_test(t_oversize_pass),
        cmocka_unit_test(t_oversize_block),
        cmocka_unit_test(t_small_under_limit),
        cmocka_unit_test(t_verdict_cache),
        cmocka_unit_test(t_memo_partial_first),
        cmocka_unit_test(t_memo_partial_last),
        cmocka_unit_test(t_memo_part),
        cmocka_unit_test(t_memo_part_range),
        cmocka_unit_test(t_memo_partial_clean),
        cmocka_unit_test(t_part_unjudgeable_blocked),
        cmocka_unit_test(t_failed_select_forgets),
        cmocka_unit_test(t_flags_fetch_untouched),
        cmocka_unit_test(t_binary_literal8),
        cmocka_unit_test(t_second_content_literal),
        cmocka_unit_test(t_clean_two_literals),
        cmocka_unit_test(t_pipelined_whole_fetches),
        cmocka_unit_test(t_nil_body),
        cmocka_unit_test(t_append_not_scanned),
        cmocka_unit_test(t_select_split_mailbox),
        cmocka_unit_test(t_cached_pipelined),
        cmocka_unit_test(t_big_clean_and_infected),
        cmocka_unit_test(t_regress_14_pipelined_parts_memo),
        cmocka_unit_test(t_regress_14_pipelined_chunks_memo),
        cmocka_unit_test(t_regress_14_refetch_two_messages),
        cmocka_unit_test(t_regress_14_pipelined_parts_unjudged),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
