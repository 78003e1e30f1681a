/*
 * route_shared — see route_shared.h. The digest walks the lookup schema generically (scalars,
 * nested maps and sequences of maps), so it follows the loader's own tables.
 */
#include "route_shared.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg_walk.h"
#include "digits.h"
#include "ratelimit.h"

/* ---- key ---------------------------------------------------------------------------------- */

static void digest_table(EVP_MD_CTX *md, const struct cfg_table *t, const char *obj);

static void digest_str(EVP_MD_CTX *md, const char *s)
{
    /* Length-prefixed, so that no two sequences of fields hash alike. */
    char len[24];
    int n = snprintf(len, sizeof len, "%zu:", strlen(s));
    EVP_DigestUpdate(md, len, (size_t)n);
    EVP_DigestUpdate(md, s, strlen(s));
}

static void digest_key(EVP_MD_CTX *md, const struct cfg_key *k, const char *obj)
{
    char buf[CFG_STR_MAX + 1];
    if (k->flags & CFG_SECRET)
        return; /* a password changes who we are, not what the directory answers */
    digest_str(md, k->name);
    if (k->type == CFG_MAP) {
        digest_table(md, k->sub, obj + k->off);
    } else if (k->type == CFG_SEQ) {
        const char *arr;
        size_t n;
        memcpy(&arr, obj + k->off, sizeof arr);
        memcpy(&n, obj + k->off2, sizeof n);
        snprintf(buf, sizeof buf, "%zu", n);
        digest_str(md, buf);
        for (size_t i = 0; i < n; i++)
            digest_table(md, k->sub, arr + i * k->sub->size);
    } else {
        digest_str(md, cfg_walk_value(k, obj, buf, sizeof buf));
    }
}

static void digest_table(EVP_MD_CTX *md, const struct cfg_table *t, const char *obj)
{
    for (const struct cfg_key *k = t->keys; k->name; k++)
        digest_key(md, k, obj);
}

void route_shared_suffix(const struct config *cfg, char out[ROUTE_SHARED_SUFFIX_MAX])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    const struct cfg_routing *r = &cfg->routing;
    memset(d, 0, sizeof d);
    if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        digest_str(md, "rt1");
        digest_str(md, cfg->policy.user_case_insensitive ? "fold" : "exact");
        for (size_t i = 0; i < r->nlookups; i++)
            digest_table(md, cfg_lookup_table(), (const char *)&r->lookups[i]);
        EVP_DigestFinal_ex(md, d, &dlen);
    }
    EVP_MD_CTX_free(md);
    out[0] = ':';
    for (size_t i = 0; i < ROUTE_SHARED_DIGEST_HEX / 2; i++) {
        out[1 + 2 * i] = hex[d[i] >> 4];
        out[2 + 2 * i] = hex[d[i] & 15];
    }
    out[1 + ROUTE_SHARED_DIGEST_HEX] = '\0';
}

bool route_shared_tag(const struct config *cfg, const char *user, char out[ROUTE_SHARED_TAG_MAX])
{
    if (strlen(user) > RL_USER_MAX)
        return false;
    rl_user_key(user, cfg->policy.user_case_insensitive, out, ROUTE_SHARED_TAG_MAX);
    return true;
}

/* ---- value -------------------------------------------------------------------------------- */

struct wbuf {
    char *p;
    size_t cap, n;
    bool ok;
};

static void put_raw(struct wbuf *w, const char *s)
{
    size_t l = strlen(s);
    if (!w->ok || w->n + l >= w->cap) {
        w->ok = false;
        return;
    }
    memcpy(w->p + w->n, s, l);
    w->n += l;
    w->p[w->n] = '\0';
}

/* One field, after a space: bytes that would split or break the line as %XX ("" as "%"). */
static void put_field(struct wbuf *w, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    put_raw(w, " ");
    if (!*s)
        put_raw(w, "%");
    for (const unsigned char *c = (const unsigned char *)s; *c && w->ok; c++) {
        char e[4] = {(char)*c, 0, 0, 0};
        if (*c <= ' ' || *c == '%' || *c >= 0x7f) {
            e[0] = '%';
            e[1] = hex[*c >> 4];
            e[2] = hex[*c & 15];
        }
        put_raw(w, e);
    }
}

static bool numeric_addr(const struct route_target *t, char *out, size_t cap)
{
    if (t->addrlen == 0)
        return false;
    const struct sockaddr *sa = (const struct sockaddr *)&t->addr;
    if (sa->sa_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
                         (socklen_t)cap) != NULL;
    if (sa->sa_family == AF_INET6)
        return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out,
                         (socklen_t)cap) != NULL;
    return false;
}

