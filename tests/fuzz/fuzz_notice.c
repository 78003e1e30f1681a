/* libFuzzer harness for the notice builder with hostile originals: the output must be a
 * well-formed message whatever the original's header holds — only CRLF line ends, no bare CR or
 * LF, no line over 998 octets, no NUL, no header line injected by the original (every header
 * line is one of the fields the builder writes or a continuation), and a blank line before the
 * body. The first input byte picks the verdict and whether a hostile template is used. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "notice.h"

static const char *const allowed[] = {"From:",
                                      "To:",
                                      "Date:",
                                      "Subject:",
                                      "Message-ID:",
                                      "MIME-Version:",
                                      "Content-Type:",
                                      "Content-Transfer-Encoding:",
                                      "X-Portcullis-Verdict:",
                                      NULL};

static void check(const char *m, size_t n)
{
    bool in_header = true;
    size_t line_start = 0;
    for (size_t i = 0; i < n; i++) {
        if (m[i] == '\0')
            abort();
        if (m[i] == '\r' && (i + 1 >= n || m[i + 1] != '\n'))
            abort(); /* bare CR */
        if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
            abort(); /* bare LF */
        if (m[i] != '\n')
            continue;
        size_t len = i - 1 - line_start; /* without CRLF */
        if (len > 998)
            abort();
        const char *l = m + line_start;
        if (in_header) {
            if (len == 0) {
                in_header = false;
            } else if (l[0] != ' ' && l[0] != '\t') {
                bool ok = false;
                for (int k = 0; allowed[k] && !ok; k++)
                    ok = len >= strlen(allowed[k]) &&
                         strncasecmp(l, allowed[k], strlen(allowed[k])) == 0;
                if (!ok)
                    abort(); /* a header line the builder did not write */
            }
        }
        line_start = i + 1;
    }
    if (in_header || line_start != n)
        abort(); /* no body separator, or a last line without CRLF */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct notice_params np = {
        .verdict = (data[0] & 1) ? NOTICE_BLOCKED : NOTICE_INFECTED,
        .signature = "Eicar-Test\r\nBcc: x@evil",
        .reason_code = "scan-error",
        .reason_text = NULL,
        .ref = "20261122-0123456789ab",
        .tmpl =
            (data[0] & 2) ? "%subject%\r\n%from%\n%to% %date% %message_id% %%x %bogus%\r" : NULL,
        .date_fallback = 1700000000,
    };
    char *out = NULL;
    size_t len = 0;
    if (!notice_build(&np, (const char *)data + 1, size - 1, &out, &len))
        return 0;
    check(out, len);
    free(out);
    return 0;
}
