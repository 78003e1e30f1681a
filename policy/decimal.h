/*
 * decimal — an unsigned value's decimal digits, for the two places that write numbers per
 * request: redis.c's RESP headers (*argc, $len) and policy_int.h's pol_num (script arguments).
 * It sits in policy/ beside redis.c, below policy_int.h, so that both may include it.
 * Header-only: snprintf's format walk cost more than the digits (issue 19).
 */
#ifndef PORTCULLIS_DECIMAL_H
#define PORTCULLIS_DECIMAL_H

#include <stddef.h>
#include <stdint.h>

/* The most digits a uint64_t has. */
#define DEC_MAX 20

/* v's digits into out, no terminator: at most `room` of them, the leading ones when v has more
 * (as snprintf truncates). Returns how many were written. */
static inline size_t dec_put(char *out, size_t room, uint64_t v)
{
    char d[DEC_MAX];
    size_t k = 0;
    do {
        d[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t o = 0;
    while (k && o < room)
        out[o++] = d[--k];
    return o;
}

#endif
