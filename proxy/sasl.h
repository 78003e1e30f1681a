/*
 * sasl — base64 (RFC 4648, strict) and the SASL messages the proxy must understand: PLAIN
 * (RFC 4616) to learn the user and password, XOAUTH2 and OAUTHBEARER (RFC 7628) only to learn the
 * user name for policy and routing — their tokens are replayed to the backend untouched and are
 * never logged.
 */
#ifndef PORTCULLIS_SASL_H
#define PORTCULLIS_SASL_H

#include <stdbool.h>
#include <stddef.h>

/* Decode strict base64 (padding required, no whitespace). Returns the decoded length or -1.
 * `out` needs (len / 4) * 3 bytes. */
long b64_decode(const char *in, size_t len, unsigned char *out, size_t cap);
/* Encode; `out` needs 4 * ((len + 2) / 3) + 1 bytes. Returns the length (NUL-terminated). */
size_t b64_encode(const unsigned char *in, size_t len, char *out);

struct sasl_span {
    const char *p;
    size_t len;
};

/* PLAIN: authzid NUL authcid NUL passwd. Returns false if malformed or a part is empty where it
 * must not be (authcid, passwd) or contains NUL. */
bool sasl_plain_split(const unsigned char *msg, size_t len, struct sasl_span *authz,
                      struct sasl_span *authc, struct sasl_span *pass);
/* XOAUTH2: "user=" u ^A "auth=Bearer " token ^A ^A. Finds u. */
bool sasl_xoauth2_user(const unsigned char *msg, size_t len, struct sasl_span *user);
/* OAUTHBEARER: gs2 header "n,a=" u "," … (with =2C / =3D escapes left as they are). */
bool sasl_oauthbearer_user(const unsigned char *msg, size_t len, struct sasl_span *user);

#endif
