/*
 * Unit tests for proxy/pop3_scan.c (RETR/TOP scanning) through the relay harness
 * (tests/unit/relay_harness.h): clean bodies byte-identical (dot-stuffing redone exactly as
 * sent), the stub scanner given the unstuffed message, infected ones replaced by a dot-stuffed
 * notice with the octet count rewritten, oversize and error actions, a QUIT pipelined behind a
 * held answer. Every case is replayed whole, byte by byte and split at every byte boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "relay_harness.c"

#define CASE(fn, title, variant, ...) RH_CASE(fn, title, RH_POP3, variant, __VA_ARGS__)

CASE(t_retr_clean_identical, "RETR clean: byte-identical, scanned unstuffed", RH_SCAN_ON,
     C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n"),
     EC("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n"),
     ESCANNED("Subject: hi\r\n\r\nline one\r\n.dotted\r\n..\r\n"), ENSCANS(1))

CASE(t_retr_infected, "RETR infected: the notice, octet count rewritten, dot-stuffed", RH_SCAN_ON,
     C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@"),
     ESCANNED("Subject: x\r\nX-Harness-Infected: 1\r\n\r\n.bad\r\n"))

CASE(t_retr_eicar, "RETR with the EICAR string: replaced", RH_SCAN_ON, C("RETR 2\r\n"),
     EB("RETR 2\r\n"),
     B("+OK\r\nSubject: "
       "e\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n.\r\n"),
     ECN("+OK\r\n@POPNOTICE@"))

CASE(t_retr_notice_restuffed, "a notice with \".\" line starts is dot-stuffed on the way out",
     RH_SCAN_DOT_NOTICE, C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@"))

/* TOP n k is sent as TOP n 2147483647: judged on the whole message, cut by the proxy. */
#define TOP_ALL(n) "TOP " #n " 2147483647\r\n"
#define KEPT                                                                                       \
    "+OK Kept on the mail server: this message was withheld by the mail security gateway.\r\n"

CASE(t_top_infected, "TOP of an infected message: the notice header and k body lines", RH_SCAN_ON,
     C("TOP 1 0\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK\r\n@POPNOTICE@"))

CASE(t_top_clean, "TOP of a clean message: cut to k lines, dot-stuffing kept", RH_SCAN_ON,
     C("TOP 1 2\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\nmore\r\n.\r\n"),
     EC("+OK\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n.\r\n"),
     ESCANNED("Subject: hi\r\n\r\nline one\r\n.dotted\r\n..\r\nmore\r\n"))

CASE(t_top_zero_lines, "TOP n 0: the header and the empty line", RH_SCAN_ON, C("TOP 3 0\r\n"),
     EB(TOP_ALL(3)), B("+OK\r\nSubject: hi\r\nTo: b\r\n\r\nline one\r\n.\r\n"),
     EC("+OK\r\nSubject: hi\r\nTo: b\r\n\r\n.\r\n"))

CASE(t_top_more_than_body, "TOP with k past the end: the whole message", RH_SCAN_ON,
     C("TOP 1 1000\r\n"), EB(TOP_ALL(1)), B("+OK\r\nSubject: hi\r\n\r\na\r\n..\r\nb\r\n.\r\n"),
     EC("+OK\r\nSubject: hi\r\n\r\na\r\n..\r\nb\r\n.\r\n"))

CASE(t_top_no_body, "TOP of a message without an empty line: all header", RH_SCAN_ON,
     C("TOP 1 0\r\n"), EB(TOP_ALL(1)), B("+OK\r\nFrom: a@b\r\nSubject: nobody\r\n.\r\n"),
     EC("+OK\r\nFrom: a@b\r\nSubject: nobody\r\n.\r\n"))

CASE(t_top_empty_header, "TOP of a message that starts with an empty line", RH_SCAN_ON,
     C("TOP 1 1\r\n"), EB(TOP_ALL(1)), B("+OK\r\n\r\nbody only\r\nx\r\n.\r\n"),
     EC("+OK\r\n\r\nbody only\r\n.\r\n"))

CASE(t_top_lf_header_end, "TOP of a message whose header ends in a bare LF", RH_SCAN_ON,
     C("TOP 1 1\r\n"), EB(TOP_ALL(1)), B("+OK\r\nSubject: lf\n\nl1\nl2\n.\r\n"),
     EC("+OK\r\nSubject: lf\n\nl1\n.\r\n"))

