/*
 * Unit tests for scanners/notice.c (the replacement message) and scanners/quarantine.c: copied
 * header fields (unfolded, cut, missing), the verdict header, template substitution, CRLF and
 * line-length well-formedness, header-injection attempts, determinism, sha256; quarantine
 * file mode, O_EXCL and reference validation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "notice.h"
#include "quarantine.h"
#include "rfc2047.h"

static const char ORIG[] = "Return-Path: <alice@example.org>\r\n"
                           "Received: from x by y; Mon, 6 Jan 2025 10:00:00 +0000\r\n"
                           "From: Alice Sender <alice@example.org>\r\n"
                           "To: Bob <bob@example.com>,\r\n"
                           " Carol <carol@example.com>\r\n"
                           "Date: Mon, 06 Jan 2025 10:00:00 +0000\r\n"
                           "Subject: Invoice\r\n\t for January\r\n"
                           "Message-ID: <abc123@example.org>\r\n"
                           "MIME-Version: 1.0\r\n"
                           "Content-Type: text/plain\r\n"
                           "\r\n"
                           "Subject: not a header, this is the body\r\n";

/* RFC 5322 well-formedness the way a client parser sees it: CRLF only, no bare CR/LF, lines at
 * most 998 octets, no NUL, a header section of "name: value" lines ending in an empty line. */
static void assert_well_formed(const char *m, size_t len)
{
    size_t line = 0;
    bool in_header = true;
    for (size_t i = 0; i < len; i++) {
        assert_true(m[i] != '\0');
        if (m[i] == '\r') {
            assert_true(i + 1 < len && m[i + 1] == '\n');
            continue;
        }
        if (m[i] == '\n') {
            assert_true(i > 0 && m[i - 1] == '\r');
            size_t start = i + 1;
            if (in_header && i >= 3 && m[i - 2] == '\n')
                in_header = false;
            (void)start;
            line = 0;
            continue;
        }
        line++;
        assert_true(line <= 998);
    }
    assert_true(len >= 2 && m[len - 2] == '\r' && m[len - 1] == '\n');
    assert_false(in_header);
    /* Every header line is a field or a continuation line. */
    const char *end = strstr(m, "\r\n\r\n");
    assert_non_null(end);
    for (const char *p = m; p < end;) {
        const char *nl = strstr(p, "\r\n");
        if (p > m && (*p == ' ' || *p == '\t')) {
            p = nl + 2;
            continue;
        }
        const char *colon = memchr(p, ':', (size_t)(nl - p));
        assert_non_null(colon);
        assert_true(colon > p);
        for (const char *q = p; q < colon; q++)
            assert_true(*q > 32 && *q < 127);
        p = nl + 2;
    }
}

/* The value of header `name` in the notice (its first line only, exact name), or NULL. */
static char *header(const char *m, const char *name)
{
    static char buf[2048];
    const char *end = strstr(m, "\r\n\r\n");
    size_t nl = strlen(name);
    for (const char *p = m; p && p < end;) {
        const char *eol = strstr(p, "\r\n");
        if ((size_t)(eol - p) > nl + 1 && strncmp(p, name, nl) == 0 && p[nl] == ':') {
            size_t vl = (size_t)(eol - p) - nl - 2;
            memcpy(buf, p + nl + 2, vl);
            buf[vl] = '\0';
            return buf;
        }
        p = eol + 2;
    }
    return NULL;
}

/* The whole field `name` (with its continuation lines, CRLFs kept) or NULL. */
static char *field_raw(const char *m, const char *name)
{
    static char buf[4096];
    const char *end = strstr(m, "\r\n\r\n") + 2;
    size_t nl = strlen(name);
    for (const char *p = m; p < end;) {
        const char *eol = strstr(p, "\r\n");
        if (strncmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *q = eol + 2;
            while (q < end && (*q == ' ' || *q == '\t'))
                q = strstr(q, "\r\n") + 2;
            size_t vl = (size_t)(q - (p + nl + 1));
            memcpy(buf, p + nl + 1, vl);
            buf[vl] = '\0';
            return buf;
        }
        p = eol + 2;
    }
    return NULL;
}

