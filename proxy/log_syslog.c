/*
 * log_syslog — see log_syslog.h.
 */
#include "log_syslog.h"

#include <syslog.h>

void log_syslog_open(void)
{
    openlog("portcullis", LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_syslog_write(int level, const char *msg)
{
    static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
    syslog(prio[level < 0 ? 0 : level > 3 ? 3 : level], "%s", msg);
}
