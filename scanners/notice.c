/*
 * notice — builds the replacement message (see notice.h for the contract).
 *
 * Header handling follows RFC 5322: the header section ends at the first empty line; a field
 * is `name ":" value`; a line starting with SP or HTAB continues the previous field (unfolding
 * = removing the CRLF before that whitespace, section 3.2.2). Names compare case-insensitively.
 * Peer bytes are never trusted to be well formed: lines may end in LF alone, and a message
 * without an empty line is all header. No byte of a field value is copied: rfc2047.c decodes
 * it to checked text and encodes that again; the Date is parsed and printed by us.
 */
#include "notice.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "rfc2047.h"

#define LINE_MAX_OCTETS 998 /* RFC 5322 2.1.1, CRLF excluded */

/* NOTICE_MINIMAL: fixed, nothing of the original. */
static const char minimal_template[] =
    "This message was withheld by the mail security gateway because %reason%.\n"
    "\n"
    "    Threat:     %signature%\n"
    "    Reference:  %ref%\n"
    "\n"
    "Contact your IT security team and quote the reference above.\n";

static const char our_from[] = "Portcullis <portcullis@localhost>";
static const char our_addr[] = "<portcullis@localhost>";

const char notice_default_template[] =
    "This message was withheld by the mail security gateway because %reason%.\n"
    "\n"
    "    Threat:     %signature%\n"
    "    Reference:  %ref%\n"
    "    From:       %from%\n"
    "    Subject:    %subject%\n"
    "    Date:       %date%\n"
    "\n"
    "The original message has not been delivered to this device; it is still on the\n"
    "mail server. If you need it, contact your IT security team and quote the\n"
    "reference above.\n";

/* ---- growable output --------------------------------------------------------------------- */

struct out {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->oom || n == 0)
        return;
    if (!o->p || o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->oom = true;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* ---- header fields ----------------------------------------------------------------------- */

enum field { F_FROM, F_TO, F_DATE, F_SUBJECT, F_MSGID, F_COUNT };
static const char *const field_names[F_COUNT] = {"From", "To", "Date", "Subject", "Message-ID"};

struct fields {
    char raw[F_COUNT][NOTICE_RAW_MAX]; /* unfolded value as received (CR/LF kept), capped */
    size_t raw_len[F_COUNT];
    bool have[F_COUNT];
    char text[F_COUNT][NOTICE_HEADER_TEXT + 1]; /* decoded display text (rfc2047.h) */
    size_t text_len[F_COUNT];
    bool clean[F_COUNT]; /* nothing but printable text in it */
};

/* Length of the header section: up to (excluding) the first empty line, or all of it. */
static size_t header_len(const char *m, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (m[i] == '\n' || (m[i] == '\r' && i + 1 < len && m[i + 1] == '\n'))
            return i;
        const char *nl = memchr(m + i, '\n', len - i);
        if (!nl)
            return len;
        i = (size_t)(nl - m) + 1;
    }
    return len;
}

/* Where to cut UTF-8 text at or before `n` so that no multi-byte sequence is split: s[n] (which
 * must be readable) is the first byte left out. */
