/*
 * rfc2047 — see rfc2047.h.
 *
 * Decoding is lenient (an original is whatever a sender made of it: a malformed encoded-word is
 * left as the text it is), encoding is strict (what we write follows RFC 2047 and RFC 5322 to
 * the letter). Everything that reaches the output of r2047_decode went through one UTF-8
 * validator and one character filter, whatever path it took (plain bytes, B, Q, Latin-1).
 */
#include "rfc2047.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "digits.h"

#define CHARSET_MAX  64   /* longest charset name we look at in an encoded-word */
#define ENC_TEXT_MAX 4096 /* longest encoded-text we decode (lenient: RFC 2047 says 75 in all) */

/* ---- decoding ------------------------------------------------------------------------------ */

/* Base64 as RFC 2045 reads it: characters outside the alphabet are skipped, '=' ends it. */
static size_t b_decode(const char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        int v = b64_digit((unsigned char)s[i]);
        if (v < 0)
            continue;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

/* "Q" (RFC 2047 4.2): '_' is a space, =XX a byte; a '=' without two hex digits stays. */
static size_t q_decode(const char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '_') {
            out[o++] = ' ';
        } else if (s[i] == '=' && i + 2 < n && hex_digit((unsigned char)s[i + 1]) >= 0 &&
                   hex_digit((unsigned char)s[i + 2]) >= 0) {
            out[o++] = (unsigned char)(hex_digit((unsigned char)s[i + 1]) * 16 +
                                       hex_digit((unsigned char)s[i + 2]));
            i += 2;
        } else {
            out[o++] = (unsigned char)s[i];
        }
    }
    return o;
}

enum charset { CS_UTF8, CS_LATIN1, CS_OTHER };

static enum charset charset_of(const char *c, size_t n)
{
    const char *star = memchr(c, '*', n); /* RFC 2231 language suffix */
    if (star)
        n = (size_t)(star - c);
    static const char *const utf8[] = {"utf-8", "utf8", "us-ascii", "ascii"};
    static const char *const latin1[] = {"iso-8859-1", "iso8859-1",    "latin1",
                                         "latin-1",    "windows-1252", "cp1252"};
    for (size_t i = 0; i < sizeof utf8 / sizeof utf8[0]; i++)
        if (strlen(utf8[i]) == n && strncasecmp(c, utf8[i], n) == 0)
            return CS_UTF8;
    for (size_t i = 0; i < sizeof latin1 / sizeof latin1[0]; i++)
        if (strlen(latin1[i]) == n && strncasecmp(c, latin1[i], n) == 0)
            return CS_LATIN1;
    return CS_OTHER;
}

/* An encoded-word at in[i]? Returns its length (0: not one) and appends its decoded bytes at
 * raw + *rl (at most 2 * its length: Latin-1 doubles at most). */
static size_t word_at(const char *in, size_t n, size_t i, unsigned char *raw, size_t *rl)
{
    if (i + 1 >= n || in[i] != '=' || in[i + 1] != '?')
        return 0;
    size_t cs = i + 2, q1 = cs;
    while (q1 < n && q1 - cs <= CHARSET_MAX && in[q1] != '?') {
        unsigned char c = (unsigned char)in[q1];
        if (c <= 0x20 || c >= 0x7f)
            return 0;
        q1++;
    }
    if (q1 >= n || in[q1] != '?' || q1 == cs || q1 + 2 >= n || in[q1 + 2] != '?')
        return 0;
    char enc = in[q1 + 1];
    if (enc != 'B' && enc != 'b' && enc != 'Q' && enc != 'q')
        return 0;
    size_t t = q1 + 3, e = t;
    while (e + 1 < n && e - t <= ENC_TEXT_MAX && !(in[e] == '?' && in[e + 1] == '=')) {
        unsigned char c = (unsigned char)in[e];
        if (c <= 0x20 || c >= 0x7f || c == '?')
            return 0;
        e++;
    }
    if (e + 1 >= n || in[e] != '?' || in[e + 1] != '=')
        return 0;
    unsigned char *dst = raw + *rl;
    size_t got =
        (enc == 'B' || enc == 'b') ? b_decode(in + t, e - t, dst) : q_decode(in + t, e - t, dst);
    if (charset_of(in + cs, q1 - cs) == CS_LATIN1) {
        /* widen in place from the end: each byte >= 0x80 becomes two */
        size_t wide = got;
        for (size_t k = 0; k < got; k++)
            wide += dst[k] >= 0x80;
        for (size_t k = got, w = wide; k-- > 0;) {
            unsigned char c = dst[k];
            if (c < 0x80) {
                dst[--w] = c;
            } else {
                dst[--w] = (unsigned char)(0x80 | (c & 0x3f));
                dst[--w] = (unsigned char)(0xc0 | (c >> 6));
            }
        }
        got = wide;
    }
    *rl += got;
    return e + 2 - i;
}