size_t route_shared_encode(const struct route_answer *a, int64_t expires_ms, char *out, size_t cap)
{
    struct wbuf w = {.p = out, .cap = cap, .ok = cap > 0};
    char num[64];
    if (a->user || a->pass || !a->source)
        return 0;
    if (a->status == ROUTE_FOUND && !a->target)
        return 0;
    if (a->status != ROUTE_FOUND && a->status != ROUTE_NOT_FOUND)
        return 0;
    put_raw(&w, a->status == ROUTE_FOUND ? "v1 F" : "v1 N");
    snprintf(num, sizeof num, "%lld", (long long)expires_ms);
    put_field(&w, num);
    put_field(&w, a->source);
    put_field(&w, a->rule ? a->rule : "");
    if (a->status == ROUTE_FOUND) {
        const struct route_target *t = a->target;
        if (t->pool) {
            put_field(&w, "p");
            put_field(&w, t->text);
        } else {
            if (!t->host || !numeric_addr(t, num, sizeof num))
                return 0;
            put_field(&w, "d");
            put_field(&w, t->text);
            put_field(&w, t->host);
            char port[8];
            snprintf(port, sizeof port, "%u", (unsigned)t->port);
            put_field(&w, port);
            put_field(&w, num);
        }
    }
    return w.ok ? w.n : 0;
}

/* The next field of [*p, end) unescaped into out (at most cap-1 bytes); fields are separated by
 * exactly one space. */
static bool get_field(const char **p, const char *end, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    if (s >= end || *s != ' ')
        return false;
    s++;
    if (s < end && *s == '%' && (s + 1 == end || s[1] == ' ')) { /* the empty field */
        *p = s + 1;
        out[0] = '\0';
        return cap > 0;
    }
    for (; s < end && *s != ' '; s++) {
        char c = *s;
        if ((unsigned char)c <= ' ' || (unsigned char)c >= 0x7f)
            return false;
        if (c == '%') {
            if (end - s < 3 || hex_digit(s[1]) < 0 || hex_digit(s[2]) < 0)
                return false;
            c = (char)(hex_digit(s[1]) << 4 | hex_digit(s[2]));
            if (c == '\0')
                return false;
            s += 2;
        }
        if (n + 1 >= cap)
            return false;
        out[n++] = c;
    }
    if (n == 0)
        return false;
    out[n] = '\0';
    *p = s;
    return true;
}

static bool parse_uint(const char *s, uint64_t max, uint64_t *v)
{
    char *e;
    if (*s < '0' || *s > '9')
        return false;
    unsigned long long x = strtoull(s, &e, 10);
    if (*e || x > max)
        return false;
    *v = x;
    return true;
}

static bool parse_addr(const char *s, struct route_target *t)
{
    memset(&t->addr, 0, sizeof t->addr);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&t->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&t->addr;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        t->addrlen = sizeof *v4;
        return true;
    }
    if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        t->addrlen = sizeof *v6;
        return true;
    }
    return false;
}

bool route_shared_decode(const char *val, size_t len, struct route_shared_entry *e)
{
    const char *p = val, *end = val + len;
    char kind[2], num[24];
    uint64_t v;
    memset(e, 0, sizeof *e);
    if (len < 4 || memcmp(val, "v1 ", 3) != 0)
        return false;
    p = val + 2;
    if (!get_field(&p, end, kind, sizeof kind) || !get_field(&p, end, num, sizeof num) ||
        !parse_uint(num, INT64_MAX, &v) || !get_field(&p, end, e->source, sizeof e->source) ||
        !get_field(&p, end, e->rule, sizeof e->rule))
        return false;
    e->expires_ms = (int64_t)v;
    if (strcmp(kind, "N") == 0) {
        e->status = ROUTE_NOT_FOUND;
        return p == end;
    }
    if (strcmp(kind, "F") != 0 || !get_field(&p, end, kind, sizeof kind) ||
        !get_field(&p, end, e->text, sizeof e->text))
        return false;
    e->status = ROUTE_FOUND;
    e->target.text = e->text;
    if (strcmp(kind, "p") == 0) {
        e->target.pool = true;
        return p == end;
    }
    if (strcmp(kind, "d") != 0 || !get_field(&p, end, e->host, sizeof e->host) ||
        !get_field(&p, end, num, sizeof num) || !parse_uint(num, 65535, &v))
        return false;
    e->target.host = e->host;
    e->target.port = (uint16_t)v;
    char addr[64];
    if (!get_field(&p, end, addr, sizeof addr) || !parse_addr(addr, &e->target))
        return false;
    return p == end;
}

void route_shared_answer(const struct route_shared_entry *e, struct route_answer *a)
{
    *a = (struct route_answer){.status = e->status,
                               .source = e->source,
                               .rule = e->rule,
                               .target = e->status == ROUTE_FOUND ? &e->target : NULL,
                               .cached = true,
                               .shared = true};
}
