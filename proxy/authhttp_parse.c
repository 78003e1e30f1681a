/*
 * authhttp_parse — the pure half of the auth_http lookup: nginx's escaping of request values
 * and the parser of the service's answer (status line + headers; the body is ignored, as nginx
 * ignores it). No I/O, no allocation; every value has a fixed cap and the header block as a
 * whole is capped, so a hostile or broken service cannot grow our memory.
 *
 * Header syntax follows nginx's ngx_mail_auth_http_parse_header_line: a name of letters, digits
 * and '-', a colon, optional spaces, the value with surrounding spaces/tabs trimmed; names
 * compare case-insensitively; a repeated header replaces the earlier one (nginx keeps the last).
 * We are stricter than nginx where it protects the session: control bytes inside a value, a
 * non-numeric Auth-Server, a port outside 1..65535 and any HTTP status but 200 are errors.
 */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "authhttp.h"

void ah_parse_init(struct ah_parse *p, size_t max_bytes)
{
    memset(p, 0, sizeof(*p));
    p->max_bytes = max_bytes ? max_bytes : AH_MAX_HEADER_BYTES_DEFAULT;
}

void ah_parse_clear(struct ah_parse *p)
{
    OPENSSL_cleanse(p, sizeof(*p));
}

static int parse_fail(struct ah_parse *p, const char *why)
{
    p->error = why;
    return -1;
}

/* Reset the fields of a block: a 1xx block is followed by the real one. */
static void block_reset(struct ah_parse *p)
{
    size_t max = p->max_bytes, seen = p->seen_bytes;
    ah_parse_clear(p);
    p->max_bytes = max;
    p->seen_bytes = seen;
}

/* "HTTP/1.x NNN reason": only the three-digit code matters. */
static int status_line(struct ah_parse *p, const char *s, size_t len)
{
    if (len < 12 || memcmp(s, "HTTP/", 5) != 0)
        return parse_fail(p, "malformed HTTP status line");
    const char *sp = memchr(s, ' ', len);
    if (!sp || (size_t)(s + len - sp) < 4)
        return parse_fail(p, "malformed HTTP status line");
    long code = 0;
    for (int i = 1; i <= 3; i++) {
        if (sp[i] < '0' || sp[i] > '9')
            return parse_fail(p, "malformed HTTP status code");
        code = code * 10 + (sp[i] - '0');
    }
    if ((size_t)(s + len - sp) > 4 && sp[4] != ' ')
        return parse_fail(p, "malformed HTTP status code");
    block_reset(p);
    p->http_status = code;
    p->in_block = true;
    return 0;
}

/* Copy a value into a fixed field; false when it does not fit. */
static bool set_field(char *dst, size_t cap, const char *v, size_t vlen)
{
    if (vlen >= cap)
        return false;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
    return true;
}

/* A decimal number without sign; false on anything else or overflow past `max`. */
static bool parse_uint(const char *v, size_t vlen, unsigned max, unsigned *out)
{
    if (vlen == 0 || vlen > 10)
        return false;
    unsigned long n = 0;
    for (size_t i = 0; i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (unsigned long)(v[i] - '0');
    }
    if (n > max)
        return false;
    *out = (unsigned)n;
    return true;
}

/* nginx requires an IP address in Auth-Server (ngx_parse_addr), and so do we: a name would need
 * a resolver on the login path. */
static bool server_ok(const char *v)
{
    unsigned char a[16];
    return inet_pton(AF_INET, v, a) == 1 || inet_pton(AF_INET6, v, a) == 1;
}

static int header_line(struct ah_parse *p, const char *s, size_t len)
{
    /* field-name: nginx's class, letters, digits and '-' */
    size_t n = 0;
    while (n < len && (((s[n] | 0x20) >= 'a' && (s[n] | 0x20) <= 'z') ||
                       (s[n] >= '0' && s[n] <= '9') || s[n] == '-'))
        n++;
    if (n == 0 || n == len || s[n] != ':')
        return parse_fail(p, "malformed header line");
    const char *v = s + n + 1;
    size_t vlen = len - n - 1;
    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return parse_fail(p, "control byte in a header value");
    }

