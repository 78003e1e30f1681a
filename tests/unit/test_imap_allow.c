/*
 * Unit tests for proxy/imap_allow.c (issue 15): the capability allow-list (lists, response
 * lines, whatever their length), the command allow-list after login, FETCH items and the
 * SELECT/EXAMINE mailbox argument.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imap_allow.h"

static const char dovecot_caps[] =
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE COMPRESS=DEFLATE URLAUTH IMAP4rev2 "
    "UNAUTHENTICATE XAPPLEPUSHSERVICE X-GM-EXT-1 AUTH=PLAIN STARTTLS";

static const char dovecot_kept[] =
    "IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE STATUS=SIZE SAVEDATE LITERAL+ SPECIAL-USE";

static char *filt_line(const char *in)
{
    size_t n = strlen(in);
    char *b = malloc(n + 1);
    memcpy(b, in, n + 1);
    b[imap_allow_caps_line(b, n)] = '\0';
    return b;
}

static void test_caps_list(void **state)
{
    (void)state;
    char b[sizeof dovecot_caps];
    memcpy(b, dovecot_caps, sizeof b);
    b[imap_allow_filter_caps(b, strlen(b), false)] = '\0';
    assert_string_equal(b, dovecot_kept);
    /* pre-auth: the proxy's own SASL-IR, AUTH=, STARTTLS, LOGINDISABLED stay */
    char p[] = "IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED AUTH=PLAIN PREVIEW";
    p[imap_allow_filter_caps(p, strlen(p), true)] = '\0';
    assert_string_equal(p, "IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED AUTH=PLAIN");
    assert_false(imap_allow_cap("AUTH=PLAIN", 10, false));
    assert_false(imap_allow_cap("THREAD=", 7, false)); /* a prefix alone is no capability */
    assert_true(imap_allow_cap("imap4REV1", 9, false));
    assert_false(imap_allow_cap("COMPRESS=DEFLATE", 16, true));
    /* not atoms: a backend's list must not smuggle a line end or a literal in a prefixed cap */
    assert_false(imap_allow_cap("THREAD={3}\r\nabc", 16, false));
    assert_false(imap_allow_cap("QUOTA=x\rA", 9, false));
    assert_false(imap_allow_cap("THREAD=a\0b", 10, false));
    assert_false(imap_allow_cap("THREAD=a]", 9, false));
    char q[] = "IMAP4rev1 THREAD={3}\r\nabc QUOTA=RES-STORAGE";
    q[imap_allow_filter_caps(q, strlen(q), false)] = '\0';
    assert_string_equal(q, "IMAP4rev1 QUOTA=RES-STORAGE");
}

static void test_caps_lines(void **state)
{
    (void)state;
    char *r = filt_line("* CAPABILITY IMAP4rev1 PREVIEW=FUZZY IDLE\r\n");
    assert_string_equal(r, "* CAPABILITY IMAP4rev1 IDLE\r\n");
    free(r);
    r = filt_line("a1 OK [CAPABILITY IMAP4rev1 SNIPPET=FUZZY NOTIFY MOVE] Logged in\r\n");
    assert_string_equal(r, "a1 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n");
    free(r);
    r = filt_line("* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] ready\r\n");
    assert_string_equal(r, "* OK [CAPABILITY IMAP4rev1] ready\r\n");
    free(r);
    r = filt_line("* capability URLAUTH\r\n");
    assert_string_equal(r, "* capability \r\n");
    free(r);
    r = filt_line("* OK [UIDVALIDITY 5] x\r\n");
    assert_string_equal(r, "* OK [UIDVALIDITY 5] x\r\n");
    free(r);
    r = filt_line("* 3 FETCH (FLAGS (CAPABILITY))\r\n");
    assert_string_equal(r, "* 3 FETCH (FLAGS (CAPABILITY))\r\n");
    free(r);

    /* a list far over the framer's head (128 bytes) and over 8 KiB */
    size_t n = 20000;
    char *big = malloc(n + 64);
    size_t o = (size_t)sprintf(big, "* CAPABILITY IMAP4rev1");
    while (o < n)
        o += (size_t)sprintf(big + o, " X-FOO%zu PREVIEW", o);
    o += (size_t)sprintf(big + o, " IDLE\r\n");
    r = filt_line(big);
    assert_string_equal(r, "* CAPABILITY IMAP4rev1 IDLE\r\n");
    free(r);
    free(big);
}

