/*
 * imap_parse.c — the pre-auth IMAP command parser and the relay framer (contract: imap_parse.h).
 *
 * What it does
 *   imap_cmd_parse() tokenizes one client command at a time into the caller's store: tag, upper-
 *   cased command name, then atoms, quoted strings, literals and list brackets as a flat token
 *   array. imap_frame() only finds boundaries (line ends, literal headers at a line's end, the end
 *   of a literal) and keeps the head of each command/response.
 *
 * What it does not do
 *   No I/O, no allocation, no logging, no knowledge of which commands exist or what their
 *   arguments mean (the dialogues decide). The framer never looks inside literal contents.
 *
 * Grammar choices (RFC 3501 section 9, RFC 9051, RFC 7888 LITERAL+, RFC 3516 BINARY)
 *   - Strict separators: exactly one SP between tokens; a space before the line end, two spaces,
 *     or "( a )" are BAD (as Dovecot does). Bare LF is accepted as a line end (as Dovecot
 *     does); a CR must be followed by LF.
 *   - tag = 1*<any ASTRING-CHAR except "+">, at most IMAP_TAG_MAX bytes. "%" and "*" are
 *     atom-specials and so not allowed in tags; "]" is.
 *   - The command name is an atom (ATOM-CHAR only), at most IMAP_NAME_MAX bytes.
 *   - Argument atoms accept ASTRING-CHAR (ATOM-CHAR plus "]") and also the list-wildcards "%"
 *     and "*", because LIST/LSUB patterns (list-mailbox) use them. "\" is not accepted, so
 *     flags (\Seen) are BAD; no pre-auth command takes flags. Atoms are 7-bit only: 8-bit text
 *     must be quoted (RFC 9051 allows UTF-8 only in quoted strings).
 *   - Quoted strings allow the escapes \" and \\ only; any other escape, NUL, CR or LF inside is
 *     BAD. 8-bit bytes are stored as sent, not validated as UTF-8 (UTF8=ACCEPT user names work).
 *   - Literals {n}, {n+}, ~{n}, ~{n+}: leading zeros are fine; more than 20 digits or a value
 *     over 2^64-1 is "too large". A literal over max_literal or the store's free space is a
 *     non-fatal BAD when synchronising (no "+" was sent, so the client must not send its bytes)
 *     and a fatal BAD when non-synchronising (its bytes are on their way and are not skipped).
 *   - Lists nest up to CMD_LIST_DEPTH_MAX deep; LIST_OPEN/LIST_CLOSE count as tokens.
 *
 * Invariants
 *   - Results are split-invariant: any partition of the same bytes into calls yields the same
 *     sequence of results with the same data, because every decision is made on one byte with
 *     state carried in the parser (never by looking ahead or behind in the input).
 *   - After a non-fatal BAD the parser has consumed exactly through the LF ending the bad line.
 *     When the error is found before the LF the rest of the line is skipped without storing it;
 *     when it is found at the LF nothing more is consumed. A skipped line that ends with a
 *     non-synchronising literal header is fatal instead: its literal bytes would otherwise be
 *     read as commands (nginx-tests mail_imap.t, nginx s->quit).
 *   - line_len never exceeds max_line + 1 (framer) / max_line (command parser); store_len never
 *     exceeds store_cap. A framer set to IMAP_LINE_UNLIMITED (the relay after login) counts
 *     line_len but never refuses a line: it holds nothing of it but head[] and the few bytes of
 *     state a literal header needs, so a line of any length streams through the caller.
 */
#include "imap_parse.h"

#include <string.h>

#define CMD_LIST_DEPTH_MAX 8
#define LIT_DIGITS_MAX     20 /* 2^64-1 has 20 digits */

/* ---------- character classes ---------- */

/*
 * ATOM-CHAR       = <any CHAR except atom-specials>
 * atom-specials   = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
 *                   resp-specials
 * list-wildcards  = "%" / "*"
 * quoted-specials = DQUOTE / "\"
 * resp-specials   = "]"
 * CHAR            = %x01-7F            CTL = %x00-1F / %x7F
 */
