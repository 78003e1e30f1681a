/*
 * cfg_walk — see cfg_walk.h. Values are read from the objects exactly where cfg_map stored them
 * (offset and width from the schema), so a key added to a table is listed and compared with no
 * change here.
 */
#include "cfg_walk.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static uint64_t load_uint(const char *p, size_t size)
{
    switch (size) {
    case 1: {
        uint8_t x;
        memcpy(&x, p, 1);
        return x;
    }
    case 2: {
        uint16_t x;
        memcpy(&x, p, 2);
        return x;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        return x;
    }
    default: {
        uint64_t x;
        memcpy(&x, p, 8);
        return x;
    }
    }
}

static const char *load_str(const char *p)
{
    const char *s;
    memcpy(&s, p, sizeof s);
    return s ? s : "";
}

/* A path into out[CFG_PATH_MAX] (cut there, which no schema path reaches). */
static void path_fmt(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_fmt(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, CFG_PATH_MAX, fmt, ap);
    va_end(ap);
}

/* "parent.name" */
static void join(char *out, const char *parent, const char *name)
{
    path_fmt(out, "%s%s%s", parent, parent[0] ? "." : "", name);
}

static void keys_of(const struct cfg_table *t, const char *parent, cfg_key_cb *cb, void *arg)
{
    char path[CFG_PATH_MAX];
    for (const struct cfg_key *k = t->keys; k->name; k++) {
        join(path, parent, k->name);
        cb(arg, path, k);
        if (k->type == CFG_MAP) {
            keys_of(k->sub, path, cb, arg);
        } else if (k->type == CFG_SEQ) {
            char inner[CFG_PATH_MAX];
            path_fmt(inner, "%s[]", path);
            keys_of(k->sub, inner, cb, arg);
        }
    }
}

void cfg_walk_keys(const struct cfg_table *root, cfg_key_cb *cb, void *arg)
{
    keys_of(root, "", cb, arg);
}

const char *cfg_walk_value(const struct cfg_key *k, const void *obj, char *buf, size_t cap)
{
    const char *p = (const char *)obj + k->off;
    switch (k->type) {
    case CFG_STRING:
    case CFG_OPTSTR:
    case CFG_NAME:
    case CFG_ADDR:
        snprintf(buf, cap, "%s", load_str(p));
        break;
    case CFG_BOOL: {
        bool b;
        memcpy(&b, p, sizeof b);
        snprintf(buf, cap, "%s", b ? "true" : "false");
        break;
    }
    case CFG_PORT:
        snprintf(buf, cap, "%u", (unsigned)load_uint(p, sizeof(uint16_t)));
        break;
    case CFG_UINT:
    case CFG_SIZE:
        cfg_fmt_value(buf, cap, k->type, load_uint(p, k->size));
        break;
    case CFG_DURATION:
        cfg_fmt_value(buf, cap, k->type, load_uint(p, sizeof(uint64_t)));
        break;
    case CFG_ENUM: {
        int v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, cap, "%d", v);
        for (const struct cfg_enum *e = k->enums; e && e->name; e++)
            if (e->value == v) {
                snprintf(buf, cap, "%s", e->name);
                break;
            }
        break;
    }
    case CFG_MAP:
    case CFG_SEQ:
        snprintf(buf, cap, "…");
        break;
    case CFG_STRLIST: {
        char **arr;
        memcpy(&arr, p, sizeof arr);
        size_t used = 0;
        buf[0] = '\0';
        for (size_t i = 0; arr && arr[i] && used < cap; i++) {
            int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", arr[i]);
            used += n > 0 ? (size_t)n : 0;
        }
        break;
    }
    }
    return buf;
}

static bool differs(const struct cfg_key *k, const char *a, const char *b)
{
    char va[CFG_PATH_MAX], vb[CFG_PATH_MAX];
    switch (k->type) {
    case CFG_STRING:
    case CFG_OPTSTR:
    case CFG_NAME:
    case CFG_ADDR:
        return strcmp(load_str(a + k->off), load_str(b + k->off)) != 0;
    default:
        /* Scalars compare by their rendering: one code path, and equal values render alike. */
        return strcmp(cfg_walk_value(k, a, va, sizeof va), cfg_walk_value(k, b, vb, sizeof vb)) !=
               0;
    }
}

/* The `name` of a sequence entry, for a path that says which listener changed. */
static const char *entry_name(const struct cfg_table *t, const char *obj)
{
    for (const struct cfg_key *k = t->keys; k->name; k++)
        if (strcmp(k->name, "name") == 0 &&
            (k->type == CFG_NAME || k->type == CFG_STRING || k->type == CFG_OPTSTR))
            return load_str(obj + k->off);
    return "";
}

static void diff_of(const struct cfg_table *t, const char *a, const char *b, const char *parent,
                    unsigned flags, bool inherited, cfg_diff_cb *cb, void *arg)
{
    char path[CFG_PATH_MAX];
    for (const struct cfg_key *k = t->keys; k->name; k++) {
        bool wanted = inherited || !flags || (k->flags & flags);
        join(path, parent, k->name);
        if (k->type == CFG_MAP) {
            diff_of(k->sub, a + k->off, b + k->off, path, flags, wanted, cb, arg);
            continue;
        }
        if (k->type != CFG_SEQ) {
            if (wanted && differs(k, a, b))
                cb(arg, path, k, a, b);
            continue;
        }
        const char *arr_a, *arr_b;
        size_t na, nb;
        memcpy(&arr_a, a + k->off, sizeof arr_a);
        memcpy(&arr_b, b + k->off, sizeof arr_b);
        memcpy(&na, a + k->off2, sizeof na);
        memcpy(&nb, b + k->off2, sizeof nb);
        if (na != nb) {
            /* Entries added or removed: reported when the sequence itself is wanted; members
             * of an unwanted one cannot be paired up, so there is nothing finer to say. */
            if (wanted)
                cb(arg, path, k, a, b);
            continue;
        }
        for (size_t i = 0; i < na; i++) {
            const char *ea = arr_a + i * k->sub->size, *eb = arr_b + i * k->sub->size;
            const char *name = entry_name(k->sub, eb);
            char inner[CFG_PATH_MAX];
            if (name[0])
                path_fmt(inner, "%s[%s]", path, name);
            else
                path_fmt(inner, "%s[%zu]", path, i);
            diff_of(k->sub, ea, eb, inner, flags, wanted, cb, arg);
        }
    }
}

void cfg_walk_diff(const struct cfg_table *root, const void *a, const void *b, unsigned flags,
                   cfg_diff_cb *cb, void *arg)
{
    diff_of(root, a, b, "", flags, false, cb, arg);
}
