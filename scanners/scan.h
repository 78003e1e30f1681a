/*
 * scan — scan jobs: what a session submits to the pool when it holds a whole message.
 *
 * A job owns the message buffer from a successful scan_submit() until its callback (or, after
 * scan_cancel(), until the pool drops it). On a scan thread it computes, as asked, the sha256
 * of the message (the verdict-cache key: hashing 25 MiB takes tens of milliseconds, too long for
 * a loop), the scan verdict, and for an INFECTED message the quarantine copy. The callback then
 * runs on the submitting loop's thread with the job: read the result, take the buffer back
 * (clean mail is forwarded from it, byte-identical) or let it be freed with the job.
 *
 * Typical flow on a worker loop:
 *
 *     pool_budget_acquire(client, size, &s->budget_wait, on_budget)   -- before holding bytes
 *     ... collect the literal into buf ...
 *     s->scan = scan_submit(client, &(struct scan_request){ .scanner = sc,
 *                  .flags = SCAN_JOB_HASH | SCAN_JOB_SCAN, .buf = buf, .len = len,
 *                  .budget = size, .quarantine_dir = cfg->scan.quarantine_dir }, on_scan, s);
 *     if (!s->scan) { pause backend reads; pool_slot_wait(client, &s->slot_wait, retry); }
 *     ...
 *     sess_close(): scan_cancel(&s->scan); pool_waiter_cancel(&s->budget_wait); ...
 */
#ifndef PORTCULLIS_SCAN_H
#define PORTCULLIS_SCAN_H

#include <stdbool.h>
#include <stddef.h>

#include "notice.h"
#include "pool.h"
#include "scanner.h"

#define SCAN_REF_MAX 32

enum scan_job_flags {
    SCAN_JOB_HASH = 1, /* fill job->sha256 */
    SCAN_JOB_SCAN = 2, /* fill job->result (needs request.scanner) */
};

struct scan_request {
    struct scanner *scanner; /* required with SCAN_JOB_SCAN; must outlive the job */
    unsigned flags;          /* SCAN_JOB_* */
    char *buf;               /* malloc'd; moves to the job when scan_submit succeeds */
    size_t len;
    size_t budget;              /* bytes acquired for buf with pool_budget_acquire; the job
                                   releases them when it frees buf (0: none) */
    pool_owner owner;           /* whose shares the budget and the job count against */
    const char *quarantine_dir; /* NULL: no quarantine; copied */
    const char *ref;            /* reference id to use; NULL: a new one (scan_ref_new) */
};

struct scan_job;
/* On the submitting loop's thread, exactly once, unless the job was cancelled (then never).
 * `job` is valid only during the call. */
typedef void scan_done_fn(void *arg, struct scan_job *job);

/* Read-only in the callback, except `buf` (see scan_job_take_buffer). */
struct scan_job {
    struct pool_job pj;      /* private */
    struct pool *pool;       /* private: budget release */
    scan_done_fn *done;      /* private */
    void *arg;               /* private */
    char *quarantine_dir;    /* private, owned */
    struct scanner *scanner; /* private, not owned */
    unsigned flags;
    char *buf; /* owned until taken */
    size_t len;
    size_t budget;
    pool_owner owner;
    char ref[SCAN_REF_MAX]; /* reference id: notice, quarantine file, logs */
    bool hashed;
    unsigned char sha256[SHA256_LEN];
    bool scanned;
    struct scan_result result;  /* valid when scanned */
    bool quarantined;           /* the original was written to quarantine_dir/ref.eml */
    char quarantine_error[256]; /* "" unless a quarantine write failed */
};

/* On a loop thread with its pool client. Returns the job (the handle for scan_cancel), or NULL
 * when the queue is full or memory ran out — then nothing was taken: `rq->buf` is still the
 * caller's. Never calls `done` before returning. */
struct scan_job *scan_submit(struct pool_client *c, const struct scan_request *rq,
                             scan_done_fn *done, void *arg) __attribute__((warn_unused_result));

/* On the submitting loop's thread: `done` will not be called; the job, its buffer and its
 * budget are released by the pool when the scan thread lets go. NULLs *job. NULL-safe. */
void scan_cancel(struct scan_job **job);

/* In the callback: take the buffer (and the budget bytes that cover it) back from the job.
 * The caller then owns both and must free the buffer and pool_budget_release() the budget. */
char *scan_job_take_buffer(struct scan_job *job, size_t *len_r, size_t *budget_r);

/* A fresh reference id: "YYYYMMDD-" + 12 random hex digits (UTC date), NUL-terminated. */
void scan_ref_new(char ref[SCAN_REF_MAX]);

#endif
