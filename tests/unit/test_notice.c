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
    /* Every header line is a field. */
    const char *end = strstr(m, "\r\n\r\n");
    assert_non_null(end);
    for (const char *p = m; p < end;) {
        const char *nl = strstr(p, "\r\n");
        const char *colon = memchr(p, ':', (size_t)(nl - p));
        assert_non_null(colon);
        assert_true(colon > p);
        for (const char *q = p; q < colon; q++)
            assert_true(*q > 32 && *q < 127);
        p = nl + 2;
    }
}

/* The value of header `name` in the notice (exact line match), or NULL. */
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

static char *build(const struct notice_params *np, const char *orig, size_t len, size_t *len_r)
{
    char *out = NULL;
    assert_true(notice_build(np, orig, len, &out, len_r));
    assert_non_null(out);
    assert_int_equal(strlen(out), *len_r);
    assert_well_formed(out, *len_r);
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
    assert_string_equal(header(n, "From"), "Alice Sender <alice@example.org>");
    assert_string_equal(header(n, "To"), "Bob <bob@example.com>, Carol <carol@example.com>");
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000");
    assert_string_equal(header(n, "Subject"), "Invoice  for January");
    assert_string_equal(header(n, "Message-ID"), "<abc123@example.org>");
    assert_string_equal(header(n, "MIME-Version"), "1.0");
    assert_string_equal(header(n, "Content-Type"), "text/plain; charset=utf-8");
    assert_string_equal(header(n, "Content-Transfer-Encoding"), "7bit");
    assert_string_equal(header(n, "X-Portcullis-Verdict"),
                        "infected; signature=Portcullis.Test.EICAR-NDB.UNOFFICIAL; "
                        "ref=20250106-a1b2c3d4e5f6");
    /* Fields not in the list are not copied. */
    assert_null(header(n, "Return-Path"));
    assert_null(header(n, "Received"));
    const char *body = strstr(n, "\r\n\r\n") + 4;
    assert_non_null(strstr(body, "because it contains malware."));
    assert_non_null(strstr(body, "Threat:     Portcullis.Test.EICAR-NDB.UNOFFICIAL\r\n"));
    assert_non_null(strstr(body, "Reference:  20250106-a1b2c3d4e5f6\r\n"));
    assert_non_null(strstr(body, "Subject:    Invoice  for January\r\n"));
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
                              "+0000|<abc123@example.org>|Invoice  for January\r\nend 50%\r\n");
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
    static const char lf[] = "subject: lower case\nFROM:x@y\n\nbody\n";
    np.date_fallback = 1736157600; /* 2025-01-06 10:00:00 UTC */
    n = build(&np, lf, sizeof lf - 1, &len);
    assert_string_equal(header(n, "Subject"), "lower case");
    assert_string_equal(header(n, "From"), "x@y");
    assert_string_equal(header(n, "Date"), "Mon, 06 Jan 2025 10:00:00 +0000");
    free(n);
}

/* A 5000-byte folded Subject of 2-byte UTF-8 characters: cut to at most NOTICE_FIELD_MAX bytes,
 * on a character boundary, still one line. A header with no empty line after it: all header. */
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
    const char *subj = header(n, "Subject");
    assert_non_null(subj);
    size_t sl = strlen(subj);
    assert_true(sl <= NOTICE_FIELD_MAX);
    assert_true(sl >= NOTICE_FIELD_MAX - 40);
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
    assert_string_equal(header(n, "To"), "t@u");
    assert_string_equal(header(n, "Content-Transfer-Encoding"), "8bit"); /* é in the body */
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
    assert_string_equal(header(n, "Subject"), "hiBcc: evil@x");
    assert_string_equal(header(n, "From"), "a@b");
    assert_string_equal(header(n, "X-Portcullis-Verdict"),
                        "infected; signature=\"Evil; ref=fakeBcc: x@y \\\"q\\\"\"; ref=R");
    free(n);
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
        cmocka_unit_test(test_infected_notice), cmocka_unit_test(test_blocked_and_template),
        cmocka_unit_test(test_missing_headers), cmocka_unit_test(test_long_folded_header),
        cmocka_unit_test(test_injection),       cmocka_unit_test(test_deterministic_and_bounded),
        cmocka_unit_test(test_sha256),          cmocka_unit_test(test_quarantine),
    };
    return cmocka_run_group_tests_name("notice", tests, NULL, NULL);
}