bool imap_is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    switch (c) {
    case '(':
    case ')':
    case '{':
    case '%':
    case '*':
    case '"':
    case '\\':
    case ']':
        return false;
    default:
        return true;
    }
}

/* tag = 1*<any ASTRING-CHAR except "+">;  ASTRING-CHAR = ATOM-CHAR / resp-specials */
static bool is_tag_char(unsigned char c)
{
    return c != '+' && (c == ']' || imap_is_atom_char(c));
}

/* Argument atoms: ASTRING-CHAR plus list-wildcards (list-char = ATOM-CHAR / list-wildcards /
 * resp-specials), so astrings and LIST patterns both parse. */
static bool is_arg_atom_char(unsigned char c)
{
    return c == ']' || c == '%' || c == '*' || imap_is_atom_char(c);
}

static char ascii_upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* Add one decimal digit to a literal length; sets *overflow past 20 digits or 2^64-1. */
static void lit_add_digit(uint64_t *acc, unsigned *ndigits, bool *overflow, unsigned char c)
{
    uint64_t d = (uint64_t)(c - '0');
    if (++*ndigits > LIT_DIGITS_MAX || *acc > (UINT64_MAX - d) / 10) {
        *overflow = true;
        return;
    }
    *acc = *acc * 10 + d;
}

/* ---------- 1. pre-auth command parser ---------- */

enum cmd_state {
    CS_TAG_START,  /* nothing of this command read yet */
    CS_TAG,        /* inside the tag */
    CS_NAME_START, /* after "tag SP" */
    CS_NAME,       /* inside the command name */
    CS_ARG_START,  /* after a SP: a token must follow */
    CS_LIST_START, /* after "(": a token or ")" */
    CS_ATOM,       /* inside an atom */
    CS_TILDE,      /* "~" read at a token start: "{" makes a literal8, else it is an atom */
    CS_QUOTED,     /* inside a quoted string */
    CS_QUOTED_ESC, /* after a backslash inside a quoted string */
    CS_LIT_OPEN,   /* "{" read: digits must follow */
    CS_LIT_DIGITS, /* digits of a literal length */
    CS_LIT_PLUS,   /* "{digits+": "}" must follow */
    CS_LIT_CLOSE,  /* "{digits[+]}": the line end must follow */
    CS_LIT_DATA,   /* copying literal bytes (lit_left to go) */
    CS_AFTER_ARG,  /* after a quoted string, literal or ")": SP, ")" or line end */
    CS_SKIP,       /* skipping the rest of a bad line; error already set */
    CS_DONE,       /* DONE returned; waiting for reset */
    CS_BAD,        /* non-fatal BAD returned; waiting for reset */
    CS_FATAL,      /* fatal BAD returned; stuck */
};

/* Where "{digits+}" stands at the end of a line being skipped (TAIL_CLOSE_PLUS: a non-
 * synchronising literal follows this line). CR does not move it: "}\r\n" and "}\n" both end. */
enum skip_tail { TAIL_NONE, TAIL_OPEN, TAIL_DIGITS, TAIL_PLUS, TAIL_CLOSE, TAIL_CLOSE_PLUS };

static void skip_tail_byte(struct imap_cmd_parser *p, unsigned char c)
{
    int t = p->skip_tail;
    if (c == '\r')
        return;
    if (c == '{')
        t = TAIL_OPEN;
    else if (c >= '0' && c <= '9')
        t = (t == TAIL_OPEN || t == TAIL_DIGITS) ? TAIL_DIGITS : TAIL_NONE;
    else if (c == '+')
        t = t == TAIL_DIGITS ? TAIL_PLUS : TAIL_NONE;
    else if (c == '}')
        t = t == TAIL_DIGITS ? TAIL_CLOSE : t == TAIL_PLUS ? TAIL_CLOSE_PLUS : TAIL_NONE;
    else
        t = TAIL_NONE;
    p->skip_tail = t;
}

