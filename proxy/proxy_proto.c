/*
 * proxy_proto — PROXY protocol v1/v2 parser and v2 builder (see proxy_proto.h).
 */
#include "proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static enum proxy_result bad(const char **error_r, const char *why)
{
    *error_r = why;
    return PROXY_BAD;
}

/* A decimal port 0..65535 without sign or leading junk. */
static bool parse_port(const char *s, uint16_t *port_r)
{
    if (!*s || strlen(s) > 5)
        return false;
    unsigned v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v > 65535 || (s[0] == '0' && s[1]))
        return false;
    *port_r = (uint16_t)v;
    return true;
}

static bool set_addr(struct sockaddr_storage *ss, int fam, const char *ip, const char *port)
{
    uint16_t p;
    if (!parse_port(port, &p))
        return false;
    memset(ss, 0, sizeof *ss);
    if (fam == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(p);
        return inet_pton(AF_INET, ip, &in->sin_addr) == 1;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(p);
    return inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1;
}

static enum proxy_result parse_v1(const unsigned char *buf, size_t len, size_t *consumed_r,
                                  struct proxy_addrs *out, const char **error_r)
{
    const unsigned char *lf = memchr(buf, '\n', len < PROXY_V1_MAX ? len : PROXY_V1_MAX);
    if (!lf) {
        if (len >= PROXY_V1_MAX)
            return bad(error_r, "PROXY v1 line too long");
        return PROXY_MORE;
    }
    size_t n = (size_t)(lf - buf);
    if (n < 1 || buf[n - 1] != '\r')
        return bad(error_r, "PROXY v1 line not ended by CRLF");
    char line[PROXY_V1_MAX + 1];
    memcpy(line, buf, n - 1);
    line[n - 1] = '\0';
    *consumed_r = n + 1;
    char *f[7];
    int nf = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " ", &save); t && nf < 7; t = strtok_r(NULL, " ", &save))
        f[nf++] = t;
    if (nf >= 2 && strcmp(f[1], "UNKNOWN") == 0) {
        memset(out, 0, sizeof *out);
        out->local = true;
        return PROXY_DONE;
    }
    if (nf != 6)
        return bad(error_r, "PROXY v1 line malformed");
    int fam = strcmp(f[1], "TCP4") == 0 ? AF_INET : strcmp(f[1], "TCP6") == 0 ? AF_INET6 : 0;
    if (!fam)
        return bad(error_r, "PROXY v1 protocol unknown");
    memset(out, 0, sizeof *out);
    if (!set_addr(&out->src, fam, f[2], f[4]) || !set_addr(&out->dst, fam, f[3], f[5]))
        return bad(error_r, "PROXY v1 address malformed");
    return PROXY_DONE;
}

static enum proxy_result parse_v2(const unsigned char *buf, size_t len, size_t *consumed_r,
                                  struct proxy_addrs *out, const char **error_r)
{
    if (len < 16)
        return PROXY_MORE;
    unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0F;
    unsigned fam = buf[13];
    size_t body = ((size_t)buf[14] << 8) | buf[15];
    if (ver != 2)
        return bad(error_r, "PROXY v2 version unknown");
    if (cmd > 1)
        return bad(error_r, "PROXY v2 command unknown");
    if (16 + body > PROXY_HDR_MAX)
        return bad(error_r, "PROXY v2 header too long");
    if (len < 16 + body)
        return PROXY_MORE;
    *consumed_r = 16 + body;
    memset(out, 0, sizeof *out);
    const unsigned char *a = buf + 16;
    if (cmd == 0) { /* LOCAL: health checks of the balancer itself */
        out->local = true;
        return PROXY_DONE;
    }
    if (fam == 0x11) { /* TCP over IPv4 */
        if (body < 12)
            return bad(error_r, "PROXY v2 address block too short");
        struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src;
        struct sockaddr_in *d4 = (struct sockaddr_in *)&out->dst;
        s4->sin_family = d4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, a, 4);
        memcpy(&d4->sin_addr, a + 4, 4);
        memcpy(&s4->sin_port, a + 8, 2);
        memcpy(&d4->sin_port, a + 10, 2);
        return PROXY_DONE;
    }
    if (fam == 0x21) { /* TCP over IPv6 */
        if (body < 36)
            return bad(error_r, "PROXY v2 address block too short");
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src;
        struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&out->dst;
        s6->sin6_family = d6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, a, 16);
        memcpy(&d6->sin6_addr, a + 16, 16);
        memcpy(&s6->sin6_port, a + 32, 2);
        memcpy(&d6->sin6_port, a + 34, 2);
        return PROXY_DONE;
    }
    if (fam == 0x00) { /* UNSPEC: keep the socket's addresses */
        out->local = true;
        return PROXY_DONE;
    }
    return bad(error_r, "PROXY v2 address family unsupported");
}

enum proxy_result proxy_parse(const unsigned char *buf, size_t len, size_t *consumed_r,
                              struct proxy_addrs *out, const char **error_r)
{
    *consumed_r = 0;
    *error_r = NULL;
    static const char v1sig[] = "PROXY ";
    size_t k = len < 6 ? len : 6;
    if (memcmp(buf, v1sig, k) == 0)
        return k < 6 ? PROXY_MORE : parse_v1(buf, len, consumed_r, out, error_r);
    k = len < 12 ? len : 12;
    if (memcmp(buf, v2sig, k) == 0)
        return k < 12 ? PROXY_MORE : parse_v2(buf, len, consumed_r, out, error_r);
    return bad(error_r, "no PROXY protocol header");
}

static void v4mapped(const struct sockaddr_in *in, unsigned char out[16])
{
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &in->sin_addr, 4);
}

size_t proxy_v2_build(unsigned char *out, size_t cap, const struct sockaddr *src,
                      const struct sockaddr *dst)
{
    if (cap < 16 + 36)
        return 0;
    if ((src->sa_family != AF_INET && src->sa_family != AF_INET6) ||
        (dst->sa_family != AF_INET && dst->sa_family != AF_INET6))
        return 0;
    memcpy(out, v2sig, 12);
    out[12] = 0x21; /* version 2, PROXY */
    unsigned char *a = out + 16;
    if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)src;
        const struct sockaddr_in *d4 = (const struct sockaddr_in *)dst;
        out[13] = 0x11;
        out[14] = 0;
        out[15] = 12;
        memcpy(a, &s4->sin_addr, 4);
        memcpy(a + 4, &d4->sin_addr, 4);
        memcpy(a + 8, &s4->sin_port, 2);
        memcpy(a + 10, &d4->sin_port, 2);
        return 16 + 12;
    }
    out[13] = 0x21;
    out[14] = 0;
    out[15] = 36;
    const struct sockaddr *ends[2] = {src, dst};
    for (int i = 0; i < 2; i++) {
        if (ends[i]->sa_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)ends[i];
            v4mapped(in, a + 16 * i);
            memcpy(a + 32 + 2 * i, &in->sin_port, 2);
        } else {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ends[i];
            memcpy(a + 16 * i, &in6->sin6_addr, 16);
            memcpy(a + 32 + 2 * i, &in6->sin6_port, 2);
        }
    }
    return 16 + 36;
}
