/*
 * Unit tests for proxy/pop3_relay.c through the relay harness (tests/unit/relay_harness.h):
 * single- and multi-line framing from the command queue (LIST/UIDL with and without argument,
 * RETR, TOP, CAPA), PIPELINING, refusals answered in order, CAPA rewriting, the close paths.
 * Every case is replayed whole, byte by byte and split at every byte boundary. Scanning is
 * off here (test_relay_pop3_scan.c has RETR/TOP scanning).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, variant, ...) RH_CASE(fn, title, RH_POP3, variant, __VA_ARGS__)

CASE(t_stat, "STAT: a single-line answer", RH_SCAN_OFF, C("STAT\r\n"), EB("STAT\r\n"),
     B("+OK 2 320\r\n"), EC("+OK 2 320\r\n"), EOPEN)

CASE(t_list_multi, "LIST without argument: multi-line, framed to its terminator", RH_SCAN_OFF,
     C("LIST\r\n"), EB("LIST\r\n"), B("+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"),
     EC("+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"), C("NOOP\r\n"), EB("NOOP\r\n"), B("+OK\r\n"),
     EC("+OK\r\n"))

CASE(t_list_single_then_uidl, "LIST n is single-line, UIDL after it multi-line (pipelined)",
     RH_SCAN_OFF, C("LIST 1\r\nUIDL\r\n"), EB("LIST 1\r\nUIDL\r\n"),
     B("+OK 1 120\r\n+OK\r\n1 abc\r\n2 def\r\n.\r\n"),
     EC("+OK 1 120\r\n+OK\r\n1 abc\r\n2 def\r\n.\r\n"))

CASE(t_uidl_n, "UIDL n single-line", RH_SCAN_OFF, C("UIDL 2\r\n"), EB("UIDL 2\r\n"),
     B("+OK 2 def\r\n"), EC("+OK 2 def\r\n"))

CASE(t_retr_stuffed_identical, "RETR with dot-stuffed lines streams byte-identical (scanning off)",
     RH_SCAN_OFF, C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n"),
     EC("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n"))

CASE(t_retr_err_single, "RETR answered -ERR is one line; the next answer is framed right",
     RH_SCAN_OFF, C("RETR 9\r\nLIST\r\n"), EB("RETR 9\r\nLIST\r\n"),
     B("-ERR no such message\r\n+OK\r\n1 120\r\n.\r\n"),
     EC("-ERR no such message\r\n+OK\r\n1 120\r\n.\r\n"))

CASE(t_top_multi, "TOP n k: multi-line", RH_SCAN_OFF, C("TOP 1 1\r\n"), EB("TOP 1 1\r\n"),
     B("+OK\r\nSubject: hi\r\n\r\nline one\r\n.\r\n"),
     EC("+OK\r\nSubject: hi\r\n\r\nline one\r\n.\r\n"))

CASE(t_capa_rewritten, "CAPA keeps only what the proxy models: STLS, SASL, USER dropped",
     RH_SCAN_OFF, C("CAPA\r\n"), EB("CAPA\r\n"),
     B("+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\nPIPELINING\r\nSASL PLAIN\r\n"
       "USER\r\n.\r\n"),
     EC("+OK Capability list follows\r\nTOP\r\nUIDL\r\nPIPELINING\r\n.\r\n"))

CASE(t_capa_unknown_dropped,
     "CAPA: UTF8, LANG, unknown and stuffed lines dropped; kept ones as sent", RH_SCAN_OFF,
     C("CAPA\r\n"), EB("CAPA\r\n"),
     B("+OK\r\nUTF8 USER\r\nLANG\r\nX-FANCY\r\nRESP-CODES\r\nEXPIRE NEVER\r\nlogin-delay "
       "900\r\nIMPLEMENTATION Dovecot\r\nAUTH-RESP-CODE\r\nTOPX\r\n...\r\n.\r\n"),
     EC("+OK\r\nRESP-CODES\r\nEXPIRE NEVER\r\nlogin-delay 900\r\nIMPLEMENTATION Dovecot\r\n.\r\n"),
     EOPEN)

CASE(t_capa_err, "CAPA answered -ERR: one line", RH_SCAN_OFF, C("CAPA\r\nNOOP\r\n"),
     EB("CAPA\r\nNOOP\r\n"), B("-ERR no\r\n+OK\r\n"), EC("-ERR no\r\n+OK\r\n"))

CASE(t_not_allowed, "commands off the allow-list are refused, in order, never forwarded",
     RH_SCAN_OFF, C("XTND XMIT\r\nUTF8\r\nLAST\r\nLANG\r\nXCLIENT ADDR=1.2.3.4\r\nNOOP\r\n"),
     EB("NOOP\r\n"), B("+OK\r\n"),
     EC("-ERR Command not allowed.\r\n-ERR Command not allowed.\r\n-ERR Command not allowed.\r\n"
        "-ERR Command not allowed.\r\n-ERR Command not allowed.\r\n+OK\r\n"))

CASE(t_strict_numbers, "message numbers and line counts are strict decimal: else -ERR here",
     RH_SCAN_OFF,
     C("RETR 1x\r\nRETR -1\r\nRETR 1 2\r\nRETR 99999999999\r\nRETR 0\r\nRETR 01\r\nRETR\r\n"
       "RETR +1\r\nTOP 1\r\nTOP 1 -1\r\nTOP 1 1 1\r\nDELE 4294967296\r\nLIST \r\nSTAT 1\r\n"
       "UIDL 1 2\r\nNOOP x\r\nRETR  1\r\nLIST 4294967295\r\n"),
     EB("LIST 4294967295\r\n"), B("-ERR There's no message 4294967295.\r\n"),
     EC("-ERR Invalid message number.\r\n-ERR Invalid message number.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR Invalid message number.\r\n"
        "-ERR Invalid message number.\r\n-ERR Invalid message number.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR Invalid message number.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR Invalid number of lines.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR Invalid message number.\r\n"
        "-ERR Invalid message number.\r\n-ERR Wrong number of arguments.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR Wrong number of arguments.\r\n"
        "-ERR Wrong number of arguments.\r\n-ERR There's no message 4294967295.\r\n"))

CASE(t_dele_scan_off, "DELE passes when scanning is off", RH_SCAN_OFF, C("DELE 1\r\n"),
     EB("DELE 1\r\n"), B("+OK Marked to be deleted.\r\n"), EC("+OK Marked to be deleted.\r\n"))

CASE(t_capa_untouched, "CAPA without STLS is byte-identical", RH_SCAN_OFF, C("CAPA\r\n"),
     EB("CAPA\r\n"), B("+OK\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n.\r\n"),
     EC("+OK\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n.\r\n"))

CASE(t_pipelining, "PIPELINING: a burst of commands and the burst of answers", RH_SCAN_OFF,
     C("STAT\r\nLIST\r\nUIDL\r\nNOOP\r\nRETR 1\r\n"),
     EB("STAT\r\nLIST\r\nUIDL\r\nNOOP\r\nRETR 1\r\n"),
     B("+OK 1 20\r\n+OK\r\n1 20\r\n.\r\n+OK\r\n1 x1\r\n.\r\n+OK\r\n+OK\r\nSubject: hi\r\n\r\nline "
       "one\r\n..dotted\r\n...\r\n.\r\n"),
     EC("+OK 1 20\r\n+OK\r\n1 20\r\n.\r\n+OK\r\n1 x1\r\n.\r\n+OK\r\n+OK\r\nSubject: hi\r\n\r\nline "
        "one\r\n..dotted\r\n...\r\n.\r\n"))

CASE(t_stls_refused, "STLS after login: -ERR from the proxy, nothing to the backend", RH_SCAN_OFF,
     C("STLS\r\n"), EB(""), EC("-ERR TLS is already active.\r\n"))

CASE(t_user_pass_refused,
     "USER/PASS after login are refused; the password never reaches the backend", RH_SCAN_OFF,
     C("USER bob\r\nPASS secret\r\n"), EB(""),
     EC("-ERR Already logged in.\r\n-ERR Already logged in.\r\n"))

CASE(t_refusal_in_order, "a refusal in a pipeline is answered in its place", RH_SCAN_OFF,
     C("STAT\r\nSTLS\r\nNOOP\r\n"), EB("STAT\r\nNOOP\r\n"), B("+OK 1 2\r\n+OK\r\n"),
     EC("+OK 1 2\r\n-ERR TLS is already active.\r\n+OK\r\n"))

CASE(t_refusal_waits_for_multiline,
     "a refusal waits until the multi-line answer before it is complete", RH_SCAN_OFF,
     C("LIST\r\n"), EB("LIST\r\n"), B("+OK\r\n1 120\r\n"), EC("+OK\r\n1 120\r\n"),
     C("AUTH PLAIN\r\n"), EB(""), EC(""), B("2 200\r\n.\r\n"),
     EC("2 200\r\n.\r\n-ERR Already logged in.\r\n"))

CASE(t_quit, "QUIT: the backend answer reaches the client, then the close", RH_SCAN_OFF,
     C("QUIT\r\n"), EB("QUIT\r\n"), B("+OK Logging out.\r\n"), BEOF, EC("+OK Logging out.\r\n"),
     ECLOSED)

CASE(t_backend_lost, "the backend goes away at a boundary: -ERR then the close", RH_SCAN_OFF,
     C("NOOP\r\n"), EB("NOOP\r\n"), B("+OK\r\n"), BEOF,
     EC("+OK\r\n-ERR [SYS/TEMP] Backend connection lost.\r\n"), ECLOSED)

CASE(t_backend_lost_mid_retr,
     "the backend goes away inside a RETR body: no -ERR inside the message", RH_SCAN_OFF,
     C("RETR 1\r\n"), EB("RETR 1\r\n"), B("+OK\r\nSubject: x\r\n"), BEOF,
     EC("+OK\r\nSubject: x\r\n"), ECLOSED)

CASE(t_client_gone, "the client goes away: the session closes", RH_SCAN_OFF, C("NOOP\r\n"),
     EB("NOOP\r\n"), CEOF, ECLOSED)

CASE(t_dot_line_edge, "body lines \". x\" and \"..\" and a lone \".\" in a TOP answer", RH_SCAN_OFF,
     C("TOP 2 5\r\n"), EB("TOP 2 5\r\n"), B("+OK\r\nA: b\r\n\r\n. x\r\n..\r\n.\r\n"),
     EC("+OK\r\nA: b\r\n\r\n. x\r\n..\r\n.\r\n"), C("STAT\r\n"), EB("STAT\r\n"), B("+OK 0 0\r\n"),
     EC("+OK 0 0\r\n"))

/* A large message (over the 64k relay buffer): whole, slow reader and six splits. */
static void t_big_retr(void **state)
{
    (void)state;
    char *m = rh_message(200000, NULL);
    char *st = rh_stuff(m);
    char *resp = rh_strf("+OK %zu octets\r\n%s.\r\n", strlen(m), st);
    char *all = rh_strf("%s+OK 1 200000\r\n", resp);
    const struct rh_step steps[] = {C("RETR 1\r\nSTAT\r\n"),
                                    EB("RETR 1\r\nSTAT\r\n"),
                                    B(resp),
                                    B("+OK 1 200000\r\n"),
                                    EC(all),
                                    END};
    rh_run_case(&(struct rh_case){.name = "a 200 kB dot-stuffed RETR streams byte-identical",
                                  .proto = RH_POP3,
                                  .scan = RH_SCAN_OFF,
                                  .steps = steps,
                                  .big = true});
    free(m), free(st), free(resp), free(all);
}