/* The field's value as a reader sees it: unfolded and its encoded-words decoded. */
static char *field_text(const char *m, const char *name)
{
    static char out[4096];
    char *raw = field_raw(m, name);
    if (!raw)
        return NULL;
    r2047_decode(raw, strlen(raw), out, sizeof out - 1, NULL);
    return out;
}

/* Our header lines: printable US-ASCII, every encoded-word at most 75 characters, lines at most
 * 78 octets (except X-Portcullis-Verdict, which holds only our own tokens: <= 998). */
static void assert_header_strict(const char *m)
{
    const char *end = strstr(m, "\r\n\r\n");
    for (const char *p = m; p < end;) {
        const char *eol = strstr(p, "\r\n");
        size_t n = (size_t)(eol - p);
        assert_true(n <= (strncmp(p, "X-Portcullis-Verdict:", 21) == 0 ? 998 : 78));
        for (size_t i = 0; i < n; i++)
            assert_true(p[i] >= 0x20 && p[i] < 0x7f);
        for (const char *w = strstr(p, "=?utf-8?B?"); w && w < eol;) {
            const char *we = strstr(w + 10, "?=");
            assert_non_null(we);
            assert_true(we + 2 - w <= 75);
            w = strstr(we, "=?utf-8?B?");
        }
        p = eol + 2;
    }
}

static char *build(const struct notice_params *np, const char *orig, size_t len, size_t *len_r)
{
    char *out = NULL;
    assert_true(notice_build(np, orig, len, &out, len_r));
    assert_non_null(out);
    assert_int_equal(strlen(out), *len_r);
    assert_well_formed(out, *len_r);
    assert_header_strict(out);
    return out;
}

static void test_infected_notice(void **state)
{
    (void)state;
    struct notice_params np = {.verdict = NOTICE_INFECTED,
                               .signature = "Portcullis.Test.EICAR-NDB.UNOFFICIAL",
                               .ref = "20250106-a1b2c3d4e5f6"};
    size_t len;
    char *n = build(&np, ORIG, sizeof ORIG - 1, &len);
    /* Our encoded-words, our address; the original's bytes nowhere in the header. */
    assert_string_equal(field_raw(n, "From"),
                        " =?utf-8?B?QWxpY2UgU2VuZGVyIDxhbGljZUBleGFtcGxlLm9yZz4=?=\r\n"
                        " <portcullis@localhost>\r\n");
    assert_string_equal(field_text(n, "From"),
                        "Alice Sender <alice@example.org> <portcullis@localhost>");
    assert_string_equal(field_raw(n, "Subject"), " =?utf-8?B?SW52b2ljZSBmb3IgSmFudWFyeQ==?=\r\n");
    assert_string_equal(field_text(n, "To"), "Bob <bob@example.com>, Carol <carol@example.com> :;");
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000");
    assert_null(header(n, "Message-ID")); /* a notice is not the original message */
    assert_string_equal(header(n, "MIME-Version"), "1.0");
    assert_string_equal(header(n, "Content-Type"), "text/plain; charset=utf-8");
    assert_string_equal(header(n, "Content-Transfer-Encoding"), "7bit");
    assert_string_equal(header(n, "X-Portcullis-Verdict"),
                        "infected; signature=Portcullis.Test.EICAR-NDB.UNOFFICIAL; "
                        "ref=20250106-a1b2c3d4e5f6");
    /* Fields not in the list are not copied. */
    assert_null(header(n, "Return-Path"));
    assert_null(header(n, "Received"));
    const char *end = strstr(n, "\r\n\r\n");
    assert_null(memmem(n, (size_t)(end - n), "alice@example.org", 17));
    const char *body = end + 4;
    assert_non_null(strstr(body, "because it contains malware."));
    assert_non_null(strstr(body, "Threat:     Portcullis.Test.EICAR-NDB.UNOFFICIAL\r\n"));
    assert_non_null(strstr(body, "Reference:  20250106-a1b2c3d4e5f6\r\n"));
    assert_non_null(strstr(body, "Subject:    Invoice for January\r\n"));
    assert_non_null(strstr(body, "From:       Alice Sender <alice@example.org>\r\n"));
    assert_null(strstr(body, "not a header"));
    free(n);
}