static size_t utf8_cut(const char *s, size_t n)
{
    size_t k = n;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

static void parse_fields(const char *m, size_t len, struct fields *f)
{
    memset(f->have, 0, sizeof f->have);
    if (len > NOTICE_HEADER_SCAN)
        len = NOTICE_HEADER_SCAN;
    size_t hl = header_len(m, len), i = 0;
    while (i < hl) {
        /* One logical field: this line plus its continuation lines. */
        size_t start = i, end = i;
        for (;;) {
            const char *nl = memchr(m + end, '\n', hl - end);
            end = nl ? (size_t)(nl - m) + 1 : hl;
            if (end >= hl || (m[end] != ' ' && m[end] != '\t'))
                break;
        }
        i = end;
        const char *colon = memchr(m + start, ':', end - start);
        if (!colon)
            continue; /* not a field (an mbox "From " line, junk): skip */
        size_t nlen = (size_t)(colon - (m + start));
        while (nlen > 0 && (m[start + nlen - 1] == ' ' || m[start + nlen - 1] == '\t'))
            nlen--;
        for (int k = 0; k < F_COUNT; k++) {
            if (f->have[k] || strlen(field_names[k]) != nlen ||
                strncasecmp(m + start, field_names[k], nlen) != 0)
                continue;
            /* Unfolding happens in r2047_decode (CR/LF are whitespace there). */
            const char *v = colon + 1;
            size_t vl = (size_t)((m + end) - v);
            if (vl > NOTICE_RAW_MAX)
                vl = NOTICE_RAW_MAX;
            memcpy(f->raw[k], v, vl);
            f->raw_len[k] = vl;
            f->have[k] = true;
            f->text_len[k] =
                r2047_decode(f->raw[k], vl, f->text[k], NOTICE_HEADER_TEXT, &f->clean[k]);
        }
    }
}

/* ---- header parameters ------------------------------------------------------------------- */

/* RFC 2045 token characters. */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?=", c))
            return false;
    }
    return true;
}

/* name=value as a token, or as a quoted-string with controls and 8-bit bytes dropped. */
static void put_param(struct out *o, const char *name, const char *value)
{
    char buf[2 * 200 + 3];
    size_t n = 0;
    puts_(o, "; ");
    puts_(o, name);
    puts_(o, "=");
    if (is_token(value) && strlen(value) <= 200) {
        puts_(o, value);
        return;
    }
    buf[n++] = '"';
    for (const char *s = value; *s && n < sizeof buf - 3; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c >= 0x7f)
            continue;
        if (c == '"' || c == '\\')
            buf[n++] = '\\';
        buf[n++] = (char)c;
    }
    buf[n++] = '"';
    put(o, buf, n);
}

/* ---- body -------------------------------------------------------------------------------- */

struct subst {
    const char *name;
    const char *value;
};

/* Emit body text with CRLF line ends and hard breaks at LINE_MAX_OCTETS. `col` tracks the
 * current line length across calls. */
static void put_body(struct out *o, const char *s, size_t n, size_t *col)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r')
            continue; /* CRLF and bare CR: the LF (or nothing) decides */
        if (c == '\n') {
            put(o, "\r\n", 2);
            *col = 0;
            continue;
        }
        if (c == '\0')
            continue;
        if (*col == LINE_MAX_OCTETS) {
            put(o, "\r\n", 2);
            *col = 0;
        }
        put(o, &c, 1);
        (*col)++;
    }
}

static void expand_template(struct out *o, const char *t, const struct subst *subs, size_t nsubs)
{
    size_t col = 0, start = o->len;
    while (*t && o->len - start < NOTICE_BODY_MAX) {
        const char *pct = strchr(t, '%');
        if (!pct) {
            put_body(o, t, strlen(t), &col);
            break;
        }
        put_body(o, t, (size_t)(pct - t), &col);
        t = pct;
        if (t[1] == '%') {
            put_body(o, "%", 1, &col);
            t += 2;
            continue;
        }
        const char *end = strchr(t + 1, '%');
        bool done = false;
        for (size_t i = 0; end && i < nsubs && !done; i++) {
            size_t nl = strlen(subs[i].name);
            if ((size_t)(end - t - 1) == nl && strncmp(t + 1, subs[i].name, nl) == 0) {
                put_body(o, subs[i].value, strlen(subs[i].value), &col);
                t = end + 1;
                done = true;
            }
        }
        if (!done) {
            put_body(o, "%", 1, &col);
            t++;
        }
    }
    if (o->len - start > NOTICE_BODY_MAX) {
        o->len = start + utf8_cut(o->p + start, NOTICE_BODY_MAX);
        while (o->len > start && o->p[o->len - 1] == '\r')
            o->len--;
    }
    /* End on a line break. */
    if (o->len < 2 || o->p[o->len - 1] != '\n')
        put(o, "\r\n", 2);
}

static bool has_8bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return true;
    return false;
}

/* ---- the notice -------------------------------------------------------------------------- */

