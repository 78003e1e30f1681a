/*
 * quarantine — write a blocked original under its reference id (see quarantine.h).
 */
#include "quarantine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errorf.h"

static bool ref_ok(const char *ref)
{
    size_t n = strlen(ref);
    return n > 0 && n <= 64 && ref[0] != '.' &&
           strspn(ref, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

bool quarantine_write(const char *dir, const char *ref, const char *buf, size_t len, char **error_r)
{
    *error_r = NULL;
    if (!ref_ok(ref)) {
        *error_r = errorf("quarantine: invalid reference id");
        return false;
    }
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s.eml", dir, ref);
    if (n < 0 || (size_t)n >= sizeof path) {
        *error_r = errorf("quarantine: path too long");
        return false;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        *error_r = errorf("quarantine: %s: %s", path, strerror(errno));
        return false;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    int err = off < len ? errno : 0;
    if (!err && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (err || off < len) {
        unlink(path);
        *error_r = errorf("quarantine: %s: %s", path, strerror(err ? err : EIO));
        return false;
    }
    return true;
}
