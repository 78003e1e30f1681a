/*
 * Unit tests for proxy/imap_relay.c through the relay harness (tests/unit/relay_harness.h): a
 * real session in relay, the client and the backend played by the test, every case replayed
 * whole, byte by byte and split at every byte boundary. Scanning is off here
 * (test_relay_imap_scan.c has the FETCH content filter).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, ...) RH_CASE(fn, title, RH_IMAP, RH_SCAN_OFF, __VA_ARGS__)

CASE(t_noop, "NOOP round trip", C("a NOOP\r\n"), EB("a NOOP\r\n"), B("a OK NOOP completed.\r\n"),
     EC("a OK NOOP completed.\r\n"), EOPEN)

CASE(t_compress_refused, "COMPRESS refused with BAD, never reaches the backend",
     C("a COMPRESS DEFLATE\r\n"), EB(""),
     EC("a BAD COMPRESS is not available through this proxy.\r\n"), C("b NOOP\r\n"),
     EB("b NOOP\r\n"), B("b OK\r\n"), EC("b OK\r\n"))

CASE(t_compress_lowercase, "compress (any case) refused too", C("x1 compress deflate\r\n"), EB(""),
     EC("x1 BAD COMPRESS is not available through this proxy.\r\n"))

CASE(t_starttls_refused, "STARTTLS after login refused with BAD; the pipelined NOOP goes on",
     C("a STARTTLS\r\nb NOOP\r\n"), EB("b NOOP\r\n"), EC("a BAD TLS is already active.\r\n"),
     B("b OK done\r\n"), EC("b OK done\r\n"))

CASE(t_refusal_waits_for_boundary, "our BAD never lands inside a backend response",
     C("a FETCH 1 BODY[]\r\n"), EB("a FETCH 1 BODY[]\r\n"), B("* 1 FETCH (BODY[] {10}\r\n01234"),
     EC("* 1 FETCH (BODY[] {10}\r\n01234"), C("x COMPRESS DEFLATE\r\n"), EB(""), EC(""),
     B("56789)\r\n"), EC("56789)\r\nx BAD COMPRESS is not available through this proxy.\r\n"),
     B("a OK FETCH done\r\n"), EC("a OK FETCH done\r\n"))

CASE(t_capability_untagged, "untagged CAPABILITY loses COMPRESS, STARTTLS, LOGINDISABLED",
     C("c CAPABILITY\r\n"), EB("c CAPABILITY\r\n"),
     B("* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE IDLE LOGINDISABLED LITERAL+\r\n"
       "c OK done\r\n"),
     EC("* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\nc OK done\r\n"))

CASE(t_capability_code, "CAPABILITY in a tagged OK response code is rewritten", C("c NOOP\r\n"),
     EB("c NOOP\r\n"), B("c OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE STARTTLS] done\r\n"),
     EC("c OK [CAPABILITY IMAP4rev1 IDLE] done\r\n"))

CASE(t_capability_clean_untouched, "a CAPABILITY with nothing to remove is byte-identical",
     C("c CAPABILITY\r\n"), EB("c CAPABILITY\r\n"),
     B("* CAPABILITY IMAP4rev1 IDLE NAMESPACE UIDPLUS\r\nc OK Capability completed.\r\n"),
     EC("* CAPABILITY IMAP4rev1 IDLE NAMESPACE UIDPLUS\r\nc OK Capability completed.\r\n"))

CASE(t_capability_in_literal, "CAPABILITY-looking text inside a literal is not rewritten",
     C("a FETCH 1 BODY[]\r\n"), EB("a FETCH 1 BODY[]\r\n"),
     B("* 1 FETCH (BODY[] {23}\r\n* CAPABILITY STARTTLS\r\n)\r\na OK done\r\n"),
     EC("* 1 FETCH (BODY[] {23}\r\n* CAPABILITY STARTTLS\r\n)\r\na OK done\r\n"))

CASE(t_fetch_body_identical, "FETCH BODY[] streams byte-identical (scanning off)",
     C("f UID FETCH 7 (UID BODY.PEEK[])\r\n"), EB("f UID FETCH 7 (UID BODY.PEEK[])\r\n"),
     B("* 1 FETCH (UID 7 BODY[] {24}\r\nSubject: hi\r\n\r\nhello\r\n\r\n)\r\nf OK Fetch "
       "completed.\r\n"),
     EC("* 1 FETCH (UID 7 BODY[] {24}\r\nSubject: hi\r\n\r\nhello\r\n\r\n)\r\nf OK Fetch "
        "completed.\r\n"))

CASE(t_literal8_response, "a literal8 ~{n} in a response is skipped by length",
     C("b FETCH 1 BINARY[1]\r\n"), EB("b FETCH 1 BINARY[1]\r\n"),
     B("* 1 FETCH (BINARY[1] ~{7}\r\nb OK x\n)\r\nb OK done\r\n"),
     EC("* 1 FETCH (BINARY[1] ~{7}\r\nb OK x\n)\r\nb OK done\r\n"))

CASE(t_sync_literal_plus, "{n}: the literal waits for the backend's \"+\", which the client sees",
     C("a APPEND INBOX {5}\r\n"), EB("a APPEND INBOX {5}\r\n"), EC(""),
     B("+ Ready for literal data\r\n"), EC("+ Ready for literal data\r\n"), C("hello\r\n"),
     EB("hello\r\n"), B("a OK [APPENDUID 1 9] Append completed.\r\n"),
     EC("a OK [APPENDUID 1 9] Append completed.\r\n"))

CASE(t_sync_literal_pipelined, "{n} bytes sent early are held until the backend's \"+\"",
     C("a APPEND INBOX {5}\r\nhello\r\n"), EB("a APPEND INBOX {5}\r\n"), B("+ OK\r\n"),
     EC("+ OK\r\n"), EB("hello\r\n"), B("a OK done\r\n"), EC("a OK done\r\n"))

CASE(t_sync_literal_refused, "tagged NO to a {n}: the client's next bytes are a new command",
     C("a APPEND INBOX {5000000}\r\n"), EB("a APPEND INBOX {5000000}\r\n"),
     B("a NO [TOOBIG] Message too large\r\n"), EC("a NO [TOOBIG] Message too large\r\n"),
     C("b COMPRESS DEFLATE\r\nc NOOP\r\n"), EB("c NOOP\r\n"),
     EC("b BAD COMPRESS is not available through this proxy.\r\n"), B("c OK\r\n"), EC("c OK\r\n"))

CASE(t_literal_plus_rewritten, "{n+} goes to the backend as {n}; its \"+\" is swallowed",
     C("a APPEND INBOX {5+}\r\nhello\r\n"), EB("a APPEND INBOX {5}\r\n"), B("+ go\r\n"), EC(""),
     EB("hello\r\n"), B("a OK appended\r\n"), EC("a OK appended\r\n"))

CASE(t_literal_plus_refused_smuggle, "a refused {n+}: its bytes (a COMPRESS) never run",
     C("a APPEND x {20+}\r\nc COMPRESS DEFLATE\r\n\r\n"), EB("a APPEND x {20}\r\n"),
     B("a BAD Unknown command\r\n"), EC("a BAD Unknown command\r\n"), EB(""), C("b NOOP\r\n"),
     EB("b NOOP\r\n"), B("b OK\r\n"), EC("b OK\r\n"))

CASE(t_literal_mid_command, "a literal in the middle of a command, then more arguments",
     C("s SELECT {5}\r\n"), EB("s SELECT {5}\r\n"), B("+ ok\r\n"), EC("+ ok\r\n"),
     C("INBOX (CONDSTORE)\r\n"), EB("INBOX (CONDSTORE)\r\n"),
     B("* 3 EXISTS\r\ns OK [READ-WRITE] done\r\n"), EC("* 3 EXISTS\r\ns OK [READ-WRITE] done\r\n"))

CASE(t_literal_zero, "a {0} literal", C("a APPEND INBOX {0}\r\n"), EB("a APPEND INBOX {0}\r\n"),
     B("+ ok\r\n"), EC("+ ok\r\n"), C("\r\n"), EB("\r\n"), B("a NO empty\r\n"),
     EC("a NO empty\r\n"))

CASE(t_pipelined, "pipelined commands and their answers, in order",
     C("a NOOP\r\nb CHECK\r\nc UID FETCH 1:* FLAGS\r\n"),
     EB("a NOOP\r\nb CHECK\r\nc UID FETCH 1:* FLAGS\r\n"),
     B("a OK\r\nb OK\r\n* 1 FETCH (UID 4 FLAGS (\\Seen))\r\nc OK\r\n"),
     EC("a OK\r\nb OK\r\n* 1 FETCH (UID 4 FLAGS (\\Seen))\r\nc OK\r\n"))

CASE(t_idle_done, "IDLE, untagged updates, DONE", C("i IDLE\r\n"), EB("i IDLE\r\n"),
     B("+ idling\r\n"), EC("+ idling\r\n"), B("* 4 EXISTS\r\n* 1 RECENT\r\n"),
     EC("* 4 EXISTS\r\n* 1 RECENT\r\n"), C("DONE\r\n"), EB("DONE\r\n"),
     B("i OK Idle completed.\r\n"), EC("i OK Idle completed.\r\n"))

CASE(t_backend_logout,
     "LOGOUT: the backend BYE (split anywhere) and OK reach the client, no second BYE, then the "
     "close",
     C("z LOGOUT\r\n"), EB("z LOGOUT\r\n"), B("* BYE Logging out\r\nz OK Logout completed.\r\n"),
     BEOF, EC("* BYE Logging out\r\nz OK Logout completed.\r\n"), ECLOSED)

CASE(t_backend_lost, "the backend goes away: one BYE at a response boundary, then the close",
     C("a NOOP\r\n"), EB("a NOOP\r\n"), B("* 2 EXISTS\r\n"), BEOF,
     EC("* 2 EXISTS\r\n* BYE Backend connection lost.\r\n"), ECLOSED)

CASE(t_client_gone, "the client goes away: the session closes", C("a NOOP\r\n"), EB("a NOOP\r\n"),
     CEOF, ECLOSED)

CASE(t_long_line, "a response line longer than the head buffer streams unchanged",
     C("l LIST \"\" *\r\n"), EB("l LIST \"\" *\r\n"),
     B("* LIST () \"/\" "
       "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "\"\r\nl OK\r\n"),
     EC("* LIST () \"/\" "
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "\"\r\nl OK\r\n"))

CASE(t_bare_lf, "LF-only line ends are framed like CRLF", C("a NOOP\n"), EB("a NOOP\n"),
     B("a OK\n"), EC("a OK\n"))

/* Large messages (over the 64k relay buffer both ways, so reads pause on a full buffer and
 * output goes out on write events): whole, slow reader and six splits (rh_case.big). */
