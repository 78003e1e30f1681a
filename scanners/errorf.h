/*
 * errorf — the malloc'd message behind the scanners' `char **error_r` (pool, quarantine, the
 * ClamAV engine): the caller frees it.
 */
#ifndef PORTCULLIS_ERRORF_H
#define PORTCULLIS_ERRORF_H

/* NULL when out of memory (the caller then reports no text). */
char *errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
