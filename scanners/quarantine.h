/*
 * quarantine — keep the original of a blocked message for the security team.
 *
 * quarantine_write() stores the bytes as DIR/REF.eml, created with O_EXCL (never overwrites,
 * never follows a symlink planted at that name), mode 0600, fsync'd before it returns. It is
 * blocking file I/O: call it on a scan thread (scan.c does), never on an event loop.
 */
#ifndef PORTCULLIS_QUARANTINE_H
#define PORTCULLIS_QUARANTINE_H

#include <stdbool.h>
#include <stddef.h>

/* `ref` must be 1..64 of [A-Za-z0-9._-] and not start with '.': it becomes a file name.
 * Returns false with *error_r (malloc'd) on any failure; a partial file is removed. */
bool quarantine_write(const char *dir, const char *ref, const char *buf, size_t len, char **error_r)
    __attribute__((warn_unused_result));

#endif
