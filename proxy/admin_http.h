/*
 * admin_http — the admin listener's HTTP request parser, a pure function (no I/O, no state) so
 * it can be fuzzed on its own (tests/fuzz/fuzz_admin_http.c). admin.c owns the connections.
 */
#ifndef PORTCULLIS_ADMIN_HTTP_H
#define PORTCULLIS_ADMIN_HTTP_H

#include <stddef.h>

#define ADMIN_HTTP_METHOD_MAX 8   /* with its NUL */
#define ADMIN_HTTP_PATH_MAX   256 /* with its NUL */

enum admin_http_parse {
    ADMIN_HTTP_MORE, /* the header block is not complete yet */
    ADMIN_HTTP_OK,   /* method and path filled in */
    ADMIN_HTTP_BAD,  /* a complete header block that is not a request line we understand */
};

struct admin_http_req {
    char method[ADMIN_HTTP_METHOD_MAX];
    char path[ADMIN_HTTP_PATH_MAX]; /* without its query string */
};

/* Parse the `len` bytes received so far (`buf` need not be NUL-terminated and may hold NULs).
 * Complete means an empty line ("\r\n\r\n" or "\n\n") was received. The request line is
 * "METHOD SP PATH [SP ...]": a method of 1-7 and a path of 1-255 non-space bytes; anything else
 * (a NUL or control byte in them, a longer token) is ADMIN_HTTP_BAD. */
enum admin_http_parse admin_parse_request(const char *buf, size_t len, struct admin_http_req *r);

#endif
