/*
 * imap_cmdline — see imap_cmdline.h. A recursive-descent parser over one held line; every
 * step checks the end of the line, nothing is copied.
 */
#include "imap_cmdline.h"

#include <string.h>
#include <strings.h>

#define ICL_TAG_MAX 64

struct cur {
    const char *p, *end;
};

static bool eat(struct cur *c, char ch)
{
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool word_is(const char *p, size_t n, const char *w)
{
    return strlen(w) == n && strncasecmp(p, w, n) == 0;
}

/* tag / command name: non-space printable bytes other than the IMAP specials */
static size_t atom_len(const struct cur *c)
{
    size_t n = 0;
    while (c->p + n < c->end) {
        unsigned char ch = (unsigned char)c->p[n];
        if (ch <= ' ' || ch >= 0x7f || strchr("(){%*\"\\]", ch))
            break;
        n++;
    }
    return n;
}

/* fetch-att name: letters, digits, ".", "-", "_" (RFC822.SIZE, X-GM-MSGID, BODY.PEEK) */
static size_t name_len(const struct cur *c)
{
    size_t n = 0;
    while (c->p + n < c->end) {
        char ch = c->p[n];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_'))
            break;
        n++;
    }
    return n;
}

/* A quoted string at c->p (the opening quote): skipped. */
static bool skip_quoted(struct cur *c)
{
    if (!eat(c, '"'))
        return false;
    while (c->p < c->end) {
        char ch = *c->p++;
        if (ch == '\\') {
            if (c->p >= c->end)
                return false;
            c->p++;
        } else if (ch == '"') {
            return true;
        } else if (ch == '\r' || ch == '\n') {
            return false;
        }
    }
    return false;
}

/* Skip up to the bracket/paren that closes `open` (already eaten), honouring quoted strings
 * and nesting of the same kind; a literal ("{") is refused. */
static bool skip_balanced(struct cur *c, char open, char close)
{
    int depth = 1;
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == '"') {
            if (!skip_quoted(c))
                return false;
            continue;
        }
        if (ch == '{' || ch == '\r' || ch == '\n')
            return false;
        c->p++;
        if (ch == open)
            depth++;
        else if (ch == close && --depth == 0)
            return true;
    }
    return false;
}

static bool skip_number(struct cur *c)
{
    const char *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    return c->p > s;
}

/* The section text after the part numbers ("1.2.MIME" → "MIME"): is it content-free? */
static bool section_is_header(const char *sec, size_t n)
{
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && sec[j] >= '0' && sec[j] <= '9')
            j++;
        if (j == i || j >= n || sec[j] != '.')
            break;
        i = j + 1;
    }
    if (i > 0)
        return false; /* a nested message's header is attacker content: judged as a part */
    const char *t = sec + i;
    size_t tl = n - i;
    if (tl == 4 && strncasecmp(t, "MIME", 4) == 0)
        return true;
    if (tl >= 6 && strncasecmp(t, "HEADER", 6) == 0 &&
        (tl == 6 || strncasecmp(t + 6, ".FIELDS ", 8) == 0 ||
         strncasecmp(t + 6, ".FIELDS.NOT ", 12) == 0))
        return true;
    return false;
}

static const char *const content_free[] = {
    "ENVELOPE",    "FLAGS",      "INTERNALDATE",  "RFC822.HEADER",
    "RFC822.SIZE", "BODY",       "BODYSTRUCTURE", "UID",
    "MODSEQ",      "EMAILID",    "THREADID",      "SAVEDATE",
    "X-GM-MSGID",  "X-GM-THRID", "X-GM-LABELS",   NULL,
};

/* One fetch-att: sets whole/part in `out`. */
static bool parse_att(struct cur *c, struct icl_fetch *out)
{
    size_t nl = name_len(c);
    if (nl == 0)
        return false;
    const char *name = c->p;
    c->p += nl;
    if (c->p < c->end && *c->p == '[') {
        c->p++;
        const char *sec = c->p;
        if (!skip_balanced(c, '[', ']'))
            return false;
        size_t sl = (size_t)(c->p - 1 - sec);
        bool partial = false;
        if (eat(c, '<')) {
            if (!skip_number(c))
                return false;
            if (eat(c, '.') && !skip_number(c))
                return false;
            if (!eat(c, '>'))
                return false;
            partial = true;
        }
        bool body = word_is(name, nl, "BODY") || word_is(name, nl, "BODY.PEEK");
        bool binary = word_is(name, nl, "BINARY") || word_is(name, nl, "BINARY.PEEK");
        if (word_is(name, nl, "BINARY.SIZE"))
            return true;
        if (!body && !binary) {
            out->part = true; /* unknown sectioned item: default deny */
            return true;
        }
        if (sl == 0 && !partial && !binary)
            out->whole = true; /* BINARY[] is decoded by the server: judged on BODY[] */
        else if (!(body && sl > 0 && section_is_header(sec, sl)))
            out->part = true;
        return true;
    }
    if (word_is(name, nl, "RFC822")) {
        out->whole = true;
        return true;
    }
    for (const char *const *w = content_free; *w; w++)
        if (word_is(name, nl, *w))
            return true;
    out->part = true; /* RFC822.TEXT, PREVIEW, anything unknown */
    return true;
}

