/*
 * cfg_map — a strict, table-driven mapper from one YAML document onto C structs.
 *
 * The schema is data: one `struct cfg_table` per YAML mapping, one `struct cfg_key` per key,
 * giving the key's name, type, destination offset, default (as YAML text) and limits. The mapper
 * walks libyaml's document tree *guided by the schema*, so the work done is bounded by the schema
 * (depth) and by CFG_SEQ_MAX, never by the shape of the input (aliases cannot blow it up).
 * libyaml's own costs are bounded by a first pass over its events that refuses deep nesting and
 * floods of anchors or aliases (CFG_MAX_DEPTH, CFG_MAX_ANCHORS, CFG_MAX_ALIASES).
 *
 * What it guarantees:
 *  - every key present is known, appears once and has the right type; numbers are whole tokens
 *    ("6379x", "1e3", "-1", " 5" and overflow are errors); strings carry no control bytes;
 *  - every key absent gets its default, parsed by the same code as a value from the file, so a
 *    bad default fails every load (and the unit test for defaults) instead of hiding;
 *  - the first error wins and reads "FILE:LINE:COL: path.to.key: what" (1-based, libyaml marks);
 *  - on failure the destination may be half-filled, but cfg_map_free() releases it correctly
 *    (sequence arrays are zero-filled before their count is set).
 *
 * What it does not do: cross-field checks, name resolution, file checks. Those belong to the
 * schema's owner (config.c) and run from the tables' `check` hooks, which can report errors at
 * any node with cfg_fail()/cfg_find().
 *
 * Adding a config section = a struct, a table, one CFG_MAP (or CFG_SEQ) line in the parent
 * table. Parsing, defaults, error messages and freeing follow from the table.
 */
#ifndef PORTCULLIS_CFG_MAP_H
#define PORTCULLIS_CFG_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yaml.h>

#define CFG_MAX_INPUT   (1024 * 1024) /* bytes of YAML accepted */
#define CFG_SEQ_MAX     256           /* entries in any sequence */
#define CFG_STR_MAX     4096          /* bytes in any string value */
#define CFG_NAME_MAX    64            /* bytes in a CFG_NAME value */
#define CFG_TABLE_KEYS  64            /* keys in one table (duplicate detection array) */
#define CFG_MAX_DEPTH   32            /* nested mappings/sequences (the schema needs 4) */
#define CFG_MAX_ANCHORS 256           /* &anchors in one file */
#define CFG_MAX_ALIASES 4096          /* *aliases in one file */

enum cfg_type {
    CFG_STRING,   /* char *, owned; may be "" */
    CFG_OPTSTR,   /* char *, owned or NULL: "" (or ~ / null) means NULL */
    CFG_NAME,     /* char *, owned; 1..CFG_NAME_MAX of [A-Za-z0-9._-] (logs, metrics labels) */
    CFG_BOOL,     /* bool: true/false, yes/no, on/off (any case) */
    CFG_UINT,     /* unsigned integer of `size` bytes; decimal digits only; range min..max */
    CFG_PORT,     /* uint16_t, 1..65535 */
    CFG_SIZE,     /* integer of `size` bytes, bytes; suffix k/K, M, G = binary multiples */
    CFG_DURATION, /* uint64_t milliseconds; suffix ms, s, m, h, d; bare number = seconds */
    CFG_ENUM,     /* int-sized (an enum or int); value from `enums` */
    CFG_ADDR,     /* char * (as written) + sockaddr_storage at off2 + socklen_t at off3;
                     "1.2.3.4:P", "[v6]:P", "*:P" (= 0.0.0.0); numeric only, never resolved */
    CFG_MAP,      /* nested mapping: `sub` applied at obj + off (off may be 0: same struct) */
    CFG_SEQ,      /* sequence of mappings: array of `sub` at off (void **), count (size_t) at
                     off2; length min..max (max <= CFG_SEQ_MAX) */
    CFG_STRLIST,  /* sequence of strings: char ** at off (owned, NULL-terminated, each owned;
                     NULL when empty), count (size_t) at off2; length min..max; each string
                     checked as CFG_STRING (no control characters) */
};

/* Key flags. */
#define CFG_RESTART   1u /* a changed value takes effect only on restart, not on reload */
#define CFG_MULTILINE 2u /* CFG_STRING/OPTSTR: LF and TAB allowed (text templates) */
#define CFG_SECRET    4u /* never shown (logs of a changed value print "(secret)") */

struct cfg_enum {
    const char *name;
    int value;
};

struct cfg_ctx;
struct cfg_table;

struct cfg_key {
    const char *name;
    enum cfg_type type;
    unsigned flags;
    size_t off;      /* destination, relative to the object the table maps */
    size_t size;     /* width of integer destinations (CFG_UINT, CFG_SIZE) */
    const char *def; /* default as YAML text; NULL = required (ignored for CFG_MAP/CFG_SEQ) */
    uint64_t min;    /* CFG_UINT/SIZE: value; CFG_DURATION: ms; CFG_SEQ: entries */
    uint64_t max;
    const struct cfg_enum *enums; /* CFG_ENUM: terminated by {NULL, 0} */
    const struct cfg_table *sub;  /* CFG_MAP, CFG_SEQ */
    size_t off2, off3;            /* CFG_SEQ: count; CFG_ADDR: sockaddr_storage, socklen_t */
};

