/*
 * imap_allow — see imap_allow.h. Every table here is an allow-list: what is not named is
 * stripped (capabilities) or refused (commands, FETCH items). docs/protocols.md gives the
 * reason for each entry and for the notable absences.
 */
#include "imap_allow.h"
#include "imap_parse.h"
#include "words.h"

#include <string.h>
#include <strings.h>

/* ---- small cursor over a line ---- */

struct cur {
    const char *p;
    size_t len;
    size_t i;
};

static bool at_end(const struct cur *c)
{
    return c->i >= c->len;
}

static bool eat(struct cur *c, char ch)
{
    if (c->i < c->len && c->p[c->i] == ch) {
        c->i++;
        return true;
    }
    return false;
}

static bool word_is(const char *w, size_t wl, const char *s)
{
    return strlen(s) == wl && strncasecmp(w, s, wl) == 0;
}

static unsigned char ascii_upper(unsigned char c)
{
    return c >= 'a' && c <= 'z' ? (unsigned char)(c - 'a' + 'A') : c;
}

static bool in_list(const char *w, size_t wl, const char *const *list)
{
    /* The first byte rules out most entries before strlen and strncasecmp: every capability of
     * a backend's list is looked up at every login (issue 19). */
    unsigned char f = wl ? ascii_upper((unsigned char)w[0]) : 0;
    for (; *list; list++)
        if (ascii_upper((unsigned char)(*list)[0]) == f && word_is(w, wl, *list))
            return true;
    return false;
}

static bool has_prefix(const char *w, size_t wl, const char *pre)
{
    size_t pl = strlen(pre);
    return wl > pl && strncasecmp(w, pre, pl) == 0;
}

/* ---- capabilities ---- */

/* Post-login capabilities the proxy can inspect: they add commands it classifies below and
 * responses whose content the scanner does not need to see (or sees through FETCH). */
static const char *const caps_exact[] = {"IMAP4rev1",
                                         "LITERAL+",
                                         "LITERAL-",
                                         "IDLE",
                                         "NAMESPACE",
                                         "UIDPLUS",
                                         "MOVE",
                                         "ID",
                                         "UNSELECT",
                                         "CHILDREN",
                                         "LIST-EXTENDED",
                                         "LIST-STATUS",
                                         "SPECIAL-USE",
                                         "CREATE-SPECIAL-USE",
                                         "ESEARCH",
                                         "SEARCHRES",
                                         "SORT",
                                         "SORT=DISPLAY",
                                         "ESORT",
                                         "CONDSTORE",
                                         "QUOTA",
                                         "QUOTASET",
                                         "ACL",
                                         "METADATA",
                                         "METADATA-SERVER",
                                         "ENABLE",
                                         "WITHIN",
                                         "BINARY",
                                         "CATENATE",
                                         "MULTIAPPEND",
                                         "UTF8=ACCEPT",
                                         "STATUS=SIZE",
                                         "SAVEDATE",
                                         "OBJECTID",
                                         "LOGIN-REFERRALS",
                                         "MAILBOX-REFERRALS",
                                         "SEARCH=FUZZY",
                                         NULL};
static const char *const caps_prefix[] = {
    "THREAD=", "RIGHTS=", "QUOTA=", "I18NLEVEL=", "CONTEXT=", "APPENDLIMIT=", NULL};
/* Valid only in the proxy's own pre-login list (it runs the login itself). */
static const char *const caps_preauth[] = {"SASL-IR", "STARTTLS", "LOGINDISABLED", NULL};

