/*
 * cfg_map — see cfg_map.h. The generic half of the configuration: YAML document in, struct out.
 *
 * Invariants:
 *  - The walk is driven by the schema, not by the document. libyaml resolves aliases into shared
 *    node indices, so a document can be a DAG (or even cyclic); we only ever descend where a
 *    table says there is a nested mapping or sequence, so depth is the schema's and breadth is
 *    capped by CFG_SEQ_MAX and the number of keys per table.
 *  - The first error is kept; everything after it only unwinds.
 *  - Whatever has been stored in the destination is reachable through the table, so
 *    cfg_map_free() works on a half-mapped object.
 */
#include "cfg_map.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "config.h" /* cfg_parse_duration_ms / cfg_parse_size are declared there */
#include "log.h"

struct cfg_ctx {
    yaml_document_t *doc;
    const char *name; /* file name for messages */
    char **error_r;
    bool failed;
    bool in_default; /* parsing a table default, not file text: say so in errors */
    char path[256];  /* "listeners[2].bind": where we are, for messages */
    size_t plen;
};

/* ---- unit parsers ------------------------------------------------------------------------ */

/* Leading decimal digits of `s` into *v_r; *end_r is the first non-digit. At least one digit,
 * no sign, no blanks, no overflow. */
static bool parse_digits(const char *s, uint64_t *v_r, const char **end_r)
{
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (p == s)
        return false;
    *v_r = v;
    *end_r = p;
    return true;
}

static bool mul_checked(uint64_t a, uint64_t b, uint64_t *r)
{
    if (b != 0 && a > UINT64_MAX / b)
        return false;
    *r = a * b;
    return true;
}

bool cfg_parse_uint(const char *s, uint64_t *v_r)
{
    const char *end;
    uint64_t v;
    if (!parse_digits(s, &v, &end) || *end != '\0')
        return false;
    *v_r = v;
    return true;
}

bool cfg_parse_size(const char *s, uint64_t *bytes_r)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1}, {"k", 1024}, {"K", 1024}, {"M", 1024 * 1024}, {"G", 1024 * 1024 * 1024}};
    const char *end;
    uint64_t v;
    if (!parse_digits(s, &v, &end))
        return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].unit) == 0)
            return mul_checked(v, units[i].mult, bytes_r);
    return false;
}

bool cfg_parse_duration_ms(const char *s, uint64_t *ms_r)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    const char *end;
    uint64_t v;
    if (!parse_digits(s, &v, &end))
        return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].unit) == 0)
            return mul_checked(v, units[i].mult, ms_r);
    return false;
}

bool cfg_parse_bool(const char *s, bool *v_r)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *v_r = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *v_r = false;
            return true;
        }
    }
    return false;
}

/* Render a limit back in the unit the user would write, for range messages. */
static void fmt_value(char *buf, size_t cap, enum cfg_type type, uint64_t v)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } sizes[] = {{"G", 1u << 30}, {"M", 1u << 20}, {"k", 1u << 10}},
      durs[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    if (type == CFG_SIZE || type == CFG_DURATION) {
        bool sz = type == CFG_SIZE;
        size_t n = sz ? 3 : 4;
        for (size_t i = 0; i < n && v != 0; i++) {
            uint64_t m = sz ? sizes[i].mult : durs[i].mult;
            if (v % m == 0) {
                snprintf(buf, cap, "%llu%s", (unsigned long long)(v / m),
                         sz ? sizes[i].unit : durs[i].unit);
                return;
            }
        }
        snprintf(buf, cap, "%llu%s", (unsigned long long)v, sz ? "" : "ms");
        return;
    }
    snprintf(buf, cap, "%llu", (unsigned long long)v);
}

void cfg_fmt_value(char *buf, size_t cap, enum cfg_type type, uint64_t v)
{
    fmt_value(buf, cap, type, v);
}

/* ---- errors and navigation --------------------------------------------------------------- */

