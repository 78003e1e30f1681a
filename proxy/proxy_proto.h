/*
 * proxy_proto — HAProxy's PROXY protocol (versions 1 and 2): parsing the header a trusted
 * balancer puts in front of a connection, and building a v2 header for the backend.
 * Pure functions: no I/O, no allocation. Spec: haproxy doc/proxy-protocol.txt.
 */
#ifndef PORTCULLIS_PROXY_PROTO_H
#define PORTCULLIS_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PROXY_V1_MAX  107  /* "PROXY" line, CRLF included (spec 2.1) */
#define PROXY_V2_MAX  232  /* what we build: 16 + 216 (the largest address block, AF_UNIX) */
#define PROXY_HDR_MAX 1024 /* the largest inbound v2 header accepted (addresses + TLVs) */

enum proxy_result {
    PROXY_MORE, /* a valid prefix: feed more bytes */
    PROXY_DONE, /* a whole header: *consumed_r bytes */
    PROXY_BAD,  /* not a PROXY header, or a broken one: *error_r says why */
};

struct proxy_addrs {
    bool local;                  /* LOCAL command / UNKNOWN family: use the socket's addresses */
    struct sockaddr_storage src; /* the client, as the balancer saw it */
    struct sockaddr_storage dst; /* the address the client connected to */
};

/* Parse the header at the start of `buf` (`len` bytes received so far). Either version is
 * recognised by its first bytes. Never reads past len. */
enum proxy_result proxy_parse(const unsigned char *buf, size_t len, size_t *consumed_r,
                              struct proxy_addrs *out, const char **error_r);

/* Build a v2 PROXY header for a TCP connection from `src` to `dst` (AF_INET or AF_INET6; a mix
 * is sent as IPv6 with v4-mapped addresses). Returns its length, or 0 if `cap` is too small or
 * the families are unsupported. */
size_t proxy_v2_build(unsigned char *out, size_t cap, const struct sockaddr *src,
                      const struct sockaddr *dst);

#endif
