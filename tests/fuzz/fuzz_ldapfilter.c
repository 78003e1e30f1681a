/*
 * fuzz_ldapfilter — libFuzzer harness for proxy/ldapfilter.c: the LDAP search filter template,
 * RFC 4515 escaping of the (hostile) user name, and the host attribute parser.
 *
 * Input: byte 0 = template length n; bytes 1..n = the template (operator text), the rest = the
 * user name (any bytes, NUL included). Properties, abort() when broken:
 *  - a template ldl_template_check() accepts expands, for any user, to a filter that is
 *    NUL-free and control-free, has balanced parentheses, and has exactly as many unescaped
 *    '(' ')' '*' as the template's own text (the expansion with an empty user): nothing the
 *    user sent acts as filter syntax; every '\' starts a two-hex-digit escape;
 *  - ldl_escape() output unescapes back to the user's bytes and fits the capacity it was given;
 *  - ldl_parse_host() on the user bytes accepts only a printable host ≤ LDL_HOST_MAX with a
 *    port 0..65535.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digits.h"
#include "ldapfilter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_ldapfilter: %s\n", what);                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Counts unescaped specials, checks escapes and balance. Returns the special count. */
static unsigned scan_filter(const char *f, size_t len)
{
    unsigned specials = 0;
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)f[i];
        CHECK(c != 0 && c >= 0x20 && c != 0x7f, "control byte in the filter");
        if (c == '\\') {
            CHECK(i + 2 < len + 1 && hex_digit(f[i + 1]) >= 0 && hex_digit(f[i + 2]) >= 0,
                  "'\\' not followed by two hex digits");
            i += 2;
            continue;
        }
        if (c == '(' || c == ')' || c == '*')
            specials++;
        if (c == '(')
            depth++;
        if (c == ')')
            CHECK(--depth >= 0, "unbalanced ')'");
    }
    CHECK(depth == 0, "unbalanced '('");
    return specials;
}

static void check_escape(const char *user, size_t ulen)
{
    static char out[3 * 1024 + 1], back[1024];
    size_t pos = 0, n = 0, cap = 3 * ulen + 1;

    CHECK(ldl_escape(out, cap, &pos, user, ulen), "escape does not fit 3x+1");
    CHECK(pos < cap && strlen(out) == pos, "escape length");
    for (size_t i = 0; i < pos; i++) {
        if (out[i] == '\\') {
            back[n++] = (char)(hex_digit(out[i + 1]) * 16 + hex_digit(out[i + 2]));
            i += 2;
        } else {
            back[n++] = out[i];
        }
    }
    CHECK(n == ulen && memcmp(back, user, ulen) == 0, "escape does not round-trip");
    if (ulen > 0) {
        pos = 0;
        CHECK(!ldl_escape(out, pos + 1, &pos, user, ulen) || ulen == 0, "escape into 1 byte");
    }
}

static void check_host(const char *v, size_t len)
{
    char host[LDL_HOST_MAX + 1];
    unsigned port = 0;
    const char *err = NULL;
    if (!ldl_parse_host(v, len, host, &port, &err)) {
        CHECK(err != NULL, "host rejected without a reason");
        return;
    }
    size_t hl = strlen(host);
    CHECK(hl > 0 && hl <= LDL_HOST_MAX, "host length");
    for (size_t i = 0; i < hl; i++)
        CHECK((unsigned char)host[i] > 0x20 && (unsigned char)host[i] < 0x7f, "host byte");
    CHECK(port <= 65535, "port range");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char tmpl[256], out[4096], base[4096];
    const char *err = NULL;
    size_t n, ulen;
    const char *user;
    long len, blen;

    if (size < 1 || size > 1 + 255 + 600)
        return 0;
    n = data[0];
    if (n > size - 1)
        n = size - 1;
    memcpy(tmpl, data + 1, n);
    tmpl[n] = '\0';
    user = (const char *)data + 1 + n;
    ulen = size - 1 - n;

    check_escape(user, ulen);
    check_host(user, ulen);
    if (!ldl_template_check(tmpl, &err)) {
        CHECK(err != NULL, "template rejected without a reason");
        return 0;
    }
    blen = ldl_template_expand(base, sizeof base, tmpl, "", 0);
    CHECK(blen >= 0, "template alone does not fit");
    len = ldl_template_expand(out, sizeof out, tmpl, user, ulen);
    if (len < 0)
        return 0; /* too long for the buffer: the lookup answers "not found" */
    CHECK((size_t)len < sizeof out && strlen(out) == (size_t)len, "expansion length");
    CHECK(scan_filter(out, (size_t)len) == scan_filter(base, (size_t)blen),
          "the user name added filter syntax");
    return 0;
}