enum icl_rc icl_parse_fetch(const char *line, size_t len, struct icl_fetch *out)
{
    memset(out, 0, sizeof *out);
    struct cur c = {line, line + len};
    /* the line end is not part of the grammar below */
    while (c.end > c.p && (c.end[-1] == '\n' || c.end[-1] == '\r'))
        c.end--;
    size_t tl = atom_len(&c);
    if (tl == 0 || tl > ICL_TAG_MAX || memchr(c.p, '+', tl))
        return ICL_NOT_FETCH;
    out->tag = c.p;
    out->tag_len = tl;
    c.p += tl;
    if (!eat(&c, ' '))
        return ICL_NOT_FETCH;
    size_t nl = atom_len(&c);
    if (word_is(c.p, nl, "UID")) {
        out->uid = true;
        c.p += nl;
        if (!eat(&c, ' '))
            return ICL_NOT_FETCH;
        nl = atom_len(&c);
    }
    if (!word_is(c.p, nl, "FETCH"))
        return ICL_NOT_FETCH;
    c.p += nl;
    if (!eat(&c, ' '))
        return ICL_BAD;
    out->set = c.p;
    while (c.p < c.end && ((*c.p >= '0' && *c.p <= '9') || *c.p == ':' || *c.p == ',' ||
                           *c.p == '*' || *c.p == '$'))
        c.p++;
    out->set_len = (size_t)(c.p - out->set);
    if (out->set_len == 0 || !eat(&c, ' '))
        return ICL_BAD;
    if (eat(&c, '(')) {
        for (;;) {
            if (!parse_att(&c, out))
                return ICL_BAD;
            if (eat(&c, ')'))
                break;
            if (!eat(&c, ' '))
                return ICL_BAD;
        }
    } else {
        size_t ml = name_len(&c);
        if (word_is(c.p, ml, "ALL") || word_is(c.p, ml, "FAST") || word_is(c.p, ml, "FULL"))
            c.p += ml;
        else if (!parse_att(&c, out))
            return ICL_BAD;
    }
    if (eat(&c, ' ')) {
        /* fetch modifiers (CHANGEDSINCE, VANISHED): they narrow the answer, never widen it */
        if (!eat(&c, '(') || !skip_balanced(&c, '(', ')'))
            return ICL_BAD;
    }
    return c.p == c.end ? ICL_FETCH : ICL_BAD;
}

bool icl_set_each(const char *set, size_t len, uint64_t max, bool (*fn)(void *arg, uint64_t n),
                  void *arg)
{
    size_t i = 0;
    uint64_t visited = 0;
    while (i < len) {
        uint64_t a = 0, b;
        size_t s = i;
        while (i < len && set[i] >= '0' && set[i] <= '9' && a < UINT32_MAX)
            a = a * 10 + (uint64_t)(set[i++] - '0');
        if (i == s || a == 0 || a > UINT32_MAX)
            return false;
        b = a;
        if (i < len && set[i] == ':') {
            i++;
            b = 0;
            s = i;
            while (i < len && set[i] >= '0' && set[i] <= '9' && b < UINT32_MAX)
                b = b * 10 + (uint64_t)(set[i++] - '0');
            if (i == s || b == 0 || b > UINT32_MAX)
                return false;
            if (b < a) {
                uint64_t t = a;
                a = b;
                b = t;
            }
        }
        if (i < len && set[i] != ',')
            return false;
        i++;
        if (b - a + 1 > max - visited)
            return false;
        visited += b - a + 1;
        for (uint64_t n = a; fn && n <= b; n++)
            if (!fn(arg, n))
                return false;
    }
    return len > 0;
}
