/*
 * test_config_keys — the keys the loader accepts (its schema tables, walked by cfg_walk) against
 * the two places that promise to list every key: deploy/portcullis.yaml and the tables of
 * docs/configuration.md. A key added to a table without its line there, or a line there for a
 * key that does not exist, fails here (issue 18: drain_timeout, max_connections_per_address and
 * affinity_ttl had gone missing).
 *
 * The files are read as text, structurally but loosely:
 *  - portcullis.yaml: a line starting (after an optional '#') with `name:` in column 0 opens
 *    section `name`; inside it every `name:` at the start of a line (after spaces, '#', "- ") or
 *    after '{' or ',' is a key of that section. Commented-out keys count: the file shows the
 *    optional `redis:` section and the per-listener options that way.
 *  - configuration.md, under "## Keys": a heading "### `sec`" (or "`sec[]`") makes `sec` the
 *    section; other headings have none. A table row's first cell names keys in backticks,
 *    relative to the section or as full paths (`admin.bind`); a sequence's members may instead
 *    be named in backticks in the row of the sequence (`tls.certificates`: `cert`, `key`).
 * Paths are compared without "[]": listeners[].bind is listeners.bind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfg_walk.h"
#include "config.h"

#define MAX_KEYS 512

static char known[MAX_KEYS][CFG_PATH_MAX];
static size_t nknown;

static void collect(void *arg, const char *path, const struct cfg_key *k)
{
    (void)arg;
    (void)k;
    assert_true(nknown < MAX_KEYS);
    char *o = known[nknown++];
    for (const char *p = path; *p; p++)
        if (*p != '[' && *p != ']')
            *o++ = *p;
    *o = '\0';
}

static bool is_known(const char *path)
{
    for (size_t i = 0; i < nknown; i++)
        if (strcmp(known[i], path) == 0)
            return true;
    return false;
}

static char *slurp(const char *rel)
{
    char path[512];
    FILE *f = fopen(rel, "r");
    if (!f) {
        snprintf(path, sizeof path, "../../%s", rel);
        f = fopen(path, "r");
    }
    assert_non_null(f);
    char *text = calloc(1, 1 << 20);
    assert_non_null(text);
    size_t n = fread(text, 1, (1 << 20) - 1, f);
    fclose(f);
    assert_true(n > 0);
    return text;
}

/* ---- deploy/portcullis.yaml ---- */

struct ykey {
    char section[64]; /* "" for a top-level key */
    char key[64];
};
static struct ykey ykeys[MAX_KEYS * 2];
static size_t nykeys;

static bool word(const char *p, size_t *len_r)
{
    size_t n = 0;
    while ((p[n] >= 'a' && p[n] <= 'z') || p[n] == '_' || (n > 0 && p[n] >= '0' && p[n] <= '9'))
        n++;
    *len_r = n;
    return n > 0 && n < 64 && p[n] == ':' && (p[n + 1] == ' ' || p[n + 1] == '\0');
}

static void ykey_add(const char *section, const char *k, size_t len)
{
    assert_true(nykeys < sizeof ykeys / sizeof ykeys[0]);
    snprintf(ykeys[nykeys].section, sizeof ykeys[nykeys].section, "%s", section);
    snprintf(ykeys[nykeys].key, sizeof ykeys[nykeys].key, "%.*s", (int)len, k);
    nykeys++;
}

static void parse_yaml(char *text)
{
    char section[64] = "";
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        const char *p = line;
        size_t len;
        if (*p == '#')
            p += p[1] == ' ' ? 2 : 1; /* "#redis:" and "# redis: …" open the commented section */
        if (word(p, &len) && (p == line || *line == '#')) {
            snprintf(section, sizeof section, "%.*s", (int)len, p);
            ykey_add("", p, len);
            continue;
        }
        /* keys at the start of the line, after spaces, '#' and "- " */
        p = line;
        while (*p == ' ' || *p == '#' || (*p == '-' && p[1] == ' '))
            p++;
        if (word(p, &len))
            ykey_add(section, p, len);
        /* keys inside a flow mapping: after '{' or ',' */
        for (const char *q = line; *q && *q != '#'; q++) {
            if (*q != '{' && *q != ',')
                continue;
            const char *s = q + 1;
            while (*s == ' ')
                s++;
            if (word(s, &len))
                ykey_add(section, s, len);
        }
    }
}

static bool yaml_has(const char *path)
{
    const char *dot = strchr(path, '.');
    const char *last = strrchr(path, '.');
    char section[64];
    snprintf(section, sizeof section, "%.*s", dot ? (int)(dot - path) : 0, path);
    const char *key = last ? last + 1 : path;
    for (size_t i = 0; i < nykeys; i++)
        if (strcmp(ykeys[i].section, section) == 0 && strcmp(ykeys[i].key, key) == 0)
            return true;
    return false;
}

/* A key of `section` in the file names some accepted path of that section. */
static bool yaml_key_known(const struct ykey *y)
{
    size_t sl = strlen(y->section);
    for (size_t i = 0; i < nknown; i++) {
        const char *last = strrchr(known[i], '.');
        if (!sl) {
            if (!last && strcmp(known[i], y->key) == 0)
                return true;
            continue;
        }
        if (last && strncmp(known[i], y->section, sl) == 0 && known[i][sl] == '.' &&
            strcmp(last + 1, y->key) == 0)
            return true;
    }
    return false;
}

/* ---- docs/configuration.md ---- */

