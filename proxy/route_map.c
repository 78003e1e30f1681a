/*
 * route_map — see route_map.h. Parsing, the open-addressing table, binding targets.
 *
 * Invariants:
 *  - Every key and target is a NUL-terminated slice of `arena`; slots hold arena offsets, so
 *    the table is position-independent and has no per-entry allocation.
 *  - The slot array has at least twice as many slots as entries (sized from the line count
 *    before parsing), so linear probing always finds an empty slot and stays short.
 *  - Keys are stored folded when fold_case is set; queries are folded while hashing, never
 *    copied.
 */
#include "route_map.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg_map.h"
#include "hash64.h"

static unsigned char fold(unsigned char c, bool on)
{
    return on && c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* FNV-1a and the splitmix64 mixer (hash64.h). */
static uint64_t key_hash(const char *s, bool fold_case)
{
    uint64_t h = FNV64_OFFSET;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = fnv64_byte(h, fold(*p, fold_case));
    return mix64(h);
}

/* `stored` is already folded; `query` is folded on the fly. */
static bool key_equal(const char *stored, const char *query, bool fold_case)
{
    const unsigned char *a = (const unsigned char *)stored, *b = (const unsigned char *)query;
    for (; *a && *b; a++, b++)
        if (*a != fold(*b, fold_case))
            return false;
    return *a == *b;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static void free_map(struct route_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->ntargets; i++)
        free((char *)m->targets[i].host);
    free(m->targets);
    free(m->slots);
    free(m->arena);
    free(m->name);
    free(m);
}

struct route_map *route_map_ref(struct route_map *m)
{
    if (m)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void route_map_unref(struct route_map **mp)
{
    struct route_map *m = *mp;
    *mp = NULL;
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        free_map(m);
}

/* ---- parsing ----------------------------------------------------------------------------- */

struct parser {
    struct route_map *m;
    const struct route_map_limits *lim;
    uint32_t *tslots; /* target intern table: index + 1, 0 = empty */
    size_t tmask;
    size_t tcap; /* allocated targets */
    unsigned line;
    char **error_r;
};

static bool perr(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool perr(struct parser *p, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (asprintf(p->error_r, "%s:%u: %s", p->m->name, p->line, msg) < 0)
        *p->error_r = NULL;
    return false;
}

/* For messages: at most 64 bytes, control and non-ASCII bytes as '?'. */
static const char *shown(char *buf, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 4 < cap && i < 64; i++)
        buf[i] = s[i] > 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (s[i] && i + 4 < cap)
        buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = '\0';
    return buf;
}

/* A user or `@domain`: 1..255 bytes, no blanks or control bytes (UTF-8 is fine). */
static bool valid_key(const char *k, size_t len)
{
    if (len == 0 || len > ROUTE_MAP_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)k[i] <= 0x20 || k[i] == 0x7f)
            return false;
    if (k[0] == '@')
        return len >= 2 && !memchr(k + 1, '@', len - 1);
    return true;
}

/* A pool entry name or host[:port] / [v6]:port: the characters those can hold. */
static bool valid_target(const char *t, size_t len)
{
    if (len == 0 || len > ROUTE_MAP_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']'))
            return false;
    }
    return true;
}

static bool intern_target(struct parser *p, char *text, uint32_t *idx_r)
{
    struct route_map *m = p->m;
    uint64_t h = key_hash(text, false);
    size_t i = h & p->tmask;
    for (; p->tslots[i]; i = (i + 1) & p->tmask) {
        uint32_t t = p->tslots[i] - 1;
        if (strcmp(m->targets[t].text, text) == 0) {
            *idx_r = t;
            return true;
        }
    }
    if (m->ntargets >= p->lim->max_targets)
        return perr(p, "more than %zu distinct backends (routing.map_max_backends)",
                    p->lim->max_targets);
    if (m->ntargets == p->tcap) {
        size_t ncap = p->tcap ? p->tcap * 2 : 16;
        struct route_target *n = realloc(m->targets, ncap * sizeof *n);
        if (!n)
            return perr(p, "out of memory");
        m->targets = n;
        p->tcap = ncap;
    }
    m->targets[m->ntargets] = (struct route_target){.text = text, .line = p->line};
    p->tslots[i] = (uint32_t)++m->ntargets;
    *idx_r = (uint32_t)(m->ntargets - 1);
    return true;
}

