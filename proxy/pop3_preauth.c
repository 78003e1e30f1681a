/*
 * pop3_preauth — the POP3 AUTHORIZATION state, spoken by the proxy itself (RFC 1939, RFC 2449
 * CAPA, RFC 2595 STLS, RFC 5034 AUTH): CAPA, STLS, USER/PASS, AUTH PLAIN (with and without an
 * initial response, "*" cancels), AUTH XOAUTH2/OAUTHBEARER (payload replayed to the backend),
 * QUIT. One small function per command; pop3_client_input() only tokenizes and dispatches.
 *
 * The greeting carries no APOP timestamp: APOP's challenge would have to be the backend's, which
 * the client has not met yet, so APOP cannot be proxied and is refused.
 *
 * STLS: bytes the client pipelined behind STLS are thrown away, never parsed after the handshake
 * (the CVE-2011-0411 class of plaintext injection).
 */
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3.h"
#include "sess_event.h"
#include "sess_policy.h"
#include "worker.h"

void pop3_reply(struct session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 3)
        n = (int)(sizeof line - 3);
    line[n++] = '\r';
    line[n++] = '\n';
    if (!conn_ctl_append(&s->client, line, (size_t)n))
        sess_close(s, "client output overflow");
}

static bool plaintext_refused(struct session *s)
{
    return !s->client_tls && !s->cfg->allow_plaintext_auth;
}

static bool stls_offered(struct session *s)
{
    return s->listener->tls == CFG_TLS_STARTTLS && !s->client_tls;
}

static int pop3_init(struct session *s)
{
    struct pop3_state *st = calloc(1, sizeof *st);
    if (!st)
        return 0;
    s->pstate = st;
    return 1;
}

void pop3_forget_login(struct pop3_state *st)
{
    creds_clear(&st->creds);
}

static const char *mech_name(enum creds_mech m)
{
    return creds_mech_name(m, "user");
}

static void free_store(struct pop3_state *st)
{
    if (st->store) {
        OPENSSL_cleanse(st->store, st->store_cap);
        free(st->store);
        st->store = NULL;
    }
}

static void pop3_stop(struct session *s)
{
    pop3_relay_stop(s); /* cancels a scan in flight, frees a held message (issue 4) */
}

static void pop3_destroy(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    pop3_scan_abort(s); /* (stopped already: memory only) */
    pop3_forget_login(st);
    free_store(st);
    free(st->verdicts);
    free(st);
    s->pstate = NULL;
}

static void pop3_greet(struct session *s)
{
    pop3_reply(s, "+OK %s ready.", s->cfg->greeting_name);
}

static void pop3_bye(struct session *s, const char *text)
{
    /* Only on the way out (timeouts, shutdown, backend lost), after the relay stopped: the
     * session closes after this line. Inside a multi-line response that was partly sent it
     * would read as message text: then the close says it alone. */
    if (s->logged_in && (!pop3_relay_client_at_boundary(s) || pop3_st(s)->quit_done))
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "-ERR [SYS/TEMP] %s\r\n", text);
    conn_ctl_append(&s->client, line, (size_t)n);
}

static bool count_bad(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (++st->bad >= s->cfg->limits.max_bad_commands) {
        sess_event(s, &(struct sess_event){
                          .kind = SEV_REFUSED, .reason = SR_TOO_MANY_BAD_COMMANDS, .n = st->bad});
        pop3_reply(s, "-ERR Too many invalid commands.");
        sess_close_after_flush(s, "too many bad commands");
        return false;
    }
    return true;
}

/* ---- commands ---- */

static void cmd_capa(struct session *s)
{
    bool auth_ok = !plaintext_refused(s);
    pop3_reply(s, "+OK Capability list follows");
    pop3_reply(s, "TOP");
    pop3_reply(s, "UIDL");
    pop3_reply(s, "RESP-CODES");
    pop3_reply(s, "AUTH-RESP-CODE");
    pop3_reply(s, "PIPELINING");
    if (stls_offered(s))
        pop3_reply(s, "STLS");
    if (auth_ok) {
        pop3_reply(s, "USER");
        pop3_reply(s, "SASL PLAIN XOAUTH2 OAUTHBEARER");
    }
    pop3_reply(s, ".");
}

