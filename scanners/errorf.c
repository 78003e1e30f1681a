/*
 * errorf — see errorf.h.
 */
#include "errorf.h"

#include <stdarg.h>
#include <stdio.h>

char *errorf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}