static bool insert_key(struct parser *p, char *key, uint32_t target)
{
    struct route_map *m = p->m;
    uint64_t h = key_hash(key, false); /* already folded */
    size_t i = h & m->mask;
    for (; m->slots[i].key; i = (i + 1) & m->mask) {
        if (m->slots[i].hash == (uint32_t)(h >> 32) &&
            strcmp(m->arena + m->slots[i].key - 1, key) == 0) {
            char b[80];
            return perr(p, "duplicate entry \"%s\"", shown(b, sizeof b, key));
        }
    }
    if (m->nentries >= p->lim->max_entries)
        return perr(p, "more than %zu entries (routing.map_max_entries)", p->lim->max_entries);
    m->slots[i] = (struct route_map_slot){
        .key = (uint32_t)(key - m->arena) + 1, .hash = (uint32_t)(h >> 32), .target = target};
    m->nentries++;
    return true;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* One line, NUL-terminated (CR stripped). */
static bool parse_line(struct parser *p, char *s)
{
    while (is_blank(*s))
        s++;
    if (*s == '\0' || *s == '#')
        return true;
    char *key = s;
    while (*s && !is_blank(*s))
        s++;
    char *key_end = s;
    while (is_blank(*s))
        s++;
    char *target = s;
    while (*s && !is_blank(*s))
        s++;
    char *target_end = s;
    while (is_blank(*s))
        s++;
    if (target == target_end)
        return perr(p, "expected \"USER BACKEND\", \"@DOMAIN BACKEND\" or \"* BACKEND\"");
    if (*s)
        return perr(p, "unexpected text after the backend (one entry a line: \"USER BACKEND\")");
    *key_end = '\0';
    *target_end = '\0';
    size_t klen = (size_t)(key_end - key), tlen = (size_t)(target_end - target);
    char b[80];
    bool star = klen == 1 && key[0] == '*';
    if (!star && !valid_key(key, klen))
        return perr(p,
                    "invalid user or @domain \"%s\" (1..%d bytes, no control bytes, one @ "
                    "in a domain entry)",
                    shown(b, sizeof b, key), ROUTE_MAP_KEY_MAX);
    if (!valid_target(target, tlen))
        return perr(p, "invalid backend \"%s\" (a pool entry name, host or host:port)",
                    shown(b, sizeof b, target));
    uint32_t t = 0;
    if (!intern_target(p, target, &t))
        return false;
    if (star) {
        if (p->m->star != ROUTE_MAP_NO_TARGET)
            return perr(p, "duplicate entry \"*\"");
        p->m->star = t;
        return true;
    }
    if (p->m->fold_case)
        for (char *c = key; *c; c++)
            *c = (char)fold((unsigned char)*c, true);
    return insert_key(p, key, t);
}

struct route_map *route_map_parse(char *text, size_t len, const char *name,
                                  const struct route_map_limits *lim, char **error_r)
{
    *error_r = NULL;
    struct route_map *m = calloc(1, sizeof *m);
    if (!m || !(m->name = strdup(name ? name : "<map>"))) {
        free(m);
        free(text);
        *error_r = strdup("out of memory");
        return NULL;
    }
    atomic_init(&m->refs, 1);
    m->arena = text;
    m->arena_len = len;
    m->star = ROUTE_MAP_NO_TARGET;
    m->fold_case = lim->fold_case;
    struct parser p = {.m = m, .lim = lim, .error_r = error_r};
    if (len > lim->max_size || len >= UINT32_MAX) {
        perr(&p, "larger than %zu bytes (routing.map_max_size)", lim->max_size);
        goto fail;
    }
    text[len] = '\0';
    /* Size the slots from the line count (an upper bound of the entries), capped by the
     * entry limit: one pass of memchr, cheap next to the parse. */
    size_t lines = 1;
    for (const char *q = text; (q = memchr(q, '\n', (size_t)(text + len - q))); q++)
        lines++;
    size_t want = lines < lim->max_entries ? lines : lim->max_entries + 1;
    size_t nslots = pow2_at_least(want * 2);
    size_t ntslots = pow2_at_least((lim->max_targets < lines ? lim->max_targets : lines) * 2);
    m->slots = calloc(nslots, sizeof *m->slots);
    p.tslots = calloc(ntslots, sizeof *p.tslots);
    if (!m->slots || !p.tslots) {
        perr(&p, "out of memory");
        goto fail;
    }
    m->mask = nslots - 1;
    p.tmask = ntslots - 1;
    char *s = text, *end = text + len;
    while (s < end) {
        p.line++;
        char *nl = memchr(s, '\n', (size_t)(end - s));
        char *eol = nl ? nl : end;
        size_t n = (size_t)(eol - s);
        *eol = '\0';
        if (n && s[n - 1] == '\r')
            s[--n] = '\0';
        if (strlen(s) != n) { /* an embedded NUL would hide the rest of the line */
            perr(&p, "NUL byte in the line");
            goto fail;
        }
        if (!parse_line(&p, s))
            goto fail;
        s = eol + 1;
    }
    free(p.tslots);
    return m;
fail:
    free(p.tslots);
    free_map(m);
    return NULL;
}

struct route_map *route_map_load(const char *path, const struct route_map_limits *lim,
                                 char **error_r)
{
    *error_r = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (asprintf(error_r, "%s: cannot open: %s", path, strerror(errno)) < 0)
            *error_r = NULL;
        return NULL;
    }
    struct stat st;
    size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    if (cap > lim->max_size + 2)
        cap = lim->max_size + 2;
    size_t len = 0;
    char *buf = malloc(cap);
    /* Read at most one byte past the limit: the file may change or be a pipe. */
    while (buf) {
        if (len + 1 == cap) {
            if (len > lim->max_size)
                break;
            size_t ncap = cap * 2 > lim->max_size + 2 ? lim->max_size + 2 : cap * 2;
            char *n = realloc(buf, ncap);
            if (!n) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = n;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            if (asprintf(error_r, "%s: cannot read: %s", path, strerror(errno)) < 0)
                *error_r = NULL;
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!buf) {
        *error_r = strdup("out of memory");
        return NULL;
    }
    return route_map_parse(buf, len, path, lim, error_r);
}

/* ---- binding ----------------------------------------------------------------------------- */

/* Split `t` into host and port (0 = none): "host", "host:port", "[v6]:port", "[v6]", "v6". */
static bool split_hostport(const char *t, char *host, size_t cap, uint16_t *port_r)
{
    const char *h = t, *he, *ps = NULL;
    if (*t == '[') {
        h = t + 1;
        he = strchr(h, ']');
        if (!he || (he[1] && he[1] != ':'))
            return false;
        ps = he[1] == ':' ? he + 2 : NULL;
    } else {
        const char *c = strchr(t, ':');
        if (c && strchr(c + 1, ':')) { /* a bare IPv6 address */
            he = t + strlen(t);
        } else {
            he = c ? c : t + strlen(t);
            ps = c ? c + 1 : NULL;
        }
    }
    if (he == h || (size_t)(he - h) >= cap || memchr(h, '[', (size_t)(he - h)) ||
        memchr(h, ']', (size_t)(he - h)))
        return false;
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = '\0';
    *port_r = 0;
    if (ps) {
        uint64_t v;
        if (!cfg_parse_uint(ps, &v) || v < 1 || v > 65535)
            return false;
        *port_r = (uint16_t)v;
    }
    return true;
}

int route_target_bind(struct route_target *t, const struct config *cfg, int ai_flags,
                      const char **gai_error_r)
{
    free((char *)t->host);
    t->host = NULL;
    t->pool = false;
    for (size_t b = 0; b < cfg->nbackends && !t->pool; b++)
        t->pool = strcmp(cfg->backends[b].name, t->text) == 0;
    if (t->pool)
        return 0;
    return route_target_resolve(t, ai_flags, gai_error_r);
}

int route_target_resolve(struct route_target *t, int ai_flags, const char **gai_error_r)
{
    free((char *)t->host);
    t->host = NULL;
    t->pool = false;
    char host[ROUTE_MAP_KEY_MAX + 1];
    if (!split_hostport(t->text, host, sizeof host, &t->port))
        return -1;
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = ai_flags};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        if (res)
            freeaddrinfo(res);
        *gai_error_r = rc ? gai_strerror(rc) : "no address";
        return -2;
    }
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    t->host = strdup(host);
    if (!t->host) {
        *gai_error_r = "out of memory";
        return -2;
    }
    return 0;
}