const char *cfg_quote(char *buf, size_t cap, const char *s)
{
    return log_qs(buf, cap, s);
}

static bool vfail(struct cfg_ctx *ctx, const yaml_mark_t *m, bool with_path, const char *fmt,
                  va_list ap)
{
    if (ctx->failed)
        return false;
    ctx->failed = true;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t line = m ? m->line + 1 : 1;
    size_t col = m ? m->column + 1 : 1;
    bool p = with_path && ctx->plen > 0;
    if (asprintf(ctx->error_r, "%s:%zu:%zu: %s%s%s%s", ctx->name, line, col, p ? ctx->path : "",
                 p ? ": " : "", msg, ctx->in_default ? " (in the built-in default)" : "") < 0)
        *ctx->error_r = NULL;
    return false;
}

bool cfg_fail(struct cfg_ctx *ctx, const yaml_node_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(ctx, at ? &at->start_mark : NULL, false, fmt, ap);
    va_end(ap);
    return false;
}

/* An error about the key we are at: the message is prefixed with its path. */
__attribute__((format(printf, 3, 4))) static bool
key_fail(struct cfg_ctx *ctx, const yaml_node_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(ctx, at ? &at->start_mark : NULL, true, fmt, ap);
    va_end(ap);
    return false;
}

/* An error at a raw mark (events have no nodes). */
__attribute__((format(printf, 3, 4))) static bool
vfail_mark(struct cfg_ctx *ctx, const yaml_mark_t *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(ctx, m, false, fmt, ap);
    va_end(ap);
    return false;
}

static size_t path_set(struct cfg_ctx *ctx, size_t old, int n)
{
    /* Paths only feed messages and the schema is shallow; a cut path is harmless. */
    size_t room = sizeof ctx->path - old;
    ctx->plen = n < 0 ? old : (size_t)n >= room ? sizeof ctx->path - 1 : old + (size_t)n;
    return old;
}

static size_t path_push(struct cfg_ctx *ctx, const char *key)
{
    size_t old = ctx->plen;
    return path_set(ctx, old,
                    snprintf(ctx->path + old, sizeof ctx->path - old, "%s%s", old ? "." : "", key));
}

static size_t path_push_index(struct cfg_ctx *ctx, size_t index)
{
    size_t old = ctx->plen;
    return path_set(ctx, old, snprintf(ctx->path + old, sizeof ctx->path - old, "[%zu]", index));
}

static void path_pop(struct cfg_ctx *ctx, size_t old)
{
    ctx->plen = old;
    ctx->path[old] = '\0';
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

/* YAML's null: an empty plain scalar ("key:" with nothing after it), ~ or null. */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return n->data.scalar.length == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static bool scalar_is(const yaml_node_t *n, const char *s, size_t len)
{
    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.length == len &&
           memcmp(n->data.scalar.value, s, len) == 0;
}

static const yaml_node_t *lookup_n(struct cfg_ctx *ctx, const yaml_node_t *map, const char *key,
                                   size_t len)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++)
        if (scalar_is(yaml_document_get_node(ctx->doc, p->key), key, len))
            return yaml_document_get_node(ctx->doc, p->value);
    return NULL;
}

const yaml_node_t *cfg_lookup(struct cfg_ctx *ctx, const yaml_node_t *map, const char *key)
{
    return lookup_n(ctx, map, key, strlen(key));
}

const yaml_node_t *cfg_find(struct cfg_ctx *ctx, const char *path)
{
    const yaml_node_t *n = yaml_document_get_root_node(ctx->doc);
    const char *p = path;
    while (n && *p) {
        const yaml_node_t *next = NULL;
        if (*p == '[') {
            char *end;
            unsigned long i = strtoul(p + 1, &end, 10);
            if (*end != ']' || n->type != YAML_SEQUENCE_NODE)
                break;
            if (i < (unsigned long)(n->data.sequence.items.top - n->data.sequence.items.start))
                next = yaml_document_get_node(ctx->doc, n->data.sequence.items.start[i]);
            p = end + 1;
        } else {
            if (*p == '.')
                p++;
            size_t len = strcspn(p, ".[");
            next = lookup_n(ctx, n, p, len);
            p += len;
        }
        if (!next)
            break;
        n = next;
    }
    return n;
}