static void test_caps_response_classify(void **state)
{
    (void)state;
    const char *full[] = {"* CAPABILITY IMAP4rev1\r\n", "a OK [CAPABILITY IMAP4rev1] x\r\n",
                          "* OK [CAPABILITY IMAP4rev1] x\r\n", "* BYE [CAPABILITY X] x\r\n"};
    for (size_t k = 0; k < sizeof full / sizeof *full; k++) {
        const char *s = full[k];
        size_t n = strlen(s);
        /* every prefix: unknown or yes, never "no" */
        for (size_t i = 1; i < n; i++)
            assert_int_not_equal(imap_allow_caps_response(s, i, false), 0);
        assert_int_equal(imap_allow_caps_response(s, n, true), 1);
    }
    const char *no[] = {"* 1 FETCH (BODY[] {5}\r\n", "a OK done\r\n",
                        "* OK [UIDVALIDITY 1]\r\n",  "+ idling\r\n",
                        "* CAPABILITYX\r\n",         "a OK [CAPABILITYX]\r\n"};
    for (size_t k = 0; k < sizeof no / sizeof *no; k++)
        assert_int_equal(imap_allow_caps_response(no[k], strlen(no[k]), true), 0);
    assert_int_equal(imap_allow_caps_response("* 1 FETCH (", 11, false), 0);
}

static enum imap_allow_verdict cls(const char *line, struct imap_allow_cmd *c)
{
    size_t n = strlen(line);
    bool lit = n >= 3 && line[n - 3] == '}';
    /* a prefix never refuses what the whole line passes, and never passes a judged command */
    struct imap_allow_cmd t;
    enum imap_allow_verdict whole = imap_allow_command(line, n, true, lit, c);
    for (size_t i = 0; i + 2 < n; i++) {
        enum imap_allow_verdict v = imap_allow_command(line, i, false, false, &t);
        if (v == IA_REFUSE)
            assert_int_equal(whole, IA_REFUSE);
        if (v == IA_PASS && t.kind != IA_NOTAG && whole != IA_PASS)
            fail_msg("%s: prefix of %zu bytes passes", line, i);
    }
    return whole;
}

static void expect_refused(const char *line, enum sess_reason why)
{
    struct imap_allow_cmd c;
    if (cls(line, &c) != IA_REFUSE || c.reason != why)
        fail_msg("%s: not refused with reason %d (got %d)", line, (int)why, (int)c.reason);
    assert_non_null(c.text);
}

static void expect_pass(const char *line)
{
    struct imap_allow_cmd c;
    if (cls(line, &c) != IA_PASS)
        fail_msg("%s: refused (%s)", line, c.text);
}

static void test_commands(void **state)
{
    (void)state;
    const char *pass[] = {
        "a NOOP\r\n",
        "a LIST \"\" *\r\n",
        "a UID STORE 1:* +FLAGS (\\Seen)\r\n",
        "a uid search all\r\n",
        "a IDLE\r\n",
        "a APPEND box {20}\r\n",
        "a ENABLE CONDSTORE\r\n",
        "a ENABLE condstore UTF8=ACCEPT\r\n",
        "a MOVE 1 x\r\n",
        "a UID EXPUNGE 1\r\n",
        "a GETQUOTAROOT INBOX\r\n",
        "a NAMESPACE\r\n",
        "a UNSELECT\r\n",
        "a ID NIL\r\n",
        "DONE\r\n", /* no tag: the server answers BAD */
    };
    for (size_t i = 0; i < sizeof pass / sizeof *pass; i++)
        expect_pass(pass[i]);
    expect_refused("a COMPRESS DEFLATE\r\n", SR_COMPRESS);
    expect_refused("a STARTTLS\r\n", SR_STARTTLS_AFTER_LOGIN);
    expect_refused("a LOGIN u p\r\n", SR_ALREADY_LOGGED_IN);
    expect_refused("a AUTHENTICATE PLAIN\r\n", SR_ALREADY_LOGGED_IN);
    expect_refused("a URLFETCH imap://x\r\n", SR_URLAUTH);
    expect_refused("a GENURLAUTH x INTERNAL\r\n", SR_URLAUTH);
    expect_refused("a RESETKEY\r\n", SR_URLAUTH);
    expect_refused("a NOTIFY SET (selected MessageNew)\r\n", SR_NOTIFY);
    expect_refused("a ENABLE QRESYNC\r\n", SR_ENABLE);
    expect_refused("a ENABLE CONDSTORE IMAP4rev2\r\n", SR_ENABLE);
    expect_refused("a XLIST \"\" *\r\n", SR_COMMAND_NOT_ALLOWED);
    expect_refused("a UNAUTHENTICATE\r\n", SR_COMMAND_NOT_ALLOWED);
    expect_refused("a UID COMPRESS\r\n", SR_COMMAND_NOT_ALLOWED);
    expect_refused("a X-GM-FOO\r\n", SR_COMMAND_NOT_ALLOWED);
    struct imap_allow_cmd c;
    assert_int_equal(imap_allow_command("a IDLE\r\n", 8, true, false, &c), IA_PASS);
    assert_int_equal(c.kind, IA_IDLE);
    assert_int_equal(imap_allow_command("a CLOSE\r\n", 9, true, false, &c), IA_PASS);
    assert_int_equal(c.kind, IA_CLOSE);
    /* judged commands wait for their whole line */
    assert_int_equal(imap_allow_command("a FETCH 1 (FLAGS", 16, false, false, &c), IA_MORE);
    assert_int_equal(imap_allow_command("a ENABLE ", 9, false, false, &c), IA_MORE);
}