bool route_map_bind(struct route_map *m, const struct config *cfg, char **error_r)
{
    *error_r = NULL;
    for (size_t i = 0; i < m->ntargets; i++) {
        struct route_target *t = &m->targets[i];
        const char *why = NULL;
        int rc = route_target_bind(t, cfg, 0, &why);
        if (rc == -1) {
            if (asprintf(error_r,
                         "%s:%u: backend \"%s\": not a pool entry, and not host, "
                         "host:port or [v6]:port",
                         m->name, t->line, t->text) < 0)
                *error_r = NULL;
            return false;
        }
        if (rc < 0) {
            char host[ROUTE_MAP_KEY_MAX + 1];
            uint16_t port;
            if (!split_hostport(t->text, host, sizeof host, &port))
                host[0] = '\0';
            if (asprintf(error_r,
                         "%s:%u: backend \"%s\": not a pool entry, and %s does not "
                         "resolve: %s",
                         m->name, t->line, t->text, host, why) < 0)
                *error_r = NULL;
            return false;
        }
    }
    return true;
}

/* ---- lookup ------------------------------------------------------------------------------ */

static const struct route_target *find(const struct route_map *m, const char *key)
{
    uint64_t h = key_hash(key, m->fold_case);
    uint32_t tag = (uint32_t)(h >> 32);
    for (size_t i = h & m->mask; m->slots[i].key; i = (i + 1) & m->mask)
        if (m->slots[i].hash == tag && key_equal(m->arena + m->slots[i].key - 1, key, m->fold_case))
            return &m->targets[m->slots[i].target];
    return NULL;
}

const struct route_target *route_map_lookup(const struct route_map *m, const char *user,
                                            const char **rule_r)
{
    const char *rule = NULL;
    const struct route_target *t = NULL;
    /* A key starting with '@' is a domain entry: a user name never matches one exactly. */
    if (user[0] && user[0] != '@' && (t = find(m, user)))
        rule = "user";
    const char *at = strrchr(user, '@');
    if (!t && at && at[1] && (t = find(m, at)))
        rule = "domain";
    if (!t && m->star != ROUTE_MAP_NO_TARGET) {
        t = &m->targets[m->star];
        rule = "default";
    }
    if (rule_r)
        *rule_r = rule;
    return t;
}
