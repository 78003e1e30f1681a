/*
 * plog — see plog.h.
 */
#include "plog.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static plog_fn *sink;
static plog_enabled_fn *sink_enabled;

void plog_set(plog_fn *fn, plog_enabled_fn *enabled)
{
    sink = fn;
    sink_enabled = enabled;
}

void plog(enum plog_level level, const char *fmt, ...)
{
    if (!sink || (sink_enabled && !sink_enabled(level)))
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sink(level, line);
}

const char *plog_q(char *buf, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 6 >= cap) {
            buf[o++] = '.';
            buf[o++] = '.';
            break;
        }
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