/* ---- scalars ----------------------------------------------------------------------------- */

static bool check_string(struct cfg_ctx *ctx, const struct cfg_key *k, const char *s, size_t len,
                         const yaml_node_t *at)
{
    if (len > CFG_STR_MAX)
        return key_fail(ctx, at, "string too long (%zu bytes, max %d)", len, CFG_STR_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        /* Strings end up in greetings, log lines and file names: no CR/LF injection, no NUL. */
        bool text_ok = (k->flags & CFG_MULTILINE) && (c == '\n' || c == '\t');
        if ((c < 0x20 && !text_ok) || c == 0x7f)
            return key_fail(ctx, at, "control character (0x%02x) in string", c);
    }
    if (k->type == CFG_NAME) {
        if (len == 0 || len > CFG_NAME_MAX)
            return key_fail(ctx, at, "must be 1 to %d characters", CFG_NAME_MAX);
        char q[80];
        if (strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len)
            return key_fail(ctx, at, "invalid name %s (letters, digits, '.', '_', '-' only)",
                            cfg_quote(q, sizeof q, s));
    }
    return true;
}

static void store_uint(void *p, size_t size, uint64_t v)
{
    switch (size) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(p, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(p, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, 4);
        break;
    }
    default:
        memcpy(p, &v, 8);
        break;
    }
}

static bool parse_addr(struct cfg_ctx *ctx, const struct cfg_key *k, const char *s,
                       const yaml_node_t *at, char *obj)
{
    char q[96];
    char host[INET6_ADDRSTRLEN + 32];
    const char *colon;
    bool v6 = s[0] == '[';
    if (v6) {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof host)
            goto bad;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host)
            goto bad;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        if (strchr(host, ':'))
            return key_fail(ctx, at, "IPv6 address %s needs brackets: \"[addr]:port\"",
                            cfg_quote(q, sizeof q, s));
    }
    uint64_t port;
    if (!cfg_parse_uint(colon + 1, &port) || port < 1 || port > 65535)
        return key_fail(ctx, at, "invalid port in %s (1..65535)", cfg_quote(q, sizeof q, s));

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (!v6) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        /* inet_pton, not getaddrinfo: it refuses the legacy forms "127.1" and "0x7f.0.0.1". */
        if (strcmp(host, "*") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            goto bad;
        len = sizeof *sin;
    } else {
        /* getaddrinfo for the scope id ("fe80::1%eth0"); numeric only, never a lookup. */
        struct addrinfo hints = {.ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST};
        struct addrinfo *res = NULL;
        if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
            goto bad;
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        len = res->ai_addrlen;
        freeaddrinfo(res);
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    }
    memcpy(obj + k->off2, &ss, sizeof ss);
    memcpy(obj + k->off3, &len, sizeof len);
    return true;
bad:
    return key_fail(ctx, at,
                    "invalid address %s (expected \"IPv4:port\", \"[IPv6]:port\" or \"*:port\"; "
                    "numeric only)",
                    cfg_quote(q, sizeof q, s));
}

/* One scalar value (from the file or a default) into its destination. `s` is NUL-terminated
 * at `len` (libyaml guarantees it) but may also hold NULs inside ("\0" escapes). */
