/* Unit tests for sess_event: every event kind and every reason maps to its counter and to its
 * log text, from the typed event alone (issue 14: rewording a log line cannot change a metric).
 * The expected texts are the log lines operators and the integration tests know. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "metrics.h"
#include "sess_event.h"

struct snap {
    unsigned long long logins[2][ML__COUNT];
    unsigned long long starttls;
};

static void take(struct snap *n)
{
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < ML__COUNT; r++)
            n->logins[p][r] = atomic_load(&metrics.logins[p][r]);
    n->starttls = atomic_load(&metrics.starttls_injections);
}

/* Count `e` once for `proto` and check which counters moved: exactly `login` (or none when -1),
 * the refusal `reason` (or none), the STARTTLS counter when `starttls`. */
static void expect_counts(const struct sess_event *e, int proto, int login, const char *reason,
                          bool starttls)
{
    struct snap a, b;
    take(&a);
    unsigned long long ra = reason ? metrics_refusal_count(reason) : 0;
    sess_event_count(e, proto);
    take(&b);
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < ML__COUNT; r++)
            assert_int_equal(b.logins[p][r] - a.logins[p][r],
                             p == (proto == CFG_PROTO_POP3) && r == login ? 1 : 0);
    if (reason)
        assert_int_equal(metrics_refusal_count(reason) - ra, 1);
    assert_int_equal(b.starttls - a.starttls, starttls ? 1 : 0);
}

static void expect_text(const struct sess_event *e, const char *text, enum log_level lvl)
{
    char out[512];
    assert_string_equal(sess_event_format(e, out, sizeof out), text);
    assert_int_equal(sess_event_level(e), lvl);
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        struct sess_event e;
        const char *text;
        enum log_level lvl;
        bool login; /* also a refused login */
    } cases[] = {
        {{.kind = SEV_REFUSED, .reason = SR_BAD_PROXY_HEADER, .text = "bad signature"},
         "event=refused reason=bad_proxy_header error=\"bad signature\"",
         LOG_WARN,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_PROXY_HEADER_FROM_UNTRUSTED, .name = "imaps"},
         "event=refused reason=proxy_header_from_untrusted listener=imaps",
         LOG_WARN,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_MAX_CONNECTIONS, .name = "192.0.2.1", .n = 100},
         "event=refused reason=max_connections client=192.0.2.1 limit=100",
         LOG_WARN,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_MAX_CONNECTIONS_PER_ADDRESS, .n = 20},
         "event=refused reason=max_connections_per_address limit=20",
         LOG_WARN,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_TOO_MANY_BAD_COMMANDS, .n = 10},
         "event=refused reason=too_many_bad_commands count=10",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_LOGIN},
         "event=refused reason=plaintext_login",
         LOG_INFO,
         true},
        {{.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_AUTHENTICATE},
         "event=refused reason=plaintext_authenticate",
         LOG_INFO,
         true},
        {{.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_USER},
         "event=refused reason=plaintext_user",
         LOG_INFO,
         true},
        {{.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_PASS},
         "event=refused reason=plaintext_pass",
         LOG_INFO,
         true},
        {{.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_AUTH},
         "event=refused reason=plaintext_auth",
         LOG_INFO,
         true},
        {{.kind = SEV_REFUSED, .reason = SR_COMPRESS},
         "event=refused reason=compress",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_STARTTLS_AFTER_LOGIN},
         "event=refused reason=starttls_after_login",
         LOG_INFO,
         false},
        /* POP3 after login: reason= is the token (and the counter's label), answer= the words */
        {{.kind = SEV_REFUSED,
          .reason = SR_STARTTLS_AFTER_LOGIN,
          .answer = "TLS is already active.",
          .command = "STLS"},
         "event=refused reason=starttls_after_login answer=\"TLS is already active.\" command=STLS",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED,
          .reason = SR_ALREADY_LOGGED_IN,
          .answer = "Already logged in.",
          .command = "USER"},
         "event=refused reason=already_logged_in answer=\"Already logged in.\" command=USER",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED,
          .reason = SR_DOWNLOAD_LIMIT,
          .answer = "[SYS/TEMP] Download limit reached; try again later.",
          .command = "RETR"},
         "event=refused reason=download_limit answer=\"[SYS/TEMP] Download limit reached; try "
         "again later.\" "
         "command=RETR",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_COMMAND_NOT_ALLOWED, .command = "UTF8"},
         "event=refused reason=command_not_allowed command=UTF8",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_BAD_COMMAND, .answer = "Invalid command."},
         "event=refused reason=bad_command answer=\"Invalid command.\" command=-",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_COMMAND_NOT_ALLOWED},
         "event=refused reason=command_not_allowed",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_URLAUTH},
         "event=refused reason=urlauth",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_NOTIFY},
         "event=refused reason=notify",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_ENABLE},
         "event=refused reason=enable",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_FETCH_ITEM},
         "event=refused reason=fetch_item",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_FETCH_LITERAL},
         "event=refused reason=fetch_literal",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_COMMAND_TOO_LONG},
         "event=refused reason=command_too_long",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_IDLE_NOT_DONE},
         "event=refused reason=idle_not_done",
         LOG_INFO,
         false},
        {{.kind = SEV_REFUSED, .reason = SR_MAILBOX_NAME},
         "event=refused reason=mailbox_name",
         LOG_INFO,
         false},
        {{.kind = SEV_LOGIN_REFUSED,
          .reason = SR_LOCKED_OUT,
          .scope = "user",
          .n = 1500,
          .degraded = false},
         "event=login_refused reason=locked_out scope=user retry_ms=1500 degraded=no",
         LOG_INFO,
         true},
        {{.kind = SEV_LOGIN_REFUSED, .reason = SR_LOGIN_RATE, .scope = "address", .n = 0},
         "event=login_refused reason=login_rate scope=address retry_ms=0 degraded=no",
         LOG_INFO,
         true},
        {{.kind = SEV_LOGIN_REFUSED,
          .reason = SR_SESSION_LIMIT,
          .scope = "user",
          .n = 7,
          .degraded = true},
         "event=login_refused reason=session_limit scope=user retry_ms=7 degraded=yes",
         LOG_INFO,
         true},
        {{.kind = SEV_LOGIN_REFUSED, .reason = SR_POLICY_UNAVAILABLE, .scope = "user"},
         "event=login_refused reason=policy_unavailable scope=user retry_ms=0 degraded=no",
         LOG_WARN,
         true},
        {{.kind = SEV_LOGIN_REFUSED, .reason = SR_ADDRESS_DENIED},
         "event=login_refused reason=address_denied",
         LOG_INFO,
         true},
    };
    bool seen[SR__COUNT] = {false};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct sess_event *e = &cases[i].e;
        seen[e->reason] = true;
        expect_text(e, cases[i].text, cases[i].lvl);
        for (int proto = CFG_PROTO_IMAP; proto <= CFG_PROTO_POP3; proto++)
            expect_counts(e, proto, cases[i].login ? ML_REFUSED : -1, sess_reason_name(e->reason),
                          false);
    }
    /* every reason is covered, and its label is the name the log carries */
    for (int r = SR_NONE + 1; r < SR__COUNT; r++)
        assert_true(seen[r]);
    assert_string_equal(sess_reason_name(SR_PLAINTEXT_LOGIN), "plaintext_login");
    assert_string_equal(sess_reason_name(SR__COUNT), "unknown");
}