void imap_cmd_parser_reset(struct imap_cmd_parser *p)
{
    p->tag[0] = '\0';
    p->name[0] = '\0';
    p->nargs = 0;
    p->error = NULL;
    p->fatal = false;
    p->store_len = 0;
    p->state = CS_TAG_START;
    p->list_depth = 0;
    p->line_len = 0;
    p->lit_left = 0;
    p->lit_plus = false;
    p->lit_overflow = false;
    p->lit_digits = 0;
    p->cr = false;
    p->skip_tail = TAIL_NONE;
    p->tag_len = 0;
    p->name_len = 0;
}

void imap_cmd_parser_init(struct imap_cmd_parser *p, char *store, size_t cap, size_t max_line,
                          size_t max_literal)
{
    memset(p, 0, sizeof *p);
    p->store = store;
    /* args[] offsets and lengths are 32-bit. */
    p->store_cap = cap > UINT32_MAX ? UINT32_MAX : cap;
    p->max_line = max_line;
    p->max_literal = max_literal;
    imap_cmd_parser_reset(p);
}

const char *imap_cmd_arg(const struct imap_cmd_parser *p, unsigned i)
{
    return p->store + p->args[i].off;
}

bool imap_cmd_arg_is(const struct imap_cmd_parser *p, unsigned i, const char *s)
{
    if (i >= p->nargs || p->args[i].type == IMAP_ARG_LIST_OPEN ||
        p->args[i].type == IMAP_ARG_LIST_CLOSE)
        return false;
    size_t n = strlen(s);
    if (n != p->args[i].len)
        return false;
    const char *a = imap_cmd_arg(p, i);
    for (size_t k = 0; k < n; k++) {
        if (ascii_upper(a[k]) != ascii_upper(s[k]))
            return false;
    }
    return true;
}

/* Record a syntax error found before the line end: the rest of the line is skipped. */
static bool cmd_error(struct imap_cmd_parser *p, const char *why)
{
    p->error = why;
    return false;
}

static bool add_arg(struct imap_cmd_parser *p, enum imap_arg_type type)
{
    if (p->nargs >= IMAP_ARGS_MAX)
        return cmd_error(p, "Too many arguments.");
    struct imap_arg *a = &p->args[p->nargs++];
    a->type = type;
    a->off = (uint32_t)p->store_len;
    a->len = 0;
    return true;
}

/* Append one byte to the last argument. */
static bool store_byte(struct imap_cmd_parser *p, char c)
{
    if (p->store_len >= p->store_cap)
        return cmd_error(p, "Arguments too long.");
    p->store[p->store_len++] = c;
    p->args[p->nargs - 1].len++;
    return true;
}

static bool close_list(struct imap_cmd_parser *p)
{
    if (p->list_depth == 0)
        return cmd_error(p, "Unexpected \")\".");
    if (!add_arg(p, IMAP_ARG_LIST_CLOSE))
        return false;
    p->list_depth--;
    p->state = CS_AFTER_ARG;
    return true;
}

static bool start_literal(struct imap_cmd_parser *p)
{
    p->state = CS_LIT_OPEN;
    p->lit_left = 0;
    p->lit_digits = 0;
    p->lit_overflow = false;
    p->lit_plus = false;
    return true;
}

