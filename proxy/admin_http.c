/*
 * admin_http — see admin_http.h. Replaces sscanf("%7s %255s"), which silently split an
 * over-long method or path into the next token and read up to a NUL the peer could send.
 */
#include "admin_http.h"

#include <stdbool.h>
#include <string.h>

static bool is_token_byte(unsigned char c)
{
    return c > ' ' && c != 0x7f;
}

/* Copy the token at buf[*i] (after any spaces) into out[cap]; false if empty or too long. */
static bool token(const char *buf, size_t end, size_t *i, char *out, size_t cap)
{
    while (*i < end && buf[*i] == ' ')
        (*i)++;
    size_t n = 0;
    while (*i < end && is_token_byte((unsigned char)buf[*i])) {
        if (n + 1 >= cap)
            return false;
        out[n++] = buf[(*i)++];
    }
    out[n] = '\0';
    return n > 0;
}

enum admin_http_parse admin_parse_request(const char *buf, size_t len, struct admin_http_req *r)
{
    memset(r, 0, sizeof *r);
    bool done = memmem(buf, len, "\r\n\r\n", 4) || memmem(buf, len, "\n\n", 2);
    if (!done)
        return ADMIN_HTTP_MORE;
    const char *lf = memchr(buf, '\n', len);
    size_t end = (size_t)(lf - buf); /* done implies a LF */
    if (end && buf[end - 1] == '\r')
        end--;
    size_t i = 0;
    if (!token(buf, end, &i, r->method, sizeof r->method) || i >= end || buf[i] != ' ' ||
        !token(buf, end, &i, r->path, sizeof r->path) || (i < end && buf[i] != ' ')) {
        memset(r, 0, sizeof *r);
        return ADMIN_HTTP_BAD;
    }
    char *q = strchr(r->path, '?');
    if (q)
        *q = '\0';
    return ADMIN_HTTP_OK;
}