static void cmd_quit(struct session *s)
{
    pop3_reply(s, "+OK Logging out.");
    sess_close_after_flush(s, "logout");
}

static void cmd_stls(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (!stls_offered(s)) {
        pop3_reply(s, "-ERR %s",
                   s->client_tls ? "TLS is already active." : "STLS is not available here.");
        count_bad(s);
        return;
    }
    size_t dropped = buf_len(&s->up);
    buf_clear(&s->up);
    pop3_cmd_parser_reset(&st->parser);
    if (dropped)
        sess_event(s, &(struct sess_event){.kind = SEV_STARTTLS_INJECTION, .n = dropped});
    pop3_reply(s, "+OK Begin TLS negotiation now.");
    s->client.reading = false;
    sess_set_state(s, SESS_STARTTLS);
    sess_pump(s);
    if (!s->closing && conn_pending_out(&s->client) == 0)
        sess_client_start_tls(s);
}

static void pop3_starttls_done(struct session *s)
{
    /* RFC 2595 4: the client forgets the capabilities and the USER it may have given. */
    struct pop3_state *st = pop3_st(s);
    st->have_user = false;
    free(s->user);
    s->user = NULL;
}

static bool refuse_plaintext(struct session *s, enum sess_reason why)
{
    if (!plaintext_refused(s))
        return false;
    sess_event(s, &(struct sess_event){.kind = SEV_REFUSED, .reason = why});
    pop3_reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; "
                  "use STLS.");
    count_bad(s);
    return true;
}

static bool set_user(struct session *s, const char *u, size_t len)
{
    if (!creds_user_ok(u, len))
        return false;
    free(s->user);
    s->user = strndup(u, len);
    return s->user != NULL;
}

static void pop3_client_input(struct session *s);

/* The login policy refused before the backend was contacted (sess_policy.c): answer, and back
 * to the AUTHORIZATION state as after a failed login. */
static void login_refused(struct session *s, const char *answer)
{
    pop3_forget_login(pop3_st(s));
    pop3_reply(s, "%s", answer);
    sess_forget_user(s);
    if (!count_bad(s))
        return;
    s->client.reading = true;
    pop3_client_input(s);
}

static void begin_login(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    s->client.reading = false; /* pipelined commands wait in s->up until the login is decided */
    st->preauth_deadline = s->deadline_at;
    sess_log(s, LOG_DEBUG, "event=login_start mech=%s", mech_name(st->creds.mech));
    s->login_creds = &st->creds; /* for an auth_http lookup (sess_lookup.c) */
    s->login_attempts++;
    sess_login_check(s, pop3_backend_start, login_refused); /* login policy first (issue 5) */
}

static void cmd_user(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct pop3_cmd_parser *p = &st->parser;
    if (refuse_plaintext(s, SR_PLAINTEXT_USER))
        return;
    /* RFC 1939 7: the name is the rest of the line; some servers allow spaces in it. */
    if (p->rest.len == 0 || !set_user(s, p->store + p->rest.off, p->rest.len)) {
        pop3_reply(s, "-ERR USER expects a user name.");
        count_bad(s);
        return;
    }
    st->have_user = true;
    pop3_reply(s, "+OK");
}

static void cmd_pass(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct pop3_cmd_parser *p = &st->parser;
    if (refuse_plaintext(s, SR_PLAINTEXT_PASS))
        return;
    if (!st->have_user) {
        pop3_reply(s, "-ERR USER first.");
        count_bad(s);
        return;
    }
    st->have_user = false;
    enum creds_rc rc =
        creds_from_login(&st->creds, s->user, strlen(s->user), p->store + p->rest.off, p->rest.len);
    if (rc == CREDS_MALFORMED) {
        pop3_reply(s, "-ERR [AUTH] Authentication failed.");
        count_bad(s);
        return;
    }
    if (rc != CREDS_OK) {
        sess_close(s, "out of memory");
        return;
    }
    begin_login(s);
}