static void put_field(struct out *o, const char *name, const char *value)
{
    puts_(o, name);
    puts_(o, ": ");
    puts_(o, value);
    puts_(o, "\r\n");
}

/* A field with our encoded-words (rfc2047.h); `fallback` (ours, plain ASCII) when the decoded
 * text is empty. */
static void put_encoded(struct out *o, const char *name, const char *text, size_t n,
                        const char *trailer, const char *fallback)
{
    if (n == 0) {
        put_field(o, name, fallback);
        return;
    }
    char buf[R2047_FIELD_CAP];
    size_t k = r2047_field(name, text, n, trailer, buf, sizeof buf);
    if (k)
        put(o, buf, k);
    else
        put_field(o, name, fallback); /* not reached: the text is capped below the limit */
}

/* The original's Date, parsed and printed again by us (RFC 5322 3.3, with or without the day
 * name and the seconds; a trailing comment such as "(UTC)" allowed). False: none we can read. */
static bool parse_date(const char *t, char *out, size_t cap)
{
    static const char *const fmts[] = {"%a, %d %b %Y %H:%M:%S %z", "%d %b %Y %H:%M:%S %z",
                                       "%a, %d %b %Y %H:%M %z", "%d %b %Y %H:%M %z"};
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(t, fmts[i], &tm);
        if (!end)
            continue;
        while (*end == ' ')
            end++;
        if (*end == '(') {
            const char *close = strchr(end, ')');
            end = close ? close + 1 : end;
        }
        if (*end != '\0' || tm.tm_year < 0 || tm.tm_year > 8099)
            continue;
        long off = tm.tm_gmtoff / 60;
        if (off < -1439 || off > 1439)
            continue;
        char day[32];
        if (strftime(day, sizeof day, "%a, %d %b %Y %H:%M:%S", &tm) == 0)
            continue;
        snprintf(out, cap, "%s %c%02ld%02ld", day, off < 0 ? '-' : '+', labs(off) / 60,
                 labs(off) % 60);
        return true;
    }
    return false;
}

/* How the body shows one original field (see notice.h). */
static void describe(const struct fields *f, int k, bool show, const char *none, char *out,
                     size_t cap)
{
    if (!f->have[k]) {
        snprintf(out, cap, "%s", none);
        return;
    }
    if (show && f->clean[k]) {
        size_t n = f->text_len[k];
        if (n == 0) {
            snprintf(out, cap, "%s", none);
            return;
        }
        bool cut = n > NOTICE_SHOW_MAX;
        if (cut)
            n = utf8_cut(f->text[k], NOTICE_SHOW_MAX);
        snprintf(out, cap, "%.*s%s", (int)n, f->text[k], cut ? "..." : "");
        return;
    }
    unsigned char sha[SHA256_LEN];
    char hex[2 * SHA256_LEN + 1];
    notice_sha256(f->raw[k], f->raw_len[k], sha);
    notice_hex(sha, 8, hex);
    snprintf(out, cap, "(%zu bytes, sha256 %s)", f->raw_len[k], hex);
}

