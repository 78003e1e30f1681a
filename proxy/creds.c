/*
 * creds — see creds.h. The one place that copies, builds and wipes login secrets.
 */
#include "creds.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"

/* Free a secret string after overwriting its `len` bytes (and the NUL after them). */
static void wipe_free(char **p, size_t len)
{
    if (*p) {
        OPENSSL_cleanse(*p, len + 1);
        free(*p);
        *p = NULL;
    }
}

void creds_clear(struct creds *c)
{
    if (!c)
        return;
    wipe_free(&c->user, c->user_len);
    wipe_free(&c->pass, c->pass_len);
    wipe_free(&c->authz, c->authz ? strlen(c->authz) : 0);
    wipe_free(&c->token, c->token ? strlen(c->token) : 0);
    wipe_free(&c->ir, c->ir_len);
    memset(c, 0, sizeof *c);
}

bool creds_user_ok(const char *user, size_t len)
{
    return len > 0 && !memchr(user, 0, len) && !memchr(user, '\r', len) && !memchr(user, '\n', len);
}

/* Fill user (and pass when given) of an empty *c; false when out of memory. */
static bool set_fields(struct creds *c, const char *user, size_t ulen, const char *pass,
                       size_t plen)
{
    c->user = strndup(user, ulen);
    if (!c->user)
        return false;
    c->user_len = ulen;
    if (pass) {
        c->pass = strndup(pass, plen);
        if (!c->pass)
            return false;
        c->pass_len = plen;
    }
    return true;
}

enum creds_rc creds_from_login(struct creds *c, const char *user, size_t user_len, const char *pass,
                               size_t pass_len)
{
    creds_clear(c);
    if (!creds_user_ok(user, user_len) || pass_len == 0 || memchr(pass, 0, pass_len))
        return CREDS_MALFORMED;
    c->mech = CREDS_LOGIN;
    if (!set_fields(c, user, user_len, pass, pass_len)) {
        creds_clear(c);
        return CREDS_NOMEM;
    }
    return CREDS_OK;
}

/* Split a decoded message of c->mech into the fields. */
static enum creds_rc take_message(struct creds *c, const unsigned char *m, size_t n,
                                  const char *b64, size_t len)
{
    struct sasl_span authz, authc, pass, user;
    switch (c->mech) {
    case CREDS_PLAIN:
        if (!sasl_plain_split(m, n, &authz, &authc, &pass) || !creds_user_ok(authc.p, authc.len))
            return CREDS_MALFORMED;
        if (!set_fields(c, authc.p, authc.len, pass.p, pass.len))
            return CREDS_NOMEM;
        /* An authzid equal to the user is no request to act as someone else: dropped. */
        if (authz.len && (authz.len != authc.len || memcmp(authz.p, authc.p, authc.len) != 0)) {
            c->authz = strndup(authz.p, authz.len);
            if (!c->authz)
                return CREDS_NOMEM;
        }
        return CREDS_OK;
    case CREDS_XOAUTH2:
    case CREDS_OAUTHBEARER:
        if (!(c->mech == CREDS_XOAUTH2 ? sasl_xoauth2_user(m, n, &user)
                                       : sasl_oauthbearer_user(m, n, &user)) ||
            !creds_user_ok(user.p, user.len))
            return CREDS_MALFORMED;
        if (!set_fields(c, user.p, user.len, NULL, 0))
            return CREDS_NOMEM;
        c->token = strndup(b64, len);
        return c->token ? CREDS_OK : CREDS_NOMEM;
    case CREDS_LOGIN:
        break;
    }
    return CREDS_MALFORMED;
}

enum creds_rc creds_from_sasl(struct creds *c, enum creds_mech mech, const char *b64, size_t len)
{
    creds_clear(c);
    if (mech == CREDS_LOGIN)
        return CREDS_MALFORMED;
    size_t cap = len / 4 * 3 + 3;
    unsigned char *dec = malloc(cap);
    if (!dec)
        return CREDS_NOMEM;
    long n = (len == 1 && b64[0] == '=') ? 0 : b64_decode(b64, len, dec, cap);
    enum creds_rc rc = CREDS_BAD_BASE64;
    if (n >= 0) {
        c->mech = mech;
        rc = take_message(c, dec, (size_t)n, b64, len);
    }
    OPENSSL_cleanse(dec, cap);
    free(dec);
    if (rc != CREDS_OK)
        creds_clear(c);
    return rc;
}

const char *creds_sasl_name(enum creds_mech mech)
{
    switch (mech) {
    case CREDS_XOAUTH2:
        return "XOAUTH2";
    case CREDS_OAUTHBEARER:
        return "OAUTHBEARER";
    default:
        return "PLAIN";
    }
}

const char *creds_mech_name(enum creds_mech mech, const char *login)
{
    switch (mech) {
    case CREDS_LOGIN:
        return login;
    case CREDS_PLAIN:
        return "plain";
    case CREDS_XOAUTH2:
        return "xoauth2";
    default:
        return "oauthbearer";
    }
}

const char *creds_response(struct creds *c, size_t *len_r)
{
    if (c->ir) {
        *len_r = c->ir_len;
        return c->ir;
    }
    if (c->token) {
        *len_r = strlen(c->token);
        return c->token;
    }
    if (!c->user || !c->pass)
        return NULL;
    /* authzid NUL authcid NUL passwd (RFC 4616 section 2) */
    size_t zl = c->authz ? strlen(c->authz) : 0;
    size_t ml = zl + 1 + c->user_len + 1 + c->pass_len;
    unsigned char *m = malloc(ml);
    char *b = malloc(4 * ((ml + 2) / 3) + 1);
    if (!m || !b) {
        free(m);
        free(b);
        return NULL;
    }
    if (zl)
        memcpy(m, c->authz, zl);
    m[zl] = 0;
    memcpy(m + zl + 1, c->user, c->user_len);
    m[zl + 1 + c->user_len] = 0;
    memcpy(m + zl + 2 + c->user_len, c->pass, c->pass_len);
    c->ir_len = b64_encode(m, ml, b);
    c->ir = b;
    OPENSSL_cleanse(m, ml);
    free(m);
    *len_r = c->ir_len;
    return c->ir;
}