CASE(t_top_judged_whole, "TOP n 1 of a message infected after line 1: the notice, not line 1",
     RH_SCAN_ON, C("TOP 1 1\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: x\r\n\r\nharmless first line\r\nX-Harness-Infected: 1\r\n.\r\n"),
     ECN("+OK\r\n@POPNOTICE@"), ENSCANS(1))

CASE(t_top_err, "TOP of a missing message: the backend's -ERR", RH_SCAN_ON, C("TOP 9 1\r\n"),
     EB(TOP_ALL(9)), B("-ERR There's no message 9.\r\n"), EC("-ERR There's no message 9.\r\n"))

CASE(t_top_oversize_pass_stream,
     "TOP over max_scan_size with pass, k past the held head: the rest streams, cut at k",
     RH_SCAN_SMALL_PASS, C("TOP 1 13\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: big\r\n\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80
       "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80
       "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n..dot\r\n" RH_HEX80 "\r\n" RH_HEX80
       "\r\nlast\r\n.\r\n"),
     EC("+OK\r\nSubject: big\r\n\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80
        "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80
        "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n" RH_HEX80 "\r\n..dot\r\n.\r\n"),
     C("TOP 1 1000\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: big\r\n\r\n" RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80
           RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 "\r\n..\r\nend\r\n.\r\n"),
     EC("+OK\r\nSubject: big\r\n\r\n" RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80
            RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80
        "\r\n..\r\nend\r\n.\r\n"))

CASE(t_dele_after_blocked_retr, "DELE of a message replaced by the notice is not passed on",
     RH_SCAN_ON, C("RETR 2\r\n"), EB("RETR 2\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@"), C("DELE 2\r\nNOOP\r\n"), EB("NOOP\r\n"), B("+OK\r\n"),
     EC(KEPT "+OK\r\n"), ENSCANS(1))

CASE(t_dele_after_clean_retr, "DELE of a clean message goes to the backend", RH_SCAN_ON,
     C("RETR 1\r\n"), EB("RETR 1\r\n"), B("+OK 13 octets\r\nSubject: hi\r\n\r\n.\r\n"),
     EC("+OK 13 octets\r\nSubject: hi\r\n\r\n.\r\n"), C("DELE 1\r\n"), EB("DELE 1\r\n"),
     B("+OK Marked to be deleted.\r\n"), EC("+OK Marked to be deleted.\r\n"), ENSCANS(1))

CASE(t_dele_after_blocked_top, "TOP judged infected: DELE kept too", RH_SCAN_ON, C("TOP 2 0\r\n"),
     EB(TOP_ALL(2)), B("+OK\r\nSubject: x\r\n\r\nok\r\nX-Harness-Infected: 1\r\n.\r\n"),
     ECN("+OK\r\n@POPNOTICE@"), C("DELE 2\r\n"), EC(KEPT), EB(""))

CASE(t_dele_probe_infected,
     "DELE of a message never downloaded: judged with our own TOP, withheld, nothing leaks",
     RH_SCAN_ON, C("DELE 5\r\nSTAT\r\n"), EB(TOP_ALL(5)),
     B("+OK\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"), EB("STAT\r\n"),
     B("+OK 5 300\r\n"), EC(KEPT "+OK 5 300\r\n"), ENSCANS(1), C("DELE 5\r\n"), EC(KEPT), EB(""),
     ENSCANS(1))

CASE(t_dele_probe_clean, "DELE of a clean message never downloaded: probed, then passed on",
     RH_SCAN_ON, C("DELE 1\r\nLIST\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: hi\r\n\r\nline one\r\n.\r\n"), EB("DELE 1\r\nLIST\r\n"),
     B("+OK Marked to be deleted.\r\n+OK 0 messages:\r\n.\r\n"),
     EC("+OK Marked to be deleted.\r\n+OK 0 messages:\r\n.\r\n"), ENSCANS(1))

CASE(t_dele_probe_err, "DELE probe answered -ERR: that is the DELE's answer", RH_SCAN_ON,
     C("DELE 9\r\nNOOP\r\n"), EB(TOP_ALL(9)), B("-ERR There's no message 9.\r\n"), EB("NOOP\r\n"),
     B("+OK\r\n"), EC("-ERR There's no message 9.\r\n+OK\r\n"), ENSCANS(0))

