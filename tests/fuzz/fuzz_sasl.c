/*
 * fuzz_sasl — libFuzzer harness for proxy/sasl.c: strict base64 and the SASL messages the login
 * code decodes from a hostile client (PLAIN, XOAUTH2, OAUTHBEARER).
 *
 * Input: byte 0 picks the output capacity given to b64_decode (exact, one short, generous);
 * the rest is both a base64 text and (decoded or raw) a SASL message. Properties, abort() when
 * broken:
 *  - b64_decode never writes past `cap` (ASan: the buffer is exactly cap bytes) and returns -1
 *    or a length ≤ cap and ≤ (len / 4) * 3;
 *  - strictness: an accepted text re-encodes to the same text (no whitespace, no stray or
 *    extra padding; only the unused low bits of the last group may differ: decoding drops
 *    them), and encode → decode of any bytes gives them back;
 *  - the SASL splitters return spans inside the message, PLAIN's authcid and password non-empty
 *    and NUL-free, XOAUTH2's and OAUTHBEARER's user non-empty and without its delimiter.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_sasl: %s\n", what);                                              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool inside(const struct sasl_span *sp, const unsigned char *msg, size_t len)
{
    const char *p = (const char *)msg;
    return sp->p >= p && sp->len <= len && sp->p + sp->len <= p + len;
}

static void check_sasl(const unsigned char *msg, size_t len)
{
    struct sasl_span z, c, p, u;
    if (sasl_plain_split(msg, len, &z, &c, &p)) {
        CHECK(inside(&z, msg, len) && inside(&c, msg, len) && inside(&p, msg, len),
              "PLAIN span outside the message");
        CHECK(c.len > 0 && p.len > 0, "PLAIN empty authcid or password");
        CHECK(!memchr(c.p, 0, c.len) && !memchr(p.p, 0, p.len) && !memchr(z.p, 0, z.len),
              "PLAIN span holds a NUL");
        CHECK(z.len + c.len + p.len + 2 == len, "PLAIN spans do not cover the message");
    }
    if (sasl_xoauth2_user(msg, len, &u)) {
        CHECK(inside(&u, msg, len) && u.len > 0, "XOAUTH2 user span");
        CHECK(!memchr(u.p, 0x01, u.len), "XOAUTH2 user holds ^A");
        CHECK(u.p == (const char *)msg + 5, "XOAUTH2 user not after user=");
    }
    if (sasl_oauthbearer_user(msg, len, &u)) {
        CHECK(inside(&u, msg, len) && u.len > 0, "OAUTHBEARER user span");
        CHECK(!memchr(u.p, ',', u.len), "OAUTHBEARER user holds ','");
        CHECK(u.p >= (const char *)msg + 3 && u.p[-1] == '=' && u.p[-2] == 'a',
              "OAUTHBEARER user not after a=");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384)
        return 0;
    uint8_t mode = data[0];
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    /* decode into a buffer of exactly `cap` bytes */
    size_t need = (len / 4) * 3;
    size_t cap = (mode & 3) == 0 ? need : (mode & 3) == 1 ? (need ? need - 1 : 0) : need + 7;
    unsigned char *out = malloc(cap ? cap : 1);
    CHECK(out, "oom");
    long n = b64_decode(in, len, out, cap);
    CHECK(n >= -1, "negative length");
    if (n >= 0) {
        CHECK((size_t)n <= cap && (size_t)n <= need, "decoded past the bound");
        CHECK(len % 4 == 0, "accepted a length not a multiple of 4");
        /* strict: what was accepted is canonical base64, except for the unused low bits of
         * the last group, which decoding drops: compare everything else */
        char *re = malloc(4 * (((size_t)n + 2) / 3) + 1);
        CHECK(re, "oom");
        size_t rl = b64_encode(out, (size_t)n, re);
        CHECK(rl == len, "re-encoding has another length");
        size_t pad = 0;
        while (pad < len && in[len - 1 - pad] == '=')
            pad++;
        CHECK(pad <= 2, "more than two pad characters");
        size_t cmp = len >= 4 && pad ? len - pad - 1 : len;
        CHECK(memcmp(re, in, cmp) == 0, "re-encoding differs");
        free(re);
        check_sasl(out, (size_t)n);
    }
    free(out);

    /* the raw bytes as a SASL message, and encode → decode round trip */
    check_sasl((const unsigned char *)in, len);
    char *enc = malloc(4 * ((len + 2) / 3) + 1);
    CHECK(enc, "oom");
    size_t el = b64_encode((const unsigned char *)in, len, enc);
    CHECK(el == 4 * ((len + 2) / 3) && enc[el] == '\0', "encoded length");
    unsigned char *dec = malloc(len ? len : 1);
    CHECK(dec, "oom");
    long dl = b64_decode(enc, el, dec, len);
    CHECK(dl == (long)len && memcmp(dec, in, len) == 0, "encode/decode round trip");
    free(enc);
    free(dec);
    return 0;
}