/* Issue 15: response lines are framed without a cap after login. A 200 kB status line (over the
 * 64k relay buffer: it streams in pieces) reaches the client intact, and the session goes on. */
static void t_long_status_line(void **state)
{
    (void)state;
    char *pad = malloc(200001);
    assert_non_null(pad);
    memset(pad, 'z', 200000);
    pad[200000] = '\0';
    char *err = rh_strf("-ERR Invalid message number: %s\r\n", pad);
    char *ok = rh_strf("+OK 1 %s\r\n", pad);
    const struct rh_step steps[] = {C("LIST 99\r\n"),
                                    EB("LIST 99\r\n"),
                                    B(err),
                                    EC(err),
                                    C("UIDL 1\r\n"),
                                    EB("UIDL 1\r\n"),
                                    B(ok),
                                    EC(ok),
                                    C("NOOP\r\n"),
                                    EB("NOOP\r\n"),
                                    B("+OK\r\n"),
                                    EC("+OK\r\n"),
                                    EOPEN,
                                    END};
    rh_run_case(&(struct rh_case){.name = "200 kB status lines stream byte-identical",
                                  .proto = RH_POP3,
                                  .scan = RH_SCAN_OFF,
                                  .steps = steps,
                                  .big = true});
    free(pad), free(err), free(ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_stat),
        cmocka_unit_test(t_long_status_line),
        cmocka_unit_test(t_list_multi),
        cmocka_unit_test(t_list_single_then_uidl),
        cmocka_unit_test(t_uidl_n),
        cmocka_unit_test(t_retr_stuffed_identical),
        cmocka_unit_test(t_retr_err_single),
        cmocka_unit_test(t_top_multi),
        cmocka_unit_test(t_capa_rewritten),
        cmocka_unit_test(t_capa_unknown_dropped),
        cmocka_unit_test(t_capa_err),
        cmocka_unit_test(t_not_allowed),
        cmocka_unit_test(t_strict_numbers),
        cmocka_unit_test(t_dele_scan_off),
        cmocka_unit_test(t_capa_untouched),
        cmocka_unit_test(t_pipelining),
        cmocka_unit_test(t_stls_refused),
        cmocka_unit_test(t_user_pass_refused),
        cmocka_unit_test(t_refusal_in_order),
        cmocka_unit_test(t_refusal_waits_for_multiline),
        cmocka_unit_test(t_quit),
        cmocka_unit_test(t_backend_lost),
        cmocka_unit_test(t_backend_lost_mid_retr),
        cmocka_unit_test(t_client_gone),
        cmocka_unit_test(t_dot_line_edge),
        cmocka_unit_test(t_big_retr),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