/* The initial or continued SASL response for the chosen mechanism (base64 text). */
static void sasl_response(struct session *s, const char *b64, size_t len)
{
    struct pop3_state *st = pop3_st(s);
    if (len == 1 && b64[0] == '*') {
        pop3_reply(s, "-ERR Authentication cancelled.");
        return;
    }
    switch (creds_from_sasl(&st->creds, st->mech, b64, len)) {
    case CREDS_OK:
        break;
    case CREDS_BAD_BASE64:
        pop3_reply(s, "-ERR Invalid base64 data.");
        count_bad(s);
        return;
    case CREDS_MALFORMED:
        pop3_reply(s, "-ERR [AUTH] Invalid SASL message.");
        count_bad(s);
        return;
    case CREDS_NOMEM:
        sess_close(s, "out of memory");
        return;
    }
    if (!set_user(s, st->creds.user, st->creds.user_len)) {
        sess_close(s, "out of memory");
        return;
    }
    begin_login(s);
}

static void cmd_auth(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct pop3_cmd_parser *p = &st->parser;
    if (p->nargs == 0) {
        /* The pre-RFC 5034 mechanism listing that Outlook sends. */
        if (plaintext_refused(s)) {
            pop3_reply(s, "+OK");
        } else {
            pop3_reply(s, "+OK");
            pop3_reply(s, "PLAIN");
            pop3_reply(s, "XOAUTH2");
            pop3_reply(s, "OAUTHBEARER");
        }
        pop3_reply(s, ".");
        return;
    }
    if (refuse_plaintext(s, SR_PLAINTEXT_AUTH))
        return;
    if (p->nargs > 2) {
        pop3_reply(s, "-ERR AUTH expects a mechanism and an optional initial response.");
        count_bad(s);
        return;
    }
    if (pop3_cmd_arg_is(p, 0, "PLAIN"))
        st->mech = CREDS_PLAIN;
    else if (pop3_cmd_arg_is(p, 0, "XOAUTH2"))
        st->mech = CREDS_XOAUTH2;
    else if (pop3_cmd_arg_is(p, 0, "OAUTHBEARER"))
        st->mech = CREDS_OAUTHBEARER;
    else {
        pop3_reply(s, "-ERR Unsupported authentication mechanism.");
        count_bad(s);
        return;
    }
    st->have_user = false;
    if (p->nargs == 2) {
        sasl_response(s, pop3_cmd_arg(p, 1), p->args[1].len);
        return;
    }
    st->sasl_wait = true;
    pop3_cmd_parser_expect_sasl(&st->parser);
    pop3_reply(s, "+ ");
}

static bool is_transaction_command(const char *kw)
{
    static const char *const known[] = {"STAT", "LIST", "RETR", "DELE", "NOOP",
                                        "RSET", "TOP",  "UIDL", "LAST", NULL};
    for (int i = 0; known[i]; i++)
        if (strcmp(kw, known[i]) == 0)
            return true;
    return false;
}

static void dispatch(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct pop3_cmd_parser *p = &st->parser;
    if (p->sasl) {
        st->sasl_wait = false;
        sasl_response(s, pop3_cmd_arg(p, 0), p->args[0].len);
        return;
    }
    const char *kw = p->keyword;
    if (strcmp(kw, "CAPA") == 0)
        cmd_capa(s);
    else if (strcmp(kw, "QUIT") == 0)
        cmd_quit(s);
    else if (strcmp(kw, "STLS") == 0)
        cmd_stls(s);
    else if (strcmp(kw, "USER") == 0)
        cmd_user(s);
    else if (strcmp(kw, "PASS") == 0)
        cmd_pass(s);
    else if (strcmp(kw, "AUTH") == 0)
        cmd_auth(s);
    else if (strcmp(kw, "APOP") == 0) {
        pop3_reply(s, "-ERR APOP is not supported; use USER/PASS or AUTH over TLS.");
        count_bad(s);
    } else if (is_transaction_command(kw)) {
        pop3_reply(s, "-ERR Not logged in.");
        count_bad(s);
    } else {
        pop3_reply(s, "-ERR Unknown command.");
        count_bad(s);
    }
}

