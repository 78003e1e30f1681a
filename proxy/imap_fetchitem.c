/*
 * imap_fetchitem — see imap_fetchitem.h.
 */
#include "imap_fetchitem.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

void fi_init(struct fetch_items *f)
{
    memset(f, 0, sizeof *f);
}

static bool is_digits(const char *p, size_t n)
{
    if (n == 0 || n > 19)
        return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return true;
}

static uint64_t to_u64(const char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    return v;
}

static void end_token(struct fetch_items *f)
{
    if (f->tok_len == 0 && !f->tok_cut)
        return;
    if (f->tok[0] == '{' || (f->tok_len > 1 && f->tok[0] == '~' && f->tok[1] == '{')) {
        /* A literal header: the value of the name before it. */
        f->lit_depth = f->depth;
        memcpy(f->lit_name, f->last, f->last_len);
        f->lit_name_len = f->last_len;
        f->lit_name_cut = f->last_cut;
        f->prev_uid = false;
    } else if (f->depth == 1) {
        if (f->prev_uid && is_digits(f->tok, f->tok_len))
            f->uid = to_u64(f->tok, f->tok_len);
        f->prev_uid = f->tok_len == 3 && strncasecmp(f->tok, "UID", 3) == 0;
        memcpy(f->last, f->tok, f->tok_len);
        f->last_len = f->tok_len;
        f->last_cut = f->tok_cut;
    }
    f->tok_len = 0;
    f->tok_cut = false;
}

static void add_char(struct fetch_items *f, char c)
{
    if (f->tok_len < sizeof f->tok)
        f->tok[f->tok_len++] = c;
    else
        f->tok_cut = true;
}

void fi_feed(struct fetch_items *f, const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (f->in_quote) {
            if (f->escape)
                f->escape = false;
            else if (c == '\\')
                f->escape = true;
            else if (c == '"')
                f->in_quote = false;
            continue;
        }
        switch (c) {
        case '"':
            end_token(f);
            f->in_quote = true;
            /* a quoted string is a value: what follows it is a name */
            if (f->depth == 1) {
                f->last_len = 0;
                f->last_cut = false;
                f->prev_uid = false;
            }
            break;
        case '[':
            f->bracket++;
            add_char(f, c);
            break;
        case ']':
            if (f->bracket > 0)
                f->bracket--;
            add_char(f, c);
            break;
        case '(':
        case ')':
            if (f->bracket > 0) {
                add_char(f, c);
                break;
            }
            end_token(f);
            f->depth += c == '(' ? 1 : -1;
            if (f->depth < 0)
                f->depth = 0;
            break;
        case ' ':
            if (f->bracket > 0) {
                add_char(f, c);
                break;
            }
            end_token(f);
            break;
        case '\r':
        case '\n':
            f->bracket = 0; /* a line never continues a section */
            end_token(f);
            break;
        default:
            add_char(f, c);
            break;
        }
    }
}

/* Does the section text (between the brackets) name a header-only part? */
static bool header_only(const char *sec, size_t n)
{
    for (size_t i = 0; i + 6 <= n; i++)
        if (strncasecmp(sec + i, "HEADER", 6) == 0)
            return true;
    return n >= 4 && strncasecmp(sec + n - 4, "MIME", 4) == 0;
}

enum fi_kind fi_classify(const char *name, size_t len, bool cut, uint64_t *origin_r)
{
    *origin_r = 0;
    size_t pre;
    if (len >= 6 && strncasecmp(name, "RFC822", 6) == 0) {
        if (cut)
            return FI_NONE;
        if (len == 6)
            return FI_WHOLE;
        if (len == 11 && strncasecmp(name + 6, ".TEXT", 5) == 0)
            return FI_PART;
        return FI_NONE; /* RFC822.HEADER, RFC822.SIZE */
    }
    if (len >= 5 && strncasecmp(name, "BODY[", 5) == 0)
        pre = 5;
    else if (len >= 10 && strncasecmp(name, "BODY.PEEK[", 10) == 0)
        pre = 10;
    else if (len >= 7 && strncasecmp(name, "BINARY[", 7) == 0)
        pre = 7;
    else if (len >= 12 && strncasecmp(name, "BINARY.PEEK[", 12) == 0)
        pre = 12;
    else
        return FI_NONE;
    const char *rb = memchr(name + pre, ']', len - pre);
    if (!rb) /* cut before the end of the section: long ones are HEADER.FIELDS lists */
        return header_only(name + pre, len - pre) ? FI_NONE : FI_PART;
    size_t slen = (size_t)(rb - (name + pre));
    const char *rest = rb + 1;
    size_t rl = len - (size_t)(rest - name);
    bool has_origin = false;
    if (rl >= 3 && rest[0] == '<' && rest[rl - 1] == '>' && is_digits(rest + 1, rl - 2)) {
        has_origin = true;
        *origin_r = to_u64(rest + 1, rl - 2);
    }
    if (slen == 0)
        return has_origin ? FI_PARTIAL : FI_WHOLE;
    return header_only(name + pre, slen) ? FI_NONE : FI_PART;
}

enum fi_kind fi_literal_kind(const struct fetch_items *f, uint64_t *origin_r)
{
    *origin_r = 0;
    if (f->lit_depth != 1 || f->lit_name_len == 0)
        return FI_NONE;
    return fi_classify(f->lit_name, f->lit_name_len, f->lit_name_cut, origin_r);
}

int fi_is_fetch(const char *head, size_t len, uint64_t *seq_r)
{
    static const char word[] = " FETCH ";
    size_t i = 0;
    if (len > 0 && head[0] != '*')
        return 0;
    if (len > 1 && head[1] != ' ')
        return 0;
    if (len < 2)
        return -1;
    i = 2;
    size_t d0 = i;
    while (i < len && head[i] >= '0' && head[i] <= '9')
        i++;
    if (i == len)
        return -1;
    if (i == d0 || i - d0 > 10)
        return 0;
    for (size_t k = 0; k < sizeof word - 1; k++, i++) {
        if (i == len)
            return -1;
        if (word[k] == ' ' ? head[i] != ' ' : toupper((unsigned char)head[i]) != word[k])
            return 0;
    }
    *seq_r = to_u64(head + d0, (size_t)(i - (sizeof word - 1) - d0));
    return 1;
}