static bool set_scalar(struct cfg_ctx *ctx, const struct cfg_key *k, char *obj, const char *s,
                       size_t len, const yaml_node_t *at)
{
    char *dst = obj + k->off;
    char q[96], lo[32], hi[32];
    uint64_t v = 0, max = k->max;
    bool ok = false;
    /* "143\0junk" must not parse as 143: every parser below stops at the first NUL. */
    if (memchr(s, '\0', len))
        return key_fail(ctx, at, "NUL byte in value");
    switch (k->type) {
    case CFG_STRING:
    case CFG_OPTSTR:
    case CFG_NAME:
    case CFG_ADDR: {
        if (!check_string(ctx, k, s, len, at))
            return false;
        char *copy = NULL;
        if (len > 0 || k->type != CFG_OPTSTR) {
            copy = strndup(s, len);
            if (!copy)
                return key_fail(ctx, at, "out of memory");
        }
        char *old; /* NULL unless a check hook or a second table set it before */
        memcpy(&old, dst, sizeof old);
        free(old);
        memcpy(dst, &copy, sizeof copy);
        return k->type == CFG_ADDR ? parse_addr(ctx, k, copy, at, obj) : true;
    }
    case CFG_BOOL: {
        bool b;
        if (!cfg_parse_bool(s, &b))
            return key_fail(ctx, at, "invalid boolean %s (true/false, yes/no, on/off)",
                            cfg_quote(q, sizeof q, s));
        memcpy(dst, &b, sizeof b);
        return true;
    }
    case CFG_ENUM: {
        for (const struct cfg_enum *e = k->enums; e->name; e++) {
            if (strcmp(s, e->name) == 0) {
                memcpy(dst, &e->value, sizeof e->value);
                return true;
            }
        }
        char valid[256] = "";
        for (const struct cfg_enum *e = k->enums; e->name; e++) {
            size_t used = strlen(valid);
            snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "", e->name);
        }
        return key_fail(ctx, at, "invalid value %s (valid: %s)", cfg_quote(q, sizeof q, s), valid);
    }
    case CFG_UINT:
    case CFG_PORT:
        ok = cfg_parse_uint(s, &v);
        break;
    case CFG_SIZE:
        ok = cfg_parse_size(s, &v);
        break;
    case CFG_DURATION:
        ok = cfg_parse_duration_ms(s, &v);
        break;
    case CFG_MAP:
    case CFG_SEQ:
    case CFG_STRLIST:
        break;
    }
    if (!ok) {
        static const char *const what[] = {
            [CFG_UINT] = "number (decimal digits only)",
            [CFG_PORT] = "port number (1..65535)",
            [CFG_SIZE] = "size (digits with optional k, M or G)",
            [CFG_DURATION] = "duration (digits with optional ms, s, m, h or d)",
        };
        return key_fail(ctx, at, "invalid %s: %s",
                        k->type <= CFG_DURATION && what[k->type] ? what[k->type] : "value",
                        cfg_quote(q, sizeof q, s));
    }
    uint64_t min = k->type == CFG_PORT ? 1 : k->min;
    if (k->type == CFG_PORT)
        max = 65535;
    /* Never store a value the destination cannot hold, whatever the table says. */
    if (k->size < 8 && max > (UINT64_C(1) << (8 * k->size)) - 1)
        max = (UINT64_C(1) << (8 * k->size)) - 1;
    if (v < min || v > max) {
        fmt_value(lo, sizeof lo, k->type, min);
        fmt_value(hi, sizeof hi, k->type, max);
        return key_fail(ctx, at, "%s is out of range (%s..%s)", cfg_quote(q, sizeof q, s), lo, hi);
    }
    store_uint(dst, k->size, v);
    return true;
}

/* ---- mappings and sequences -------------------------------------------------------------- */

static bool map_table(struct cfg_ctx *ctx, const struct cfg_table *t, const yaml_node_t *node,
                      const yaml_node_t *at, char *obj);