/* A token starts with byte c (state ARG_START or LIST_START). */
static bool token_start(struct imap_cmd_parser *p, unsigned char c)
{
    switch (c) {
    case ')':
        if (p->state == CS_ARG_START)
            return cmd_error(p, "Unexpected \")\" after a space.");
        return close_list(p);
    case ' ':
        return cmd_error(p, "Unexpected space.");
    case '(':
        if (p->list_depth >= CMD_LIST_DEPTH_MAX)
            return cmd_error(p, "Lists nested too deeply.");
        if (!add_arg(p, IMAP_ARG_LIST_OPEN))
            return false;
        p->list_depth++;
        p->state = CS_LIST_START;
        return true;
    case '"':
        if (!add_arg(p, IMAP_ARG_QUOTED))
            return false;
        p->state = CS_QUOTED;
        return true;
    case '{':
        return add_arg(p, IMAP_ARG_LITERAL) && start_literal(p);
    case '~':
        /* Kept as an atom "~" until the next byte says whether this is literal8 = "~{". */
        if (!add_arg(p, IMAP_ARG_ATOM) || !store_byte(p, '~'))
            return false;
        p->state = CS_TILDE;
        return true;
    default:
        if (!is_arg_atom_char(c))
            return cmd_error(p, "Invalid characters in atom.");
        if (!add_arg(p, IMAP_ARG_ATOM) || !store_byte(p, (char)c))
            return false;
        p->state = CS_ATOM;
        return true;
    }
}

/* A byte after the first of an atom: SP or ")" ends it. */
static bool atom_byte(struct imap_cmd_parser *p, unsigned char c)
{
    if (c == ' ') {
        p->state = CS_ARG_START;
        return true;
    }
    if (c == ')')
        return close_list(p);
    if (!is_arg_atom_char(c))
        return cmd_error(p, "Invalid characters in atom.");
    return store_byte(p, (char)c);
}

/* One byte that is neither CR nor LF, in a line state other than SKIP. False: syntax error. */
static bool cmd_byte(struct imap_cmd_parser *p, unsigned char c)
{
    switch (p->state) {
    case CS_TAG_START:
    case CS_TAG:
        if (c == ' ' && p->state == CS_TAG) {
            p->state = CS_NAME_START;
            return true;
        }
        if (!is_tag_char(c))
            return cmd_error(p, "Invalid tag.");
        if (p->tag_len >= IMAP_TAG_MAX)
            return cmd_error(p, "Tag too long.");
        p->tag[p->tag_len++] = (char)c;
        p->tag[p->tag_len] = '\0';
        p->state = CS_TAG;
        return true;
    case CS_NAME_START:
    case CS_NAME:
        if (c == ' ' && p->state == CS_NAME) {
            p->state = CS_ARG_START;
            return true;
        }
        if (!imap_is_atom_char(c))
            return cmd_error(p, "Invalid command name.");
        if (p->name_len >= IMAP_NAME_MAX)
            return cmd_error(p, "Command name too long.");
        p->name[p->name_len++] = ascii_upper((char)c);
        p->name[p->name_len] = '\0';
        p->state = CS_NAME;
        return true;
    case CS_ARG_START:
    case CS_LIST_START:
        return token_start(p, c);
    case CS_TILDE:
        if (c == '{') {
            /* literal8: forget the provisional atom "~", keep its slot as the literal. */
            p->store_len--;
            p->args[p->nargs - 1].type = IMAP_ARG_LITERAL;
            p->args[p->nargs - 1].len = 0;
            return start_literal(p);
        }
        /* Otherwise "~" was the first byte of an ordinary atom. */
        p->state = CS_ATOM;
        return atom_byte(p, c);
    case CS_ATOM:
        return atom_byte(p, c);
    case CS_AFTER_ARG:
        if (c == ' ') {
            p->state = CS_ARG_START;
            return true;
        }
        if (c == ')')
            return close_list(p);
        return cmd_error(p, "Missing space after argument.");
    case CS_QUOTED:
        /* QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials /
         *               UTF8-2 / UTF8-3 / UTF8-4   (RFC 9051; 8-bit is not validated) */
        if (c == '"') {
            p->state = CS_AFTER_ARG;
            return true;
        }
        if (c == '\\') {
            p->state = CS_QUOTED_ESC;
            return true;
        }
        if (c == '\0')
            return cmd_error(p, "NUL in quoted string.");
        return store_byte(p, (char)c);
    case CS_QUOTED_ESC:
        if (c != '"' && c != '\\')
            return cmd_error(p, "Invalid escape in quoted string.");
        p->state = CS_QUOTED;
        return store_byte(p, (char)c);
    case CS_LIT_OPEN:
    case CS_LIT_DIGITS:
        /* literal = "{" number64 ["+"] "}" CRLF *CHAR8;  literal8 = "~{" number64 ["+"] "}" */
        if (c >= '0' && c <= '9') {
            lit_add_digit(&p->lit_left, &p->lit_digits, &p->lit_overflow, c);
            p->state = CS_LIT_DIGITS;
            return true;
        }
        if (p->state == CS_LIT_DIGITS && c == '+') {
            p->lit_plus = true;
            p->state = CS_LIT_PLUS;
            return true;
        }
        if (p->state == CS_LIT_DIGITS && c == '}') {
            p->state = CS_LIT_CLOSE;
            return true;
        }
        return cmd_error(p, "Invalid literal.");
    case CS_LIT_PLUS:
        if (c == '}') {
            p->state = CS_LIT_CLOSE;
            return true;
        }
        return cmd_error(p, "Invalid literal.");
    case CS_LIT_CLOSE:
        return cmd_error(p, "Missing line break after literal.");
    default:
        return cmd_error(p, "Internal parser error.");
    }
}

