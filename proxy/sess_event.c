/*
 * sess_event — see sess_event.h. Two tables say everything about a reason and a kind: its name,
 * its log level, which login counter it moves. The log text is built from the same fields.
 */
#include "sess_event.h"

#include <stdarg.h>
#include <stdio.h>

#include "metrics.h"
#include "session.h"

static const struct {
    const char *name;
    enum log_level level;
    bool login_refused; /* also a refused login (portcullis_logins_total{result="refused"}) */
} reasons[SR__COUNT] = {
    [SR_NONE] = {"unknown", LOG_INFO, false},
    [SR_BAD_PROXY_HEADER] = {"bad_proxy_header", LOG_WARN, false},
    [SR_PROXY_HEADER_FROM_UNTRUSTED] = {"proxy_header_from_untrusted", LOG_WARN, false},
    [SR_MAX_CONNECTIONS] = {"max_connections", LOG_WARN, false},
    [SR_MAX_CONNECTIONS_PER_ADDRESS] = {"max_connections_per_address", LOG_WARN, false},
    [SR_TOO_MANY_BAD_COMMANDS] = {"too_many_bad_commands", LOG_INFO, false},
    [SR_PLAINTEXT_LOGIN] = {"plaintext_login", LOG_INFO, true},
    [SR_PLAINTEXT_AUTHENTICATE] = {"plaintext_authenticate", LOG_INFO, true},
    [SR_PLAINTEXT_USER] = {"plaintext_user", LOG_INFO, true},
    [SR_PLAINTEXT_PASS] = {"plaintext_pass", LOG_INFO, true},
    [SR_PLAINTEXT_AUTH] = {"plaintext_auth", LOG_INFO, true},
    [SR_COMPRESS] = {"compress", LOG_INFO, false},
    [SR_STARTTLS_AFTER_LOGIN] = {"starttls_after_login", LOG_INFO, false},
    [SR_ALREADY_LOGGED_IN] = {"already_logged_in", LOG_INFO, false},
    [SR_DOWNLOAD_LIMIT] = {"download_limit", LOG_INFO, false},
    [SR_BAD_COMMAND] = {"bad_command", LOG_INFO, false},
    [SR_COMMAND_NOT_ALLOWED] = {"command_not_allowed", LOG_INFO, false},
    [SR_URLAUTH] = {"urlauth", LOG_INFO, false},
    [SR_NOTIFY] = {"notify", LOG_INFO, false},
    [SR_ENABLE] = {"enable", LOG_INFO, false},
    [SR_FETCH_ITEM] = {"fetch_item", LOG_INFO, false},
    [SR_FETCH_LITERAL] = {"fetch_literal", LOG_INFO, false},
    [SR_COMMAND_TOO_LONG] = {"command_too_long", LOG_INFO, false},
    [SR_IDLE_NOT_DONE] = {"idle_not_done", LOG_INFO, false},
    [SR_MAILBOX_NAME] = {"mailbox_name", LOG_INFO, false},
    [SR_LOCKED_OUT] = {"locked_out", LOG_INFO, true},
    [SR_LOGIN_RATE] = {"login_rate", LOG_INFO, true},
    [SR_SESSION_LIMIT] = {"session_limit", LOG_INFO, true},
    [SR_POLICY_UNAVAILABLE] = {"policy_unavailable", LOG_WARN, true},
    [SR_ADDRESS_DENIED] = {"address_denied", LOG_INFO, true},
};

static const struct {
    const char *event; /* the event= value */
    enum log_level level;
    int login; /* enum metrics_login it counts, or -1 */
} kinds[SEV__COUNT] = {
    [SEV_REFUSED] = {"refused", LOG_INFO, -1},
    [SEV_LOGIN_REFUSED] = {"login_refused", LOG_INFO, ML_REFUSED},
    [SEV_LOGIN] = {"login", LOG_INFO, ML_OK},
    [SEV_LOGIN_FAILED] = {"login_failed", LOG_INFO, ML_AUTH_FAILED},
    [SEV_LOGIN_UNAVAILABLE] = {"login_failed", LOG_WARN, ML_UNAVAILABLE},
    [SEV_STARTTLS_INJECTION] = {"starttls_injection", LOG_WARN, -1},
};

const char *sess_reason_name(enum sess_reason r)
{
    return (unsigned)r < SR__COUNT ? reasons[r].name : reasons[SR_NONE].name;
}

const char *sess_login_fail_name(enum sess_login_fail f)
{
    static const char *const names[SLF__COUNT] = {
        [SLF_CREDENTIALS_REFUSED] = "credentials_refused",
        [SLF_MECHANISM_UNSUPPORTED] = "mechanism_unsupported",
    };
    return (unsigned)f < SLF__COUNT ? names[f] : names[SLF_CREDENTIALS_REFUSED];
}