CASE(t_dele_probe_scan_error, "DELE probe that cannot be judged (error_action block): kept",
     RH_SCAN_ON, C("DELE 3\r\n"), EB(TOP_ALL(3)),
     B("+OK\r\nSubject: e\r\nX-Harness-Scan-Error: 1\r\n\r\nx\r\n.\r\n"), EC(KEPT), EB(""))

CASE(t_dele_probe_after_pipelined_retr, "RETR and DELE pipelined: the DELE is probed, in order",
     RH_SCAN_ON, C("RETR 2\r\nDELE 2\r\nQUIT\r\n"), EB("RETR 2\r\n" TOP_ALL(2)),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"
       "+OK\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@" KEPT), EB("QUIT\r\n"))

CASE(t_top_oversize_pass, "TOP over max_scan_size with pass: the k lines, not the whole message",
     RH_SCAN_SMALL_PASS, C("TOP 1 1\r\n"), EB(TOP_ALL(1)),
     B("+OK\r\nSubject: big\r\n\r\nshort one\r\n" RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80
           RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80 RH_HEX80
       "\r\n.\r\n"),
     EC("+OK\r\nSubject: big\r\n\r\nshort one\r\n.\r\n"))

CASE(t_retr_pipelined_mix, "pipelined RETR clean, RETR infected, LIST: each framed and judged",
     RH_SCAN_ON, C("RETR 1\r\nRETR 2\r\nLIST\r\n"), EB("RETR 1\r\nRETR 2\r\nLIST\r\n"),
     B("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n+OK 44 "
       "octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n+OK\r\n1 40\r\n2 "
       "44\r\n.\r\n"),
     ECN("+OK 40 octets\r\nSubject: hi\r\n\r\nline one\r\n..dotted\r\n...\r\n.\r\n+OK @NUM@ "
         "octets\r\n@POPNOTICE@+OK\r\n1 40\r\n2 44\r\n.\r\n"),
     ENSCANS(2))

CASE(t_retr_scan_error, "a scan error applies error_action block", RH_SCAN_ON, C("RETR 3\r\n"),
     EB("RETR 3\r\n"),
     B("+OK 44 octets\r\nSubject: err\r\nX-Harness-Scan-Error: 1\r\n\r\nx\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPBLOCKED@"))

CASE(t_retr_err_passes, "RETR -ERR with scanning on: the one line passes", RH_SCAN_ON,
     C("RETR 9\r\nSTAT\r\n"), EB("RETR 9\r\nSTAT\r\n"), B("-ERR no such message\r\n+OK 1 10\r\n"),
     EC("-ERR no such message\r\n+OK 1 10\r\n"), ENSCANS(0))

CASE(t_oversize_pass_hint, "over max_scan_size by the octet count, pass: streamed, not scanned",
     RH_SCAN_SMALL_PASS, C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 1161 octets\r\n" RH_BIG_MSG ".\r\n"), EC("+OK 1161 octets\r\n" RH_BIG_MSG ".\r\n"),
     ENSCANS(0))

CASE(t_oversize_pass_nohint, "over max_scan_size found while collecting, pass: byte-identical",
     RH_SCAN_SMALL_PASS, C("RETR 1\r\n"), EB("RETR 1\r\n"), B("+OK\r\n" RH_BIG_MSG ".\r\n"),
     EC("+OK\r\n" RH_BIG_MSG ".\r\n"), ENSCANS(0))

CASE(t_oversize_block, "over max_scan_size with block: a notice, no scan", RH_SCAN_SMALL_BLOCK,
     C("RETR 1\r\n"), EB("RETR 1\r\n"), B("+OK 1161 octets\r\n" RH_BIG_MSG ".\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPBLOCKED@"), ENSCANS(0))

CASE(t_verdict_cache, "the same message twice: the second from the verdict cache", RH_SCAN_ON,
     C("RETR 1\r\n"), EB("RETR 1\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@"), C("RETR 2\r\n"), EB("RETR 2\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n"),
     ECN("+OK @NUM@ octets\r\n@POPNOTICE@"), ENSCANS(1))

