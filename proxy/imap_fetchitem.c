/*
 * imap_fetchitem — see imap_fetchitem.h.
 *
 * One byte at a time through one state variable, so that a response cut anywhere gives the
 * same answers. The grammar accepted (a superset of what servers send, never ambiguous):
 *
 *   response  = "*" SP seq SP "FETCH" SP "(" item *(SP item) ")" CRLF
 *   item      = name [section ["<" digits ">"]] SP value
 *   section   = "[" [sec-atom [SP "(" astring *(SP astring) ")"]] "]"   (BODY/BINARY... only:
 *               after any other name the section makes the item unknown)
 *   value     = atom / quoted / literal / "(" [value *(SP value / list)] ")"
 *   literal   = ["~"] "{" digits ["+"] "}" CRLF           (its data is never fed)
 *
 * Inside a value list an atom may carry "[" and "]" (keywords such as "foo[" or "x]"); a list
 * may follow a list directly ("((...)(...) \"mixed\")" in BODYSTRUCTURE, address lists).
 */
#include "imap_fetchitem.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

enum {
    FS_STAR,
    FS_SP1,
    FS_SEQ,
    FS_WORD,
    FS_SP2,
    FS_OPEN,
    FS_NAME0,
    FS_NAME,
    FS_SECATOM,
    FS_SECSP,
    FS_HL0,
    FS_HLATOM,
    FS_HLAFTER,
    FS_SECEND,
    FS_AFTERSEC,
    FS_ORIG,
    FS_AFTERORIG,
    FS_VAL0,
    FS_ATOM,
    FS_QUOTED,
    FS_QESC,
    FS_LIT8,
    FS_LITN,
    FS_LITPLUS,
    FS_LITCR,
    FS_LITLF,
    FS_AFTERVAL,
    FS_CR,
    FS_LF,
    FS_DONE,
};

/* The value syntax an item must have to be what its name says. */
enum {
    T_ANY,     /* unknown item: anything, and all of it is content */
    T_NSTRING, /* body data: NIL, a quoted string or a literal */
    T_NUMBER,  /* UID, RFC822.SIZE, BINARY.SIZE */
    T_FLAGS,   /* a flat list of atoms */
    T_LIST,    /* ENVELOPE, BODYSTRUCTURE, BODY, MODSEQ, EMAILID, THREADID (or NIL) */
    T_QNIL,    /* INTERNALDATE, SAVEDATE: a quoted string or NIL */
};

static uint64_t to_u64(const char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    return v;
}

void fi_init(struct fetch_items *f)
{
    memset(f, 0, sizeof *f);
    f->st = FS_STAR;
}

static void fail(struct fetch_items *f, const char *why)
{
    if (!f->err)
        f->err = why;
}

/* Atom characters of item names and section atoms (RFC 3501 ATOM-CHAR without "[" "]"). */
static bool name_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return !strchr("(){}[]\"\\%*", c);
}

/* Atom characters inside values: anything printable but the specials that change structure. */
static bool value_atom_char(unsigned char c)
{
    if (c <= 0x20 || c == 0x7f)
        return false;
    return !strchr("(){\"", c);
}

/* astring characters in a header list (resp-specials "]" allowed). */
static bool hl_atom_char(unsigned char c)
{
    return c == ']' || name_char(c);
}