bool imap_allow_cap(const char *tok, size_t len, bool preauth)
{
    if (len == 0)
        return false;
    /* A capability is an atom (RFC 3501 capability = atom): a token with a control byte, a
     * space-less line end or a literal ("THREAD={3}\r\nabc" inside a backend's list) would
     * otherwise pass on its prefix and end up spliced into the proxy's own tagged OK to the
     * client (found by fuzz_backend_login's harness). */
    for (size_t i = 0; i < len; i++) {
        if (!imap_is_atom_char((unsigned char)tok[i])) /* ']' excluded too (resp-specials) */
            return false;
    }
    if (in_list(tok, len, caps_exact))
        return true;
    for (const char *const *p = caps_prefix; *p; p++)
        if (has_prefix(tok, len, *p))
            return true;
    return preauth && (in_list(tok, len, caps_preauth) || has_prefix(tok, len, "AUTH="));
}

size_t imap_allow_filter_caps(char *caps, size_t len, bool preauth)
{
    size_t o = 0, i = 0;
    while (i < len) {
        while (i < len && caps[i] == ' ')
            i++;
        size_t j = i;
        while (j < len && caps[j] != ' ')
            j++;
        if (j > i && imap_allow_cap(caps + i, j - i, preauth)) {
            if (o)
                caps[o++] = ' ';
            memmove(caps + o, caps + i, j - i);
            o += j - i;
        }
        i = j;
    }
    return o;
}

/* Match `want` (case-insensitively) at c; 1 matched, 0 mismatch, -1 ran out of bytes. */
static int match(struct cur *c, const char *want)
{
    for (; *want; want++, c->i++) {
        if (c->i >= c->len)
            return -1;
        char a = c->p[c->i], b = *want;
        if (a >= 'a' && a <= 'z')
            a = (char)(a - 'a' + 'A');
        if (a != b)
            return 0;
    }
    return 1;
}

/* A word (up to SP, CR or LF) at c; -1 if it runs to the end of the bytes. */
static int word(struct cur *c, const char **w, size_t *wl)
{
    size_t j = c->i;
    while (j < c->len && c->p[j] != ' ' && c->p[j] != '\r' && c->p[j] != '\n')
        j++;
    if (j == c->len)
        return -1;
    *w = c->p + c->i;
    *wl = j - c->i;
    c->i = j;
    return 1;
}

/* Where the capability list starts (offset), 0 if the response has none, -1 unknown yet.
 * `code` says it is a response code (ends at ']'). */
static long caps_start(const char *r, size_t len, bool *code)
{
    struct cur c = {r, len, 0};
    const char *w;
    size_t wl;
    if (word(&c, &w, &wl) < 0)
        return -1;
    bool untagged = wl == 1 && w[0] == '*';
    if (wl == 0 || (wl == 1 && w[0] == '+') || !eat(&c, ' '))
        return 0;
    if (word(&c, &w, &wl) < 0)
        return -1;
    if (untagged && word_is(w, wl, "CAPABILITY")) {
        *code = false;
        eat(&c, ' ');
        return (long)c.i;
    }
    static const char *const status[] = {"OK", "NO", "BAD", "BYE", "PREAUTH", NULL};
    if (!in_list(w, wl, status))
        return 0;
    if (!eat(&c, ' '))
        return at_end(&c) ? -1 : 0;
    int m = match(&c, "[CAPABILITY");
    if (m <= 0)
        return m;
    if (at_end(&c))
        return -1;
    if (c.p[c.i] != ' ' && c.p[c.i] != ']')
        return 0;
    eat(&c, ' ');
    *code = true;
    return (long)c.i;
}

int imap_allow_caps_response(const char *r, size_t len, bool line_done)
{
    bool code;
    long at = caps_start(r, len, &code);
    if (at > 0)
        return 1;
    if (at == 0)
        return 0;
    /* Still unknown: a whole line is decided on (as "no list"); a very long head (a client's
     * huge tag) is held whole and looked at then. */
    if (line_done)
        return 0;
    return len >= 1024 ? 1 : -1;
}

