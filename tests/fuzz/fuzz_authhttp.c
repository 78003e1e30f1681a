/* libFuzzer harness for the auth_http response parser (proxy/authhttp_parse.c) and nginx's
 * escaping. The input is cut into lines at LF as libcurl's header callback would hand them,
 * each line in an exact-size copy (ASan sees over-reads). Checks: the parser never accepts a
 * line after an error or after the end; a result is self-consistent (OK has a numeric server
 * and a port in 1..65535, every string is NUL-terminated inside its field); the header-block
 * cap holds; and escaping round-trips with no space, '%'-ambiguity, CR or LF left. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "authhttp.h"

static void check_result(const struct ah_parse *p, const struct ah_result *r)
{
    if (r->status == AH_OK) {
        unsigned char a[16];
        if (r->port == 0 ||
            (inet_pton(AF_INET, r->server, a) != 1 && inet_pton(AF_INET6, r->server, a) != 1))
            abort();
        if (r->http_status != 200 || !p->done)
            abort();
        if (r->user && strlen(r->user) >= AH_USER_MAX)
            abort();
        if (r->pass && strlen(r->pass) >= AH_PASS_MAX)
            abort();
    } else if (!r->message || !*r->message) {
        abort();
    }
    if (r->status == AH_FAIL && strlen(r->message) >= AH_STATUS_TEXT_MAX)
        abort();
    if (r->error_code && strlen(r->error_code) >= AH_ERRCODE_MAX)
        abort();
    if (r->has_wait && r->wait_s > AH_WAIT_MAX)
        abort();
}

static void check_escape(const uint8_t *data, size_t size)
{
    size_t cap = size * 3 + 1;
    char *out = malloc(cap);
    if (!out)
        return;
    size_t n = ah_escape((const char *)data, size, out, cap);
    if (n == (size_t)-1 || n >= cap || out[n] != '\0')
        abort();
    /* decode %XX back: must give the input exactly */
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c < 0x20 || c == ' ')
            abort();
        if (c == '%') {
            if (i + 2 >= n)
                abort();
            char hx[3] = {out[i + 1], out[i + 2], 0};
            c = (unsigned char)strtoul(hx, NULL, 16);
            i += 2;
        }
        if (j >= size || c != data[j])
            abort();
        j++;
    }
    if (j != size)
        abort();
    /* a buffer one byte short never fits */
    if (n > 0 && ah_escape((const char *)data, size, out, n) != (size_t)-1)
        abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ah_parse p;
    struct ah_result r;
    /* a small cap too, so the block limit is reached by fuzzed inputs */
    ah_parse_init(&p, size & 1 ? AH_MAX_HEADER_BYTES_MIN : 0);
    int last = 0;
    size_t off = 0;
    while (off < size) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t len = nl ? (size_t)(nl - (data + off)) + 1 : size - off;
        char *line = malloc(len ? len : 1);
        if (!line)
            return 0;
        memcpy(line, data + off, len);
        int rc = ah_parse_line(&p, line, len);
        free(line);
        if ((last != 0) && rc != -1)
            abort(); /* after an error or the end, nothing more is accepted */
        if (rc == -1 && !p.error)
            abort();
        if (p.seen_bytes > p.max_bytes && rc != -1)
            abort();
        last = rc;
        off += len;
    }
    ah_parse_result(&p, &r);
    check_result(&p, &r);
    ah_parse_clear(&p);
    check_escape(data, size < 4096 ? size : 4096);
    return 0;
}