static void test_blocked_and_template(void **state)
{
    (void)state;
    struct notice_params np = {
        .verdict = NOTICE_BLOCKED,
        .reason_code = "oversize",
        .reason_text = "it is larger than 25 MiB",
        .ref = "R1",
        .tmpl = "Hi,\nblocked (%verdict%) because %reason%.\r\nsig=%signature% ref=%ref% "
                "100%% sure %unknown% %from%|%to%|%date%|%message_id%|%subject%\nend 50%"};
    size_t len;
    char *n = build(&np, ORIG, sizeof ORIG - 1, &len);
    assert_string_equal(header(n, "X-Portcullis-Verdict"), "blocked; reason=oversize; ref=R1");
    const char *body = strstr(n, "\r\n\r\n") + 4;
    assert_string_equal(body, "Hi,\r\nblocked (blocked) because it is larger than 25 MiB.\r\n"
                              "sig=- ref=R1 100% sure %unknown% Alice Sender "
                              "<alice@example.org>|Bob <bob@example.com>, Carol "
                              "<carol@example.com>|Mon, 06 Jan 2025 10:00:00 "
                              "+0000|<abc123@example.org>|Invoice for January\r\nend 50%\r\n");
    free(n);
}

static void test_missing_headers(void **state)
{
    (void)state;
    static const char orig[] = "X-Only: 1\r\n\r\nbody\r\n";
    struct notice_params np = {.verdict = NOTICE_INFECTED, .signature = "S", .ref = "R"};
    size_t len;
    char *n = build(&np, orig, sizeof orig - 1, &len);
    assert_string_equal(header(n, "From"), "Portcullis <portcullis@localhost>");
    assert_string_equal(header(n, "Date"), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_string_equal(header(n, "Subject"), "(no subject)");
    assert_null(header(n, "To"));
    assert_null(header(n, "Message-ID"));
    free(n);

    /* No header at all, empty input, LF-only input. */
    n = build(&np, "\r\nbody only\r\n", 13, &len);
    assert_string_equal(header(n, "Subject"), "(no subject)");
    free(n);
    n = build(&np, "", 0, &len);
    free(n);
    n = build(&np, NULL, 0, &len);
    free(n);
    static const char lf[] = "subject: lower case\nFROM:x@y\nDate: junk\n\nbody\n";
    np.date_fallback = 1736157600; /* 2025-01-06 10:00:00 UTC */
    n = build(&np, lf, sizeof lf - 1, &len);
    assert_string_equal(field_text(n, "Subject"), "lower case");
    assert_string_equal(field_text(n, "From"), "x@y <portcullis@localhost>");
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000"); /* junk: ours */
    free(n);
    /* Dates are printed by us: other forms and zones, a comment. */
    static const char d2[] = "Date: 6 Jan 2025 10:00 -0130 (weird)\r\n\r\n";
    n = build(&np, d2, sizeof d2 - 1, &len);
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 -0130");
    free(n);
}

/* A 5000-byte folded Subject of 2-byte UTF-8 characters: decoded, capped at NOTICE_HEADER_TEXT
 * octets on a character boundary, encoded in words that never split a character. A header with
 * no empty line after it: all header. */
static void test_long_folded_header(void **state)
{
    (void)state;
    size_t cap = 20000, o = 0;
    char *orig = malloc(cap);
    assert_non_null(orig);
    o += (size_t)sprintf(orig, "From: a@b\r\nSubject:");
    for (int i = 0; i < 2500; i++) {
        if (i % 30 == 0)
            o += (size_t)sprintf(orig + o, "\r\n ");
        memcpy(orig + o, "\xc3\xa9", 2);
        o += 2;
    }
    o += (size_t)sprintf(orig + o, "\r\nTo: t@u\r\n");
    struct notice_params np = {.verdict = NOTICE_INFECTED, .signature = "S", .ref = "R"};
    size_t len;
    char *n = build(&np, orig, o, &len);
    const char *subj = field_text(n, "Subject");
    assert_non_null(subj);
    size_t sl = strlen(subj);
    assert_true(sl <= NOTICE_HEADER_TEXT);
    assert_true(sl >= NOTICE_HEADER_TEXT - 4);
    /* Valid UTF-8 throughout: pairs of c3 a9, with single spaces where folds were. */
    for (size_t i = 0; i < sl;) {
        if (subj[i] == ' ') {
            i++;
            continue;
        }
        assert_int_equal((unsigned char)subj[i], 0xc3);
        assert_true(i + 1 < sl);
        assert_int_equal((unsigned char)subj[i + 1], 0xa9);
        i += 2;
    }
    /* each encoded-word decodes alone to whole characters */
    char *raw = field_raw(n, "Subject");
    for (char *w = strstr(raw, "=?utf-8?B?"); w; w = strstr(w + 2, "=?utf-8?B?")) {
        char *we = strstr(w + 10, "?=");
        char one[128];
        bool clean;
        r2047_decode(w, (size_t)(we + 2 - w), one, sizeof one - 1, &clean);
        assert_true(clean);
    }
    assert_string_equal(field_text(n, "To"), "t@u :;");
    assert_string_equal(header(n, "Content-Transfer-Encoding"), "8bit"); /* é in the body */
    const char *body = strstr(n, "\r\n\r\n") + 4;
    assert_non_null(strstr(body, "...\r\n")); /* the body shows NOTICE_SHOW_MAX octets */
    free(n);
    free(orig);
}

/* Peer-controlled bytes cannot add header lines or break the verdict header. */
static void test_injection(void **state)
{
    (void)state;
    static const char orig[] = "Subject: hi\rBcc: evil@x\r\nFrom: a\x00\x01@b\r\n\r\n";
    struct notice_params np = {
        .verdict = NOTICE_INFECTED, .signature = "Evil; ref=fake\r\nBcc: x@y \"q\"", .ref = "R"};
    size_t len;
    char *n = build(&np, orig, sizeof orig - 1, &len);
    assert_null(header(n, "Bcc"));
    assert_string_equal(field_text(n, "Subject"), "hi Bcc: evil@x");
    assert_string_equal(field_text(n, "From"), "a@b <portcullis@localhost>");
    assert_string_equal(header(n, "X-Portcullis-Verdict"),
                        "infected; signature=\"Evil; ref=fakeBcc: x@y \\\"q\\\"\"; ref=R");
    /* a From that held control bytes is described, not shown, in the body */
    const char *body = strstr(n, "\r\n\r\n") + 4;
    assert_non_null(strstr(body, "From:       (8 bytes, sha256 "));
    free(n);
}

#define EICAR_STR "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

/* EICAR in header fields, raw and RFC 2047-encoded: the notice never holds it whole (the header
 * has our encoded-words, the body at most NOTICE_SHOW_MAX < 68 octets), and the scan buffer
 * holds it decoded, where a scanner finds it. */
static void test_no_raw_header_bytes(void **state)
{
    (void)state;
    static const char *const origs[] = {
        "From: a@b\r\nSubject: " EICAR_STR "\r\n\r\nx\r\n",
        /* base64 of EICAR */
        "Subject: =?us-ascii?B?WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElW"
        "SVJVUy1URVNULUZJTEUhJEgrSCo=?=\r\n\r\n",
        "Subject: =?us-ascii?Q?X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H"
        "+H*?=\r\n\r\n",
        "From: \"" EICAR_STR "\" <e@x>\r\n\r\n",
        "To: a@b, \"" EICAR_STR "\" <e@x>, c@d\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof origs / sizeof origs[0]; i++) {
        struct notice_params np = {.verdict = NOTICE_INFECTED, .signature = "S", .ref = "R"};
        size_t len;
        char *n = build(&np, origs[i], strlen(origs[i]), &len);
        assert_null(memmem(n, len, EICAR_STR, 68));
        assert_null(memmem(n, len, EICAR_STR, 61)); /* not even 61 octets of it */
        char *sb;
        size_t sbl;
        assert_true(notice_scan_buffer(n, len, origs[i], strlen(origs[i]), &sb, &sbl));
        assert_true(sbl > len && memcmp(sb, n, len) == 0);
        assert_non_null(memmem(sb + len, sbl - len, EICAR_STR, 68));
        free(sb);
        free(n);
    }
}

/* DESCRIBE and MINIMAL: nothing of the original's text. */
static void test_modes(void **state)
{
    (void)state;
    struct notice_params np = {.verdict = NOTICE_INFECTED,
                               .signature = "Sig",
                               .ref = "R9",
                               .tmpl = "%subject% %from% %to% %message_id% %date%",
                               .date_fallback = 1736157600};
    size_t len;
    np.mode = NOTICE_DESCRIBE;
    char *n = build(&np, ORIG, sizeof ORIG - 1, &len);
    assert_null(memmem(n, len, "Invoice", 7));
    assert_null(memmem(n, len, "alice", 5));
    assert_null(memmem(n, len, "abc123", 6));
    assert_string_equal(header(n, "From"), "Portcullis <portcullis@localhost>");
    assert_null(header(n, "To"));
    const char *d = n;
    int described = 0;
    while ((d = strstr(d, " bytes, sha256 ")) != NULL) {
        described++;
        d++;
    }
    assert_int_equal(described, 4); /* subject, from, to, message-id */
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000"); /* parsed */
    free(n);
    np.mode = NOTICE_MINIMAL;
    n = build(&np, ORIG, sizeof ORIG - 1, &len);
    assert_null(memmem(n, len, "Invoice", 7));
    assert_null(memmem(n, len, "alice", 5));
    assert_null(memmem(n, len, "sha256", 6));
    assert_non_null(memmem(n, len, "Reference:  R9", 14));
    assert_non_null(memmem(n, len, "Threat:     Sig", 15));
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000"); /* fallback */
    assert_string_equal(header(n, "X-Portcullis-Verdict"), "infected; signature=Sig; ref=R9");
    free(n);
}

static void test_r2047_decode(void **state)
{
    (void)state;
    char out[256];
    bool clean;
    static const struct {
        const char *in, *want;
        bool clean;
    } v[] = {
        {"plain text", "plain text", true},
        {"  lots \t of\r\n  space  ", "lots of space", true},
        {"=?utf-8?B?SGVsbG8=?= =?UTF-8?q?_W=C3=B6rld?=", "Hello W\xc3\xb6rld", true},
        {"=?iso-8859-1?Q?J=FCrgen?= x", "J\xc3\xbcrgen x", true},
        {"=?utf-8*en?B?aGk=?=", "hi", true},
        {"a =?utf-8?B?aGk=?= b", "a hi b", true},
        {"=?utf-8?X?bad?= =?utf-8?B?aGk=?=", "=?utf-8?X?bad?= hi", true},
        {"=?utf-8?B?aGk", "=?utf-8?B?aGk", true},
        {"=?koi8-r?B?4uXr?=", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", false}, /* not UTF-8 */
        {"a\x01"
         "b\x7f"
         "c",
         "abc", false},
        {"=?utf-8?Q?a=00b?=", "ab", false},
        {"x\xe2\x80\xaey", "xy", false},                 /* U+202E RIGHT-TO-LEFT OVERRIDE */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd", false}, /* overlong */
        {"\xef\xbf\xbd", "\xef\xbf\xbd", true},          /* a real U+FFFD */
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = r2047_decode(v[i].in, strlen(v[i].in), out, sizeof out - 1, &clean);
        if (strcmp(out, v[i].want) != 0 || n != strlen(v[i].want) || clean != v[i].clean)
            fail_msg("case %zu: got \"%s\" clean=%d", i, out, clean);
    }
    /* cap on a character boundary */
    size_t n = r2047_decode("\xc3\xa9\xc3\xa9\xc3\xa9", 6, out, 5, &clean);
    assert_int_equal(n, 4);
    assert_string_equal(out, "\xc3\xa9\xc3\xa9");
}

static void test_r2047_field(void **state)
{
    (void)state;
    char out[R2047_FIELD_CAP];
    size_t n = r2047_field("Subject", "hi", 2, NULL, out, sizeof out);
    assert_string_equal(out, "Subject: =?utf-8?B?aGk=?=\r\n");
    assert_int_equal(n, strlen(out));
    n = r2047_field("From", "", 0, "<a@b>", out, sizeof out);
    assert_string_equal(out, "From: <a@b>\r\n");
    /* too small a buffer, too long a text */
    assert_int_equal(r2047_field("Subject", "hi", 2, NULL, out, 10), 0);
    char big[R2047_TEXT_MAX + 2];
    memset(big, 'a', sizeof big);
    assert_int_equal(r2047_field("Subject", big, sizeof big, NULL, out, sizeof out), 0);
    /* every length up to the maximum, ASCII and 3-byte characters: lines <= 78, words <= 75,
     * and decoding the unfolded field gives the text back */
    for (int k = 0; k < 2; k++) {
        for (size_t len = 1; len <= R2047_TEXT_MAX; len += (len < 100 ? 1 : 37)) {
            size_t tl = 0;
            while (tl + 3 <= len) {
                memcpy(big + tl, k ? "\xe2\x82\xac" : "abc", 3);
                tl += 3;
            }
            if (tl == 0)
                continue;
            n = r2047_field("Subject", big, tl, k ? ":;" : NULL, out, sizeof out);
            assert_true(n > 0);
            char msg[R2047_FIELD_CAP + 8];
            snprintf(msg, sizeof msg, "%s\r\n", out);
            assert_header_strict(msg);
            char back[R2047_FIELD_CAP];
            r2047_decode(out + 8, n - 8, back, sizeof back - 1, NULL);
            if (k)
                assert_true(strlen(back) == tl + 3 && memcmp(back, big, tl) == 0);
            else
                assert_true(strlen(back) == tl && memcmp(back, big, tl) == 0);
        }
    }
}

static void test_deterministic_and_bounded(void **state)
{
    (void)state;
    struct notice_params np = {.verdict = NOTICE_INFECTED, .signature = "S", .ref = "R"};
    size_t l1, l2;
    char *a = build(&np, ORIG, sizeof ORIG - 1, &l1);
    char *b = build(&np, ORIG, sizeof ORIG - 1, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(a, b, l1);
    free(a);
    free(b);
    /* A template that expands past NOTICE_BODY_MAX is cut; lines stay <= 998 octets. */
    char tmpl[4096];
    for (size_t i = 0; i < 400; i++)
        memcpy(tmpl + 10 * i, "%subject% ", 10);
    tmpl[4000] = '\0';
    np.tmpl = tmpl;
    char *c = build(&np, ORIG, sizeof ORIG - 1, &l1);
    const char *body = strstr(c, "\r\n\r\n") + 4;
    assert_true(strlen(body) <= NOTICE_BODY_MAX + 2);
    free(c);
}

static void test_sha256(void **state)
{
    (void)state;
    unsigned char d[SHA256_LEN];
    char hex[2 * SHA256_LEN + 1];
    notice_sha256("abc", 3, d);
    assert_string_equal(notice_hex(d, SHA256_LEN, hex),
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    notice_sha256("", 0, d);
    assert_string_equal(notice_hex(d, SHA256_LEN, hex),
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_quarantine(void **state)
{
    (void)state;
    char dir[] = "/tmp/pc-quar-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *err = NULL;
    assert_true(quarantine_write(dir, "20250106-abc", "hello\r\n", 7, &err));
    assert_null(err);
    char path[128];
    snprintf(path, sizeof path, "%s/20250106-abc.eml", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 7);
    /* Never overwrites. */
    assert_false(quarantine_write(dir, "20250106-abc", "x", 1, &err));
    assert_non_null(strstr(err, "File exists"));
    free(err);
    /* Reference ids are file names: no traversal. */
    assert_false(quarantine_write(dir, "../etc", "x", 1, &err));
    free(err);
    assert_false(quarantine_write(dir, "a/b", "x", 1, &err));
    free(err);
    assert_false(quarantine_write(dir, "", "x", 1, &err));
    free(err);
    assert_false(quarantine_write("/nonexistent", "r", "x", 1, &err));
    free(err);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_infected_notice),
        cmocka_unit_test(test_blocked_and_template),
        cmocka_unit_test(test_missing_headers),
        cmocka_unit_test(test_long_folded_header),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_deterministic_and_bounded),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_quarantine),
        cmocka_unit_test(test_no_raw_header_bytes),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_r2047_decode),
        cmocka_unit_test(test_r2047_field),
    };
    return cmocka_run_group_tests_name("notice", tests, NULL, NULL);
}
