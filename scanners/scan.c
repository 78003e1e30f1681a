/*
 * scan — scan jobs on the pool (see scan.h). The job struct embeds its pool_job; the pool's
 * done callback either delivers it (not cancelled) or just frees it (cancelled), so a session
 * that closed is never touched.
 */
#include "scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "quarantine.h"

#define JOB_OF(pj) ((struct scan_job *)((char *)(pj)-offsetof(struct scan_job, pj)))

void scan_ref_new(char ref[SCAN_REF_MAX])
{
    unsigned char rnd[6];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        /* No CSPRNG: uniqueness is all a reference needs. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t v = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)ref;
        for (size_t i = 0; i < sizeof rnd; i++)
            rnd[i] = (unsigned char)(v >> (8 * i));
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char hex[2 * sizeof rnd + 1];
    snprintf(ref, SCAN_REF_MAX, "%04d%02d%02d-%s", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             notice_hex(rnd, sizeof rnd, hex));
}

static void job_free(struct scan_job *j)
{
    if (j->buf) {
        free(j->buf);
        if (j->budget)
            pool_budget_release_as(j->pool, j->owner, j->budget);
    }
    free(j->quarantine_dir);
    free(j);
}

/* Scan thread. */
static void job_work(struct pool_job *pj)
{
    struct scan_job *j = JOB_OF(pj);
    if (j->flags & SCAN_JOB_HASH) {
        notice_sha256(j->buf ? j->buf : "", j->len, j->sha256);
        j->hashed = true;
    }
    if ((j->flags & SCAN_JOB_SCAN) && j->scanner) {
        scanner_scan(j->scanner, j->buf ? j->buf : "", j->len, &j->result);
        j->scanned = true;
    }
    if (j->scanned && j->result.verdict == SCAN_INFECTED && j->quarantine_dir) {
        char *err = NULL;
        if (quarantine_write(j->quarantine_dir, j->ref, j->buf ? j->buf : "", j->len, &err))
            j->quarantined = true;
        else
            snprintf(j->quarantine_error, sizeof j->quarantine_error, "%s",
                     err ? err : "quarantine failed");
        free(err);
    }
}

/* Loop thread. */
static void job_done(struct pool_job *pj, bool cancelled)
{
    struct scan_job *j = JOB_OF(pj);
    if (!cancelled)
        j->done(j->arg, j);
    job_free(j);
}

struct scan_job *scan_submit(struct pool_client *c, const struct scan_request *rq,
                             scan_done_fn *done, void *arg)
{
    struct scan_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    if (rq->quarantine_dir && !(j->quarantine_dir = strdup(rq->quarantine_dir))) {
        free(j);
        return NULL;
    }
    j->pool = pool_client_pool(c);
    j->done = done;
    j->arg = arg;
    j->scanner = rq->scanner;
    j->flags = rq->flags;
    j->buf = rq->buf;
    j->len = rq->len;
    j->budget = rq->budget;
    j->owner = rq->owner;
    if (rq->ref && rq->ref[0])
        snprintf(j->ref, sizeof j->ref, "%s", rq->ref);
    else
        scan_ref_new(j->ref);
    if (!pool_submit_as(c, j->owner, &j->pj, job_work, job_done)) {
        j->buf = NULL; /* still the caller's */
        free(j->quarantine_dir);
        free(j);
        return NULL;
    }
    return j;
}

void scan_cancel(struct scan_job **jp)
{
    if (!jp || !*jp)
        return;
    pool_cancel(&(*jp)->pj);
    *jp = NULL;
}

char *scan_job_take_buffer(struct scan_job *j, size_t *len_r, size_t *budget_r)
{
    char *b = j->buf;
    if (len_r)
        *len_r = j->len;
    if (budget_r)
        *budget_r = j->budget;
    j->buf = NULL;
    j->budget = 0;
    return b;
}