/* Schema bugs are caught on the first load (every unit test), not in production. */
static bool key_sane(const struct cfg_key *k)
{
    switch (k->type) {
    case CFG_STRING:
    case CFG_OPTSTR:
    case CFG_NAME:
    case CFG_ADDR:
        return k->size == sizeof(char *);
    case CFG_BOOL:
        return k->size == sizeof(bool);
    case CFG_ENUM:
        return k->size == sizeof(int) && k->enums;
    case CFG_PORT:
        return k->size == sizeof(uint16_t);
    case CFG_UINT:
    case CFG_SIZE:
    case CFG_DURATION:
        return (k->size == 1 || k->size == 2 || k->size == 4 || k->size == 8) && k->min <= k->max;
    case CFG_MAP:
        return k->sub != NULL;
    case CFG_SEQ:
        return k->sub && k->sub->size > 0 && k->max <= CFG_SEQ_MAX && k->min <= k->max;
    case CFG_STRLIST:
        return k->size == sizeof(char **) && k->max <= CFG_SEQ_MAX && k->min <= k->max;
    }
    return false;
}

static void free_strlist(char *obj, const struct cfg_key *k)
{
    char **arr;
    memcpy(&arr, obj + k->off, sizeof arr);
    for (size_t i = 0; arr && arr[i]; i++)
        free(arr[i]);
    free(arr);
    arr = NULL;
    size_t n = 0;
    memcpy(obj + k->off, &arr, sizeof arr);
    memcpy(obj + k->off2, &n, sizeof n);
}

/* The entry count of a sequence value (null: none), within the key's min..max. */
static bool seq_count(struct cfg_ctx *ctx, const struct cfg_key *k, const yaml_node_t *v,
                      size_t *n_r)
{
    size_t n = 0;
    if (!is_null(v)) {
        if (v->type != YAML_SEQUENCE_NODE)
            return key_fail(ctx, v, "expected a sequence, got %s", node_kind(v));
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    }
    if (n > k->max)
        return key_fail(ctx, v, "too many entries (%zu, max %llu)", n, (unsigned long long)k->max);
    if (n < k->min)
        return key_fail(ctx, v, "needs at least %llu entr%s", (unsigned long long)k->min,
                        k->min == 1 ? "y" : "ies");
    *n_r = n;
    return true;
}

/* A sequence of strings (CFG_STRLIST) into a NULL-terminated array. */
static bool map_strlist(struct cfg_ctx *ctx, const struct cfg_key *k, const yaml_node_t *v,
                        char *obj)
{
    free_strlist(obj, k);
    size_t n = 0; /* set on success; 0 keeps clang-analyzer sure of it */
    if (!seq_count(ctx, k, v, &n))
        return false;
    if (n == 0)
        return true;
    char **arr = calloc(n + 1, sizeof *arr);
    if (!arr)
        return key_fail(ctx, v, "out of memory");
    memcpy(obj + k->off, &arr, sizeof arr); /* published first: a failure leaves it freeable */
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = yaml_document_get_node(ctx->doc, v->data.sequence.items.start[i]);
        size_t old = path_push_index(ctx, i);
        bool ok = false;
        if (item->type != YAML_SCALAR_NODE) {
            ok = key_fail(ctx, item, "expected a single value, got %s", node_kind(item));
        } else {
            const char *s = (const char *)item->data.scalar.value;
            size_t len = item->data.scalar.length;
            if (memchr(s, '\0', len))
                ok = key_fail(ctx, item, "NUL byte in value");
            else if (check_string(ctx, k, s, len, item) && !(arr[i] = strndup(s, len)))
                ok = key_fail(ctx, item, "out of memory");
            else
                ok = arr[i] != NULL;
        }
        path_pop(ctx, old);
        if (!ok)
            return false;
        memcpy(obj + k->off2, &(size_t){i + 1}, sizeof(size_t));
    }
    return true;
}