bool notice_build(const struct notice_params *np, const char *orig, size_t orig_len, char **out_r,
                  size_t *len_r)
{
    *out_r = NULL;
    *len_r = 0;
    struct fields *f = calloc(1, sizeof *f);
    if (!f)
        return false;
    enum notice_mode mode = np->mode;
    if (mode != NOTICE_MINIMAL)
        parse_fields(orig ? orig : "", orig ? orig_len : 0, f);

    bool infected = np->verdict == NOTICE_INFECTED;
    const char *sig = np->signature && np->signature[0] ? np->signature : NULL;
    const char *ref = np->ref && np->ref[0] ? np->ref : "none";
    char date[96];
    if (!f->have[F_DATE] || !parse_date(f->text[F_DATE], date, sizeof date)) {
        struct tm tm;
        time_t t = np->date_fallback;
        gmtime_r(&t, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    }
    const char *reason = np->reason_text ? np->reason_text
                         : infected      ? "it contains malware"
                                         : "it could not be checked for malware";

    /* The body first: its 8-bit content decides the transfer encoding. */
    bool show = mode == NOTICE_FULL;
    char subj[NOTICE_SHOW_MAX + 64], from[NOTICE_SHOW_MAX + 64], to[NOTICE_SHOW_MAX + 64],
        mid[NOTICE_SHOW_MAX + 64];
    describe(f, F_SUBJECT, show, "(no subject)", subj, sizeof subj);
    describe(f, F_FROM, show, "(unknown)", from, sizeof from);
    describe(f, F_TO, show, "(unknown)", to, sizeof to);
    describe(f, F_MSGID, show, "(none)", mid, sizeof mid);
    struct out body = {0};
    const struct subst subs[] = {
        {"signature", sig ? sig : "-"},
        {"ref", ref},
        {"subject", subj},
        {"from", from},
        {"to", to},
        {"date", date},
        {"message_id", mid},
        {"reason", reason},
        {"verdict", infected ? "infected" : "blocked"},
    };
    const char *tmpl = mode == NOTICE_MINIMAL    ? minimal_template
                       : np->tmpl && np->tmpl[0] ? np->tmpl
                                                 : notice_default_template;
    expand_template(&body, tmpl, subs, sizeof subs / sizeof subs[0]);

    struct out o = {0};
    if (show) {
        put_encoded(&o, "From", f->text[F_FROM], f->text_len[F_FROM], our_addr, our_from);
        if (f->text_len[F_TO])
            put_encoded(&o, "To", f->text[F_TO], f->text_len[F_TO], ":;", "");
        put_field(&o, "Date", date);
        put_encoded(&o, "Subject", f->text[F_SUBJECT], f->text_len[F_SUBJECT], NULL,
                    "(no subject)");
    } else {
        put_field(&o, "From", our_from);
        put_field(&o, "Date", date);
        put_field(&o, "Subject", "Message withheld by the mail security gateway");
    }
    put_field(&o, "MIME-Version", "1.0");
    put_field(&o, "Content-Type", "text/plain; charset=utf-8");
    put_field(&o, "Content-Transfer-Encoding",
              body.p && has_8bit(body.p, body.len) ? "8bit" : "7bit");
    puts_(&o, "X-Portcullis-Verdict: ");
    if (infected) {
        puts_(&o, "infected");
        put_param(&o, "signature", sig ? sig : "unknown");
    } else {
        puts_(&o, "blocked");
        put_param(&o, "reason", np->reason_code && np->reason_code[0] ? np->reason_code : "policy");
    }
    put_param(&o, "ref", ref);
    puts_(&o, "\r\n\r\n");
    if (body.p)
        put(&o, body.p, body.len);
    bool ok = !o.oom && !body.oom && o.p;
    free(body.p);
    free(f);
    if (!ok) {
        free(o.p);
        return false;
    }
    *out_r = o.p;
    *len_r = o.len;
    return true;
}

bool notice_scan_buffer(const char *notice, size_t nlen, const char *orig, size_t orig_len,
                        char **buf_r, size_t *len_r)
{
    *buf_r = NULL;
    *len_r = 0;
    struct fields *f = calloc(1, sizeof *f);
    if (!f)
        return false;
    parse_fields(orig ? orig : "", orig ? orig_len : 0, f);
    struct out o = {0};
    put(&o, notice, nlen);
    puts_(&o, "\r\n");
    for (int k = 0; k < F_COUNT; k++) {
        if (!f->have[k])
            continue;
        put(&o, f->text[k], f->text_len[k]);
        puts_(&o, "\r\n");
    }
    free(f);
    if (o.oom || !o.p) {
        free(o.p);
        return false;
    }
    *buf_r = o.p;
    *len_r = o.len;
    return true;
}

/* ---- sha256 ------------------------------------------------------------------------------ */

void notice_sha256(const void *buf, size_t len, unsigned char out[SHA256_LEN])
{
    unsigned int n = 0;
    if (!EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL) || n != SHA256_LEN)
        memset(out, 0, SHA256_LEN); /* only without a working libcrypto */
}

char *notice_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}
