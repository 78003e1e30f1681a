/*
 * pop3_parse — resumable, I/O-free, malloc-free POP3 tokenizers; the contract is in pop3_parse.h.
 *
 * What it does not do: allocate, touch sockets, log, or know which commands are allowed when.
 *
 * Invariants kept by every machine here:
 *  - State lives in the struct, never in the position of the input: a call may stop after any
 *    byte, and the next call resumes as if the bytes had come together (split invariance).
 *  - Lines are found by LF; the CR before it belongs to the terminator. Counting and limits are
 *    made per line, so a limit fires at the same absolute byte however the input is cut.
 *  - The framer and the unstuffer recognise the same terminating line ("." then CRLF or LF, at
 *    the start of a line), so the scanner's idea of a body and the relay's never disagree.
 *  - The body scanners (framer, unstuffer) do one memchr per line; the per-byte loops are kept
 *    for command lines (short, bounded by max_line) and for the stuffer (only used on the
 *    proxy's own small replacement notices).
 */
#include "pop3_parse.h"

#include <string.h>

/* ---------- small helpers ---------- */

static char ascii_upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

/* Case-insensitive (ASCII only: the locale must not change protocol keywords) compare of n
 * bytes. */
static bool ascii_ci_eq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ascii_upper(a[i]) != ascii_upper(b[i]))
            return false;
    }
    return true;
}

/* Zero bytes that may have held a password, in a way the compiler cannot drop as a dead store
 * (the barrier tells it the memory is read afterwards). */
