/*
 * notice — builds the replacement message (see notice.h for the contract).
 *
 * Header handling follows RFC 5322: the header section ends at the first empty line; a field
 * is `name ":" value`; a line starting with SP or HTAB continues the previous field (unfolding
 * = removing the CRLF before that whitespace, section 3.2.2). Names compare case-insensitively.
 * Peer bytes are never trusted to be well formed: bare CR, NUL and other control bytes are
 * dropped, lines may end in LF alone, and a message without an empty line is all header.
 */
#include "notice.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#define LINE_MAX_OCTETS 998 /* RFC 5322 2.1.1, CRLF excluded */

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
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
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
    char v[F_COUNT][NOTICE_FIELD_MAX + 1];
    bool have[F_COUNT];
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

/* Append one unfolded field value: WSP runs kept as they are, controls dropped, HTAB -> SP,
 * bounded at NOTICE_FIELD_MAX. */
static void store_value(char *dst, const char *v, size_t n)
{
    size_t o = 0;
    bool cut = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '\t')
            c = ' ';
        else if (c < 0x20 || c == 0x7f)
            continue;
        if (o == NOTICE_FIELD_MAX) {
            dst[o] = (char)c; /* the first byte left out decides where utf8_cut stops */
            cut = true;
            break;
        }
        dst[o++] = (char)c;
    }
    if (cut)
        o = utf8_cut(dst, o);
    while (o > 0 && dst[o - 1] == ' ')
        o--;
    size_t start = 0;
    while (start < o && dst[start] == ' ')
        start++;
    memmove(dst, dst + start, o - start);
    dst[o - start] = '\0';
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
            /* Unfolding = dropping CR/LF; store_value drops every control byte. */
            const char *v = colon + 1;
            store_value(f->v[k], v, (size_t)((m + end) - v));
            f->have[k] = true;
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

bool notice_build(const struct notice_params *np, const char *orig, size_t orig_len, char **out_r,
                  size_t *len_r)
{
    *out_r = NULL;
    *len_r = 0;
    struct fields *f = malloc(sizeof *f);
    if (!f)
        return false;
    parse_fields(orig ? orig : "", orig ? orig_len : 0, f);

    bool infected = np->verdict == NOTICE_INFECTED;
    const char *sig = np->signature && np->signature[0] ? np->signature : NULL;
    const char *ref = np->ref && np->ref[0] ? np->ref : "none";
    char fallback[64];
    const char *date = fallback;
    if (f->have[F_DATE]) {
        date = f->v[F_DATE];
    } else {
        struct tm tm;
        time_t t = np->date_fallback;
        gmtime_r(&t, &tm);
        strftime(fallback, sizeof fallback, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    }
    const char *reason = np->reason_text ? np->reason_text
                         : infected      ? "it contains malware"
                                         : "it could not be checked for malware";

    /* The body first: its 8-bit content decides the transfer encoding. */
    struct out body = {0};
    const struct subst subs[] = {
        {"signature", sig ? sig : "-"},
        {"ref", ref},
        {"subject", f->have[F_SUBJECT] ? f->v[F_SUBJECT] : "(no subject)"},
        {"from", f->have[F_FROM] ? f->v[F_FROM] : "(unknown)"},
        {"to", f->have[F_TO] ? f->v[F_TO] : "(unknown)"},
        {"date", date},
        {"message_id", f->have[F_MSGID] ? f->v[F_MSGID] : "(none)"},
        {"reason", reason},
        {"verdict", infected ? "infected" : "blocked"},
    };
    const char *tmpl = np->tmpl && np->tmpl[0] ? np->tmpl : notice_default_template;
    expand_template(&body, tmpl, subs, sizeof subs / sizeof subs[0]);

    struct out o = {0};
    put_field(&o, "From", f->have[F_FROM] ? f->v[F_FROM] : "Portcullis <portcullis@localhost>");
    if (f->have[F_TO])
        put_field(&o, "To", f->v[F_TO]);
    put_field(&o, "Date", date);
    put_field(&o, "Subject", f->have[F_SUBJECT] ? f->v[F_SUBJECT] : "(no subject)");
    if (f->have[F_MSGID])
        put_field(&o, "Message-ID", f->v[F_MSGID]);
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
