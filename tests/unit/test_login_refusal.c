/* Unit tests for login_refusal: which backend refusals count as a wrong password (issue 17
 * item 5), and that what is passed on to the client is the code and a printable text only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "login_refusal.h"

static void imap(const char *status, enum lr_kind kind, const char *code, const char *text)
{
    struct lr_refusal r;
    lr_imap(status, strlen(status), &r);
    assert_int_equal(r.kind, kind);
    assert_string_equal(r.code, code);
    assert_string_equal(r.text, text);
}

static void pop3(const char *line, enum lr_kind kind, const char *code)
{
    struct lr_refusal r;
    lr_pop3(line, strlen(line), &r);
    assert_int_equal(r.kind, kind);
    assert_string_equal(r.code, code);
}

static void imap_codes(void **state)
{
    (void)state;
    imap("NO [AUTHENTICATIONFAILED] Authentication failed.", LR_CREDENTIALS, "AUTHENTICATIONFAILED",
         "Authentication failed.");
    imap("NO [PRIVACYREQUIRED] Plaintext authentication disallowed", LR_PASS_ON, "PRIVACYREQUIRED",
         "Plaintext authentication disallowed");
    imap("no [unavailable] busy", LR_PASS_ON, "UNAVAILABLE", "busy");
    imap("NO [EXPIRED] Password expired", LR_PASS_ON, "EXPIRED", "Password expired");
    /* no code, ALERT, a vendor code: as good as a wrong password (legacy servers say so) */
    imap("NO LOGIN failed.", LR_CREDENTIALS, "", "LOGIN failed.");
    imap("NO [ALERT] Invalid password", LR_CREDENTIALS, "ALERT", "Invalid password");
    imap("NO [XVENDOR] nope", LR_CREDENTIALS, "XVENDOR", "nope");
    /* arguments are dropped; a malformed code is text */
    imap("NO [INUSE a b] locked", LR_PASS_ON, "INUSE", "locked");
    imap("NO [PRIVACY\"REQUIRED] x", LR_CREDENTIALS, "", "[PRIVACY\"REQUIRED] x");
    imap("NO [UNAVAILABLE", LR_CREDENTIALS, "", "[UNAVAILABLE");
    imap("BAD [UNAVAILABLE] syntax", LR_PROTOCOL, "", "BAD [UNAVAILABLE] syntax");
    imap("NOPE", LR_PROTOCOL, "", "NOPE");
}

static void imap_text_is_safe(void **state)
{
    (void)state;
    imap("NO [LIMIT] a\x01\x7f\xc3\xa9 b  ", LR_PASS_ON, "LIMIT", "a???? b");
    char long_status[600] = "NO [LIMIT] ";
    memset(long_status + 11, 'x', 500);
    struct lr_refusal r;
    lr_imap(long_status, strlen(long_status), &r);
    assert_int_equal(strlen(r.text), LR_TEXT_MAX);
    char long_code[100] = "NO [";
    memset(long_code + 4, 'A', 40);
    strcat(long_code, "] t");
    lr_imap(long_code, strlen(long_code), &r);
    assert_int_equal(r.kind, LR_CREDENTIALS);
    assert_string_equal(r.code, "");
}

static void pop3_codes(void **state)
{
    (void)state;
    pop3("-ERR [AUTH] Authentication failed.", LR_CREDENTIALS, "AUTH");
    pop3("-ERR Authentication failed.", LR_CREDENTIALS, "");
    pop3("-ERR [SYS/TEMP] try later", LR_PASS_ON, "SYS/TEMP");
    pop3("-ERR [SYS/PERM] gone", LR_PASS_ON, "SYS/PERM");
    pop3("-ERR [IN-USE] mailbox locked", LR_PASS_ON, "IN-USE");
    pop3("-ERR [LOGIN-DELAY] wait", LR_PASS_ON, "LOGIN-DELAY");
    pop3("-ERR [XY] other", LR_CREDENTIALS, "XY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(imap_codes),
        cmocka_unit_test(imap_text_is_safe),
        cmocka_unit_test(pop3_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