struct drow {
    char section[64];
    char first[512];  /* the first cell */
    char other[4096]; /* the rest of the row */
};
static struct drow drows[MAX_KEYS];
static size_t ndrows;

static void parse_doc(char *text)
{
    char section[64] = "";
    bool in_keys = false;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "## ", 3) == 0) {
            in_keys = strcmp(line, "## Keys") == 0;
            continue;
        }
        if (!in_keys)
            continue;
        if (strncmp(line, "### ", 4) == 0) {
            section[0] = '\0';
            size_t len;
            if (line[4] == '`' && (word(line + 5, &len), len > 0)) {
                /* "### `sec`" or "### `sec[]`" only: the name is the whole heading */
                const char *end = line + 5 + len;
                if ((end[0] == '`' && end[1] == '\0') || strcmp(end, "[]`") == 0)
                    snprintf(section, sizeof section, "%.*s", (int)len, line + 5);
            }
            continue;
        }
        if (strncmp(line, "| `", 3) != 0)
            continue;
        const char *bar = strchr(line + 1, '|');
        if (!bar)
            continue;
        assert_true(ndrows < MAX_KEYS);
        struct drow *r = &drows[ndrows++];
        snprintf(r->section, sizeof r->section, "%s", section);
        snprintf(r->first, sizeof r->first, "%.*s", (int)(bar - line - 1), line + 1);
        snprintf(r->other, sizeof r->other, "%s", bar);
    }
}

/* Does `cell` hold `name` in backticks? */
static bool ticked(const char *cell, const char *name)
{
    char want[CFG_PATH_MAX + 2];
    snprintf(want, sizeof want, "`%s`", name);
    return strstr(cell, want) != NULL;
}

static bool row_names(const struct drow *r, const char *path)
{
    if (ticked(r->first, path))
        return true;
    size_t sl = strlen(r->section);
    return sl && strncmp(path, r->section, sl) == 0 && path[sl] == '.' &&
           ticked(r->first, path + sl + 1);
}

static bool doc_has(const char *path)
{
    for (size_t i = 0; i < ndrows; i++)
        if (row_names(&drows[i], path))
            return true;
    /* a sequence's member, named in the sequence's row */
    const char *last = strrchr(path, '.');
    if (!last)
        return false;
    char parent[CFG_PATH_MAX];
    snprintf(parent, sizeof parent, "%.*s", (int)(last - path), path);
    for (size_t i = 0; i < ndrows; i++)
        if (row_names(&drows[i], parent) && ticked(drows[i].other, last + 1))
            return true;
    return false;
}

/* Every backticked name in a row's first cell is a key (relative to the section or a full
 * path). "`a` / `b`" rows name two keys. */
static void check_row_known(const struct drow *r)
{
    const char *p = r->first;
    while ((p = strchr(p, '`')) != NULL) {
        const char *e = strchr(p + 1, '`');
        if (!e)
            break;
        char name[CFG_PATH_MAX], full[CFG_PATH_MAX * 2];
        snprintf(name, sizeof name, "%.*s", (int)(e - p - 1), p + 1);
        snprintf(full, sizeof full, "%s.%s", r->section, name);
        if (!is_known(name) && !(r->section[0] && is_known(full)))
            fail_msg("docs/configuration.md: row for `%s` (section `%s`): no such key", name,
                     r->section);
        p = e + 1;
    }
}

/* ---- tests ---- */

static int setup(void **state)
{
    (void)state;
    nknown = 0;
    cfg_walk_keys(cfg_schema(), collect, NULL);
    assert_true(nknown > 100);
    return 0;
}

static void test_yaml_lists_every_key(void **state)
{
    (void)state;
    char *text = slurp("deploy/portcullis.yaml");
    nykeys = 0;
    parse_yaml(text);
    int missing = 0;
    for (size_t i = 0; i < nknown; i++)
        if (!yaml_has(known[i])) {
            print_error("deploy/portcullis.yaml lacks %s\n", known[i]);
            missing++;
        }
    for (size_t i = 0; i < nykeys; i++)
        if (!yaml_key_known(&ykeys[i])) {
            print_error("deploy/portcullis.yaml: %s%s%s is not a key\n", ykeys[i].section,
                        ykeys[i].section[0] ? "." : "", ykeys[i].key);
            missing++;
        }
    free(text);
    assert_int_equal(missing, 0);
}

static void test_doc_lists_every_key(void **state)
{
    (void)state;
    char *text = slurp("docs/configuration.md");
    ndrows = 0;
    parse_doc(text);
    int missing = 0;
    for (size_t i = 0; i < nknown; i++)
        if (!doc_has(known[i])) {
            print_error("docs/configuration.md lacks %s\n", known[i]);
            missing++;
        }
    for (size_t i = 0; i < ndrows; i++)
        check_row_known(&drows[i]);
    free(text);
    assert_int_equal(missing, 0);
}

/* The walk itself: paths as the docs write them, sequences marked. */
static void test_walk_paths(void **state)
{
    (void)state;
    assert_true(is_known("limits.drain_timeout"));
    assert_true(is_known("listeners.bind"));
    assert_true(is_known("tls.certificates.key"));
    assert_true(is_known("log.level"));
    assert_true(is_known("workers"));
    assert_false(is_known("limits.nonexistent"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_walk_paths),
        cmocka_unit_test(test_yaml_lists_every_key),
        cmocka_unit_test(test_doc_lists_every_key),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