static void test_logins(void **state)
{
    (void)state;
    struct sess_event ok = {.kind = SEV_LOGIN, .name = "dovecot1", .mech = "plain"};
    expect_text(&ok, "event=login backend=dovecot1 mech=plain", LOG_INFO);
    expect_counts(&ok, CFG_PROTO_IMAP, ML_OK, NULL, false);
    expect_counts(&ok, CFG_PROTO_POP3, ML_OK, NULL, false);

    /* issue 18: reason= is a token from a fixed set, the words go to detail= (quoted, escaped) */
    struct sess_event failed = {.kind = SEV_LOGIN_FAILED,
                                .fail = SLF_CREDENTIALS_REFUSED,
                                .text = "backend refused the credentials"};
    expect_text(&failed,
                "event=login_failed reason=credentials_refused detail=\"backend refused the "
                "credentials\"",
                LOG_INFO);
    struct sess_event mech = {
        .kind = SEV_LOGIN_FAILED, .fail = SLF_MECHANISM_UNSUPPORTED, .text = "say \"no\" \\ here"};
    expect_text(&mech,
                "event=login_failed reason=mechanism_unsupported detail=\"say \\\"no\\\" "
                "\\\\ here\"",
                LOG_INFO);
    assert_string_equal(sess_login_fail_name(SLF_CREDENTIALS_REFUSED), "credentials_refused");
    assert_string_equal(sess_login_fail_name(SLF__COUNT), "credentials_refused");
    expect_counts(&failed, CFG_PROTO_IMAP, ML_AUTH_FAILED, NULL, false);
    expect_counts(&failed, CFG_PROTO_POP3, ML_AUTH_FAILED, NULL, false);
    /* the backend's words cannot move another counter, whatever they say */
    struct sess_event tricky = {.kind = SEV_LOGIN_FAILED, .text = "backend_unavailable"};
    expect_counts(&tricky, CFG_PROTO_IMAP, ML_AUTH_FAILED, NULL, false);

    struct sess_event gone = {.kind = SEV_LOGIN_UNAVAILABLE, .text = "connect timed out"};
    expect_text(&gone, "event=login_failed reason=backend_unavailable detail=\"connect timed out\"",
                LOG_WARN);
    struct sess_event quoted = {.kind = SEV_LOGIN_UNAVAILABLE, .text = "a \"quote\""};
    expect_text(&quoted, "event=login_failed reason=backend_unavailable detail=\"a \\\"quote\\\"\"",
                LOG_WARN);
    expect_counts(&gone, CFG_PROTO_IMAP, ML_UNAVAILABLE, NULL, false);
    expect_counts(&gone, CFG_PROTO_POP3, ML_UNAVAILABLE, NULL, false);
}

static void test_starttls_injection(void **state)
{
    (void)state;
    struct sess_event e = {.kind = SEV_STARTTLS_INJECTION, .n = 17};
    expect_text(&e, "event=starttls_injection discarded_bytes=17", LOG_WARN);
    expect_counts(&e, CFG_PROTO_IMAP, -1, NULL, true);
    expect_counts(&e, CFG_PROTO_POP3, -1, NULL, true);
}

/* Every kind has a text and a level; a cut buffer stays terminated. */
static void test_every_kind(void **state)
{
    (void)state;
    for (int k = 0; k < SEV__COUNT; k++) {
        struct sess_event e = {.kind = (enum sess_ev)k, .reason = SR_COMPRESS};
        char out[256];
        sess_event_format(&e, out, sizeof out);
        assert_true(strncmp(out, "event=", 6) == 0);
        assert_string_not_equal(out, "event=unknown");
        char small[8];
        sess_event_format(&e, small, sizeof small);
        assert_int_equal(strlen(small), sizeof small - 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_logins),
        cmocka_unit_test(test_starttls_injection),
        cmocka_unit_test(test_every_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