static void wipe(char *p, size_t n)
{
    if (n == 0)
        return;
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* ---------- 1. command-line parser ---------- */

void pop3_cmd_parser_init(struct pop3_cmd_parser *p, char *store, size_t cap, size_t max_line)
{
    memset(p, 0, sizeof(*p));
    p->store = store;
    /* Argument offsets are 32-bit; no sane line buffer comes near that. */
    p->store_cap = cap > UINT32_MAX ? UINT32_MAX : cap;
    p->max_line = max_line;
}

static void cmd_clear_results(struct pop3_cmd_parser *p)
{
    wipe(p->store, p->store_len);
    p->store_len = 0;
    p->sasl = false;
    p->keyword[0] = '\0';
    p->nargs = 0;
    p->too_many_args = false;
    memset(p->args, 0, sizeof(p->args));
    p->rest.off = 0;
    p->rest.len = 0;
    p->error = NULL;
    p->fatal = false;
    p->line_len = 0;
    p->cr_pending = false;
}

void pop3_cmd_parser_reset(struct pop3_cmd_parser *p)
{
    cmd_clear_results(p);
    p->in_line = false;
    p->sasl_next = false;
}

void pop3_cmd_parser_expect_sasl(struct pop3_cmd_parser *p)
{
    p->sasl_next = true;
}

/* Record the first problem of the line; the rest of the line is then skipped, not stored. */
static void cmd_line_error(struct pop3_cmd_parser *p, const char *why)
{
    if (!p->error)
        p->error = why;
}

/* A keyword byte: RFC 1939 "Keywords and arguments consist of printable ASCII characters". */
static bool is_keyword_char(char c)
{
    return c > ' ' && c <= '~';
}

/* Split the stored line into keyword and arguments. Sets p->error on a bad keyword. */
static void cmd_split(struct pop3_cmd_parser *p)
{
    const char *s = p->store;
    size_t len = p->store_len;

    if (len == 0) {
        cmd_line_error(p, "empty command");
        return;
    }
    const char *sp = memchr(s, ' ', len);
    size_t kwlen = sp ? (size_t)(sp - s) : len;
    if (kwlen == 0) {
        cmd_line_error(p, "missing command name");
        return;
    }
    if (kwlen > POP3_KEYWORD_MAX) {
        cmd_line_error(p, "command name too long");
        return;
    }
    for (size_t i = 0; i < kwlen; i++) {
        if (!is_keyword_char(s[i])) {
            cmd_line_error(p, "invalid command name");
            return;
        }
        p->keyword[i] = ascii_upper(s[i]);
    }
    p->keyword[kwlen] = '\0';
    if (!sp)
        return;

    /* Arguments: every single SP separates two (possibly empty) ones, as RFC 1939 writes it.
     * Doubled or trailing spaces are kept as empty arguments rather than squeezed: the relay
     * forwards the line as is, and must not believe it says something other than what the
     * backend will read. */
    size_t pos = kwlen + 1;
    p->rest.off = (uint32_t)pos;
    p->rest.len = (uint32_t)(len - pos);
    for (;;) {
        const char *next = memchr(s + pos, ' ', len - pos);
        size_t end = next ? (size_t)(next - s) : len;
        if (p->nargs < POP3_ARGS_MAX) {
            p->args[p->nargs].off = (uint32_t)pos;
            p->args[p->nargs].len = (uint32_t)(end - pos);
            p->nargs++;
        } else {
            p->too_many_args = true;
            break;
        }
        if (!next)
            break;
        pos = end + 1;
    }
}

/* The line's LF was consumed: produce DONE or BAD. */
static enum pop3_cmd_result cmd_end_line(struct pop3_cmd_parser *p)
{
    p->in_line = false;
    if (!p->error) {
        if (p->sasl) {
            /* RFC 5034 section 4: the client's response is a line of base64 (or "*"); it is not
             * a command, so it is neither upper-cased nor split. Empty is a valid response. */
            p->nargs = 1;
            p->args[0].off = 0;
            p->args[0].len = (uint32_t)p->store_len;
            p->rest = p->args[0];
        } else {
            cmd_split(p);
        }
    }
    if (p->error) {
        p->keyword[0] = '\0';
        p->nargs = 0;
        p->too_many_args = false;
        p->rest.off = 0;
        p->rest.len = 0;
        return POP3_CMD_BAD;
    }
    return POP3_CMD_DONE;
}

enum pop3_cmd_result pop3_cmd_parse(struct pop3_cmd_parser *p, const char *in, size_t len,
                                    size_t *consumed_r)
{
    size_t i = 0;

    *consumed_r = 0;
    if (len == 0)
        return POP3_CMD_MORE;
    if (!p->in_line) {
        /* First byte of a new line: the previous line's results (and its secrets) go. */
        cmd_clear_results(p);
        p->sasl = p->sasl_next;
        p->sasl_next = false;
        p->in_line = true;
    }
    while (i < len) {
        if (p->error) {
            /* Skipping a bad line: nothing is stored, so its length needs no cap here; the
             * dialogue's timeouts bound a client that never sends LF. */
            const char *lf = memchr(in + i, '\n', len - i);
            if (!lf) {
                i = len;
                break;
            }
            *consumed_r = (size_t)(lf - in) + 1;
            return cmd_end_line(p);
        }
        char c = in[i++];
        if (c == '\n') {
            *consumed_r = i;
            return cmd_end_line(p);
        }
        if (p->cr_pending) {
            /* RFC 1939: "All commands are terminated by a CRLF pair." A CR inside a line would
             * be read differently by different servers (part of the argument, or a line end):
             * refuse it rather than forward something ambiguous. */
            cmd_line_error(p, "bare CR in command");
            continue;
        }
        /* The line, with this byte and an LF still to come, must fit in max_line. */
        if (p->line_len + 2 > p->max_line) {
            cmd_line_error(p, "line too long");
            continue;
        }
        p->line_len++;
        if (c == '\r') {
            p->cr_pending = true;
            continue;
        }
        if (c == '\0') {
            cmd_line_error(p, "NUL in command");
            continue;
        }
        if (p->store_len >= p->store_cap) {
            cmd_line_error(p, "line too long");
            continue;
        }
        p->store[p->store_len++] = c;
    }
    *consumed_r = i;
    return POP3_CMD_MORE;
}

bool pop3_keyword_is(const struct pop3_cmd_parser *p, const char *kw)
{
    size_t n = strlen(kw);
    if (p->sasl || n == 0 || n > POP3_KEYWORD_MAX || strlen(p->keyword) != n)
        return false;
    return ascii_ci_eq(p->keyword, kw, n);
}

const char *pop3_cmd_arg(const struct pop3_cmd_parser *p, unsigned i)
{
    if (i >= p->nargs)
        return NULL;
    return p->store + p->args[i].off;
}

bool pop3_cmd_arg_is(const struct pop3_cmd_parser *p, unsigned i, const char *s)
{
    if (i >= p->nargs)
        return false;
    size_t n = strlen(s);
    return p->args[i].len == n && ascii_ci_eq(p->store + p->args[i].off, s, n);
}

bool pop3_sasl_is_cancel(const struct pop3_cmd_parser *p)
{
    return p->sasl && p->nargs == 1 && p->args[0].len == 1 && p->store[p->args[0].off] == '*';
}

/* ---------- 2. relay command tracking ---------- */

/* Does the line carry an argument, i.e. anything but spaces after the keyword? */
static bool has_argument(const struct pop3_cmd_parser *p)
{
    for (uint32_t i = 0; i < p->rest.len; i++) {
        if (p->store[p->rest.off + i] != ' ')
            return true;
    }
    return false;
}

enum pop3_resp_kind pop3_expected_response(const struct pop3_cmd_parser *p)
{
    if (p->sasl)
        return POP3_RESP_SASL;
    /* RFC 1939 sections 5 and 7: RETR and TOP answer +OK with the message (or its top); LIST
     * and UIDL without an argument list every message. RFC 2449 section 5: CAPA is multi-line. */
    if (pop3_keyword_is(p, "RETR") || pop3_keyword_is(p, "TOP") || pop3_keyword_is(p, "CAPA"))
        return POP3_RESP_MULTI;
    if (pop3_keyword_is(p, "LIST") || pop3_keyword_is(p, "UIDL"))
        return has_argument(p) ? POP3_RESP_SINGLE : POP3_RESP_MULTI;
    if (pop3_keyword_is(p, "AUTH"))
        return has_argument(p) ? POP3_RESP_SASL : POP3_RESP_MULTI;
    return POP3_RESP_SINGLE;
}

/* ---------- 3. response framer ---------- */

enum framer_state {
    FS_BOUNDARY, /* between responses */
    FS_STATUS,   /* inside the status line */
    FS_BODY_BOL, /* body: the next byte starts a line */
    FS_BODY_MID, /* body: inside a line */
    FS_ERROR,    /* stuck */
};

void pop3_framer_init(struct pop3_framer *f, size_t max_line)
{
    memset(f, 0, sizeof(*f));
    f->max_line = max_line;
    f->kind = POP3_RESP_SINGLE;
    f->next_kind = POP3_RESP_SINGLE;
    f->state = FS_BOUNDARY;
}

bool pop3_framer_expect(struct pop3_framer *f, enum pop3_resp_kind kind)
{
    if (f->state != FS_BOUNDARY)
        return false;
    f->next_kind = kind;
    return true;
}

bool pop3_framer_at_boundary(const struct pop3_framer *f)
{
    return f->state == FS_BOUNDARY;
}

/* RFC 1939 section 3: "There are currently two status indicators: positive ("+OK") and negative
 * ("-ERR"). Servers MUST send the "+OK" and "-ERR" in upper case." Matched as prefixes and
 * case-insensitively all the same: only the sign decides the framing, and refusing a sloppy
 * server would end sessions for no gain. RFC 5034 section 4: a challenge is
 * continue-req = "+" SP [base64] CRLF; a lone "+" is accepted too. */
static enum pop3_status classify_status(const char *h, size_t n)
{
    if (n >= 3 && h[0] == '+' && ascii_ci_eq(h + 1, "OK", 2))
        return POP3_STATUS_OK;
    if (n >= 4 && h[0] == '-' && ascii_ci_eq(h + 1, "ERR", 3))
        return POP3_STATUS_ERR;
    if (n >= 1 && h[0] == '+' && (n == 1 || h[1] == ' '))
        return POP3_STATUS_CONT;
    return POP3_STATUS_NONE;
}

static enum pop3_frame_event frame_error(struct pop3_framer *f, const char *why)
{
    f->state = FS_ERROR;
    f->error = why;
    return POP3_FRAME_ERROR;
}

static enum pop3_frame_event frame_end(struct pop3_framer *f)
{
    f->state = FS_BOUNDARY;
    f->next_kind = POP3_RESP_SINGLE;
    return POP3_FRAME_END;
}

/* The status line's LF was consumed. */
static enum pop3_frame_event status_line_done(struct pop3_framer *f)
{
    if (f->cr_last) {
        f->status_len--;
        if (f->head_len > f->status_len)
            f->head_len = f->status_len;
    }
    f->status = classify_status(f->head, f->head_len);
    switch (f->status) {
    case POP3_STATUS_OK:
        if (f->kind == POP3_RESP_MULTI) {
            f->state = FS_BODY_BOL;
            return POP3_FRAME_STATUS_LINE;
        }
        return frame_end(f);
    case POP3_STATUS_ERR:
        return frame_end(f);
    case POP3_STATUS_CONT:
        if (f->kind != POP3_RESP_SASL)
            return frame_error(f, "continuation request outside AUTH");
        return frame_end(f);
    case POP3_STATUS_NONE:
        break;
    }
    return frame_error(f, "invalid status indicator");
}

enum pop3_frame_event pop3_frame(struct pop3_framer *f, const char *in, size_t len,
                                 size_t *consumed_r)
{
    size_t i = 0;

    *consumed_r = 0;
    if (f->state == FS_ERROR)
        return POP3_FRAME_ERROR;
    while (i < len) {
        switch (f->state) {
        case FS_BOUNDARY:
            f->kind = (enum pop3_resp_kind)f->next_kind;
            f->next_kind = POP3_RESP_SINGLE;
            f->status = POP3_STATUS_NONE;
            f->head_len = 0;
            f->status_len = 0;
            f->body_len = 0;
            f->term_len = 0;
            f->error = NULL;
            f->cr_last = false;
            f->state = FS_STATUS;
            break;

        case FS_STATUS: {
            const char *lf = memchr(in + i, '\n', len - i);
            size_t n = lf ? (size_t)(lf - (in + i)) : len - i;
            /* The line, its LF included, must fit in max_line: at most max_line - 1 bytes
             * before the LF. Cut exactly there so the error comes at the same byte however the
             * input is split. */
            size_t room = f->max_line > 0 ? f->max_line - 1 : 0;
            bool too_long = f->status_len + n > room;
            if (too_long) {
                n = room - f->status_len;
                lf = NULL;
            }
            size_t h = POP3_HEAD_MAX - f->head_len;
            if (h > n)
                h = n;
            memcpy(f->head + f->head_len, in + i, h);
            f->head_len += h;
            if (n > 0)
                f->cr_last = in[i + n - 1] == '\r';
            f->status_len += n;
            i += n;
            if (too_long) {
                *consumed_r = i;
                return frame_error(f, "response line too long");
            }
            if (!lf)
                break;
            i++;
            *consumed_r = i;
            return status_line_done(f);
        }

        case FS_BODY_BOL:
            if (in[i] == '.') {
                /* RFC 1939 section 3: "If so and if CRLF immediately follows the termination
                 * character, then the response from the POP server is ended". LF alone is
                 * tolerated as well. Hold "." and ".\r" back until the next byte decides, so
                 * that no consumed body byte ever turns out to be the terminator. */
                if (i + 1 >= len) {
                    *consumed_r = i;
                    return POP3_FRAME_MORE;
                }
                if (in[i + 1] == '\n') {
                    f->term_len = 2;
                    *consumed_r = i + 2;
                    return frame_end(f);
                }
                if (in[i + 1] == '\r') {
                    if (i + 2 >= len) {
                        *consumed_r = i;
                        return POP3_FRAME_MORE;
                    }
                    if (in[i + 2] == '\n') {
                        f->term_len = 3;
                        *consumed_r = i + 3;
                        return frame_end(f);
                    }
                }
                /* ".." (stuffed) or ".x": a content line. */
                i++;
                f->body_len++;
            }
            f->state = FS_BODY_MID;
            break;

        case FS_BODY_MID: {
            const char *lf = memchr(in + i, '\n', len - i);
            size_t n = lf ? (size_t)(lf - (in + i)) + 1 : len - i;
            f->body_len += n;
            i += n;
            if (lf)
                f->state = FS_BODY_BOL;
            break;
        }

        default:
            return frame_error(f, "framer state corrupt");
        }
    }
    *consumed_r = i;
    return POP3_FRAME_MORE;
}

bool pop3_resp_code(const char *line, size_t len, const char **code_r, size_t *code_len_r)
{
    size_t pos;

    if (len >= 3 && line[0] == '+' && ascii_ci_eq(line + 1, "OK", 2))
        pos = 3;
    else if (len >= 4 && line[0] == '-' && ascii_ci_eq(line + 1, "ERR", 3))
        pos = 4;
    else
        return false;
    if (len < pos + 2 || line[pos] != ' ' || line[pos + 1] != '[')
        return false;
    size_t start = pos + 2;
    for (size_t i = start; i < len; i++) {
        char c = line[i];
        if (c == ']') {
            if (i == start)
                return false;
            *code_r = line + start;
            *code_len_r = i - start;
            return true;
        }
        /* Response codes are printable ASCII without spaces: a space or control byte means
         * this is free text that happens to start with "[". */
        if (!is_keyword_char(c) || c == '[')
            return false;
    }
    return false;
}

bool pop3_resp_code_is(const char *code, size_t code_len, const char *want)
{
    size_t n = strlen(want);
    if (n == 0 || code_len < n || !ascii_ci_eq(code, want, n))
        return false;
    return code_len == n || code[n] == '/';
}

/* ---------- 4. dot-stuffing ---------- */

enum unstuff_state {
    US_BOL,    /* the next byte starts a line */
    US_MID,    /* inside a line */
    US_DOT,    /* a "." started the line; not written */
    US_DOT_CR, /* ".\r" started the line; neither written */
};

void pop3_unstuffer_init(struct pop3_unstuffer *u)
{
    memset(u, 0, sizeof(*u));
    u->state = US_BOL;
}

size_t pop3_unstuff(struct pop3_unstuffer *u, const char *in, size_t len, char *out,
                    size_t *consumed_r)
{
    size_t i = 0, o = 0;

    while (i < len && !u->done) {
        switch (u->state) {
        case US_BOL:
            if (in[i] == '.') {
                i++;
                u->state = US_DOT;
            } else {
                u->state = US_MID;
            }
            break;
        case US_DOT:
            if (in[i] == '\n') {
                i++;
                u->done = true;
            } else if (in[i] == '\r') {
                i++;
                u->state = US_DOT_CR;
            } else {
                /* RFC 1939: "the first octet of the line (the termination octet) is stripped
                 * away"; the byte after it is ordinary content. */
                u->state = US_MID;
            }
            break;
        case US_DOT_CR:
            if (in[i] == '\n') {
                i++;
                u->done = true;
            } else {
                /* ".\rX": a content line "\rX" with its dot stripped. This CR is the one byte
                 * by which output may exceed input (POP3_UNSTUFF_OUT_MAX). */
                out[o++] = '\r';
                u->state = US_MID;
            }
            break;
        default: { /* US_MID */
            const char *lf = memchr(in + i, '\n', len - i);
            size_t n = lf ? (size_t)(lf - (in + i)) + 1 : len - i;
            memcpy(out + o, in + i, n);
            o += n;
            i += n;
            if (lf)
                u->state = US_BOL;
            break;
        }
        }
    }
    u->in += i;
    *consumed_r = i;
    return o;
}

void pop3_stuffer_init(struct pop3_stuffer *s)
{
    s->bol = true;
    s->prev_cr = false;
}

size_t pop3_stuff(struct pop3_stuffer *s, const char *in, size_t len, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        /* RFC 1939: "If any line of the multi-line response begins with the termination octet,
         * the line is "byte-stuffed" by pre-pending the termination octet to that line". */
        if (s->bol && c == '.')
            out[o++] = '.';
        if (c == '\n' && !s->prev_cr)
            out[o++] = '\r';
        out[o++] = c;
        s->prev_cr = c == '\r';
        s->bol = c == '\n';
    }
    return o;
}

size_t pop3_stuff_finish(struct pop3_stuffer *s, char *out)
{
    size_t o = 0;

    /* "Hence a multi-line response is terminated with the five octets "CRLF.CRLF"" (RFC 1939):
     * the last line needs its CRLF before the terminator, or the "." would join it. */
    if (!s->bol) {
        if (!s->prev_cr)
            out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o++] = '.';
    out[o++] = '\r';
    out[o++] = '\n';
    pop3_stuffer_init(s);
    return o;
}
