/*
 * digits — the value of one hexadecimal or base64 digit, for the decoders that read %XX / =XX
 * escapes (route_shared.c's stored values, rfc2047.c's Q encoding) and base64 (sasl.c's strict
 * decoder, rfc2047.c's lenient B encoding); the tests that read hex escapes use it too.
 * Header-only: each decoder calls it per input byte.
 */
#ifndef PORTCULLIS_DIGITS_H
#define PORTCULLIS_DIGITS_H

/* 0..15 for 0-9, A-F, a-f; -1 for anything else (a negative plain char included). */
static inline int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* 0..63 for the RFC 4648 alphabet (A-Z a-z 0-9 + /); -1 for anything else, '=' included. */
static inline int b64_digit(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

#endif