static void t_big_fetch_and_append(void **state)
{
    (void)state;
    char *m = rh_message(200000, NULL);
    size_t n = strlen(m);
    char *resp = rh_strf("* 1 FETCH (BODY[] {%zu}\r\n%s)\r\nf OK done\r\n", n, m);
    char *app = rh_strf("a APPEND INBOX {%zu+}\r\n%s\r\n", n, m);
    char *app_be = rh_strf("a APPEND INBOX {%zu}\r\n", n);
    char *lit = rh_strf("%s\r\n", m);
    const struct rh_step steps[] = {C("f FETCH 1 BODY[]\r\n"),
                                    EB("f FETCH 1 BODY[]\r\n"),
                                    B(resp),
                                    EC(resp),
                                    C(app),
                                    EB(app_be),
                                    B("+ go\r\n"),
                                    EC(""),
                                    EB(lit),
                                    B("a OK appended\r\n"),
                                    EC("a OK appended\r\n"),
                                    END};
    rh_run_case(&(struct rh_case){.name = "a 200 kB FETCH literal and a 200 kB APPEND literal",
                                  .proto = RH_IMAP,
                                  .scan = RH_SCAN_OFF,
                                  .steps = steps,
                                  .big = true});
    free(m), free(resp), free(app), free(app_be), free(lit);
}