CASE(t_retr_then_quit,
     "RETR + QUIT pipelined, backend closes at once: the held answer still goes out", RH_SCAN_ON,
     C("RETR 1\r\nQUIT\r\n"), EB("RETR 1\r\nQUIT\r\n"),
     B("+OK 44 octets\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\n..bad\r\n.\r\n+OK Logging "
       "out.\r\n"),
     BEOF, ECN("+OK @NUM@ octets\r\n@POPNOTICE@+OK Logging out.\r\n"), ECLOSED)

CASE(t_retr_lf_lines, "a body with bare LF line ends and dot-stuffing comes back exactly as sent",
     RH_SCAN_ON, C("RETR 1\r\n"), EB("RETR 1\r\n"), B("+OK\r\nSubject: lf\n\nline\n..dot\n.\r\n"),
     EC("+OK\r\nSubject: lf\n\nline\n..dot\n.\r\n"), ENSCANS(1))

CASE(t_empty_body, "an empty message", RH_SCAN_ON, C("RETR 4\r\n"), EB("RETR 4\r\n"),
     B("+OK 0 octets\r\n.\r\n"), EC("+OK 0 octets\r\n.\r\n"))

CASE(t_uidl_list_untouched, "LIST/UIDL are not scanned", RH_SCAN_ON, C("UIDL\r\nLIST 1\r\n"),
     EB("UIDL\r\nLIST 1\r\n"), B("+OK\r\n1 aaa\r\n.\r\n+OK 1 99\r\n"),
     EC("+OK\r\n1 aaa\r\n.\r\n+OK 1 99\r\n"), ENSCANS(0))

CASE(t_cached_pipelined, "pipelined RETRs of messages already judged (cache hits) in one burst",
     RH_SCAN_ON, C("RETR 1\r\nRETR 2\r\n"), EB("RETR 1\r\nRETR 2\r\n"),
     B("+OK 28 octets\r\nSubject: hi\r\n\r\nhello world\r\n.\r\n+OK 42 octets\r\nSubject: "
       "x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n.\r\n"),
     ECN("+OK 28 octets\r\nSubject: hi\r\n\r\nhello world\r\n.\r\n+OK @NUM@ octets\r\n@POPNOTICE@"),
     C("RETR 1\r\nRETR 2\r\nRETR 1\r\nSTAT\r\n"), EB("RETR 1\r\nRETR 2\r\nRETR 1\r\nSTAT\r\n"),
     B("+OK 28 octets\r\nSubject: hi\r\n\r\nhello world\r\n.\r\n+OK 42 octets\r\nSubject: "
       "x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n.\r\n+OK 28 octets\r\nSubject: hi\r\n\r\nhello "
       "world\r\n.\r\n+OK 2 10\r\n"),
     ECN("+OK 28 octets\r\nSubject: hi\r\n\r\nhello world\r\n.\r\n+OK @NUM@ "
         "octets\r\n@POPNOTICE@+OK 28 octets\r\nSubject: hi\r\n\r\nhello world\r\n.\r\n+OK 2 "
         "10\r\n"),
     ENSCANS(2))

/* Large messages (over the 64k relay buffer and the inline-hash limit): whole, slow reader
 * and six splits (rh_case.big). */
static void t_big_clean_and_infected(void **state)
{
    (void)state;
    char *clean = rh_message(150000, NULL);
    char *bad = rh_message(150000, RH_MARK_INFECTED ": 1");
    char *sc = rh_stuff(clean), *sb = rh_stuff(bad);
    char *r1 = rh_strf("+OK %zu octets\r\n%s.\r\n", strlen(clean), sc);
    char *r2 = rh_strf("+OK %zu octets\r\n%s.\r\n", strlen(bad), sb);
    const struct rh_step steps[] = {C("RETR 1\r\nRETR 2\r\nNOOP\r\n"),
                                    EB("RETR 1\r\nRETR 2\r\nNOOP\r\n"),
                                    B(r1),
                                    EC(r1),
                                    B(r2),
                                    B("+OK\r\n"),
                                    ECN("+OK @NUM@ octets\r\n@POPNOTICE@+OK\r\n"),
                                    ENSCANS(2),
                                    END};
    rh_run_case(&(struct rh_case){.name = "150 kB RETRs: the clean one identical (stuffing "
                                          "redone), the infected one replaced",
                                  .proto = RH_POP3,
                                  .scan = RH_SCAN_ON,
                                  .steps = steps,
                                  .big = true});
    free(clean), free(bad), free(sc), free(sb), free(r1), free(r2);
}

