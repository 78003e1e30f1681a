/*
 * digits — the value of one hexadecimal digit, for the decoders that read %XX / =XX escapes
 * (route_shared.c's stored values, rfc2047.c's Q encoding). Header-only: each decoder calls it
 * per input byte.
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

#endif