size_t imap_allow_caps_line(char *line, size_t len)
{
    bool code = false;
    long at = caps_start(line, len, &code);
    if (at <= 0)
        return len;
    size_t off = (size_t)at, end = off;
    while (end < len && line[end] != '\r' && line[end] != '\n' && !(code && line[end] == ']'))
        end++;
    size_t nl = imap_allow_filter_caps(line + off, end - off, false);
    if (nl == end - off)
        return len;
    memmove(line + off + nl, line + end, len - end);
    return len - (end - off - nl);
}

/* ---- commands ---- */

/* Commands that pass on their name alone (RFC 3501 and the allowed extensions). */
static const char *const cmds_pass[] = {
    "CAPABILITY",   "NOOP",        "LOGOUT", "CREATE", "DELETE",     "RENAME",       "SUBSCRIBE",
    "UNSUBSCRIBE",  "LIST",        "LSUB",   "STATUS", "APPEND",     "CHECK",        "EXPUNGE",
    "SEARCH",       "STORE",       "COPY",   "MOVE",   "NAMESPACE",  "ID",           "GETQUOTA",
    "GETQUOTAROOT", "SETQUOTA",    "GETACL", "SETACL", "DELETEACL",  "LISTRIGHTS",   "MYRIGHTS",
    "GETMETADATA",  "SETMETADATA", "SORT",   "THREAD", "COMPARATOR", "CANCELUPDATE", NULL};
/* After "UID ". */
static const char *const uid_pass[] = {"STORE",   "COPY", "MOVE",   "SEARCH",
                                       "EXPUNGE", "SORT", "THREAD", NULL};

static const char *refuse_name(const char *n, size_t nl, enum sess_reason *why)
{
    if (word_is(n, nl, "COMPRESS")) {
        *why = SR_COMPRESS;
        return "COMPRESS is not available through this proxy.";
    }
    if (word_is(n, nl, "STARTTLS")) {
        *why = SR_STARTTLS_AFTER_LOGIN;
        return "TLS is already active.";
    }
    if (word_is(n, nl, "LOGIN") || word_is(n, nl, "AUTHENTICATE")) {
        *why = SR_ALREADY_LOGGED_IN;
        return "Already logged in.";
    }
    if (word_is(n, nl, "URLFETCH") || word_is(n, nl, "GENURLAUTH") || word_is(n, nl, "RESETKEY")) {
        *why = SR_URLAUTH;
        return "URLAUTH is not available through this proxy.";
    }
    if (word_is(n, nl, "NOTIFY")) {
        *why = SR_NOTIFY;
        return "NOTIFY is not available through this proxy.";
    }
    *why = SR_COMMAND_NOT_ALLOWED;
    return "Command not available through this proxy.";
}

static enum imap_allow_verdict refuse(struct imap_allow_cmd *out, enum sess_reason why,
                                      const char *text)
{
    out->reason = why;
    out->text = text;
    return IA_REFUSE;
}

/* The line's bytes without the CRLF (or without the literal header's CRLF). */
static size_t strip_eol(const char *p, size_t len)
{
    if (len && p[len - 1] == '\n')
        len--;
    if (len && p[len - 1] == '\r')
        len--;
    return len;
}

static enum imap_allow_verdict check_enable(const char *a, size_t al, bool literal,
                                            struct imap_allow_cmd *out)
{
    if (literal)
        return refuse(out, SR_ENABLE, "ENABLE with a literal is not supported by this proxy.");
    struct words it = words_of(a, al);
    const char *w;
    size_t n;
    while (words_next(&it, &w, &n))
        if (!word_is(w, n, "CONDSTORE") && !word_is(w, n, "UTF8=ACCEPT"))
            return refuse(out, SR_ENABLE, "Extension not available through this proxy.");
    return IA_PASS;
}