/* A bad command is answered with its tag only if the tag was read whole. */
static void drop_partial_tag(struct imap_cmd_parser *p)
{
    if (p->state == CS_TAG_START || p->state == CS_TAG)
        p->tag[0] = '\0';
}

static enum imap_cmd_result cmd_bad_here(struct imap_cmd_parser *p, const char *why)
{
    drop_partial_tag(p);
    p->error = why;
    p->state = CS_BAD;
    return IMAP_CMD_BAD;
}

static enum imap_cmd_result cmd_fatal(struct imap_cmd_parser *p, const char *why)
{
    drop_partial_tag(p);
    p->error = why;
    p->fatal = true;
    p->state = CS_FATAL;
    return IMAP_CMD_BAD;
}

static enum imap_cmd_result finish_line(struct imap_cmd_parser *p)
{
    if (p->list_depth > 0)
        return cmd_bad_here(p, "Unterminated list.");
    p->state = CS_DONE;
    return IMAP_CMD_DONE;
}

/* The header "{n}" / "{n+}" has just been ended by its LF. IMAP_CMD_MORE means: go on parsing. */
static enum imap_cmd_result literal_header_done(struct imap_cmd_parser *p)
{
    if (p->lit_overflow || p->lit_left > p->max_literal ||
        p->lit_left > p->store_cap - p->store_len) {
        /* {n}: no "+" goes out, so the client must not send the bytes: resume at the next
         * line. {n+}: the bytes are coming and we will not guess where they end. */
        if (p->lit_plus)
            return cmd_fatal(p, "Literal too large.");
        return cmd_bad_here(p, "Literal too large.");
    }
    p->state = CS_LIT_DATA;
    return p->lit_plus ? IMAP_CMD_MORE : IMAP_CMD_CONTINUE;
}

/* A LF ends the current line. IMAP_CMD_MORE means the command goes on (a {n+} literal). */
static enum imap_cmd_result cmd_eol(struct imap_cmd_parser *p)
{
    switch (p->state) {
    case CS_TAG_START:
        return cmd_bad_here(p, "Empty command.");
    case CS_TAG:
        p->state = CS_NAME_START; /* the tag is whole: keep it for the answer */
        return cmd_bad_here(p, "Missing command name.");
    case CS_NAME_START:
        return cmd_bad_here(p, "Missing command name.");
    case CS_NAME:
    case CS_ATOM:
    case CS_TILDE:
    case CS_AFTER_ARG:
        return finish_line(p);
    case CS_ARG_START:
        return cmd_bad_here(p, "Unexpected space at end of line.");
    case CS_LIST_START:
        return cmd_bad_here(p, "Unterminated list.");
    case CS_QUOTED:
    case CS_QUOTED_ESC:
        return cmd_bad_here(p, "Unterminated quoted string.");
    case CS_LIT_OPEN:
    case CS_LIT_DIGITS:
    case CS_LIT_PLUS:
        return cmd_bad_here(p, "Invalid literal.");
    case CS_LIT_CLOSE:
        return literal_header_done(p);
    case CS_SKIP:
        if (p->skip_tail == TAIL_CLOSE_PLUS)
            return cmd_fatal(p, "Literal in an invalid command.");
        p->state = CS_BAD;
        return IMAP_CMD_BAD;
    default:
        return cmd_fatal(p, "Internal parser error.");
    }
}

