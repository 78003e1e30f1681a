/* libFuzzer harness for the notice builder with hostile originals: the output must be a
 * well-formed message whatever the original's header holds — only CRLF line ends, no bare CR or
 * LF, no line over 998 octets, no NUL, no header line injected by the original (every header
 * line is one of the fields the builder writes or a continuation), and a blank line before the
 * body. Issue 15: header lines are printable US-ASCII of at most 78 octets (except our own
 * X-Portcullis-Verdict), encoded-words at most 75 characters; the scan buffer starts with the
 * notice; and the RFC 2047 codec round-trips: decode(field(decode(x))) == decode(x), the
 * decoded text is valid UTF-8 without control characters. The first input byte picks the
 * verdict, the mode and whether a hostile template is used. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "notice.h"
#include "rfc2047.h"

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
        if (in_header && len > 0) {
            bool verdict = len >= 21 && strncmp(l, "X-Portcullis-Verdict:", 21) == 0;
            if (!verdict && len > 78)
                abort(); /* RFC 5322 2.1.1 SHOULD, and issue 15's folding */
            for (size_t k = 0; k < len; k++)
                if ((unsigned char)l[k] < 0x20 || (unsigned char)l[k] >= 0x7f)
                    abort(); /* a raw byte of the original in our header */
            for (const char *w = memmem(l, len, "=?utf-8?B?", 10); w;) {
                const char *we = memmem(w + 10, (size_t)(l + len - (w + 10)), "?=", 2);
                if (!we || we + 2 - w > 75)
                    abort();
                w = memmem(we, (size_t)(l + len - we), "=?utf-8?B?", 10);
            }
        }
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

/* Valid UTF-8 without C0/C1 controls or DEL (what r2047_decode promises). */
static void check_text(const char *t, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)t[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
        if (c >= 0x80 && ((c & 0xc0) == 0x80 || c >= 0xf8 || i + len > n))
            abort();
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)t[i + k] & 0xc0) != 0x80)
                abort();
        if (c < 0x20 || c == 0x7f || (c == 0xc2 && (unsigned char)t[i + 1] < 0xa0))
            abort();
        i += len;
    }
}

static void codec(const char *in, size_t n)
{
    static char text[R2047_TEXT_MAX + 1], back[R2047_TEXT_MAX + 1], field[R2047_FIELD_CAP];
    bool clean;
    size_t tl = r2047_decode(in, n, text, R2047_TEXT_MAX, &clean);
    if (tl > R2047_TEXT_MAX || text[tl] != '\0' || strlen(text) != tl)
        abort();
    check_text(text, tl);
    size_t fl = r2047_field("Subject", text, tl, NULL, field, sizeof field);
    if (tl && !fl)
        abort();
    if (!tl)
        return;
    size_t bl = r2047_decode(field + 8, fl - 8, back, R2047_TEXT_MAX, NULL);
    if (bl != tl || memcmp(back, text, tl) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    codec((const char *)data + 1, size - 1 > 8192 ? 8192 : size - 1);
    struct notice_params np = {
        .verdict = (data[0] & 1) ? NOTICE_BLOCKED : NOTICE_INFECTED,
        .signature = "Eicar-Test\r\nBcc: x@evil",
        .reason_code = "scan-error",
        .reason_text = NULL,
        .ref = "20261122-0123456789ab",
        .tmpl =
            (data[0] & 2) ? "%subject%\r\n%from%\n%to% %date% %message_id% %%x %bogus%\r" : NULL,
        .date_fallback = 1700000000,
        .mode = (enum notice_mode)((data[0] >> 2) % 3),
    };
    char *out = NULL;
    size_t len = 0;
    if (!notice_build(&np, (const char *)data + 1, size - 1, &out, &len))
        return 0;
    check(out, len);
    char *sb;
    size_t sbl;
    if (notice_scan_buffer(out, len, (const char *)data + 1, size - 1, &sb, &sbl)) {
        if (sbl < len || memcmp(sb, out, len) != 0)
            abort();
        free(sb);
    }
    free(out);
    return 0;
}