/* A literal header "{digits}" or "{digits+}" making up all of [p, p+len). */
static bool literal_header(const char *p, size_t len, uint64_t *n)
{
    if (len < 3 || p[0] != '{' || p[len - 1] != '}')
        return false;
    size_t e = len - 1;
    if (p[e - 1] == '+')
        e--;
    uint64_t v = 0;
    if (e <= 1 || e - 1 > 19)
        return false;
    for (size_t i = 1; i < e; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *n = v;
    return true;
}

/* Length of the astring at p (atom, or quoted with its quotes), 0 if malformed. */
static size_t astring_len(const char *p, size_t len)
{
    if (len == 0)
        return 0;
    if (p[0] == '"') {
        for (size_t i = 1; i < len; i++) {
            if (p[i] == '\\') {
                if (i + 1 >= len || (p[i + 1] != '"' && p[i + 1] != '\\'))
                    return 0;
                i++;
            } else if (p[i] == '"') {
                return i + 1;
            } else if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') {
                return 0;
            }
        }
        return 0;
    }
    size_t n = 0;
    while (n < len) {
        unsigned char ch = (unsigned char)p[n];
        /* ASTRING-CHAR, plus 8-bit (UTF8=ACCEPT): not SP ( ) { % * " \ CTL */
        if (ch <= ' ' || ch == 0x7f || ch == '(' || ch == ')' || ch == '{' || ch == '%' ||
            ch == '*' || ch == '"' || ch == '\\')
            break;
        n++;
    }
    return n;
}

long imap_allow_mailbox(const char *p, size_t len, char *out, size_t cap)
{
    size_t al = astring_len(p, len);
    if (al == 0 || al != len)
        return -1;
    size_t o = 0;
    if (p[0] == '"') {
        for (size_t i = 1; i + 1 < len; i++) {
            if (p[i] == '\\')
                i++;
            if (o >= cap)
                return -1;
            out[o++] = p[i];
        }
    } else {
        if (len > cap)
            return -1;
        memcpy(out, p, len);
        o = len;
    }
    if (o == 5 && strncasecmp(out, "INBOX", 5) == 0)
        memcpy(out, "INBOX", 5);
    return (long)o;
}

static enum imap_allow_verdict check_select(const char *line, size_t ll, size_t at, bool literal,
                                            struct imap_allow_cmd *out)
{
    static const char bad_name[] = "Mailbox name not supported by this proxy.";
    const char *a = line + at;
    size_t al = ll - at;
    if (literal) {
        uint64_t n = 0;
        if (!literal_header(a, al, &n))
            return refuse(out, SR_MAILBOX_NAME, bad_name);
        if (n > IMAP_ALLOW_MAILBOX_MAX)
            return refuse(out, SR_MAILBOX_NAME, "Mailbox name too long for this proxy.");
        out->mbox_literal = true;
        out->mbox_litlen = n;
        return IA_PASS;
    }
    size_t nl = astring_len(a, al);
    if (nl == 0)
        return refuse(out, SR_MAILBOX_NAME, bad_name);
    /* the decoded name is never longer than its astring */
    size_t decoded = nl;
    if (a[0] == '"') {
        decoded = 0;
        for (size_t i = 1; i + 1 < nl; i++, decoded++)
            if (a[i] == '\\')
                i++;
    }
    if (decoded > IMAP_ALLOW_MAILBOX_MAX)
        return refuse(out, SR_MAILBOX_NAME, "Mailbox name too long for this proxy.");
    out->mbox_off = at;
    out->mbox_len = nl;
    const char *r = a + nl;
    size_t rl = al - nl;
    /* RFC 7162: (CONDSTORE) is the only SELECT parameter passed (QRESYNC is not enabled). */
    if (rl != 0 && !(rl == 12 && strncasecmp(r, " (CONDSTORE)", 12) == 0))
        return refuse(out, SR_COMMAND_NOT_ALLOWED, "SELECT parameter not supported by this proxy.");
    return IA_PASS;
}