/* A slow client reading a large judged RETR (first scanned, then from the verdict cache): the
 * output is regenerated as the client takes it. (With 1 byte of room left, output_step()
 * could make nothing and spun forever on the worker thread.) */
static void t_big_slow_client(void **state)
{
    (void)state;
    char *m = rh_message(600000, NULL);
    char *st = rh_stuff(m);
    char *r = rh_strf("+OK %zu octets\r\n%s.\r\n", strlen(m), st);
    const struct rh_step steps[] = {
        C("RETR 1\r\n"), EB("RETR 1\r\n"), B(r), EC(r), C("RETR 1\r\n"), EB("RETR 1\r\n"), B(r),
        EC(r),           ENSCANS(1),       END};
    rh_run_case(&(struct rh_case){.name = "a 600 kB RETR, then again from the verdict cache",
                                  .proto = RH_POP3,
                                  .scan = RH_SCAN_ON,
                                  .steps = steps,
                                  .big = true});
    free(m), free(st), free(r);
}

/* Issue 15: a RETR status line is held whole for the scanner (it rewrites the octet count). One
 * over the 8k hold bound ends the session before any of the message goes out: the relay never
 * streams a RETR it cannot judge. */
static void t_retr_status_too_long(void **state)
{
    (void)state;
    char *pad = malloc(10001);
    assert_non_null(pad);
    memset(pad, 'o', 10000);
    pad[10000] = '\0';
    char *resp =
        rh_strf("+OK 42 %s\r\nSubject: x\r\nX-Harness-Infected: 1\r\n\r\nbad\r\n.\r\n", pad);
    const struct rh_step steps[] = {C("RETR 1\r\n"),
                                    EB("RETR 1\r\n"),
                                    B(resp),
                                    EC("-ERR [SYS/TEMP] Backend protocol error.\r\n"),
                                    ECLOSED,
                                    ENSCANS(0),
                                    END};
    rh_run_case(&(struct rh_case){.name = "a RETR status line over the hold bound fails closed",
                                  .proto = RH_POP3,
                                  .scan = RH_SCAN_ON,
                                  .steps = steps,
                                  .big = true});
    free(pad), free(resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_retr_clean_identical),
        cmocka_unit_test(t_retr_status_too_long),
        cmocka_unit_test(t_retr_infected),
        cmocka_unit_test(t_retr_eicar),
        cmocka_unit_test(t_retr_notice_restuffed),
        cmocka_unit_test(t_top_infected),
        cmocka_unit_test(t_top_clean),
        cmocka_unit_test(t_top_zero_lines),
        cmocka_unit_test(t_top_more_than_body),
        cmocka_unit_test(t_top_no_body),
        cmocka_unit_test(t_top_empty_header),
        cmocka_unit_test(t_top_lf_header_end),
        cmocka_unit_test(t_top_judged_whole),
        cmocka_unit_test(t_top_err),
        cmocka_unit_test(t_dele_after_blocked_retr),
        cmocka_unit_test(t_dele_after_clean_retr),
        cmocka_unit_test(t_dele_after_blocked_top),
        cmocka_unit_test(t_dele_probe_infected),
        cmocka_unit_test(t_dele_probe_clean),
        cmocka_unit_test(t_dele_probe_err),
        cmocka_unit_test(t_dele_probe_scan_error),
        cmocka_unit_test(t_dele_probe_after_pipelined_retr),
        cmocka_unit_test(t_top_oversize_pass),
        cmocka_unit_test(t_top_oversize_pass_stream),
        cmocka_unit_test(t_retr_pipelined_mix),
        cmocka_unit_test(t_retr_scan_error),
        cmocka_unit_test(t_retr_err_passes),
        cmocka_unit_test(t_oversize_pass_hint),
        cmocka_unit_test(t_oversize_pass_nohint),
        cmocka_unit_test(t_oversize_block),
        cmocka_unit_test(t_verdict_cache),
        cmocka_unit_test(t_retr_then_quit),
        cmocka_unit_test(t_retr_lf_lines),
        cmocka_unit_test(t_empty_body),
        cmocka_unit_test(t_uidl_list_untouched),
        cmocka_unit_test(t_cached_pipelined),
        cmocka_unit_test(t_big_clean_and_infected),
        cmocka_unit_test(t_big_slow_client),
    };
    return cmocka_run_group_tests(tests, rh_group_setup, rh_group_teardown);
}