static void test_fetch_items(void **state)
{
    (void)state;
    const char *pass[] = {
        "a FETCH 1 (FLAGS UID)\r\n",
        "a FETCH 1:* ALL\r\n",
        "a UID FETCH 1,3:5 FAST\r\n",
        "a FETCH 1 BODY[]\r\n",
        "a FETCH 1 (BODY.PEEK[1.2.MIME]<0.100>)\r\n",
        "a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From \"To\" Subject)])\r\n",
        "a FETCH 1 (BODY[1.HEADER.FIELDS.NOT (X-Foo)] BODY[TEXT])\r\n",
        "a FETCH 1 (BINARY.PEEK[1]<5.10> BINARY.SIZE[2] BINARY[])\r\n",
        "a FETCH 1 (RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT ENVELOPE BODYSTRUCTURE BODY)\r\n",
        "a FETCH $ (MODSEQ EMAILID THREADID SAVEDATE INTERNALDATE)\r\n",
        "a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
        "a fetch 1 body.peek[header]\r\n",
    };
    for (size_t i = 0; i < sizeof pass / sizeof *pass; i++)
        expect_pass(pass[i]);
    const char *bad[] = {
        "a FETCH 1 (PREVIEW)\r\n",
        "a FETCH 1 (SNIPPET (FUZZY))\r\n",
        "a FETCH 1 PREVIEW\r\n",
        "a UID FETCH 1 (FLAGS X-GM-MSGID)\r\n",
        "a FETCH 1 (BODY[FOO])\r\n",
        "a FETCH 1 (BODY[MIME])\r\n",
        "a FETCH 1 (BINARY[TEXT])\r\n",
        "a FETCH 1 (BODY[0])\r\n",
        "a FETCH 1 (BODY[]<0>)\r\n",
        "a FETCH 1 (FLAGS\r\n",
        "a FETCH 1 (FLAGS) (VANISHED)\r\n",
        "a FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n",
        "a FETCH 1 (ALL)\r\n",
        "a FETCH 1 (BODYSTRUCTURE]\r\n",
        "a FETCH 1 (FLAGS )\r\n",
        "a FETCH 1 FLAGS UID\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_refused(bad[i], SR_FETCH_ITEM);
    expect_refused("a FETCH 1 (BODY.PEEK[HEADER.FIELDS {4}\r\n", SR_FETCH_LITERAL);
}

static void test_select(void **state)
{
    (void)state;
    struct imap_allow_cmd c;
    const char *l = "a SELECT \"My \\\"Box\\\\\"\r\n";
    assert_int_equal(cls(l, &c), IA_PASS);
    assert_int_equal(c.kind, IA_SELECT);
    char out[IMAP_ALLOW_MAILBOX_MAX];
    long n = imap_allow_mailbox(l + c.mbox_off, c.mbox_len, out, sizeof out);
    assert_int_equal(n, 8);
    assert_memory_equal(out, "My \"Box\\", 8);
    l = "a EXAMINE &AMQ-t&AOQ- (CONDSTORE)\r\n";
    assert_int_equal(cls(l, &c), IA_PASS);
    n = imap_allow_mailbox(l + c.mbox_off, c.mbox_len, out, sizeof out);
    assert_int_equal(n, 11);
    assert_memory_equal(out, "&AMQ-t&AOQ-", 11);
    l = "a select inbox\r\n";
    assert_int_equal(cls(l, &c), IA_PASS);
    n = imap_allow_mailbox(l + c.mbox_off, c.mbox_len, out, sizeof out);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "INBOX", 5);
    l = "a SELECT {300}\r\n";
    assert_int_equal(cls(l, &c), IA_PASS);
    assert_true(c.mbox_literal);
    assert_int_equal(c.mbox_litlen, 300);
    expect_refused("a SELECT {1025}\r\n", SR_MAILBOX_NAME);
    expect_refused("a SELECT {5+}x\r\n", SR_MAILBOX_NAME);
    expect_refused("a SELECT INBOX (QRESYNC (1 2))\r\n", SR_COMMAND_NOT_ALLOWED);
    expect_refused("a SELECT \"unterminated\r\n", SR_MAILBOX_NAME);
    /* a name over 1 KiB: refused whole, never cut */
    char big[1200];
    memcpy(big, "a SELECT ", 9);
    memset(big + 9, 'x', 1025);
    memcpy(big + 9 + 1025, "\r\n", 3);
    expect_refused(big, SR_MAILBOX_NAME);
    big[9 + 1024] = '\r';
    big[9 + 1025] = '\n';
    big[9 + 1026] = '\0';
    assert_int_equal(cls(big, &c), IA_PASS);
    assert_int_equal(c.mbox_len, 1024);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caps_list),
        cmocka_unit_test(test_caps_lines),
        cmocka_unit_test(test_caps_response_classify),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_fetch_items),
        cmocka_unit_test(test_select),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
