/*
 * log_queue — the bounded FIFO between the threads that log and the log writer thread (issue 16:
 * a log line used to be a synchronous write(2) on the worker loop).
 *
 * A byte ring of `cap` bytes holding records [level:1][len:2][line:len]. Pushing never blocks
 * on I/O: it takes a mutex for a memcpy, and a line that does not fit whole is dropped and
 * counted (never cut, never reordered). The writer pops records in push order; it sleeps on a
 * condition variable that every push signals, so a line reaches the file within microseconds
 * (tests read the log file right after the events they cause).
 */
#ifndef PORTCULLIS_LOG_QUEUE_H
#define PORTCULLIS_LOG_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOGQ_REC_MAX 65535 /* longest line a record can hold */

struct logq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *ring;
    size_t cap, head, len; /* bytes: capacity, first record, used */
    uint64_t dropped;      /* lines dropped since the writer last reported (under mu) */
    uint64_t dropped_total;
    bool stop;
};

/* False if the ring cannot be allocated. cap is at least 4 KiB. */
bool logq_init(struct logq *q, size_t cap);
void logq_fini(struct logq *q);
/* Queue one line; false (and counted) when it does not fit whole. */
bool logq_push(struct logq *q, int level, const char *line, size_t len);
/* Take the oldest record into out (cap >= its length: LOGQ_REC_MAX is always enough) without
 * waiting. Returns its length, or -1 if the queue is empty. */
long logq_pop_locked(struct logq *q, int *level_r, char *out, size_t cap);
/* Lines dropped so far (all time). */
uint64_t logq_dropped_total(struct logq *q);

#endif