/* One UTF-8 sequence at s[0 .. n): its code point and length; invalid (overlong, surrogate,
 * out of range, truncated, stray continuation) gives U+FFFD and length 1. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *len_r)
{
    unsigned char c = s[0];
    *len_r = 1;
    if (c < 0x80)
        return c;
    size_t need;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
        need = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        need = 2, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0xfffd;
    }
    if (need >= n)
        return 0xfffd;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0xfffd;
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0xfffd;
    *len_r = need + 1;
    return cp;
}

static size_t utf8_put(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Characters that are not shown: controls, and the invisible ones that reorder or hide text
 * (a Subject that displays differently from what it is). */
static bool hidden(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x200e || cp == 0x200f ||
           (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0xfeff;
}

size_t r2047_decode(const char *in, size_t n, char *out, size_t cap, bool *clean_r)
{
    bool clean = true;
    out[0] = '\0';
    if (clean_r)
        *clean_r = true;
    unsigned char *raw = malloc(2 * n + 8);
    if (!raw)
        return 0;
    size_t rl = 0, ws_mark = 0;
    bool after_word = false;
    for (size_t i = 0; i < n;) {
        size_t before = rl;
        size_t wl = word_at(in, n, i, raw, &rl);
        if (wl) {
            if (after_word) { /* only whitespace since the last word: it goes */
                size_t got = rl - before;
                memmove(raw + ws_mark, raw + before, got);
                rl = ws_mark + got;
            }
            i += wl;
            after_word = true;
            ws_mark = rl;
            continue;
        }
        unsigned char c = (unsigned char)in[i++];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            after_word = false;
        raw[rl++] = c;
    }
    size_t o = 0;
    bool space = false;
    for (size_t j = 0; j < rl;) {
        size_t len;
        uint32_t cp = utf8_next(raw + j, rl - j, &len);
        j += len;
        if (cp == ' ' || cp == '\t' || cp == '\r' || cp == '\n') {
            space = o > 0;
            continue;
        }
        if (cp == 0xfffd && len == 1)
            clean = false; /* an invalid sequence (a real U+FFFD is 3 bytes) */
        if (hidden(cp)) {
            clean = false;
            continue;
        }
        unsigned char enc[4];
        size_t el = utf8_put(cp, enc);
        size_t need = el + (space ? 1 : 0);
        if (o + need > cap)
            break;
        if (space)
            out[o++] = ' ';
        memcpy(out + o, enc, el);
        o += el;
        space = false;
    }
    out[o] = '\0';
    free(raw);
    if (clean_r)
        *clean_r = clean;
    return o;
}

/* ---- encoding ------------------------------------------------------------------------------ */

struct w {
    char *p;
    size_t len, cap;
    bool full;
};

static void put(struct w *w, const char *s, size_t n)
{
    if (w->full || w->len + n + 1 > w->cap) {
        w->full = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

static void put_b64(struct w *w, const unsigned char *s, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        char q[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], i + 1 < n ? a[(v >> 6) & 63] : '=',
                     i + 2 < n ? a[v & 63] : '='};
        put(w, q, 4);
    }
}

size_t r2047_field(const char *name, const char *text, size_t n, const char *trailer, char *out,
                   size_t cap)
{
    static const char pre[] = "=?utf-8?B?";
    const size_t overhead = sizeof pre - 1 + 2; /* "=?utf-8?B?" ... "?=" */
    if (n > R2047_TEXT_MAX || cap == 0)
        return 0;
    struct w w = {.p = out, .cap = cap};
    out[0] = '\0';
    put(&w, name, strlen(name));
    put(&w, ": ", 2);
    size_t line = strlen(name) + 2;
    bool first = true; /* the next word would go on the field's first line */
    const unsigned char *t = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t room =
            first ? (line < R2047_LINE_MAX ? R2047_LINE_MAX - line : 0) : R2047_LINE_MAX - 1;
        if (room > R2047_WORD_MAX)
            room = R2047_WORD_MAX;
        size_t octets = room > overhead ? (room - overhead) / 4 * 3 : 0;
        size_t take = octets < n - i ? octets : n - i;
        /* whole characters only (RFC 2047 5): back off to the start of a sequence */
        while (take > 0 && i + take < n && (t[i + take] & 0xc0) == 0x80)
            take--;
        if (take == 0) {
            if (!first)
                return 0; /* cannot happen with valid UTF-8: 45 octets fit a continuation */
            first = false;
            continue; /* the name leaves no room on its line: start on the next one */
        }
        if (!first) {
            put(&w, "\r\n ", 3);
            line = 1;
        }
        put(&w, pre, sizeof pre - 1);
        put_b64(&w, t + i, take);
        put(&w, "?=", 2);
        line += overhead + (take + 2) / 3 * 4;
        i += take;
        first = false;
    }
    if (trailer && trailer[0]) {
        size_t tl = strlen(trailer);
        if (n == 0) {
            put(&w, trailer, tl);
        } else if (line + 1 + tl <= R2047_LINE_MAX) {
            put(&w, " ", 1);
            put(&w, trailer, tl);
        } else {
            put(&w, "\r\n ", 3);
            put(&w, trailer, tl);
        }
    }
    put(&w, "\r\n", 2);
    return w.full ? 0 : w.len;
}