static bool map_seq(struct cfg_ctx *ctx, const struct cfg_key *k, const yaml_node_t *v, char *obj)
{
    size_t n = 0; /* set on success; 0 keeps clang-analyzer sure of it */
    if (!seq_count(ctx, k, v, &n))
        return false;
    if (n == 0)
        return true;
    char *arr = calloc(n, k->sub->size);
    if (!arr)
        return key_fail(ctx, v, "out of memory");
    /* Publish array and count before filling: a failure below leaves it freeable. */
    memcpy(obj + k->off, &arr, sizeof arr);
    memcpy(obj + k->off2, &n, sizeof n);
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = yaml_document_get_node(ctx->doc, v->data.sequence.items.start[i]);
        size_t old = path_push_index(ctx, i);
        bool ok = item->type == YAML_MAPPING_NODE
                      ? map_table(ctx, k->sub, item, item, arr + i * k->sub->size)
                      : key_fail(ctx, item, "expected a mapping, got %s",
                                 is_null(item) ? "an empty value" : node_kind(item));
        path_pop(ctx, old);
        if (!ok)
            return false;
    }
    return true;
}

static bool set_value(struct cfg_ctx *ctx, const struct cfg_key *k, char *obj, const yaml_node_t *v)
{
    switch (k->type) {
    case CFG_MAP:
        if (is_null(v))
            return map_table(ctx, k->sub, NULL, v, obj + k->off);
        if (v->type != YAML_MAPPING_NODE)
            return key_fail(ctx, v, "expected a mapping, got %s", node_kind(v));
        return map_table(ctx, k->sub, v, v, obj + k->off);
    case CFG_SEQ:
        return map_seq(ctx, k, v, obj);
    case CFG_STRLIST:
        return map_strlist(ctx, k, v, obj);
    default:
        break;
    }
    if (v->type != YAML_SCALAR_NODE)
        return key_fail(ctx, v, "expected a single value, got %s", node_kind(v));
    const char *s = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    bool stringy = k->type == CFG_STRING || k->type == CFG_OPTSTR || k->type == CFG_NAME;
    if (stringy && is_null(v)) {
        s = "";
        len = 0;
    }
    return set_scalar(ctx, k, obj, s, len, v);
}

static bool set_default(struct cfg_ctx *ctx, const struct cfg_key *k, char *obj,
                        const yaml_node_t *at)
{
    switch (k->type) {
    case CFG_MAP:
        return map_table(ctx, k->sub, NULL, at, obj + k->off);
    case CFG_SEQ:
    case CFG_STRLIST:
        return true; /* empty; a required sequence was reported by the caller */
    default:
        break;
    }
    ctx->in_default = true;
    bool ok = set_scalar(ctx, k, obj, k->def, strlen(k->def), at);
    ctx->in_default = false;
    return ok;
}

static bool is_required(const struct cfg_key *k)
{
    if (k->type == CFG_MAP)
        return false;
    if (k->type == CFG_SEQ || k->type == CFG_STRLIST)
        return k->min > 0;
    return k->def == NULL;
}

/* Map `node` (a mapping, or NULL when the section is absent) onto `obj`. `at` locates errors
 * about missing keys when there is no node. */
