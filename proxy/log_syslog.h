/*
 * log_syslog — the syslog(3) side of log.c, apart because <syslog.h> defines LOG_DEBUG and
 * LOG_INFO as macros that clash with enum log_level.
 */
#ifndef PORTCULLIS_LOG_SYSLOG_H
#define PORTCULLIS_LOG_SYSLOG_H

void log_syslog_open(void);
/* level: 0 debug, 1 info, 2 warn, 3 error (enum log_level). */
void log_syslog_write(int level, const char *msg);

#endif