enum imap_cmd_result imap_cmd_parse(struct imap_cmd_parser *p, const char *in, size_t len,
                                    size_t *consumed_r)
{
    const unsigned char *s = (const unsigned char *)in;
    enum imap_cmd_result r = IMAP_CMD_MORE;
    size_t i = 0;

    /* Results stick until reset (fatal: forever), consuming nothing. */
    switch (p->state) {
    case CS_DONE:
        *consumed_r = 0;
        return IMAP_CMD_DONE;
    case CS_BAD:
    case CS_FATAL:
        *consumed_r = 0;
        return IMAP_CMD_BAD;
    default:
        break;
    }

    for (;;) {
        if (p->state == CS_LIT_DATA) {
            /* Literal bytes are copied in one step; their room was reserved at the header. */
            size_t n = len - i;
            if (n > p->lit_left)
                n = (size_t)p->lit_left;
            if (n > 0) {
                memcpy(p->store + p->store_len, in + i, n);
                p->store_len += n;
                p->args[p->nargs - 1].len += (uint32_t)n;
                p->lit_left -= n;
                i += n;
            }
            if (p->lit_left > 0)
                break;
            p->state = CS_AFTER_ARG;
            p->line_len = 0;
            continue;
        }
        if (i == len)
            break;
        unsigned char c = s[i++];

        if (p->cr) {
            p->cr = false;
            if (c != '\n') {
                /* A bare CR: the line is bad; this byte is part of it and is skipped. */
                p->error = "CR not followed by LF.";
                drop_partial_tag(p);
                p->state = CS_SKIP;
                p->skip_tail = TAIL_NONE;
                i--;
                continue;
            }
        }
        if (c == '\n') {
            r = cmd_eol(p);
            if (r != IMAP_CMD_MORE)
                break;
            continue;
        }
        if (c == '\r' && p->state != CS_SKIP) {
            /* Decided by the next byte: only LF may follow. */
            p->cr = true;
            continue;
        }
        if (++p->line_len > p->max_line) {
            r = cmd_fatal(p, "Line too long.");
            break;
        }
        if (p->state == CS_SKIP) {
            skip_tail_byte(p, c);
            continue;
        }
        if (!cmd_byte(p, c)) {
            /* p->error is set. The offending byte may start "{n+}", so the tail sees it. */
            drop_partial_tag(p);
            p->state = CS_SKIP;
            p->skip_tail = TAIL_NONE;
            skip_tail_byte(p, c);
        }
    }
    *consumed_r = i;
    return r;
}

/* ---------- 2. relay framer ---------- */

enum frame_state {
    FS_TEXT,    /* inside a line of text */
    FS_LITERAL, /* skipping literal_left bytes (0: LITERAL_END is due, consuming nothing) */
    FS_ERROR,   /* stuck */
};

/* Tracking a literal header that may end the line: [~] "{" 1*DIGIT ["+"] "}" [CR] LF */
enum lit_state { LS_NONE, LS_TILDE, LS_OPEN, LS_DIGITS, LS_PLUS, LS_CLOSE, LS_CLOSE_CR };

/* Bytes that may change the framer's state, outside and inside a quoted string. Every other
 * byte is skipped by the tight loop in frame_text() when no literal header is in progress. */