static void pop3_client_input(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    const struct cfg_limits *lim = &s->cfg->limits;
    if (!st->store) {
        st->store_cap = lim->max_line + 1;
        st->store = malloc(st->store_cap);
        if (!st->store) {
            sess_close(s, "out of memory");
            return;
        }
        pop3_cmd_parser_init(&st->parser, st->store, st->store_cap, lim->max_line);
    }
    while (!s->closing && s->state == SESS_PREAUTH && s->client.reading && !buf_empty(&s->up)) {
        size_t used = 0;
        enum pop3_cmd_result r =
            pop3_cmd_parse(&st->parser, buf_rptr(&s->up), buf_len(&s->up), &used);
        /* Parsed bytes may hold a password: wipe them from the receive buffer. */
        OPENSSL_cleanse(buf_rptr(&s->up), used);
        buf_consume(&s->up, used);
        if (r == POP3_CMD_MORE)
            break;
        if (r == POP3_CMD_DONE) {
            dispatch(s);
            OPENSSL_cleanse(st->store, st->store_cap);
            continue;
        }
        char e[128];
        sess_log(s, LOG_INFO, "event=bad_command error=%s", log_qs(e, sizeof e, st->parser.error));
        if (st->parser.sasl)
            st->sasl_wait = false;
        pop3_reply(s, "-ERR %s", st->parser.error ? st->parser.error : "Invalid command.");
        if (!count_bad(s))
            return;
    }
    if (buf_empty(&s->up))
        buf_release_if_empty(&s->up);
}

/* ---- results of the backend login (from pop3_backend.c) ---- */

static void login_failed_tail(struct session *s);

void pop3_preauth_login_failed(struct session *s, bool auth_failure, enum sess_login_fail fail,
                               const char *code, const char *why)
{
    struct pop3_state *st = pop3_st(s);
    sess_backend_drop(s);
    pop3_forget_login(st);
    if (auth_failure) {
        sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_FAILED, .fail = fail, .text = why});
        pop3_reply(s, "-ERR [%s] Authentication failed.", code ? code : "AUTH");
    } else {
        sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_UNAVAILABLE, .text = why});
        pop3_reply(s, "-ERR [SYS/TEMP] Backend server unavailable; try again later.");
    }
    sess_login_result(s, false, auth_failure); /* issue 5: count the failure */
    login_failed_tail(s);
}

static void answer_refusal(struct session *s, const char *code, const char *text)
{
    pop3_reply(s, "-ERR [%s] %s", code, text);
}

void pop3_preauth_login_refused(struct session *s, const char *code, const char *text)
{
    sess_backend_drop(s);
    pop3_forget_login(pop3_st(s));
    sess_login_passed_on(s, code, text, answer_refusal);
    login_failed_tail(s);
}

static void login_failed_tail(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    sess_forget_user(s);
    sess_set_state(s, SESS_PREAUTH);
    double left = st->preauth_deadline - ev_now(s->worker->loop);
    sess_set_deadline(s, left > 0.5 ? left : 0.5);
    if (!count_bad(s))
        return;
    s->client.reading = true;
    /* Commands pipelined behind the failed login are answered now. */
    pop3_client_input(s);
}

void pop3_preauth_login_ok(struct session *s, const char *text, size_t len)
{
    struct pop3_state *st = pop3_st(s);
    const char *mech = mech_name(st->creds.mech);
    pop3_forget_login(st);
    sess_login_result(s, true, false); /* issue 5: register the session */
    OPENSSL_cleanse(st->store, st->store_cap);
    sess_event(s, &(struct sess_event){.kind = SEV_LOGIN, .name = s->be->name, .mech = mech});
    /* The backend's own "+OK …" line (e.g. Dovecot's "Logged in."), as the client expects. */
    if (len >= 3)
        pop3_reply(s, "%.*s", (int)(len > 500 ? 500 : len), text);
    else
        pop3_reply(s, "+OK Logged in.");
    pop3_relay_init(s);
    sess_start_relay(s);
}

const struct protocol pop3_protocol = {
    .name = "pop3",
    .init = pop3_init,
    .greet = pop3_greet,
    .client_input = pop3_client_input,
    .starttls_done = pop3_starttls_done,
    .backend_event = pop3_backend_event,
    .relay_up = pop3_relay_up,
    .relay_down = pop3_relay_down,
    .bye = pop3_bye,
    .idle = pop3_relay_idle,
    .stop = pop3_stop,
    .holding = pop3_relay_holding,
    .destroy = pop3_destroy,
};
