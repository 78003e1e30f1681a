/*
 * libFuzzer harness for proxy/imap_allow.c (issue 15): arbitrary command lines and capability
 * lines. The first byte picks the mode bits, the rest is the input.
 *
 * Properties checked, abort() on any violation:
 *  - no crash, no read outside the input (ASan), every refusal has a reason and a text;
 *  - commands: a prefix of a line (not yet complete) is never refused unless the whole line is
 *    refused for the same reason, and never passed when the whole line is judged (FETCH,
 *    SELECT, ENABLE): the relay may decide early without changing the outcome;
 *  - a SELECT/EXAMINE that passes names a mailbox that decodes, no longer than 1 KiB;
 *  - capability lists: every token kept is allowed, filtering twice changes nothing, and the
 *    filter is split-invariant: filtering "A B" gives filter(A) joined with filter(B);
 *  - capability lines: the relay's early decision (imap_allow_caps_response on every prefix)
 *    never says "no list" for a line whose whole decides "list", and a line judged to carry
 *    none is left byte-identical by imap_allow_caps_line.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_allow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_command(const char *p, size_t len)
{
    /* the first line (through LF) is what the relay holds */
    const char *lf = memchr(p, '\n', len);
    size_t ll = lf ? (size_t)(lf - p) + 1 : len;
    bool line_done = lf != NULL;
    bool literal = ll >= 3 && p[ll - 1] == '\n' &&
                   (p[ll - 2] == '}' || (p[ll - 2] == '\r' && p[ll - 3] == '}'));
    struct imap_allow_cmd whole, part;
    enum imap_allow_verdict w = imap_allow_command(p, ll, line_done, literal, &whole);
    if (w == IA_REFUSE)
        CHECK(whole.text && whole.reason != SR_NONE);
    if (!line_done)
        return;
    for (size_t i = 0; i < ll; i++) {
        enum imap_allow_verdict v = imap_allow_command(p, i, false, false, &part);
        if (v == IA_REFUSE)
            CHECK(w == IA_REFUSE && part.reason == whole.reason);
        if (v == IA_PASS && part.kind != IA_NOTAG)
            CHECK(w == IA_PASS && whole.kind != IA_FETCH && whole.kind != IA_SELECT);
    }
    if (w == IA_PASS && whole.kind == IA_SELECT && !whole.mbox_literal) {
        CHECK(whole.mbox_off + whole.mbox_len <= ll);
        char out[IMAP_ALLOW_MAILBOX_MAX];
        long n = imap_allow_mailbox(p + whole.mbox_off, whole.mbox_len, out, sizeof out);
        CHECK(n >= 0 && (size_t)n <= whole.mbox_len);
    }
    if (w == IA_PASS && whole.kind == IA_SELECT && whole.mbox_literal)
        CHECK(whole.mbox_litlen <= IMAP_ALLOW_MAILBOX_MAX);
}

static size_t filt(char *b, size_t n)
{
    return imap_allow_filter_caps(b, n, false);
}

static void check_caps_list(const char *p, size_t len, size_t cut)
{
    char *a = malloc(len + 1), *b = malloc(len + 1), *c = malloc(len + 2);
    CHECK(a && b && c);
    memcpy(a, p, len);
    size_t an = filt(a, len);
    CHECK(an <= len);
    /* every token kept is allowed */
    for (size_t i = 0; i < an;) {
        size_t j = i;
        while (j < an && a[j] != ' ')
            j++;
        CHECK(j > i && imap_allow_cap(a + i, j - i, false));
        i = j + 1;
    }
    memcpy(b, a, an);
    CHECK(filt(b, an) == an && memcmp(a, b, an) == 0);
    /* split at a space: filter(A) + " " + filter(B) == filter(A B) */
    const char *sp = cut < len ? memchr(p + cut, ' ', len - cut) : NULL;
    if (sp) {
        size_t k = (size_t)(sp - p);
        memcpy(b, p, k);
        size_t n1 = filt(b, k);
        memcpy(c, p + k + 1, len - k - 1);
        size_t n2 = filt(c, len - k - 1);
        char *j = malloc(n1 + n2 + 2);
        CHECK(j);
        memcpy(j, b, n1);
        size_t jn = n1;
        if (n1 && n2)
            j[jn++] = ' ';
        memcpy(j + jn, c, n2);
        jn += n2;
        CHECK(jn == an && memcmp(j, a, an) == 0);
        free(j);
    }
    free(a);
    free(b);
    free(c);
}

static void check_caps_line(const char *p, size_t len)
{
    const char *lf = memchr(p, '\n', len);
    if (!lf)
        return;
    size_t ll = (size_t)(lf - p) + 1;
    int whole = imap_allow_caps_response(p, ll, true);
    CHECK(whole == 0 || whole == 1);
    for (size_t i = 1; i < ll; i++) {
        int v = imap_allow_caps_response(p, i, false);
        if (v == 0)
            CHECK(whole == 0);
        if (v == 1)
            CHECK(whole == 1 || i >= 1024);
    }
    char *b = malloc(ll);
    CHECK(b);
    memcpy(b, p, ll);
    size_t n = imap_allow_caps_line(b, ll);
    CHECK(n <= ll);
    if (whole == 0)
        CHECK(n == ll && memcmp(b, p, ll) == 0);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *p = (const char *)data + 2;
    size_t len = size - 2;
    switch (data[0] % 3) {
    case 0:
        check_command(p, len);
        break;
    case 1:
        check_caps_list(p, len, data[1]);
        break;
    default:
        check_caps_line(p, len);
        break;
    }
    /* FETCH arguments and mailbox names on the raw bytes too */
    enum sess_reason why;
    (void)imap_allow_fetch_args(p, len, &why);
    char out[64];
    (void)imap_allow_mailbox(p, len, out, sizeof out);
    return 0;
}
