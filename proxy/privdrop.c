/*
 * privdrop — see privdrop.h.
 */
#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"

static bool fail(char **error_r, const char *what, const char *arg)
{
    if (asprintf(error_r, "%s%s%s: %s", what, arg ? " " : "", arg ? arg : "",
                 errno ? strerror(errno) : "not found") < 0)
        *error_r = NULL;
    return false;
}

/* libcap is one more dependency for two syscalls: use them directly. */
static bool keep_net_admin(void)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    d[0].effective = d[0].permitted = d[0].inheritable = 1u << CAP_NET_ADMIN;
    if (syscall(SYS_capset, &h, d) != 0)
        return false;
    /* Ambient, so that the capability also survives an exec (none today, but cheap). */
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0);
    return true;
}

/* The root rules and the user and group lookups; *drop_r says whether there is a user to
 * become (false: unprivileged, or root with run_as_root). */
static bool plan(const struct config *cfg, bool *drop_r, uid_t *uid_r, gid_t *gid_r, char **error_r)
{
    *error_r = NULL;
    *drop_r = false;
    if (geteuid() != 0)
        return true; /* started unprivileged (systemd User=, or a developer): nothing to drop */
    if (!cfg->user || !cfg->user[0]) {
        if (cfg->run_as_root)
            return true;
        *error_r = strdup("refusing to run as root: set `user:` (or run_as_root: true)");
        return false;
    }
    errno = 0;
    struct passwd *pw = getpwnam(cfg->user);
    if (!pw)
        return fail(error_r, "unknown user", cfg->user);
    *uid_r = pw->pw_uid;
    *gid_r = pw->pw_gid;
    if (cfg->group && cfg->group[0]) {
        errno = 0;
        struct group *gr = getgrnam(cfg->group);
        if (!gr)
            return fail(error_r, "unknown group", cfg->group);
        *gid_r = gr->gr_gid;
    }
    *drop_r = true;
    return true;
}

bool privdrop_check(const struct config *cfg, char **error_r)
{
    bool drop;
    uid_t uid;
    gid_t gid;
    return plan(cfg, &drop, &uid, &gid, error_r);
}

bool privdrop(const struct config *cfg, char **error_r)
{
    bool drop;
    uid_t uid = 0;
    gid_t gid = 0;
    if (!plan(cfg, &drop, &uid, &gid, error_r))
        return false;
    if (!drop) {
        if (geteuid() == 0)
            log_write(LOG_WARN, "event=running_as_root note=\"run_as_root: true\"");
        return true;
    }
    bool need_net_admin = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        need_net_admin = need_net_admin || cfg->listeners[i].transparent_source;
    if (need_net_admin && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
        return fail(error_r, "prctl(PR_SET_KEEPCAPS)", NULL);
    if (setgroups(1, &gid) != 0)
        return fail(error_r, "setgroups", NULL);
    if (setresgid(gid, gid, gid) != 0)
        return fail(error_r, "setresgid", cfg->group);
    if (setresuid(uid, uid, uid) != 0)
        return fail(error_r, "setresuid", cfg->user);
    if (need_net_admin && !keep_net_admin())
        return fail(error_r, "capset(CAP_NET_ADMIN)", NULL);
    /* Core dumps of a process that held passwords and mail stay off after a uid change. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (setuid(0) == 0) {
        errno = EPERM;
        return fail(error_r, "privileges could be regained", NULL);
    }
    log_write(LOG_INFO, "event=privileges_dropped user=%s uid=%u gid=%u net_admin=%d", cfg->user,
              (unsigned)uid, (unsigned)gid, need_net_admin);
    return true;
}