static bool map_table(struct cfg_ctx *ctx, const struct cfg_table *t, const yaml_node_t *node,
                      const yaml_node_t *at, char *obj)
{
    const yaml_node_t *seen[CFG_TABLE_KEYS] = {NULL};
    size_t nkeys = 0;
    for (; t->keys[nkeys].name; nkeys++)
        if (nkeys >= CFG_TABLE_KEYS || !key_sane(&t->keys[nkeys]))
            return key_fail(ctx, at, "internal error: bad schema entry for key \"%s\"",
                            t->keys[nkeys].name);

    for (const yaml_node_pair_t *p = node ? node->data.mapping.pairs.start : NULL;
         node && p < node->data.mapping.pairs.top; p++) {
        const yaml_node_t *kn = yaml_document_get_node(ctx->doc, p->key);
        const yaml_node_t *vn = yaml_document_get_node(ctx->doc, p->value);
        if (kn->type != YAML_SCALAR_NODE)
            return key_fail(ctx, kn, "a key must be a plain name, got %s", node_kind(kn));
        size_t i = 0;
        while (i < nkeys && !scalar_is(kn, t->keys[i].name, strlen(t->keys[i].name)))
            i++;
        char q[96];
        if (i == nkeys) {
            char valid[512] = "";
            for (size_t j = 0; j < nkeys; j++) {
                size_t used = strlen(valid);
                snprintf(valid + used, sizeof valid - used, "%s%s", j ? ", " : "", t->keys[j].name);
            }
            const char *s = (const char *)kn->data.scalar.value;
            return cfg_fail(ctx, kn, "unknown key %s %s%s (valid: %s)",
                            log_q(q, sizeof q, s, kn->data.scalar.length),
                            ctx->plen ? "in " : "at top level", ctx->path, valid);
        }
        if (seen[i])
            return key_fail(ctx, kn, "duplicate key \"%s\" (first at line %zu:%zu)",
                            t->keys[i].name, seen[i]->start_mark.line + 1,
                            seen[i]->start_mark.column + 1);
        seen[i] = kn;
        size_t old = path_push(ctx, t->keys[i].name);
        bool ok = set_value(ctx, &t->keys[i], obj, vn);
        path_pop(ctx, old);
        if (!ok)
            return false;
    }

    for (size_t i = 0; i < nkeys; i++) {
        if (seen[i])
            continue;
        const struct cfg_key *k = &t->keys[i];
        if (is_required(k))
            return key_fail(ctx, node ? node : at, "missing required key \"%s\"", k->name);
        size_t old = path_push(ctx, k->name);
        bool ok = set_default(ctx, k, obj, node ? node : at);
        path_pop(ctx, old);
        if (!ok)
            return false;
    }
    return t->check ? t->check(ctx, node, obj) : true;
}

void cfg_map_free(const struct cfg_table *t, void *obj)
{
    char *o = obj;
    for (const struct cfg_key *k = t->keys; k->name; k++) {
        switch (k->type) {
        case CFG_STRING:
        case CFG_OPTSTR:
        case CFG_NAME:
        case CFG_ADDR: {
            char *s;
            memcpy(&s, o + k->off, sizeof s);
            /* A secret (a password) must not linger in freed heap memory a core dump or a
             * later allocation could show. */
            if (s && (k->flags & CFG_SECRET))
                explicit_bzero(s, strlen(s));
            free(s);
            s = NULL;
            memcpy(o + k->off, &s, sizeof s);
            break;
        }
        case CFG_MAP:
            cfg_map_free(k->sub, o + k->off);
            break;
        case CFG_STRLIST:
            free_strlist(o, k);
            break;
        case CFG_SEQ: {
            char *arr;
            size_t n;
            memcpy(&arr, o + k->off, sizeof arr);
            memcpy(&n, o + k->off2, sizeof n);
            for (size_t i = 0; arr && i < n; i++)
                cfg_map_free(k->sub, arr + i * k->sub->size);
            free(arr);
            arr = NULL;
            n = 0;
            memcpy(o + k->off, &arr, sizeof arr);
            memcpy(o + k->off2, &n, sizeof n);
            break;
        }
        default:
            break;
        }
    }
}

/* ---- document ---------------------------------------------------------------------------- */

static bool syntax_error(struct cfg_ctx *ctx, const yaml_parser_t *p, const char *text, size_t len)
{
    yaml_mark_t m = p->problem_mark;
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset, not a mark: count lines ourselves. */
        m.line = m.column = 0;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n') {
                m.line++;
                m.column = 0;
            } else {
                m.column++;
            }
        }
    }
    const char *problem = p->error == YAML_MEMORY_ERROR ? "out of memory"
                          : p->problem                  ? p->problem
                                                        : "unknown error";
    char context[128] = "";
    if (p->context && p->error != YAML_READER_ERROR)
        snprintf(context, sizeof context, " (%s at %zu:%zu)", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    ctx->failed = true;
    if (asprintf(ctx->error_r, "%s:%zu:%zu: YAML syntax error: %s%s", ctx->name, m.line + 1,
                 m.column + 1, problem, context) < 0)
        *ctx->error_r = NULL;
    return false;
}

