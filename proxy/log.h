/*
 * log — logfmt lines ("ts=… level=… key=value …") to stderr or a file.
 *
 * Each line is formatted into a stack buffer and written with one write(2), so lines from
 * different threads never interleave. Values that come from peers (user names, ID fields,
 * backend text) must go through log_q(), which quotes and escapes them: a client cannot forge a
 * log line or a key. Passwords and SASL payloads are never passed to this module.
 */
#ifndef PORTCULLIS_LOG_H
#define PORTCULLIS_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_LINE_MAX 2048 /* longer lines are cut and end in "…truncated" */

/* Set the threshold and the destination (NULL = stderr). Returns false if the file cannot be
 * opened (the old destination stays). Called from the main thread only. */
bool log_open(enum log_level level, const char *file);
/* Send lines to syslog(3) (facility mail) instead of the file/stderr. */
void log_use_syslog(bool on);
void log_set_level(enum log_level level);
/* Reopen the log file after rotation (SIGUSR1); no-op for stderr. */
bool log_reopen(void);
bool log_enabled(enum log_level level);

/* issue 16: from log_writer_start() on, log_write() only queues the line (bounded by
 * `queue_bytes`; a line that does not fit is dropped and counted, and the writer logs
 * "event=log_dropped count=N" once it has caught up) and a dedicated thread writes it: no
 * worker blocks on a slow disk or syslog. log_writer_stop() writes everything queued and joins
 * the thread (at exit); lines are then written synchronously again. */
bool log_writer_start(size_t queue_bytes);
void log_writer_stop(void);
unsigned long long log_dropped_total(void); /* portcullis_log_dropped_total */

/* Writes "ts=… level=… " followed by the formatted key=value pairs and a newline. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Quote and sanitise `len` bytes of peer-supplied text for a logfmt value: the result is always
 * a double-quoted string; `"` and `\` are escaped, control bytes and bytes >= 0x7f that are not
 * part of valid UTF-8 become \xNN, and text beyond `cap` is cut with "…". Returns `buf`. */
const char *log_q(char *buf, size_t cap, const char *s, size_t len);
/* log_q for a NUL-terminated string (NULL prints as ""). */
const char *log_qs(char *buf, size_t cap, const char *s);
/* log_qs into a buffer of its own (a compound literal, alive for the enclosing block): for a
 * free-text value in place, `log_write(l, "error=%s", LOG_QS(why))`. */
#define LOG_QS_MAX 512
#define LOG_QS(s)  log_qs((char[LOG_QS_MAX]){0}, LOG_QS_MAX, (s))

/* "ip:port", with an IPv6 address in brackets ("[2001:db8::2]:143"): unbracketed, a reader could
 * not tell where the address ends. LOG_HOSTPORT_MAX fits any numeric address. Returns `buf`. */
#define LOG_HOSTPORT_MAX 64
const char *log_hostport(char *buf, size_t cap, const char *ip, unsigned port);

const char *log_level_name(enum log_level level);

#endif
