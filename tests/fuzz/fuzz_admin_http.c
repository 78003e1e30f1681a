/*
 * fuzz_admin_http — libFuzzer harness for the admin listener's request parser
 * (proxy/admin_http.c, admin_parse_request).
 *
 * The input is what a peer sent (any bytes, NULs included), parsed whole and at every prefix
 * length a byte-at-a-time reader would see (up to 512). Properties, abort() when broken:
 *  - it reads only buf[0, len) (ASan: the input is copied into an exact-size buffer);
 *  - MORE exactly when no empty line ("\r\n\r\n" / "\n\n") is in the bytes, and once complete
 *    the answer no longer changes as more bytes arrive (the verdict is the header block's);
 *  - OK gives a NUL-terminated method of 1-7 and path of 0-255 printable non-space bytes,
 *    the path without '?', both literally present in the request line.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_admin_http: %s\n", what);                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

static enum admin_http_parse parse(const uint8_t *data, size_t n, struct admin_http_req *r)
{
    char *b = malloc(n ? n : 1);
    CHECK(b, "oom");
    memcpy(b, data, n);
    enum admin_http_parse res = admin_parse_request(b, n, r);
    if (res == ADMIN_HTTP_OK) {
        CHECK(memchr(r->method, 0, sizeof r->method) && memchr(r->path, 0, sizeof r->path),
              "unterminated field");
        size_t ml = strlen(r->method);
        CHECK(ml >= 1 && ml < ADMIN_HTTP_METHOD_MAX, "method length");
        CHECK(printable(r->method) && printable(r->path), "field holds a space or control");
        CHECK(!strchr(r->path, '?'), "query string kept");
        const char *lf = memchr(b, '\n', n);
        CHECK(lf, "OK without a line");
        size_t ll = (size_t)(lf - b);
        CHECK(memmem(b, ll, r->method, ml), "method not in the request line");
        if (*r->path)
            CHECK(memmem(b, ll, r->path, strlen(r->path)), "path not in the request line");
    } else {
        CHECK(res == ADMIN_HTTP_MORE || res == ADMIN_HTTP_BAD, "unknown result");
    }
    free(b);
    return res;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    struct admin_http_req whole, r;
    enum admin_http_parse res = parse(data, size, &whole);
    bool complete = memmem(data, size, "\r\n\r\n", 4) || memmem(data, size, "\n\n", 2);
    CHECK((res == ADMIN_HTTP_MORE) == !complete, "MORE disagrees with the empty line");
    /* the first complete prefix decides: every longer prefix gives the same answer */
    enum admin_http_parse first = ADMIN_HTTP_MORE;
    for (size_t n = 0; n <= size && n <= 512; n++) {
        enum admin_http_parse p = parse(data, n, &r);
        if (first == ADMIN_HTTP_MORE) {
            first = p;
            if (p == ADMIN_HTTP_OK)
                whole = r;
            continue;
        }
        CHECK(p == first, "answer changed after the header block was complete");
        if (p == ADMIN_HTTP_OK)
            CHECK(strcmp(r.method, whole.method) == 0 && strcmp(r.path, whole.path) == 0,
                  "fields changed after the header block was complete");
    }
    return 0;
}
