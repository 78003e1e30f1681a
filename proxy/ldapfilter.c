/*
 * ldapfilter — RFC 4515 escaping, filter template expansion, host value parsing.
 *
 * Pure functions (see ldapfilter.h). The template is operator-controlled and checked once at
 * configuration time; the user name is attacker-controlled and is escaped byte by byte.
 */
#include "ldapfilter.h"

#include <string.h>

static bool put(char *out, size_t cap, size_t *pos, char c)
{
    if (*pos + 1 >= cap)
        return false;
    out[(*pos)++] = c;
    out[*pos] = '\0';
    return true;
}

/* Bytes RFC 4515 forbids unescaped (NUL ( ) * \), plus C0 controls and DEL. */
static bool needs_escape(unsigned char c)
{
    return c == '*' || c == '(' || c == ')' || c == '\\' || c < 0x20 || c == 0x7f;
}

bool ldl_escape(char *out, size_t cap, size_t *pos, const char *in, size_t len)
{
    static const char hex[] = "0123456789abcdef";

    if (cap > 0 && *pos < cap)
        out[*pos] = '\0';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (!needs_escape(c)) {
            if (!put(out, cap, pos, (char)c))
                return false;
            continue;
        }
        if (*pos + 3 >= cap)
            return false;
        put(out, cap, pos, '\\');
        put(out, cap, pos, hex[c >> 4]);
        put(out, cap, pos, hex[c & 0xf]);
    }
    return true;
}

bool ldl_template_check(const char *tmpl, const char **error_r)
{
    int depth = 0;

    if (tmpl == NULL || tmpl[0] != '(') {
        *error_r = "filter must start with '('";
        return false;
    }
    for (const char *p = tmpl; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *error_r = "filter has a control character";
            return false;
        }
        if (*p == '%') {
            p++;
            if (*p != 'u' && *p != 'n' && *p != 'd' && *p != '%') {
                *error_r = "filter has an unknown %-sequence (use %u, %n, %d or %%)";
                return false;
            }
        } else if (*p == '(') {
            depth++;
        } else if (*p == ')') {
            if (--depth < 0) {
                *error_r = "filter has an unbalanced ')'";
                return false;
            }
        } else if (*p == '\\') {
            /* An escape in the template itself: RFC 4515 wants two hex digits. */
            if (strspn(p + 1, "0123456789abcdefABCDEF") < 2) {
                *error_r = "filter has a '\\' not followed by two hex digits";
                return false;
            }
            p += 2;
        }
    }
    if (depth != 0) {
        *error_r = "filter has an unbalanced '('";
        return false;
    }
    return true;
}

long ldl_template_expand(char *out, size_t cap, const char *tmpl, const char *user, size_t ulen)
{
    size_t pos = 0;
    const char *at = NULL;

    for (size_t i = ulen; i > 0; i--) {
        if (user[i - 1] == '@') {
            at = user + i - 1;
            break;
        }
    }
    if (cap == 0)
        return -1;
    out[0] = '\0';
    for (const char *p = tmpl; *p != '\0'; p++) {
        bool ok;
        if (*p != '%') {
            ok = put(out, cap, &pos, *p);
        } else {
            p++;
            if (*p == 'u')
                ok = ldl_escape(out, cap, &pos, user, ulen);
            else if (*p == 'n')
                ok = ldl_escape(out, cap, &pos, user, at ? (size_t)(at - user) : ulen);
            else if (*p == 'd')
                ok = at == NULL ||
                     ldl_escape(out, cap, &pos, at + 1, ulen - (size_t)(at + 1 - user));
            else if (*p == '%')
                ok = put(out, cap, &pos, '%');
            else
                return -1; /* unchecked template: refuse rather than guess */
        }
        if (!ok)
            return -1;
    }
    return (long)pos;
}

static bool host_byte_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '[' && c != ']' && c != '/' && c != '@';
}

bool ldl_parse_host(const char *val, size_t len, char *host_r, unsigned *port_r,
                    const char **error_r)
{
    const char *host = val, *port = NULL;
    size_t hlen = len;

    *port_r = 0;
    host_r[0] = '\0';
    if (len == 0) {
        *error_r = "empty host value";
        return false;
    }
    if (val[0] == '[') {
        const char *end = memchr(val, ']', len);
        if (end == NULL) {
            *error_r = "host value has '[' without ']'";
            return false;
        }
        host = val + 1;
        hlen = (size_t)(end - host);
        if (end + 1 < val + len) {
            if (end[1] != ':') {
                *error_r = "junk after ']' in host value";
                return false;
            }
            port = end + 2;
        }
    } else {
        const char *colon = memchr(val, ':', len);
        if (colon != NULL) {
            if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - val)) != NULL) {
                *error_r = "IPv6 host value needs brackets";
                return false;
            }
            hlen = (size_t)(colon - val);
            port = colon + 1;
        }
    }
    if (hlen == 0 || hlen > LDL_HOST_MAX) {
        *error_r = "host value empty or too long";
        return false;
    }
    for (size_t i = 0; i < hlen; i++) {
        /* Inside brackets ':' belongs to the address. */
        if (!host_byte_ok((unsigned char)host[i]) || (host[i] == ':' && host == val)) {
            *error_r = "host value has a byte not allowed in a host name";
            return false;
        }
    }
    if (port != NULL) {
        size_t plen = len - (size_t)(port - val);
        unsigned long p = 0;
        if (plen == 0 || plen > 5) {
            *error_r = "bad port in host value";
            return false;
        }
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9') {
                *error_r = "bad port in host value";
                return false;
            }
            p = p * 10 + (unsigned long)(port[i] - '0');
        }
        if (p == 0 || p > 65535) {
            *error_r = "port out of range in host value";
            return false;
        }
        *port_r = (unsigned)p;
    }
    memcpy(host_r, host, hlen);
    host_r[hlen] = '\0';
    return true;
}