static const unsigned char text_special[256] = {['"'] = 1, ['{'] = 1, ['~'] = 1, ['\n'] = 1};
static const unsigned char quote_special[256] = {['"'] = 1, ['\\'] = 1, ['\n'] = 1};

void imap_framer_init(struct imap_framer *f, size_t max_line)
{
    memset(f, 0, sizeof *f);
    f->max_line = max_line;
    f->state = FS_TEXT;
    f->lit_state = LS_NONE;
    f->at_start = true;
}

bool imap_framer_at_boundary(const struct imap_framer *f)
{
    return f->at_start;
}

/* A new line of text starts (a message's first line or the text after a literal). */
static void frame_line_reset(struct imap_framer *f)
{
    f->line_len = 0;
    f->in_quote = false;
    f->in_escape = false;
    f->prev_cr = false;
    f->lit_state = LS_NONE;
}

/* Keep bytes of the first line in head (the first line ends at the first literal header). */
static void head_capture(struct imap_framer *f, const unsigned char *s, size_t n)
{
    if (f->nliterals > 0 || f->head_len >= IMAP_HEAD_MAX)
        return;
    size_t room = IMAP_HEAD_MAX - f->head_len;
    if (n > room)
        n = room;
    memcpy(f->head + f->head_len, s, n);
    f->head_len += n;
}

static enum imap_frame_event frame_error(struct imap_framer *f, const char *why)
{
    f->error = why;
    f->state = FS_ERROR;
    return IMAP_FRAME_ERROR;
}

/* One byte outside a quoted string that the tight loop stopped at, or any byte while a literal
 * header is in progress. */
static void lit_track(struct imap_framer *f, unsigned char c)
{
    switch (c) {
    case '"':
        f->in_quote = true;
        f->lit_state = LS_NONE;
        return;
    case '~':
        f->lit_state = LS_TILDE;
        return;
    case '{':
        f->lit_acc_binary = f->lit_state == LS_TILDE;
        f->lit_acc = 0;
        f->lit_digits = 0;
        f->lit_acc_overflow = false;
        f->lit_acc_plus = false;
        f->lit_state = LS_OPEN;
        return;
    case '+':
        f->lit_acc_plus = f->lit_state == LS_DIGITS;
        f->lit_state = f->lit_acc_plus ? LS_PLUS : LS_NONE;
        return;
    case '}':
        f->lit_state = f->lit_state == LS_DIGITS || f->lit_state == LS_PLUS ? LS_CLOSE : LS_NONE;
        return;
    case '\r':
        f->lit_state = f->lit_state == LS_CLOSE ? LS_CLOSE_CR : LS_NONE;
        return;
    default:
        if (c >= '0' && c <= '9' && (f->lit_state == LS_OPEN || f->lit_state == LS_DIGITS)) {
            lit_add_digit(&f->lit_acc, &f->lit_digits, &f->lit_acc_overflow, c);
            f->lit_state = LS_DIGITS;
            return;
        }
        f->lit_state = LS_NONE;
        return;
    }
}