enum imap_allow_verdict imap_allow_command(const char *p, size_t len, bool line_done, bool literal,
                                           struct imap_allow_cmd *out)
{
    memset(out, 0, sizeof *out);
    struct cur c = {p, len, 0};
    const char *tag, *n;
    size_t tl, nl;
    int w = word(&c, &tag, &tl);
    if (w < 0 && !line_done && len < 1024)
        return IA_MORE;
    if (w < 0 || !eat(&c, ' ') || tl == 0) {
        out->kind = IA_NOTAG; /* the server answers it BAD */
        return IA_PASS;
    }
    if (word(&c, &n, &nl) < 0)
        return line_done ? IA_PASS : IA_MORE;
    bool uid = word_is(n, nl, "UID");
    if (uid) {
        if (!eat(&c, ' ') || word(&c, &n, &nl) < 0) {
            if (!line_done)
                return IA_MORE;
            return refuse(out, SR_COMMAND_NOT_ALLOWED, "Command not available through this proxy.");
        }
    }
    bool fetch = word_is(n, nl, "FETCH");
    bool sel = !uid && (word_is(n, nl, "SELECT") || word_is(n, nl, "EXAMINE"));
    bool enable = !uid && word_is(n, nl, "ENABLE");
    if (uid && !fetch)
        return in_list(n, nl, uid_pass) ? IA_PASS
                                        : refuse(out, SR_COMMAND_NOT_ALLOWED,
                                                 "Command not available through this proxy.");
    if (!uid && !fetch && !sel && !enable) {
        if (in_list(n, nl, cmds_pass))
            return IA_PASS;
        if (word_is(n, nl, "IDLE")) {
            out->kind = IA_IDLE;
            return IA_PASS;
        }
        if (word_is(n, nl, "CLOSE") || word_is(n, nl, "UNSELECT")) {
            out->kind = IA_CLOSE;
            return IA_PASS;
        }
        enum sess_reason why;
        const char *t = refuse_name(n, nl, &why);
        return refuse(out, why, t);
    }
    /* judged on the whole line */
    if (!line_done)
        return IA_MORE;
    size_t ll = strip_eol(p, len);
    size_t at = c.i < ll && p[c.i] == ' ' ? c.i + 1 : c.i;
    if (at > ll)
        at = ll;
    if (enable)
        return check_enable(p + at, ll - at, literal, out);
    if (sel) {
        out->kind = IA_SELECT;
        return check_select(p, ll, at, literal, out);
    }
    out->kind = IA_FETCH;
    if (literal)
        return refuse(out, SR_FETCH_LITERAL, "Literal in FETCH not supported by this proxy.");
    enum sess_reason why = SR_FETCH_ITEM;
    const char *t = imap_allow_fetch_args(p + at, ll - at, &why);
    return t ? refuse(out, why, t) : IA_PASS;
}

/* ---- FETCH ---- */

static size_t name_at(const struct cur *c)
{
    size_t j = c->i;
    while (j < c->len &&
           ((c->p[j] >= 'A' && c->p[j] <= 'Z') || (c->p[j] >= 'a' && c->p[j] <= 'z') ||
            (c->p[j] >= '0' && c->p[j] <= '9') || c->p[j] == '.' || c->p[j] == '-' ||
            c->p[j] == '=' || c->p[j] == '_'))
        j++;
    return j - c->i;
}

static bool number(struct cur *c, bool nonzero)
{
    size_t s = c->i;
    while (c->i < c->len && c->p[c->i] >= '0' && c->p[c->i] <= '9')
        c->i++;
    size_t n = c->i - s;
    return n > 0 && n <= 20 && (!nonzero || c->p[s] != '0');
}

/* header-list: "(" astring *(SP astring) ")" */
static bool header_list(struct cur *c)
{
    if (!eat(c, '('))
        return false;
    do {
        size_t n = astring_len(c->p + c->i, c->len - c->i);
        if (n == 0)
            return false;
        c->i += n;
    } while (eat(c, ' '));
    return eat(c, ')');
}