struct cfg_table {
    size_t size;                /* sizeof one element (CFG_SEQ arrays) */
    const struct cfg_key *keys; /* terminated by a key with name == NULL */
    /* Optional: runs after the mapping is filled and defaulted. `node` is the mapping (NULL
     * when absent from the file); report failures with cfg_fail() and return false. */
    bool (*check)(struct cfg_ctx *ctx, const yaml_node_t *node, void *obj);
};

/* Key constructors, used inside braces so that flags can be added: {CFG_K_UINT(...)} or
 * {CFG_K_UINT(...), .flags = CFG_RESTART}. Offset and width come from the field itself. */
#define CFG_FIELD(T, f)          .off = offsetof(T, f), .size = sizeof(((T *)0)->f)
#define CFG_K_STRING(n, T, f, d) .name = n, .type = CFG_STRING, CFG_FIELD(T, f), .def = d
#define CFG_K_OPTSTR(n, T, f, d) .name = n, .type = CFG_OPTSTR, CFG_FIELD(T, f), .def = d
#define CFG_K_NAME(n, T, f, d)   .name = n, .type = CFG_NAME, CFG_FIELD(T, f), .def = d
#define CFG_K_BOOL(n, T, f, d)   .name = n, .type = CFG_BOOL, CFG_FIELD(T, f), .def = d
#define CFG_K_PORT(n, T, f, d)   .name = n, .type = CFG_PORT, CFG_FIELD(T, f), .def = d
#define CFG_K_UINT(n, T, f, d, lo, hi)                                                             \
    .name = n, .type = CFG_UINT, CFG_FIELD(T, f), .def = d, .min = lo, .max = hi
#define CFG_K_SIZE(n, T, f, d, lo, hi)                                                             \
    .name = n, .type = CFG_SIZE, CFG_FIELD(T, f), .def = d, .min = lo, .max = hi
#define CFG_K_DURATION(n, T, f, d, lo, hi)                                                         \
    .name = n, .type = CFG_DURATION, CFG_FIELD(T, f), .def = d, .min = lo, .max = hi
#define CFG_K_ENUM(n, T, f, d, e) .name = n, .type = CFG_ENUM, CFG_FIELD(T, f), .def = d, .enums = e
#define CFG_K_ADDR(n, T, f, fa, fl, d)                                                             \
    .name = n, .type = CFG_ADDR, CFG_FIELD(T, f), .def = d, .off2 = offsetof(T, fa),               \
    .off3 = offsetof(T, fl)
#define CFG_K_MAP(n, T, f, t) .name = n, .type = CFG_MAP, .off = offsetof(T, f), .sub = t
/* A mapping whose keys live directly in the parent struct (e.g. `log:` -> config.log_*). */
#define CFG_K_FLATMAP(n, t) .name = n, .type = CFG_MAP, .off = 0, .sub = t
#define CFG_K_SEQ(n, T, f, fcount, t, lo, hi)                                                      \
    .name = n, .type = CFG_SEQ, .off = offsetof(T, f), .off2 = offsetof(T, fcount), .sub = t,      \
    .min = lo, .max = hi
#define CFG_K_STRLIST(n, T, f, fcount, lo, hi)                                                     \
    .name = n, .type = CFG_STRLIST, CFG_FIELD(T, f), .off2 = offsetof(T, fcount), .min = lo,       \
    .max = hi
#define CFG_K_END .name = NULL

/* Parse `len` bytes of YAML text and map its single document onto `obj` (zeroed by the caller)
 * with `root`. `name` (usually the file name) prefixes error messages. On failure returns false,
 * sets *error_r to a malloc'd message (NULL if even that allocation failed) and leaves `obj` for
 * cfg_map_free(). */
bool cfg_map_document(const struct cfg_table *root, void *obj, const char *text, size_t len,
                      const char *name, char **error_r) __attribute__((warn_unused_result));

/* Free everything the table owns inside `obj` (strings, arrays, nested tables), not `obj`. */
void cfg_map_free(const struct cfg_table *t, void *obj);

/* For check hooks. Record an error at `at` (NULL: the start of the document) unless one was
 * already recorded; the message is prefixed with "FILE:LINE:COL: ". Always returns false. */
bool cfg_fail(struct cfg_ctx *ctx, const yaml_node_t *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The value of `key` in mapping `map` (NULL if absent or `map` is not a mapping). */
const yaml_node_t *cfg_lookup(struct cfg_ctx *ctx, const yaml_node_t *map, const char *key);
/* The node at a path from the document root, "tls.certificates[1].key". When the path does not
 * exist all the way, returns the deepest node that does (so errors point near the cause). */
const yaml_node_t *cfg_find(struct cfg_ctx *ctx, const char *path);
/* Quote a value for a message (escapes control bytes, cuts long text). Returns `buf`. */
const char *cfg_quote(char *buf, size_t cap, const char *s);

/* Same parsers the mapper uses, for other modules and tests. Whole-token, overflow-checked. */
bool cfg_parse_uint(const char *s, uint64_t *v_r);
bool cfg_parse_bool(const char *s, bool *v_r);
/* A CFG_SIZE/CFG_DURATION/CFG_UINT value in the unit a user would write ("64k", "30s", "5"). */
void cfg_fmt_value(char *buf, size_t cap, enum cfg_type type, uint64_t v);

#endif