/* libyaml 0.2.5 has two quadratic corners: its scanner rechecks every pending simple key at
 * each token, so cost grows with the square of flow nesting ("[[[[…" of 1 MiB takes minutes),
 * and anchors are kept in a list searched linearly by every anchor and alias. A first pass over
 * the event stream, which stops at the first excess, bounds both before the document is built.
 * A syntax error ends this pass silently: the loader reports it with the same position. */
static bool check_shape(struct cfg_ctx *ctx, const char *text, size_t len)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return vfail_mark(ctx, NULL, "out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    unsigned depth = 0, anchors = 0, aliases = 0;
    bool ok = true, done = false;
    yaml_event_t ev;
    while (ok && !done && yaml_parser_parse(&p, &ev)) {
        const yaml_event_t *e = &ev;
        const yaml_char_t *anchor = NULL;
        switch (e->type) {
        case YAML_SEQUENCE_START_EVENT:
            anchor = e->data.sequence_start.anchor;
            if (++depth > CFG_MAX_DEPTH)
                ok = vfail_mark(ctx, &e->start_mark, "nested deeper than %d levels", CFG_MAX_DEPTH);
            break;
        case YAML_MAPPING_START_EVENT:
            anchor = e->data.mapping_start.anchor;
            if (++depth > CFG_MAX_DEPTH)
                ok = vfail_mark(ctx, &e->start_mark, "nested deeper than %d levels", CFG_MAX_DEPTH);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        case YAML_SCALAR_EVENT:
            anchor = e->data.scalar.anchor;
            break;
        case YAML_ALIAS_EVENT:
            if (++aliases > CFG_MAX_ALIASES)
                ok = vfail_mark(ctx, &e->start_mark, "more than %d aliases", CFG_MAX_ALIASES);
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        if (ok && anchor && ++anchors > CFG_MAX_ANCHORS)
            ok = vfail_mark(ctx, &e->start_mark, "more than %d anchors", CFG_MAX_ANCHORS);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return ok;
}

bool cfg_map_document(const struct cfg_table *root, void *obj, const char *text, size_t len,
                      const char *name, char **error_r)
{
    struct cfg_ctx ctx = {.name = name ? name : "<config>", .error_r = error_r};
    *error_r = NULL;
    if (len > CFG_MAX_INPUT) {
        if (asprintf(error_r, "%s: file too large (%zu bytes, max %d)", ctx.name, len,
                     CFG_MAX_INPUT) < 0)
            *error_r = NULL;
        return false;
    }
    if (!check_shape(&ctx, text ? text : "", len))
        return false;
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    if (!yaml_parser_initialize(&parser)) {
        *error_r = strdup("out of memory");
        return false;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(&ctx, &parser, text ? text : "", text ? len : 0);
        yaml_parser_delete(&parser);
        return false;
    }
    ctx.doc = &doc;
    const yaml_node_t *top = yaml_document_get_root_node(&doc);
    bool ok = false;
    /* Parse the whole stream first: a syntax error anywhere is the error to report. */
    if (top && !yaml_parser_load(&parser, &extra)) {
        syntax_error(&ctx, &parser, text ? text : "", text ? len : 0);
    } else {
        const yaml_node_t *second = top ? yaml_document_get_root_node(&extra) : NULL;
        if (!top || is_null(top))
            cfg_fail(&ctx, top, "empty document");
        else if (second)
            cfg_fail(&ctx, second, "more than one YAML document");
        else if (top->type != YAML_MAPPING_NODE)
            cfg_fail(&ctx, top, "expected a mapping at top level, got %s", node_kind(top));
        else
            ok = map_table(&ctx, root, top, top, obj);
        if (top)
            yaml_document_delete(&extra);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (!ok && !ctx.failed)
        *error_r = strdup("configuration rejected");
    return ok;
}
