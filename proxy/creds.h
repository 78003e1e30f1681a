/*
 * creds — the credentials of one login, from the client's command to the backend's: decoded once
 * (IMAP LOGIN or POP3 USER+PASS, or a SASL initial response), replayed to the backend (LOGIN
 * literals, USER/PASS, or a SASL initial response built here) and wiped when freed. IMAP and
 * POP3 log in from a struct creds and wipe it once the backend has answered the login (nothing
 * after login needs it: parts are judged on the same connection, no backend is re-dialled).
 *
 * PLAIN (RFC 4616) is decoded into user, password and authzid; XOAUTH2 and OAUTHBEARER
 * (RFC 7628) payloads are only read for the user name and kept opaque (as the base64 received)
 * to be replayed untouched. Secrets are never logged.
 *
 * Invariants: every owned string is NUL-terminated and holds no NUL; `user` is never empty and
 * holds no NUL, CR or LF; `pass` is never empty and holds no NUL; everything is OPENSSL_cleanse()d
 * before free.
 */
#ifndef PORTCULLIS_CREDS_H
#define PORTCULLIS_CREDS_H

#include <stdbool.h>
#include <stddef.h>

enum creds_mech {
    CREDS_LOGIN,       /* user name + password (IMAP LOGIN, POP3 USER/PASS) */
    CREDS_PLAIN,       /* SASL PLAIN: user, password, optional authzid */
    CREDS_XOAUTH2,     /* SASL XOAUTH2: opaque, replayed */
    CREDS_OAUTHBEARER, /* SASL OAUTHBEARER: opaque, replayed */
};

struct creds {
    enum creds_mech mech;
    char *user; /* owned: the authentication identity */
    size_t user_len;
    char *pass; /* owned: CREDS_LOGIN, CREDS_PLAIN; else NULL */
    size_t pass_len;
    char *authz; /* owned: the PLAIN authzid when it differs from `user`, else NULL */
    char *token; /* owned: XOAUTH2/OAUTHBEARER initial response, base64 as received */
    char *ir;    /* owned: creds_response()'s result, kept until cleared */
    size_t ir_len;
};

enum creds_rc {
    CREDS_OK,
    CREDS_BAD_BASE64, /* the SASL response is not strict base64 */
    CREDS_MALFORMED,  /* not a valid message of the mechanism, or an empty/invalid part */
    CREDS_NOMEM,
};

/* A user name the proxy accepts (also as s->user): not empty, no NUL, CR or LF. */
bool creds_user_ok(const char *user, size_t len);

/* From a user name and a password. The old contents of *c are wiped first; on failure *c is
 * left cleared. */
enum creds_rc creds_from_login(struct creds *c, const char *user, size_t user_len, const char *pass,
                               size_t pass_len);
/* From a SASL initial response for `mech` (not CREDS_LOGIN): base64 text, or "=" for an empty
 * one (RFC 4959). The old contents are wiped first; on failure *c is left cleared. */
enum creds_rc creds_from_sasl(struct creds *c, enum creds_mech mech, const char *b64, size_t len);

/* The SASL mechanism name to give the backend: "PLAIN" for CREDS_LOGIN and CREDS_PLAIN. */
const char *creds_sasl_name(enum creds_mech mech);
/* The lower-case name for logs; CREDS_LOGIN is named `login` by the protocol ("login" for IMAP,
 * "user" for POP3). */
const char *creds_mech_name(enum creds_mech mech, const char *login);
/* The base64 SASL initial response for the backend, without CRLF: PLAIN (authzid NUL user NUL
 * password) built from the fields for CREDS_LOGIN/CREDS_PLAIN, the token as received otherwise.
 * Owned by *c (wiped with it); NULL when out of memory. */
const char *creds_response(struct creds *c, size_t *len_r);

/* Wipe and free everything; *c is then empty (and may be reused). NULL-safe. */
void creds_clear(struct creds *c);

#endif
