/*
 * login_refusal — what a backend's refusal of a login means (issue 17 item 5): is it a wrong
 * password, to be counted toward the lock-out, or something else (TLS required, account
 * expired, server busy, mailbox in use) that the client must be told as it is and that must not
 * lock the user out? Pure functions on one response line, no I/O (unit-tested and fuzzable).
 *
 * IMAP (RFC 5530). Counted: AUTHENTICATIONFAILED, and a NO with no code or with a code that is
 * not one of RFC 5530's other categories (ALERT, vendor codes). A NO without a code is
 * ambiguous, and it is what servers older than RFC 5530 — the legacy servers this proxy fronts —
 * answer to a wrong password ("NO LOGIN failed"); not counting it would give a guesser
 * unlimited attempts against them, so it counts. Not counted, passed on with the backend's
 * text: the codes that say the backend did not check the password or found it right
 * (PRIVACYREQUIRED, UNAVAILABLE, AUTHORIZATIONFAILED, EXPIRED, CONTACTADMIN, INUSE, LIMIT,
 * SERVERBUG, CANNOT, NOPERM, OVERQUOTA, CORRUPTION): none of them tells a guesser anything.
 * A BAD to our well-formed login is a protocol problem: not counted, "unavailable".
 *
 * POP3 (RFC 2449, 3206). Counted: [AUTH], no code, an unknown code. Not counted, passed on:
 * [SYS/TEMP], [SYS/PERM], [IN-USE], [LOGIN-DELAY]. (Dovecot's POP3 answers "plaintext
 * disallowed" with [AUTH]: indistinguishable from a wrong password by its code, so it counts.)
 */
#ifndef PORTCULLIS_LOGIN_REFUSAL_H
#define PORTCULLIS_LOGIN_REFUSAL_H

#include <stdbool.h>
#include <stddef.h>

#define LR_CODE_MAX 32
#define LR_TEXT_MAX 200

enum lr_kind {
    LR_CREDENTIALS, /* a wrong password (or as good as one): counted */
    LR_PASS_ON,     /* the backend's own code, passed on; not counted */
    LR_PROTOCOL,    /* not an answer to credentials (IMAP BAD): "unavailable", not counted */
};

struct lr_refusal {
    enum lr_kind kind;
    char code[LR_CODE_MAX + 1]; /* upper case, without brackets ("" = none) */
    char text[LR_TEXT_MAX + 1]; /* the human-readable text, printable ASCII only */
};

/* `status` is the tagged answer after the tag ("NO [PRIVACYREQUIRED] Plaintext ..."). */
void lr_imap(const char *status, size_t len, struct lr_refusal *out);
/* `line` is the whole "-ERR ..." line without its line end. */
void lr_pop3(const char *line, size_t len, struct lr_refusal *out);

#endif