static bool section_text(struct cur *c, bool after_part)
{
    size_t nl = name_at(c);
    const char *w = c->p + c->i;
    if (word_is(w, nl, "HEADER") || word_is(w, nl, "TEXT") ||
        (after_part && word_is(w, nl, "MIME"))) {
        c->i += nl;
        return true;
    }
    if (word_is(w, nl, "HEADER.FIELDS") || word_is(w, nl, "HEADER.FIELDS.NOT")) {
        c->i += nl;
        return eat(c, ' ') && header_list(c);
    }
    return false;
}

/* After "[": a section spec up to and including "]". `binary`: part numbers only. */
static bool section(struct cur *c, bool binary)
{
    if (eat(c, ']'))
        return true;
    if (c->i < c->len && c->p[c->i] >= '1' && c->p[c->i] <= '9') {
        do {
            /* "1.HEADER": a dot then text instead of a number */
            if (!binary && c->i < c->len && !(c->p[c->i] >= '0' && c->p[c->i] <= '9'))
                return section_text(c, true) && eat(c, ']');
            if (!number(c, true))
                return false;
        } while (eat(c, '.'));
        return eat(c, ']');
    }
    return !binary && section_text(c, false) && eat(c, ']');
}

static bool partial(struct cur *c)
{
    if (!eat(c, '<'))
        return true;
    return number(c, false) && eat(c, '.') && number(c, true) && eat(c, '>');
}

/* Plain items (no section). */
static const char *const fetch_plain[] = {
    "FLAGS",       "UID",         "INTERNALDATE", "RFC822",   "RFC822.HEADER",
    "RFC822.SIZE", "RFC822.TEXT", "ENVELOPE",     "BODY",     "BODYSTRUCTURE",
    "MODSEQ",      "EMAILID",     "THREADID",     "SAVEDATE", NULL};

static bool fetch_att(struct cur *c, bool listed)
{
    size_t nl = name_at(c);
    const char *w = c->p + c->i;
    if (nl == 0)
        return false;
    c->i += nl;
    bool body = word_is(w, nl, "BODY") || word_is(w, nl, "BODY.PEEK");
    bool bin = word_is(w, nl, "BINARY") || word_is(w, nl, "BINARY.PEEK");
    bool binsize = word_is(w, nl, "BINARY.SIZE");
    if (eat(c, '[')) {
        if (body)
            return section(c, false) && partial(c);
        if (bin)
            return section(c, true) && partial(c);
        if (binsize)
            return section(c, true);
        return false;
    }
    if (!listed && (word_is(w, nl, "ALL") || word_is(w, nl, "FAST") || word_is(w, nl, "FULL")))
        return true;
    return in_list(w, nl, fetch_plain);
}

const char *imap_allow_fetch_args(const char *p, size_t len, enum sess_reason *reason_r)
{
    static const char bad_item[] = "FETCH item not supported by this proxy.";
    struct cur c = {p, len, 0};
    *reason_r = SR_FETCH_ITEM;
    size_t s = c.i;
    while (c.i < c.len && ((c.p[c.i] >= '0' && c.p[c.i] <= '9') || c.p[c.i] == '*' ||
                           c.p[c.i] == ':' || c.p[c.i] == ',' || c.p[c.i] == '$'))
        c.i++;
    if (c.i == s || !eat(&c, ' '))
        return "FETCH syntax not understood by this proxy.";
    if (eat(&c, '(')) {
        do {
            if (!fetch_att(&c, true))
                return bad_item;
        } while (eat(&c, ' '));
        if (!eat(&c, ')'))
            return bad_item;
    } else if (!fetch_att(&c, false)) {
        return bad_item;
    }
    if (eat(&c, ' ')) {
        /* RFC 7162 modifiers: CHANGEDSINCE only (VANISHED needs QRESYNC, not offered). */
        if (!eat(&c, '(') || match(&c, "CHANGEDSINCE ") != 1 || !number(&c, false) || !eat(&c, ')'))
            return "FETCH modifier not supported by this proxy.";
    }
    return at_end(&c) ? NULL : bad_item;
}
