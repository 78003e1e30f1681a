/*
 * sess_event — the session events that are both logged and counted: refusals, login results and
 * STARTTLS injections.
 *
 * A call site emits one typed event (a kind, a reason, a few fields). Its log line and its
 * counters (metrics.h) are both derived from the event: the counters from the kind and the reason
 * only, never from the text of the line, so rewording a log line cannot change a metric. The log
 * lines keep the shape operators grep for ("event=refused reason=plaintext_login", ...); the
 * refusal reason's name is also the `reason` label of portcullis_refusals_total.
 *
 * Not here: events that are only logged (they use sess_log directly) and the scan verdicts
 * (msgscan.c counts its own).
 */
#ifndef PORTCULLIS_SESS_EVENT_H
#define PORTCULLIS_SESS_EVENT_H

#include <stdbool.h>
#include <stddef.h>

#include "log.h"

struct session;

enum sess_ev {
    SEV_REFUSED,            /* event=refused: the proxy refused a command or a connection */
    SEV_LOGIN_REFUSED,      /* event=login_refused: the login policy refused (no backend) */
    SEV_LOGIN,              /* event=login: logged in at the backend */
    SEV_LOGIN_FAILED,       /* event=login_failed reason=<sess_login_fail> detail="…": the
                               backend refused the login */
    SEV_LOGIN_UNAVAILABLE,  /* event=login_failed reason=backend_unavailable: no backend */
    SEV_STARTTLS_INJECTION, /* event=starttls_injection: plaintext pipelined behind STARTTLS */
    SEV__COUNT
};

/* Why SEV_REFUSED / SEV_LOGIN_REFUSED; each has one name (log and metric label). */
enum sess_reason {
    SR_NONE,
    /* SEV_REFUSED: connections */
    SR_BAD_PROXY_HEADER,
    SR_PROXY_HEADER_FROM_UNTRUSTED,
    SR_MAX_CONNECTIONS,
    SR_MAX_CONNECTIONS_PER_ADDRESS,
    /* SEV_REFUSED: before login */
    SR_TOO_MANY_BAD_COMMANDS,
    SR_PLAINTEXT_LOGIN,
    SR_PLAINTEXT_AUTHENTICATE,
    SR_PLAINTEXT_USER,
    SR_PLAINTEXT_PASS,
    SR_PLAINTEXT_AUTH,
    /* SEV_REFUSED: after login */
    SR_COMPRESS,
    SR_STARTTLS_AFTER_LOGIN,
    SR_ALREADY_LOGGED_IN,
    SR_DOWNLOAD_LIMIT,
    SR_BAD_COMMAND,
    /* SEV_REFUSED: after login, IMAP session model (imap_allow.c, issue 15) */
    SR_COMMAND_NOT_ALLOWED, /* IMAP and POP3 after login: not on the allow-list */
    SR_URLAUTH,
    SR_NOTIFY,
    SR_ENABLE,
    SR_FETCH_ITEM,
    SR_FETCH_LITERAL,
    SR_COMMAND_TOO_LONG,
    SR_IDLE_NOT_DONE,
    SR_MAILBOX_NAME,
    /* SEV_LOGIN_REFUSED */
    SR_LOCKED_OUT,
    SR_LOGIN_RATE,
    SR_SESSION_LIMIT,
    SR_POLICY_UNAVAILABLE,
    SR_ADDRESS_DENIED,
    SR__COUNT
};

/* Why SEV_LOGIN_FAILED: a fixed set of tokens (docs/operations.md), the words go to detail=. */
enum sess_login_fail {
    SLF_CREDENTIALS_REFUSED,   /* the backend answered NO to the login */
    SLF_MECHANISM_UNSUPPORTED, /* the backend does not offer the client's SASL mechanism */
    SLF__COUNT
};

/* One event. Only `kind` and `reason` decide the counters; the other fields are for the log
 * line (pointers valid during the call). */
struct sess_event {
    enum sess_ev kind;
    enum sess_reason reason;   /* SEV_REFUSED, SEV_LOGIN_REFUSED */
    enum sess_login_fail fail; /* SEV_LOGIN_FAILED */
    const char *text;          /* error= (bad PROXY header), the backend's reason (login_failed),
                                  detail= (backend_unavailable) */
    const char *answer;   /* SEV_REFUSED after login (POP3): the answer, logged as answer="…" */
    const char *command;  /* ... and the command it answered ("-" when unparsable) */
    const char *name;     /* listener= (untrusted PROXY), backend= (login), client= (max conn) */
    const char *mech;     /* SEV_LOGIN: mech= */
    unsigned long long n; /* limit=, count=, discarded_bytes=, retry_ms= */
    const char *scope;    /* SEV_LOGIN_REFUSED by a policy decision: "user" / "address" */
    bool degraded;        /* ... taken from local limits (Redis unavailable) */
};

/* Count `e` and log it (at its level) with the session's prefix. */
void sess_event(struct session *s, const struct sess_event *e);

/* The parts sess_event() is made of (also for events without a session, and for tests). */
/* The log text after the session prefix ("event=… reason=… …"), cut to `cap`. Returns `out`. */
const char *sess_event_format(const struct sess_event *e, char *out, size_t cap);
enum log_level sess_event_level(const struct sess_event *e);
/* Bump the counters of `e` for protocol `proto` (CFG_PROTO_*). */
void sess_event_count(const struct sess_event *e, int proto);
/* The name of a reason: its log value and its portcullis_refusals_total label. */
const char *sess_reason_name(enum sess_reason r);
/* The reason= token of a SEV_LOGIN_FAILED (out of range: credentials_refused). */
const char *sess_login_fail_name(enum sess_login_fail f);

#endif