#define NAME_IS(lit) (n == sizeof(lit) - 1 && strncasecmp(s, lit, n) == 0)
    if (NAME_IS("Auth-Status")) {
        if (!set_field(p->status, sizeof(p->status), v, vlen))
            return parse_fail(p, "Auth-Status too long");
        p->have_status = true;
    } else if (NAME_IS("Auth-Server")) {
        p->have_server = true;
        p->bad_server = !set_field(p->server, sizeof(p->server), v, vlen) || !server_ok(p->server);
    } else if (NAME_IS("Auth-Port")) {
        p->have_port = true;
        p->bad_port = !parse_uint(v, vlen, 65535, &p->port) || p->port == 0;
    } else if (NAME_IS("Auth-User")) {
        if (vlen == 0 || !set_field(p->user, sizeof(p->user), v, vlen))
            return parse_fail(p, "Auth-User empty or too long");
        p->have_user = true;
    } else if (NAME_IS("Auth-Pass")) {
        if (vlen == 0 || !set_field(p->pass, sizeof(p->pass), v, vlen))
            return parse_fail(p, "Auth-Pass empty or too long");
        p->have_pass = true;
    } else if (NAME_IS("Auth-Wait")) {
        unsigned w;
        /* nginx ignores an unparsable Auth-Wait; a huge one is capped, not trusted */
        if (parse_uint(v, vlen, 0xffffffffu, &w)) {
            p->wait_s = w > AH_WAIT_MAX ? AH_WAIT_MAX : w;
            p->have_wait = true;
        }
    } else if (NAME_IS("Auth-Error-Code")) {
        if (!set_field(p->errcode, sizeof(p->errcode), v, vlen))
            return parse_fail(p, "Auth-Error-Code too long");
        p->have_errcode = vlen > 0;
    }
#undef NAME_IS
    /* other headers (Content-Length, Server, Date, ...) are ignored, as nginx does */
    return 0;
}

int ah_parse_line(struct ah_parse *p, const char *line, size_t len)
{
    if (p->error)
        return -1;
    if (p->done)
        return parse_fail(p, "data after the header block");
    p->seen_bytes += len;
    if (p->seen_bytes > p->max_bytes)
        return parse_fail(p, "response header block too large");
    if (len && line[len - 1] == '\n')
        len--;
    if (len && line[len - 1] == '\r')
        len--;
    if (memchr(line, '\n', len) || memchr(line, '\r', len))
        return parse_fail(p, "bare CR or LF in a header line");

    if (!p->in_block)
        return status_line(p, line, len);
    if (len == 0) {
        if (p->http_status >= 100 && p->http_status < 200) {
            p->in_block = false; /* an interim answer: the real one follows */
            return 0;
        }
        p->done = true;
        return 1;
    }
    if (line[0] == ' ' || line[0] == '\t')
        return parse_fail(p, "folded header line");
    return header_line(p, line, len);
}

void ah_parse_result(const struct ah_parse *p, struct ah_result *r)
{
    memset(r, 0, sizeof(*r));
    r->status = AH_ERROR;
    r->http_status = p->http_status;
    if (p->error) {
        r->message = p->error;
        return;
    }
    if (!p->done) {
        r->message = "incomplete response header";
        return;
    }
    if (p->http_status != 200) {
        r->message = "HTTP status is not 200";
        return;
    }
    if (!p->have_status) {
        r->message = "no Auth-Status header";
        return;
    }
    r->has_wait = p->have_wait;
    r->wait_s = p->wait_s;
    r->error_code = p->have_errcode ? p->errcode : NULL;
    if (strcmp(p->status, "OK") != 0) {
        if (p->status[0] == '\0') {
            r->message = "empty Auth-Status";
            return;
        }
        /* nginx's Auth-Status: WAIT (ask again after Auth-Wait) is not supported: an error
         * rather than a refusal, so it never counts toward a lock-out */
        if (strcmp(p->status, "WAIT") == 0) {
            r->message = "Auth-Status WAIT is not supported";
            return;
        }
        r->status = AH_FAIL;
        r->message = p->status;
        return;
    }
    if (!p->have_server || !p->have_port) {
        r->message = "Auth-Status OK without Auth-Server or Auth-Port";
        return;
    }
    if (p->bad_server) {
        r->message = "Auth-Server is not an IP address";
        return;
    }
    if (p->bad_port) {
        r->message = "Auth-Port is not a port number";
        return;
    }
    r->status = AH_OK;
    memcpy(r->server, p->server, sizeof(r->server));
    r->port = (uint16_t)p->port;
    r->user = p->have_user ? p->user : NULL;
    r->pass = p->have_pass ? p->pass : NULL;
    r->message = "OK";
}

size_t ah_escape(const char *in, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool esc = c < 0x20 || c == ' ' || c == '%';
        if (o + (esc ? 3 : 1) >= cap)
            return (size_t)-1;
        if (esc) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 0xf];
        } else {
            out[o++] = (char)c;
        }
    }
    if (o >= cap)
        return (size_t)-1;
    out[o] = '\0';
    return o;
}

void ah_config_defaults(struct ah_config *c)
{
    memset(c, 0, sizeof(*c));
    c->timeout_ms = AH_TIMEOUT_MS_DEFAULT;
    c->connect_timeout_ms = AH_CONNECT_TIMEOUT_MS_DEFAULT;
    c->max_connections = AH_MAX_CONNECTIONS_DEFAULT;
    c->max_header_bytes = AH_MAX_HEADER_BYTES_DEFAULT;
}
