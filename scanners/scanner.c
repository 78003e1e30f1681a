/*
 * scanner — dispatch to the implementation, and the asynchronous reload shared by every
 * implementation: one detached thread per reload, at most one at a time, waited for by
 * scanner_destroy(). The implementations serialise synchronous reloads themselves.
 */
#include "scanner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool scanner_base_init(struct scanner *s, const struct scanner_ops *ops)
{
    s->ops = ops;
    s->async_running = false;
    if (pthread_mutex_init(&s->async_mu, NULL) != 0)
        return false;
    if (pthread_cond_init(&s->async_cv, NULL) != 0) {
        pthread_mutex_destroy(&s->async_mu);
        return false;
    }
    return true;
}

void scanner_base_fini(struct scanner *s)
{
    pthread_cond_destroy(&s->async_cv);
    pthread_mutex_destroy(&s->async_mu);
}

void scanner_scan(struct scanner *s, const char *buf, size_t len, struct scan_result *r)
{
    s->ops->scan(s, buf, len, r);
}

bool scanner_reload(struct scanner *s, const struct scan_options *o, char **error_r)
{
    return s->ops->reload(s, o, error_r);
}

void scanner_version(struct scanner *s, char *buf, size_t cap)
{
    s->ops->version(s, buf, cap);
}

uint64_t scanner_generation(struct scanner *s)
{
    return s->ops->generation(s);
}

/* An implementation without a canary (a unit test's fake scanner) is always healthy. */
void scanner_health(struct scanner *s, struct scanner_health *h)
{
    if (s->ops->health) {
        s->ops->health(s, h);
        return;
    }
    memset(h, 0, sizeof *h);
    h->ok = true;
}

bool scanner_canary(struct scanner *s)
{
    return s->ops->canary ? s->ops->canary(s) : true;
}

bool scanner_health_suspect(const struct scanner_health *h, int64_t date)
{
    for (unsigned i = 0; i < h->nsuspect && i < SCAN_SUSPECT_MAX; i++)
        if (date >= h->suspect[i].from && date <= h->suspect[i].to)
            return true;
    return false;
}

/* What the reload thread needs; owns copies of the option strings. */
struct reload_arg {
    struct scanner *s;
    bool have_opts;
    struct scan_options o;
    char *database_dir; /* owned; o.database_dir points here */
    char *tmpdir;       /* owned; o.tmpdir points here */
    scan_reload_done_fn *done;
    void *arg;
};

static void *reload_thread(void *p)
{
    struct reload_arg *ra = p;
    char *err = NULL;
    bool ok = scanner_reload(ra->s, ra->have_opts ? &ra->o : NULL, &err);
    if (ra->done)
        ra->done(ra->arg, ok, ok ? NULL : (err ? err : "reload failed"));
    free(err);
    struct scanner *s = ra->s;
    free(ra->database_dir);
    free(ra->tmpdir);
    free(ra);
    /* Last touch of the scanner from this thread: destroy may proceed once this is seen. */
    pthread_mutex_lock(&s->async_mu);
    s->async_running = false;
    pthread_cond_broadcast(&s->async_cv);
    pthread_mutex_unlock(&s->async_mu);
    return NULL;
}

bool scanner_reload_async(struct scanner *s, const struct scan_options *o,
                          scan_reload_done_fn *done, void *arg)
{
    struct reload_arg *ra = calloc(1, sizeof *ra);
    if (!ra)
        return false;
    ra->s = s;
    ra->done = done;
    ra->arg = arg;
    if (o) {
        ra->have_opts = true;
        ra->o = *o;
        ra->database_dir = o->database_dir ? strdup(o->database_dir) : NULL;
        ra->tmpdir = o->tmpdir ? strdup(o->tmpdir) : NULL;
        if ((o->database_dir && !ra->database_dir) || (o->tmpdir && !ra->tmpdir)) {
            free(ra->database_dir);
            free(ra->tmpdir);
            free(ra);
            return false;
        }
        ra->o.database_dir = ra->database_dir;
        ra->o.tmpdir = ra->tmpdir;
    }
    pthread_mutex_lock(&s->async_mu);
    if (s->async_running) {
        pthread_mutex_unlock(&s->async_mu);
        free(ra->database_dir);
        free(ra->tmpdir);
        free(ra);
        return false;
    }
    s->async_running = true;
    pthread_mutex_unlock(&s->async_mu);

    pthread_attr_t attr;
    pthread_t t;
    bool started = pthread_attr_init(&attr) == 0;
    if (started) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&t, &attr, reload_thread, ra) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        pthread_mutex_lock(&s->async_mu);
        s->async_running = false;
        pthread_cond_broadcast(&s->async_cv);
        pthread_mutex_unlock(&s->async_mu);
        free(ra->database_dir);
        free(ra->tmpdir);
        free(ra);
        return false;
    }
    return true;
}

void scanner_destroy(struct scanner **sp)
{
    if (!sp || !*sp)
        return;
    struct scanner *s = *sp;
    *sp = NULL;
    pthread_mutex_lock(&s->async_mu);
    while (s->async_running)
        pthread_cond_wait(&s->async_cv, &s->async_mu);
    pthread_mutex_unlock(&s->async_mu);
    s->ops->destroy(s);
}

const char *scan_verdict_name(enum scan_verdict v)
{
    switch (v) {
    case SCAN_CLEAN:
        return "clean";
    case SCAN_INFECTED:
        return "infected";
    case SCAN_OVERSIZE:
        return "oversize";
    case SCAN_ERROR:
        return "error";
    case SCAN_LIMIT:
        return "limit";
    }
    return "unknown";
}

enum scan_verdict scan_limit_kind(const char *name)
{
    static const char prefix[] = "Heuristics.Limits.Exceeded.";
    /* Only exact names: "MaxScanSizeFoo" or a suffix on a size name is not a size limit. */
    static const char *const size_limits[] = {"MaxScanSize", "MaxFileSize"};
    if (!name)
        return SCAN_OVERSIZE;
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return SCAN_LIMIT;
    const char *kind = name + sizeof prefix - 1;
    for (size_t i = 0; i < sizeof size_limits / sizeof size_limits[0]; i++)
        if (strcmp(kind, size_limits[i]) == 0)
            return SCAN_OVERSIZE;
    return SCAN_LIMIT;
}