/* Scan text up to and including the next LF. */
static enum imap_frame_event frame_text(struct imap_framer *f, const unsigned char *s, size_t len,
                                        size_t *consumed_r)
{
    size_t i = 0;
    while (i < len) {
        if (f->lit_state == LS_NONE && !f->in_escape) {
            /* Fast path: skip ordinary bytes, but never past the line budget, so an endless
             * line is refused at the same byte however it is split. */
            const unsigned char *special = f->in_quote ? quote_special : text_special;
            size_t budget =
                f->max_line == IMAP_LINE_UNLIMITED ? len - i : f->max_line + 1 - f->line_len;
            size_t lim = len - i < budget ? len : i + budget;
            size_t j = i;
            while (j < lim && !special[s[j]])
                j++;
            f->line_len += j - i;
            i = j;
            if (i == len)
                break;
        }
        unsigned char c = s[i];
        if (c == '\n') {
            /* A line may hold max_line bytes of text plus its CR. */
            bool cr = f->line_len > 0 && (i > 0 ? s[i - 1] == '\r' : f->prev_cr);
            head_capture(f, s, i);
            if (f->max_line != IMAP_LINE_UNLIMITED && f->line_len - (cr ? 1 : 0) > f->max_line) {
                *consumed_r = i + 1;
                return frame_error(f, "line too long");
            }
            if (cr && f->nliterals == 0 && f->head_len == f->line_len)
                f->head_len--; /* the head excludes the CR of CRLF */
            *consumed_r = i + 1;
            if (!f->in_quote && (f->lit_state == LS_CLOSE || f->lit_state == LS_CLOSE_CR)) {
                if (f->lit_acc_overflow)
                    return frame_error(f, "literal length too large");
                f->literal_len = f->lit_acc;
                f->literal_left = f->lit_acc;
                f->literal_plus = f->lit_acc_plus;
                f->literal_binary = f->lit_acc_binary;
                f->nliterals++;
                f->state = FS_LITERAL;
                return IMAP_FRAME_LITERAL;
            }
            frame_line_reset(f);
            f->at_start = true;
            return IMAP_FRAME_END;
        }
        if (f->max_line != IMAP_LINE_UNLIMITED && f->line_len > f->max_line) {
            head_capture(f, s, i);
            *consumed_r = i + 1;
            return frame_error(f, "line too long");
        }
        f->line_len++;
        i++;
        if (f->in_quote) {
            /* quoted = DQUOTE *QUOTED-CHAR DQUOTE;  "\" quoted-specials escapes */
            if (f->in_escape)
                f->in_escape = false;
            else if (c == '\\')
                f->in_escape = true;
            else if (c == '"')
                f->in_quote = false;
            continue;
        }
        lit_track(f, c);
    }
    head_capture(f, s, len);
    f->prev_cr = len > 0 && s[len - 1] == '\r';
    *consumed_r = len;
    return IMAP_FRAME_MORE;
}

enum imap_frame_event imap_frame(struct imap_framer *f, const char *in, size_t len,
                                 size_t *consumed_r)
{
    *consumed_r = 0;
    if (f->state == FS_ERROR)
        return IMAP_FRAME_ERROR;
    if (f->state == FS_LITERAL) {
        /* O(1): literal contents are never looked at. For {0} this returns LITERAL_END at once,
         * consuming nothing, exactly once (the state then moves on). */
        size_t n = len;
        if (n > f->literal_left)
            n = (size_t)f->literal_left;
        f->literal_left -= n;
        *consumed_r = n;
        if (f->literal_left > 0)
            return IMAP_FRAME_MORE;
        f->state = FS_TEXT;
        frame_line_reset(f);
        return IMAP_FRAME_LITERAL_END;
    }
    if (len == 0)
        return IMAP_FRAME_MORE;
    if (f->at_start) {
        f->at_start = false;
        f->head_len = 0;
        f->nliterals = 0;
        f->literal_len = 0;
        f->literal_left = 0;
        f->literal_plus = false;
        f->literal_binary = false;
    }
    return frame_text(f, (const unsigned char *)in, len, consumed_r);
}

bool imap_framer_cancel_literal(struct imap_framer *f)
{
    if (f->state != FS_LITERAL || f->literal_plus || f->literal_left != f->literal_len)
        return false;
    f->literal_left = 0;
    f->state = FS_TEXT;
    frame_line_reset(f);
    f->at_start = true;
    return true;
}

/* ---------- helpers ---------- */

bool imap_split_tag(const char *line, size_t len, const char **tag_r, size_t *tag_len_r,
                    const char **rest_r, size_t *rest_len_r)
{
    size_t n = 0;
    while (n < len && is_tag_char((unsigned char)line[n]))
        n++;
    if (n == 0 || n >= len || line[n] != ' ')
        return false;
    *tag_r = line;
    *tag_len_r = n;
    *rest_r = line + n + 1;
    *rest_len_r = len - n - 1;
    return true;
}
