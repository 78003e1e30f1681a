/*
 * plog — how policy/ logs without including proxy/ headers (dependency rule): the embedding
 * program installs one function; until it does, lines go nowhere. Lines are logfmt key=value
 * text without the timestamp/level prefix, which the hook adds.
 *
 * Never pass a password here; user names and other peer text must be quoted by the caller
 * (plog_q) so that a client cannot forge a key.
 */
#ifndef PORTCULLIS_PLOG_H
#define PORTCULLIS_PLOG_H

#include <stddef.h>

enum plog_level { PLOG_DEBUG, PLOG_INFO, PLOG_WARN, PLOG_ERROR };

typedef void plog_fn(enum plog_level level, const char *line);
typedef int plog_enabled_fn(enum plog_level level);

/* Install the sink (process-wide; call before any worker starts). */
void plog_set(plog_fn *fn, plog_enabled_fn *enabled);
void plog(enum plog_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Quote peer-supplied text for a logfmt value: "..." with \" \\ and \xNN escapes, cut to fit
 * `cap`. Returns `buf`. */
const char *plog_q(char *buf, size_t cap, const char *s, size_t len);

#endif
