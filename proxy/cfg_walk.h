/*
 * cfg_walk — read-only walks over a cfg_map schema (cfg_map.h): the list of every key it accepts,
 * and the keys whose values differ between two mapped objects.
 *
 * Both follow the tables the loader uses, so they cannot disagree with it: the key list feeds the
 * test that keeps deploy/portcullis.yaml and docs/configuration.md complete, the difference feeds
 * reload's `event=reload_partial` (a changed key that only a restart applies).
 *
 * Paths are dotted from the root: "limits.drain_timeout", "log.level"; a sequence's members are
 * "listeners[].bind" in the key list and "listeners[imaps].bind" (the entry's `name`, else its
 * index) in a difference.
 */
#ifndef PORTCULLIS_CFG_WALK_H
#define PORTCULLIS_CFG_WALK_H

#include <stdbool.h>
#include <stddef.h>

#include "cfg_map.h"

#define CFG_PATH_MAX 256

/* One accepted key: its path and its schema entry (maps and sequences are reported too, before
 * their members). */
typedef void cfg_key_cb(void *arg, const char *path, const struct cfg_key *k);
void cfg_walk_keys(const struct cfg_table *root, cfg_key_cb *cb, void *arg);

/* One key whose value differs: its path, its schema entry, and the objects `a` and `b` its
 * `off` is relative to (format the values with cfg_walk_value). A sequence whose length differs
 * is reported once, as the sequence key, with a and b the objects holding it. */
typedef void cfg_diff_cb(void *arg, const char *path, const struct cfg_key *k, const void *a,
                         const void *b);
/* Compare `a` and `b` (both mapped with `root`). With `flags` != 0 only keys carrying one of
 * them, or inside a map or sequence that carries one, are compared. */
void cfg_walk_diff(const struct cfg_table *root, const void *a, const void *b, unsigned flags,
                   cfg_diff_cb *cb, void *arg);

/* A scalar key's value in `obj` as the file would write it ("30s", "64k", "true", an enum's name,
 * a string as is; NULL strings as ""). Returns `buf`. */
const char *cfg_walk_value(const struct cfg_key *k, const void *obj, char *buf, size_t cap);

#endif