static bool has_reason(enum sess_ev k)
{
    return k == SEV_REFUSED || k == SEV_LOGIN_REFUSED;
}

enum log_level sess_event_level(const struct sess_event *e)
{
    if ((unsigned)e->kind >= SEV__COUNT)
        return LOG_ERROR;
    if (has_reason(e->kind) && (unsigned)e->reason < SR__COUNT)
        return reasons[e->reason].level;
    return kinds[e->kind].level;
}

void sess_event_count(const struct sess_event *e, int proto)
{
    if ((unsigned)e->kind >= SEV__COUNT)
        return;
    int p = proto == CFG_PROTO_POP3 ? 1 : 0;
    int login = kinds[e->kind].login;
    if (has_reason(e->kind)) {
        enum sess_reason r = (unsigned)e->reason < SR__COUNT ? e->reason : SR_NONE;
        metrics_refusal(reasons[r].name);
        if (reasons[r].login_refused)
            login = ML_REFUSED;
    }
    if (login >= 0)
        atomic_fetch_add(&metrics.logins[p][login], 1);
    if (e->kind == SEV_STARTTLS_INJECTION)
        atomic_fetch_add(&metrics.starttls_injections, 1);
}

/* Append to out[*o] (bounded by cap, always NUL-terminated). */
static void put(char *out, size_t cap, size_t *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *out, size_t cap, size_t *o, const char *fmt, ...)
{
    if (*o >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *o, cap - *o, fmt, ap);
    va_end(ap);
    if (n > 0)
        *o = *o + (size_t)n < cap ? *o + (size_t)n : cap - 1;
}

static const char *str(const char *s)
{
    return s ? s : "";
}

const char *sess_event_format(const struct sess_event *e, char *out, size_t cap)
{
    size_t o = 0;
    if (!cap)
        return out;
    out[0] = '\0';
    if ((unsigned)e->kind >= SEV__COUNT) {
        put(out, cap, &o, "event=unknown");
        return out;
    }
    put(out, cap, &o, "event=%s", kinds[e->kind].event);
    const char *rn = sess_reason_name(e->reason);
    switch (e->kind) {
    case SEV_REFUSED:
        if (e->answer) {
            /* A refusal after login: the words the client got, beside the reason's token. */
            put(out, cap, &o, " reason=%s answer=%s command=%s", rn, LOG_QS(e->answer),
                e->command ? e->command : "-");
            break;
        }
        put(out, cap, &o, " reason=%s", rn);
        switch (e->reason) {
        case SR_BAD_PROXY_HEADER:
            put(out, cap, &o, " error=%s", LOG_QS(str(e->text)));
            break;
        case SR_PROXY_HEADER_FROM_UNTRUSTED:
            put(out, cap, &o, " listener=%s", str(e->name));
            break;
        case SR_MAX_CONNECTIONS:
            put(out, cap, &o, " client=%s limit=%llu", str(e->name), e->n);
            break;
        case SR_MAX_CONNECTIONS_PER_ADDRESS:
            put(out, cap, &o, " limit=%llu", e->n);
            break;
        case SR_COMMAND_NOT_ALLOWED:
            if (e->command) /* POP3 names the keyword; IMAP logs its own line */
                put(out, cap, &o, " command=%s", e->command);
            break;
        case SR_TOO_MANY_BAD_COMMANDS:
            put(out, cap, &o, " count=%llu", e->n);
            break;
        default:
            break;
        }
        break;
    case SEV_LOGIN_REFUSED:
        put(out, cap, &o, " reason=%s", rn);
        if (e->scope)
            put(out, cap, &o, " scope=%s retry_ms=%llu degraded=%s", e->scope, e->n,
                e->degraded ? "yes" : "no");
        break;
    case SEV_LOGIN:
        put(out, cap, &o, " backend=%s mech=%s", str(e->name), str(e->mech));
        break;
    case SEV_LOGIN_FAILED:
        put(out, cap, &o, " reason=%s detail=%s", sess_login_fail_name(e->fail),
            LOG_QS(str(e->text)));
        break;
    case SEV_LOGIN_UNAVAILABLE:
        put(out, cap, &o, " reason=backend_unavailable detail=%s", LOG_QS(str(e->text)));
        break;
    case SEV_STARTTLS_INJECTION:
        put(out, cap, &o, " discarded_bytes=%llu", e->n);
        break;
    case SEV__COUNT:
        break;
    }
    return out;
}

void sess_event(struct session *s, const struct sess_event *e)
{
    sess_event_count(e, s->listener->protocol);
    enum log_level lvl = sess_event_level(e);
    if (!log_enabled(lvl))
        return;
    char msg[LOG_LINE_MAX - 256];
    sess_log(s, lvl, "%s", sess_event_format(e, msg, sizeof msg));
}