/* Issue 15: no line-length limit after login. A 100 KB command line (a UID STORE set) and one
 * ending in a {n+} literal header reach the backend intact (the header rewritten to {n} as
 * always), a 200 KB response line (a SEARCH answer) reaches the client intact; each is over the
 * 64k relay buffer, so it streams in pieces and is never held whole. */
static void t_long_lines(void **state)
{
    (void)state;
    size_t n = 100000, r = 200000;
    char *set = malloc(n + 1), *hits = malloc(r + 1);
    assert_non_null(set);
    assert_non_null(hits);
    for (size_t i = 0; i < n; i += 5)
        memcpy(set + i, i ? ",1234" : "11234", 5);
    set[n] = '\0';
    for (size_t i = 0; i < r; i += 5)
        memcpy(hits + i, " 4321", 5);
    hits[r] = '\0';
    char *store = rh_strf("s UID STORE %s +FLAGS (\\Flagged)\r\n", set);
    char *search = rh_strf("* SEARCH%s\r\nq OK done\r\n", hits);
    char *app = rh_strf("a APPEND INBOX (%s) {5+}\r\nhello\r\n", set + 1);
    char *app_be = rh_strf("a APPEND INBOX (%s) {5}\r\n", set + 1);
    const struct rh_step steps[] = {C(store),
                                    EB(store),
                                    B("s OK stored\r\n"),
                                    EC("s OK stored\r\n"),
                                    C("q SEARCH ALL\r\n"),
                                    EB("q SEARCH ALL\r\n"),
                                    B(search),
                                    EC(search),
                                    C(app),
                                    EB(app_be),
                                    B("+ go\r\n"),
                                    EC(""),
                                    EB("hello\r\n"),
                                    B("a OK appended\r\n"),
                                    EC("a OK appended\r\n"),
                                    EOPEN,
                                    END};
    rh_run_case(&(struct rh_case){.name = "100 kB command lines and a 200 kB response line",
                                  .proto = RH_IMAP,
                                  .scan = RH_SCAN_OFF,
                                  .steps = steps,
                                  .big = true});
    free(set), free(hits), free(store), free(search), free(app), free(app_be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_noop),
        cmocka_unit_test(t_long_lines),
        cmocka_unit_test(t_compress_refused),
        cmocka_unit_test(t_compress_lowercase),
        cmocka_unit_test(t_starttls_refused),
        cmocka_unit_test(t_refusal_waits_for_boundary),
        cmocka_unit_test(t_capability_untagged),
        cmocka_unit_test(t_capability_code),
        cmocka_unit_test(t_capability_clean_untouched),
        cmocka_unit_test(t_capability_in_literal),
        cmocka_unit_test(t_fetch_body_identical),
        cmocka_unit_test(t_literal8_response),
        cmocka_unit_test(t_sync_literal_plus),
        cmocka_unit_test(t_sync_literal_pipelined),
        cmocka_unit_test(t_sync_literal_refused),
        cmocka_unit_test(t_literal_plus_rewritten),
        cmocka_unit_test(t_literal_plus_refused_smuggle),
        cmocka_unit_test(t_literal_mid_command),
        cmocka_unit_test(t_literal_zero),
        cmocka_unit_test(t_pipelined),
        cmocka_unit_test(t_idle_done),
        cmocka_unit_test(t_backend_logout),
        cmocka_unit_test(t_backend_lost),
        cmocka_unit_test(t_client_gone),
        cmocka_unit_test(t_long_line),
        cmocka_unit_test(t_bare_lf),
        cmocka_unit_test(t_big_fetch_and_append),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
