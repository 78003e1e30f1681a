/*
 * sasl — see sasl.h. Written by hand rather than with EVP_DecodeBlock, which accepts
 * whitespace, ignores trailing garbage in some cases and reports padding in its length.
 */
#include "sasl.h"

#include <string.h>

#include "digits.h"

long b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad)
                return -1; /* data after padding */
            v[k] = b64_digit(c);
            if (v[k] < 0)
                return -1;
        }
        unsigned long w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
                          ((unsigned long)v[2] << 6) | (unsigned long)v[3];
        int n = 3 - pad;
        if (o + (size_t)n > cap)
            return -1;
        out[o++] = (unsigned char)(w >> 16);
        if (n > 1)
            out[o++] = (unsigned char)(w >> 8);
        if (n > 2)
            out[o++] = (unsigned char)w;
    }
    return (long)o;
}

size_t b64_encode(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned long w =
            ((unsigned long)in[i] << 16) | ((unsigned long)in[i + 1] << 8) | in[i + 2];
        out[o++] = tab[(w >> 18) & 63];
        out[o++] = tab[(w >> 12) & 63];
        out[o++] = tab[(w >> 6) & 63];
        out[o++] = tab[w & 63];
    }
    if (i < len) {
        unsigned long w = (unsigned long)in[i] << 16;
        if (i + 1 < len)
            w |= (unsigned long)in[i + 1] << 8;
        out[o++] = tab[(w >> 18) & 63];
        out[o++] = tab[(w >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(w >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

bool sasl_plain_split(const unsigned char *msg, size_t len, struct sasl_span *authz,
                      struct sasl_span *authc, struct sasl_span *pass)
{
    const unsigned char *z1 = memchr(msg, 0, len);
    if (!z1)
        return false;
    const unsigned char *rest = z1 + 1;
    size_t rlen = len - (size_t)(rest - msg);
    const unsigned char *z2 = memchr(rest, 0, rlen);
    if (!z2)
        return false;
    authz->p = (const char *)msg;
    authz->len = (size_t)(z1 - msg);
    authc->p = (const char *)rest;
    authc->len = (size_t)(z2 - rest);
    pass->p = (const char *)(z2 + 1);
    pass->len = len - (size_t)(z2 + 1 - msg);
    if (authc->len == 0 || pass->len == 0 || memchr(pass->p, 0, pass->len))
        return false;
    return true;
}

bool sasl_xoauth2_user(const unsigned char *msg, size_t len, struct sasl_span *user)
{
    if (len < 5 || memcmp(msg, "user=", 5) != 0)
        return false;
    const unsigned char *end = memchr(msg + 5, 0x01, len - 5);
    if (!end || end == msg + 5)
        return false;
    user->p = (const char *)msg + 5;
    user->len = (size_t)(end - (msg + 5));
    return true;
}

bool sasl_oauthbearer_user(const unsigned char *msg, size_t len, struct sasl_span *user)
{
    /* gs2-header = gs2-cbind-flag "," [ "a=" saslname ] "," */
    const unsigned char *c = memchr(msg, ',', len);
    if (!c || (size_t)(c - msg) + 3 > len || c[1] != 'a' || c[2] != '=')
        return false;
    const unsigned char *start = c + 3;
    const unsigned char *end = memchr(start, ',', len - (size_t)(start - msg));
    if (!end || end == start)
        return false;
    user->p = (const char *)start;
    user->len = (size_t)(end - start);
    return true;
}