static bool eq(const char *a, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

static void new_item(struct fetch_items *f)
{
    f->name_len = 0;
    f->name_cut = false;
    f->has_sec = f->sec_bad = f->sec_in_kw = f->sec_list = false;
    f->sec_seg_num = true;
    f->sec_seg_len = 0;
    f->sec_parts = 0;
    f->sec_kw_len = 0;
    f->has_origin = false;
    f->origin = 0;
    f->origin_digits = 0;
    f->st = FS_NAME0;
}

static void set_item(struct fetch_items *f, int type, enum fi_kind kind)
{
    f->item_type = type;
    f->item_kind = kind;
}

static void unknown_item(struct fetch_items *f)
{
    f->item_type = T_ANY;
    f->item_kind = FI_PART;
    f->item_unknown = true;
}

/* A section-spec's text keyword. */
enum { K_NONE, K_HEADER, K_FIELDS, K_TEXT, K_MIME, K_BAD };

static int sec_keyword(const struct fetch_items *f)
{
    if (!f->sec_in_kw)
        return K_NONE;
    const char *k = f->sec_kw;
    size_t n = f->sec_kw_len;
    if (n > FI_KW_MAX - 1)
        return K_BAD;
    if (eq(k, n, "HEADER"))
        return K_HEADER;
    if (eq(k, n, "HEADER.FIELDS") || eq(k, n, "HEADER.FIELDS.NOT"))
        return K_FIELDS;
    if (eq(k, n, "TEXT"))
        return K_TEXT;
    if (eq(k, n, "MIME"))
        return K_MIME;
    return K_BAD;
}

/* The name (and section) of an item are complete: what must its value be, and what is it? */
static void item_begin(struct fetch_items *f)
{
    const char *n = f->name;
    size_t l = f->name_len;
    f->vdepth = 0;
    f->just_opened = f->after_list = false;
    f->item_unknown = f->item_uid = false;
    set_item(f, T_ANY, FI_NONE);
    if (f->name_cut) {
        unknown_item(f);
        return;
    }
    if (!f->has_sec) {
        if (eq(n, l, "RFC822"))
            set_item(f, T_NSTRING, FI_WHOLE);
        else if (eq(n, l, "RFC822.TEXT"))
            set_item(f, T_NSTRING, FI_PART);
        else if (eq(n, l, "RFC822.HEADER"))
            set_item(f, T_NSTRING, FI_NONE);
        else if (eq(n, l, "UID")) {
            set_item(f, T_NUMBER, FI_NONE);
            f->item_uid = true;
        } else if (eq(n, l, "RFC822.SIZE"))
            set_item(f, T_NUMBER, FI_NONE);
        else if (eq(n, l, "FLAGS"))
            set_item(f, T_FLAGS, FI_NONE);
        else if (eq(n, l, "INTERNALDATE") || eq(n, l, "SAVEDATE"))
            set_item(f, T_QNIL, FI_NONE);
        else if (eq(n, l, "ENVELOPE") || eq(n, l, "BODYSTRUCTURE") || eq(n, l, "BODY") ||
                 eq(n, l, "MODSEQ") || eq(n, l, "EMAILID") || eq(n, l, "THREADID"))
            set_item(f, T_LIST, FI_NONE);
        else
            unknown_item(f);
        return;
    }
    bool body = eq(n, l, "BODY") || eq(n, l, "BODY.PEEK");
    bool bin = eq(n, l, "BINARY") || eq(n, l, "BINARY.PEEK");
    bool binsize = eq(n, l, "BINARY.SIZE");
    int kw = sec_keyword(f);
    if ((!body && !bin && !binsize) || f->sec_bad || kw == K_BAD ||
        f->sec_list != (kw == K_FIELDS)) {
        unknown_item(f);
        return;
    }
    if (bin || binsize) {
        if (kw != K_NONE)
            unknown_item(f);
        else if (binsize)
            set_item(f, T_NUMBER, FI_NONE);
        else
            /* BINARY[] is the server's decoding, not the message: a whole-file hash of an
             * attachment no longer matches it. Judged on BODY[] like a part. */
            set_item(f, T_NSTRING, FI_PART);
        return;
    }
    if (f->sec_parts > 0) {
        set_item(f, T_NSTRING, FI_PART); /* a part, or a nested message's header: content */
        return;
    }
    switch (kw) {
    case K_NONE:
        set_item(f, T_NSTRING, f->has_origin ? FI_PARTIAL : FI_WHOLE);
        break;
    case K_HEADER:
    case K_FIELDS:
        set_item(f, T_NSTRING, FI_NONE);
        break;
    case K_TEXT:
        set_item(f, T_NSTRING, FI_PART);
        break;
    default: /* MIME of the top level */
        unknown_item(f);
        break;
    }
}

/* A top-level value starts with `form` ('L'ist, 'Q'uoted, 'T' literal, 'A'tom): does it have
 * the item's syntax? A known item that does not is unknown (default deny); a body item whose
 * value is a list is garbage. */
static void value_form(struct fetch_items *f, char form)
{
    bool ok = true;
    switch (f->item_type) {
    case T_NSTRING:
        if (form == 'L')
            fail(f, "list as body data");
        return;
    case T_NUMBER:
        ok = form == 'A';
        break;
    case T_FLAGS:
        ok = form == 'L';
        break;
    case T_LIST:
        ok = form == 'L' || form == 'A';
        break;
    case T_QNIL:
        ok = form == 'Q' || form == 'A';
        break;
    default:
        return;
    }
    if (!ok)
        unknown_item(f);
}

/* An element inside a list of the value starts with `form`. */
static void element_form(struct fetch_items *f, char form)
{
    if (f->item_type == T_FLAGS && form != 'A')
        unknown_item(f); /* a flag is an atom */
}

static void sec_char(struct fetch_items *f, char c)
{
    if (f->sec_in_kw) {
        if (f->sec_kw_len < sizeof f->sec_kw)
            f->sec_kw[f->sec_kw_len++] = c;
        else
            f->sec_bad = true;
        return;
    }
    if (c == '.') {
        if (f->sec_seg_len == 0)
            f->sec_bad = true; /* "..", a leading "." */
        else
            f->sec_parts++;
        f->sec_seg_len = 0;
        return;
    }
    if (c >= '0' && c <= '9') {
        if (f->sec_seg_len == 0 && c == '0')
            f->sec_bad = true; /* nz-number */
        f->sec_seg_len++;
        return;
    }
    if (f->sec_seg_len > 0)
        f->sec_bad = true; /* "1A" */
    f->sec_in_kw = true;
    f->sec_kw[f->sec_kw_len++] = c;
}

static void sec_atom_end(struct fetch_items *f)
{
    if (f->sec_in_kw)
        return;
    if (f->sec_seg_len > 0)
        f->sec_parts++;
    else if (f->sec_parts > 0)
        f->sec_bad = true; /* a trailing "." */
}

static void atom_end(struct fetch_items *f)
{
    if (f->vdepth > 0)
        return;
    bool nil = eq(f->atom, f->atom_len, "NIL");
    if (f->item_type == T_NSTRING && !nil)
        fail(f, "atom as body data");
    if (f->item_uid && !f->item_unknown && f->uid == 0 && f->atom_len > 0 && f->atom_len <= 19) {
        uint64_t v = 0;
        for (size_t i = 0; i < f->atom_len; i++) {
            if (f->atom[i] < '0' || f->atom[i] > '9')
                return;
            v = v * 10 + (uint64_t)(f->atom[i] - '0');
        }
        f->uid = v;
        f->uid_late = f->nlits > 0;
    }
}

static bool content_here(const struct fetch_items *f)
{
    return !f->in_hl && (f->item_unknown || (f->vdepth == 0 && f->item_kind != FI_NONE));
}

static void quoted_end(struct fetch_items *f)
{
    size_t len = f->off - f->q_start + 1;
    if (len <= 2 || !content_here(f))
        return; /* "" carries nothing */
    if (f->nspans >= FI_SPANS_MAX) {
        fail(f, "too many quoted content strings");
        return;
    }
    f->spans[f->nspans++] = (struct fi_span){.off = f->q_start, .len = len};
}

static void literal_announced(struct fetch_items *f)
{
    f->nlits++;
    f->lit_origin = 0;
    if (!content_here(f)) {
        f->lit_kind = FI_NONE;
        return;
    }
    f->lit_kind = f->item_unknown ? FI_PART : f->item_kind;
    f->lit_origin = f->has_origin ? f->origin : 0;
}

static void list_open(struct fetch_items *f)
{
    if (f->vdepth == 0)
        value_form(f, 'L');
    else
        element_form(f, 'L');
    f->vdepth++;
    f->just_opened = true;
    f->after_list = false;
    f->st = FS_VAL0;
}

static void list_close(struct fetch_items *f)
{
    f->vdepth--;
    f->just_opened = false;
    f->after_list = true;
    f->st = FS_AFTERVAL;
}

/* The start of a value (or a list element), or of an astring in a header list. */
static void string_start(struct fetch_items *f, char form, bool hl)
{
    f->in_hl = hl;
    if (!hl) {
        if (f->vdepth == 0)
            value_form(f, form);
        else
            element_form(f, form);
    }
}

static void step(struct fetch_items *f, unsigned char c)
{
again:
    switch (f->st) {
    case FS_STAR:
        if (c != '*')
            fail(f, "not an untagged response");
        f->st = FS_SP1;
        return;
    case FS_SP1:
        if (c != ' ')
            fail(f, "not an untagged response");
        f->st = FS_SEQ;
        return;
    case FS_SEQ:
        if (c >= '0' && c <= '9' && f->seq_digits < 10) {
            f->seq_digits++;
            return;
        }
        if (c != ' ' || f->seq_digits == 0)
            fail(f, "bad sequence number");
        f->st = FS_WORD;
        return;
    case FS_WORD:
        if (toupper(c) != "FETCH"[f->word_i])
            fail(f, "not a FETCH response");
        if (++f->word_i == 5)
            f->st = FS_SP2;
        return;
    case FS_SP2:
        if (c != ' ')
            fail(f, "not a FETCH response");
        f->st = FS_OPEN;
        return;
    case FS_OPEN:
        if (c != '(')
            fail(f, "FETCH without a list");
        new_item(f);
        return;
    case FS_NAME0:
    case FS_NAME:
        if (name_char(c)) {
            if (f->name_len < sizeof f->name)
                f->name[f->name_len++] = (char)c;
            else
                f->name_cut = true;
            f->st = FS_NAME;
        } else if (f->st == FS_NAME && c == '[') {
            f->has_sec = true;
            f->st = FS_SECATOM;
        } else if (f->st == FS_NAME && c == ' ') {
            item_begin(f);
            f->st = FS_VAL0;
        } else {
            fail(f, c == ']' ? "\"]\" without a section" : "bad item name");
        }
        return;
    case FS_SECATOM:
        if (c == ']' || c == ' ') {
            sec_atom_end(f);
            f->st = c == ']' ? FS_AFTERSEC : FS_SECSP;
        } else if (name_char(c)) {
            sec_char(f, (char)c);
        } else {
            fail(f, "bad section");
        }
        return;
    case FS_SECSP:
        if (c != '(')
            fail(f, "bad section");
        f->sec_list = true;
        f->just_opened = true;
        f->st = FS_HL0;
        return;
    case FS_HL0:
        if (c == '"') {
            string_start(f, 'Q', true);
            f->q_start = f->off;
            f->st = FS_QUOTED;
        } else if (c == '{' || c == '~') {
            string_start(f, 'T', true);
            f->lit_digits = 0;
            f->st = c == '{' ? FS_LITN : FS_LIT8;
        } else if (hl_atom_char(c)) {
            f->st = FS_HLATOM;
        } else if (c == ')' && f->just_opened) {
            f->sec_bad = true; /* an empty header list */
            f->st = FS_SECEND;
        } else {
            fail(f, "bad header list");
        }
        f->just_opened = false;
        return;
    case FS_HLATOM:
        if (hl_atom_char(c))
            return;
        f->st = FS_HLAFTER;
        goto again;
    case FS_HLAFTER:
        if (c == ' ')
            f->st = FS_HL0;
        else if (c == ')')
            f->st = FS_SECEND;
        else
            fail(f, "bad header list");
        return;
    case FS_SECEND:
        if (c != ']')
            fail(f, "bad section");
        f->st = FS_AFTERSEC;
        return;
    case FS_AFTERSEC:
        if (c == '<') {
            f->has_origin = true;
            f->st = FS_ORIG;
        } else if (c == ' ') {
            item_begin(f);
            f->st = FS_VAL0;
        } else {
            fail(f, "bad text after a section");
        }
        return;
    case FS_ORIG:
        if (c >= '0' && c <= '9' && f->origin_digits < 19) {
            f->origin = f->origin * 10 + (uint64_t)(c - '0');
            f->origin_digits++;
        } else if (c == '>' && f->origin_digits > 0) {
            f->st = FS_AFTERORIG;
        } else {
            fail(f, "bad origin");
        }
        return;
    case FS_AFTERORIG:
        if (c != ' ')
            fail(f, "bad text after an origin");
        item_begin(f);
        f->st = FS_VAL0;
        return;
    case FS_VAL0: {
        bool opened = f->just_opened;
        f->just_opened = false;
        f->after_list = false;
        if (c == '(') {
            if (f->item_type == T_FLAGS && !f->item_unknown && f->vdepth > 0)
                fail(f, "list inside FLAGS");
            list_open(f);
        } else if (c == ')' && opened) {
            list_close(f);
        } else if (c == '"') {
            string_start(f, 'Q', false);
            f->q_start = f->off;
            f->st = FS_QUOTED;
        } else if (c == '{' || c == '~') {
            string_start(f, 'T', false);
            f->lit_digits = 0;
            f->st = c == '{' ? FS_LITN : FS_LIT8;
        } else if (value_atom_char(c)) {
            string_start(f, 'A', false);
            f->atom_len = 0;
            f->atom[f->atom_len++] = (char)c;
            f->st = FS_ATOM;
        } else {
            fail(f, "bad value");
        }
        return;
    }
    case FS_ATOM:
        if (value_atom_char(c)) {
            if (f->atom_len < sizeof f->atom)
                f->atom[f->atom_len++] = (char)c;
            else
                f->atom_len = sizeof f->atom + 1; /* too long for anything we read */
            return;
        }
        if (f->atom_len > sizeof f->atom)
            f->atom_len = sizeof f->atom; /* (compared as a 24-byte prefix: never NIL or a uid) */
        atom_end(f);
        f->st = FS_AFTERVAL;
        goto again;
    case FS_QUOTED:
        if (c == '\\')
            f->st = FS_QESC;
        else if (c == '"') {
            quoted_end(f);
            f->st = f->in_hl ? FS_HLAFTER : FS_AFTERVAL;
            f->in_hl = false;
        } else if (c == '\r' || c == '\n' || c == 0)
            fail(f, "bad quoted string");
        return;
    case FS_QESC:
        if (c != '"' && c != '\\')
            fail(f, "bad escape in a quoted string");
        f->st = FS_QUOTED;
        return;
    case FS_LIT8:
        if (c != '{')
            fail(f, "bad literal8");
        f->st = FS_LITN;
        return;
    case FS_LITN:
        if (c >= '0' && c <= '9' && f->lit_digits < 20)
            f->lit_digits++;
        else if (c == '+' && f->lit_digits > 0)
            f->st = FS_LITPLUS;
        else if (c == '}' && f->lit_digits > 0)
            f->st = FS_LITCR;
        else
            fail(f, "bad literal");
        return;
    case FS_LITPLUS:
        if (c != '}')
            fail(f, "bad literal");
        f->st = FS_LITCR;
        return;
    case FS_LITCR:
        if (c != '\r')
            fail(f, "bad literal");
        f->st = FS_LITLF;
        return;
    case FS_LITLF:
        if (c != '\n')
            fail(f, "bad literal");
        literal_announced(f);
        f->st = f->in_hl ? FS_HLAFTER : FS_AFTERVAL;
        f->in_hl = false;
        return;
    case FS_AFTERVAL:
        if (f->vdepth == 0) {
            if (c == ' ')
                new_item(f);
            else if (c == ')')
                f->st = FS_CR;
            else
                fail(f, "bad text after a value");
            return;
        }
        if (c == ' ') {
            f->st = FS_VAL0;
            f->after_list = false;
        } else if (c == ')') {
            list_close(f);
        } else if (c == '(' && f->after_list) {
            if (f->item_type == T_FLAGS && !f->item_unknown)
                fail(f, "list inside FLAGS");
            list_open(f);
        } else {
            fail(f, c == '\r' || c == '\n' ? "unbalanced parentheses" : "bad text in a list");
        }
        return;
    case FS_CR:
        if (c != '\r')
            fail(f, "bad text after the response");
        f->st = FS_LF;
        return;
    case FS_LF:
        if (c != '\n')
            fail(f, "bad line end");
        f->done = true;
        f->st = FS_DONE;
        return;
    default:
        fail(f, "bytes after the response");
        return;
    }
}

void fi_feed(struct fetch_items *f, const char *p, size_t len)
{
    for (size_t i = 0; i < len && !f->err; i++) {
        step(f, (unsigned char)p[i]);
        f->off++;
    }
}

enum fi_kind fi_literal_kind(const struct fetch_items *f, uint64_t *origin_r)
{
    *origin_r = f->err ? 0 : f->lit_origin;
    return f->err ? FI_PART : f->lit_kind;
}

const char *fi_error(const struct fetch_items *f)
{
    return f->err;
}

bool fi_quoted_content(const struct fetch_items *f)
{
    return f->nspans > 0;
}

const struct fi_span *fi_spans(const struct fetch_items *f, unsigned *n_r)
{
    *n_r = f->nspans;
    return f->spans;
}

bool fi_may_release(const struct fetch_items *f)
{
    if (f->err || f->nspans > 0)
        return false;
    return !((f->st == FS_QUOTED || f->st == FS_QESC) && content_here(f));
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
