/*
 * cidr — lists of networks in the configuration (trusted PROXY senders): parsing and matching.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static bool parse_one(const char *tok, struct cfg_cidr *c)
{
    char addr[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(tok, '/');
    size_t al = slash ? (size_t)(slash - tok) : strlen(tok);
    if (al == 0 || al >= sizeof addr)
        return false;
    memcpy(addr, tok, al);
    addr[al] = '\0';
    memset(c, 0, sizeof *c);
    if (inet_pton(AF_INET, addr, c->addr) == 1) {
        c->family = AF_INET;
        c->prefix = 32;
    } else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
        c->family = AF_INET6;
        c->prefix = 128;
    } else {
        return false;
    }
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3)
            return false;
        unsigned v = 0;
        for (; *p; p++) {
            if (!isdigit((unsigned char)*p))
                return false;
            v = v * 10 + (unsigned)(*p - '0');
        }
        if (v > c->prefix)
            return false;
        c->prefix = v;
    }
    return true;
}

bool cfg_parse_cidrs(const char *text, struct cfg_cidr **out, size_t *n, char *err, size_t cap)
{
    *out = NULL;
    *n = 0;
    size_t max = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (!*p)
            break;
        const char *e = p;
        while (*e && *e != ' ' && *e != ',' && *e != '\t')
            e++;
        char tok[80];
        size_t tl = (size_t)(e - p);
        struct cfg_cidr c;
        if (tl >= sizeof tok) {
            snprintf(err, cap, "network too long");
            goto fail;
        }
        memcpy(tok, p, tl);
        tok[tl] = '\0';
        if (!parse_one(tok, &c)) {
            snprintf(err, cap, "not an address or network: \"%s\"", tok);
            goto fail;
        }
        if (*n == max) {
            max = max ? 2 * max : 4;
            struct cfg_cidr *m = realloc(*out, max * sizeof *m);
            if (!m) {
                snprintf(err, cap, "out of memory");
                goto fail;
            }
            *out = m;
        }
        (*out)[(*n)++] = c;
        p = e;
    }
    return true;
fail:
    free(*out);
    *out = NULL;
    *n = 0;
    return false;
}

static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (!rest)
        return true;
    unsigned char mask = (unsigned char)(0xFF << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool cfg_cidr_match(const struct cfg_cidr *nets, size_t n, const struct sockaddr *sa)
{
    unsigned char a[16];
    int fam;
    if (sa->sa_family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        fam = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(in6)) {
            memcpy(a, in6->s6_addr + 12, 4);
            fam = AF_INET;
        } else {
            memcpy(a, in6->s6_addr, 16);
            fam = AF_INET6;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (nets[i].family == fam && prefix_equal(a, nets[i].addr, nets[i].prefix))
            return true;
    return false;
}
