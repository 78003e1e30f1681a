/*
 * pop3_parse — resumable, I/O-free, malloc-free POP3 tokenizers (RFC 1939, RFC 2449 CAPA /
 * PIPELINING / RESP-CODES, RFC 5034 AUTH, RFC 2595 STLS). The POP3 sibling of imap_parse.
 *
 * What lives here:
 *
 *  1. pop3_cmd_*: the client command-line parser, used before login (the dialogue answers the
 *     command) and in the relay (to learn what response each pipelined command will get). It
 *     splits one line into an upper-cased keyword and arguments separated by single spaces, stored
 *     in a caller-provided buffer. It is command-agnostic: whether a keyword exists is the
 *     dialogue's business. After pop3_cmd_parser_expect_sasl() the next line is taken whole, as
 *     one raw SASL response (RFC 5034), not as a command.
 *
 *  2. pop3_expected_response(): which kind of response (single-line, multi-line, SASL) a parsed
 *     command will get, so the relay can tell the framer what to expect.
 *
 *  3. pop3_frame(): the response framer (backend → client). It finds where each response ends:
 *     the status line, then for a multi-line response the dot-terminated body, scanned with
 *     memchr, one call per line at most, never one per byte. It keeps only the first
 *     POP3_HEAD_MAX bytes of the status line.
 *
 *  4. pop3_unstuff() / pop3_stuff(): incremental removal and addition of dot-stuffing, for the
 *     scanner (it needs the message as stored) and for a replacement notice.
 *
 * What it does not do: allocate, read or write sockets, log, or decide policy (whether a
 * command is allowed now, what to answer). Nothing here calls back.
 *
 * Invariants:
 *  - Split invariance: every machine gives the same events, at the same absolute input offsets,
 *    with the same results, however the input is split across calls (whole, byte by byte, any
 *    cut). The unit tests and the fuzzer check this.
 *  - Lines end in LF; a CR directly before the LF is part of the terminator. POP3 says CRLF, but
 *    bare LF from broken peers is tolerated in every machine, and the framer and the unstuffer
 *    agree byte for byte on where a multi-line response ends.
 *  - Line limits count the whole line including its terminator, as RFC 2449 section 4 counts:
 *    "The maximum length of a command is increased from 47 characters (4 character command,
 *    single space, 40 character argument, CRLF) to 255 octets, including the terminating CRLF."
 *    The dialogue chooses max_line (the configured limit is usually far more generous than 255,
 *    because SASL responses and long passwords do not fit in 255).
 */
#ifndef PORTCULLIS_POP3_PARSE_H
#define PORTCULLIS_POP3_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 1939: "Keywords are three or four characters long". Longer ones up to POP3_KEYWORD_MAX are
 * parsed (and refused cleanly by the dialogue); beyond it the line is BAD. */
#define POP3_KEYWORD_MAX 8
#define POP3_ARGS_MAX    4   /* arguments kept in args[]; POP3 commands take at most two */
#define POP3_HEAD_MAX    128 /* framer: first bytes of a status line kept in head[] */
/* pop3_framer_init(): no cap on the status line (the relay after login streams long lines) */
#define POP3_LINE_UNLIMITED SIZE_MAX

/* ---------- 1. command-line parser ---------- */

enum pop3_cmd_result {
    POP3_CMD_MORE, /* all input consumed, the line has not ended yet; feed more */
    POP3_CMD_DONE, /* one line parsed, through its LF; results valid (see the struct) */
    POP3_CMD_BAD,  /* one bad line consumed through its LF: `error` says why. The parser is ready
                      for the next line; the dialogue answers -ERR. `fatal` is always false today
                      (every POP3 error can be skipped to the end of its line, and nothing is
                      stored while skipping); it exists so that a caller written for both
                      protocols can test it as it does imap_cmd_parser's. */
};

struct pop3_arg {
    uint32_t off; /* into parser->store */
    uint32_t len; /* may be 0 (two spaces in a row, or a trailing space) */
};

struct pop3_cmd_parser {
    /* Limit, set by init. A line whose bytes, terminator included, exceed it is BAD "line too
     * long". The caller may change it between lines (e.g. a larger limit for a SASL response). */
    size_t max_line;

    /* results, valid after DONE until the next pop3_cmd_parse() or reset */
    bool sasl;                           /* the line was a SASL response (expect_sasl was set):
                                            keyword is "", nargs is 1, args[0] is the whole
                                            line (may be empty; "*" means cancel) */
    char keyword[POP3_KEYWORD_MAX + 1];  /* upper-cased, NUL-terminated, 1..8 bytes */
    unsigned nargs;                      /* arguments in args[], at most POP3_ARGS_MAX */
    bool too_many_args;                  /* the line had more than POP3_ARGS_MAX arguments */
    struct pop3_arg args[POP3_ARGS_MAX]; /* split on every single SP (RFC 1939: "Keywords and
                                            arguments are each separated by a single SPACE
                                            character") */
    struct pop3_arg rest;                /* everything after the keyword's SP, raw; the PASS
                                            argument (RFC 1939: "a POP3 server may treat spaces
                                            in the argument as part of the password"). len 0
                                            when the keyword ends the line. */
    const char *error;                   /* static string, after BAD (then keyword is "" and
                                            nargs 0; `sasl` still says whether the bad line was
                                            meant as a SASL response: the dialogue then fails the
                                            AUTH with -ERR) */
    bool fatal;                          /* after BAD; see POP3_CMD_BAD */

    /* The line (terminator excluded) is copied here. Owned by the caller; it may hold a password
     * or SASL credentials, so the parser wipes the bytes it used when the next line starts and
     * at reset. The caller should still wipe after handling a credential-bearing line. */
    char *store;
    size_t store_cap; /* a line longer than this is BAD "line too long"; max_line is enough */
    size_t store_len; /* bytes of the current line in store */

    /* private state */
    bool in_line;    /* some bytes of the current line consumed (else the next byte starts one) */
    bool cr_pending; /* the last byte was CR: LF must follow */
    bool sasl_next;  /* expect_sasl() was called: the next line is a SASL response */
    size_t line_len; /* bytes of the current line seen, CR included, LF excluded */
};

/* Prepare a parser. `store`/`cap` are the caller's buffer for one line (cap ≥ max_line is
 * enough); it must outlive the parser's use. Never fails. */
void pop3_cmd_parser_init(struct pop3_cmd_parser *p, char *store, size_t cap, size_t max_line);

/* Forget the current line and results (wiping the stored bytes) and any pending
 * expect_sasl(). Calling it after DONE/BAD is optional: the next pop3_cmd_parse() call that
 * consumes a byte starts a new line by itself. Use it to drop a partial line, e.g. after STLS
 * (RFC 2595 / nginx: plaintext pipelined before TLS must not be honoured afterwards). */
void pop3_cmd_parser_reset(struct pop3_cmd_parser *p);

/* The next line is a SASL response (RFC 5034 section 4), not a command: it is returned whole as
 * args[0] of a DONE with `sasl` set; an empty line is a valid (empty) response there, and a line
 * over max_line, or with a NUL or a bare CR, is BAD. The mode lasts for that one line. Call it
 * between lines: after the DONE for "AUTH <mech>" (once the "+ " challenge is sent) and before
 * feeding the next line; if the current line is partly consumed, it applies to the line after. */
void pop3_cmd_parser_expect_sasl(struct pop3_cmd_parser *p);

/* Feed `len` bytes (len may be 0: returns MORE, consumes nothing). Stops at the end of the
 * first line: *consumed_r is how many bytes were used; the rest belong to later calls.
 * MORE always consumes everything. Errors in a line (over max_line or store_cap, a NUL byte, a
 * CR not followed by LF, an empty line, a keyword that is empty, over POP3_KEYWORD_MAX or not
 * printable ASCII) are reported as BAD only once the line's LF is consumed, with the first error
 * found; a too-long line is skipped with memchr, not stored. */
enum pop3_cmd_result pop3_cmd_parse(struct pop3_cmd_parser *p, const char *in, size_t len,
                                    size_t *consumed_r);

/* After DONE: is the keyword `kw` (case-insensitively)? False for a SASL line. */
bool pop3_keyword_is(const struct pop3_cmd_parser *p, const char *kw);

/* After DONE: pointer to argument i's bytes in store (not NUL-terminated; length in
 * args[i].len), or NULL if i >= nargs. */
const char *pop3_cmd_arg(const struct pop3_cmd_parser *p, unsigned i);

/* After DONE: is argument i equal to `s`, case-insensitively? False if i >= nargs. */
bool pop3_cmd_arg_is(const struct pop3_cmd_parser *p, unsigned i, const char *s);

/* After DONE of a SASL line: is it the client's cancel? RFC 5034 section 4: "If the client
 * wishes to cancel the authentication exchange, it issues a line with a single "*"." */
bool pop3_sasl_is_cancel(const struct pop3_cmd_parser *p);

/* ---------- 2. relay command tracking ---------- */

enum pop3_resp_kind {
    POP3_RESP_SINGLE, /* one status line */
    POP3_RESP_MULTI,  /* +OK is followed by a dot-terminated body; -ERR is one line */
    POP3_RESP_SASL,   /* one line: "+ [base64]" (challenge: more exchange follows), +OK or -ERR */
};

/* After DONE: what the backend will answer to this line.
 *   MULTI:  RETR, TOP, CAPA (RFC 1939, RFC 2449); LIST and UIDL without an argument (a line
 *           whose rest is only spaces counts as "without": servers such as Dovecot cut the
 *           argument at the first space and treat an empty one as absent, and guessing MULTI
 *           is the safe side, since a MULTI that comes back -ERR is framed as one line); AUTH
 *           without an argument (the pre-RFC 5034 mechanism listing Outlook sends, answered as a
 *           multi-line list by Dovecot and others).
 *   SASL:   AUTH with a mechanism, and any SASL response line (the server answers it with
 *           another challenge or a final +OK/-ERR).
 *   SINGLE: everything else, including unknown keywords.
 * The result is only meaningful for a line the relay forwards as is. */
enum pop3_resp_kind pop3_expected_response(const struct pop3_cmd_parser *p);

/* ---------- 3. response framer ---------- */

enum pop3_status {
    POP3_STATUS_NONE, /* no status line seen yet */
    POP3_STATUS_OK,   /* "+OK" */
    POP3_STATUS_ERR,  /* "-ERR" */
    POP3_STATUS_CONT, /* "+ " or a lone "+": a SASL challenge (RFC 5034: continue-req) */
};

enum pop3_frame_event {
    POP3_FRAME_MORE,        /* the response has not ended; feed more. In a body, consumed may be
                               less than len (see pop3_frame) */
    POP3_FRAME_STATUS_LINE, /* the status line of a multi-line +OK response ended (its LF
                               consumed); status/head valid; the body follows */
    POP3_FRAME_END,         /* the whole response ended: a single-line response's LF, or a body's
                               terminating line, consumed. status/head valid. */
    POP3_FRAME_ERROR,       /* the backend broke framing: `error` says how (status line over
                               max_line, a status other than +OK/-ERR, a "+ " challenge when no
                               SASL exchange is running). *consumed_r covers the bytes up to
                               where it was found. The framer is stuck; the caller ends the
                               session. */
};

struct pop3_framer {
    size_t max_line; /* status line limit, terminator included; set by init, may be changed */

    /* about the current response (valid from STATUS_LINE/END until the next response starts) */
    enum pop3_resp_kind kind; /* how the current response is framed (taken from expect(), or
                                 SINGLE, when its first byte arrives) */
    enum pop3_status status;  /* its status indicator */
    char head[POP3_HEAD_MAX]; /* first bytes of its status line, terminator excluded; not
                                 NUL-terminated */
    size_t head_len;
    size_t status_len; /* length of the whole status line, terminator excluded */
    uint64_t body_len; /* multi-line: body bytes consumed (still stuffed), terminator
                          line excluded */
    unsigned term_len; /* at END of a multi-line body: length of its terminating line,
                          3 for ".\r\n", 2 for ".\n". Those are the last term_len bytes
                          consumed by the call that returned END. 0 otherwise. */
    const char *error; /* static string, after ERROR */

    /* private state */
    int state;
    int next_kind; /* enum pop3_resp_kind of the next response: expect()'s, else SINGLE */
    bool cr_last;  /* status line: its last byte so far was CR */
};

/* Prepare a framer; the first response expected is SINGLE (the greeting). Never fails. */
void pop3_framer_init(struct pop3_framer *f, size_t max_line);

/* Tell the framer how the next response is framed: the relay pops it from its queue of
 * outstanding pipelined commands (pop3_expected_response() of each). Valid only at a boundary
 * (before the first byte of a response); returns false and changes nothing otherwise. Without a
 * call, a response is framed as SINGLE (an unsolicited line, e.g. Dovecot's "-ERR Disconnected
 * for inactivity.", is then one line the relay can log or forward). */
bool pop3_framer_expect(struct pop3_framer *f, enum pop3_resp_kind kind);

/* True between two responses: nothing of the next one consumed. */
bool pop3_framer_at_boundary(const struct pop3_framer *f);

/* Feed `len` bytes (len may be 0: returns MORE, consumes nothing). Stops at the first event;
 * *consumed_r is how many bytes were used, the rest belong to later calls.
 *  - Status line: a single-line response (SINGLE, SASL, or MULTI answered -ERR) ends with END at
 *    its LF; a multi-line +OK gives STATUS_LINE there, then the body.
 *  - Body: it consumes whole lines with memchr and returns MORE, or END when the terminating
 *    line has been consumed. The terminator is "." alone on a line: RFC 1939 section 3, "If so
 *    and if CRLF immediately follows the termination character, then the response from the POP
 *    server is ended". Lines are found by LF, so ".\r\n" or ".\n" after a CRLF or a bare LF (or
 *    right after the status line: an empty body) ends the body; ".." or ".x" is content. A body
 *    whose last line lacks its line end cannot be told from content ("text.\r\n" is a line of
 *    text) and is framed as content: the response then ends at the next "." line.
 *    So that every byte consumed in body state is body, never part of the terminator, the
 *    framer does not consume a "." or ".\r" at the start of a line until the byte after it
 *    decides: MORE may consume less than len (at most 2 bytes are left), and the caller feeds
 *    them again with the bytes that follow. Hence the body of a response is exactly the bytes
 *    consumed after STATUS_LINE, minus the last term_len bytes of the END call.
 * After ERROR every call returns ERROR consuming nothing. After END the framer is at a boundary
 * and expects SINGLE unless told otherwise. */
enum pop3_frame_event pop3_frame(struct pop3_framer *f, const char *in, size_t len,
                                 size_t *consumed_r);

/* Find a response code in a status line (e.g. f->head): the text inside the brackets that
 * RFC 2449 section 8 puts right after the status indicator and one space, hierarchical levels
 * separated by "/": "-ERR [IN-USE] ...", "-ERR [LOGIN-DELAY] ..." (RFC 2449), "-ERR [AUTH] ...",
 * "-ERR [SYS/TEMP] ..." (RFC 3206). Returns true and points into `line` (not NUL-terminated)
 * when there is one; false otherwise (also for an unterminated or empty code, or one holding a
 * space or a control character). */
bool pop3_resp_code(const char *line, size_t len, const char **code_r, size_t *code_len_r);

/* Is this response code `code` or a sub-level of it ("SYS" matches "SYS/TEMP")? Case-insensitive.
 * For classifying backend login failures ([AUTH] wrong credentials, [SYS/TEMP] try later,
 * [IN-USE] mailbox locked). */
bool pop3_resp_code_is(const char *code, size_t code_len, const char *want);

/* ---------- 4. dot-stuffing ---------- */

/* Removes dot-stuffing from a multi-line body, as RFC 1939 section 3 tells a client to: "If so
 * and if octets other than CRLF follow, the first octet of the line (the termination octet) is
 * stripped away." Feed the bytes right after the status line; it stops at the terminating line
 * (the same one the framer finds) and sets `done`. */
struct pop3_unstuffer {
    bool done;   /* the terminating line was consumed; further input is not used */
    int state;   /* private: at line start, mid-line, after "." or ".\r" at line start */
    uint64_t in; /* bytes consumed so far, terminator included once done */
};

/* Output never exceeds input by more than one byte: a held "." and CR at a line start that turn
 * out to be content (".\rX") emit the CR with the next chunk. */
#define POP3_UNSTUFF_OUT_MAX(len) ((len) + 1)

void pop3_unstuffer_init(struct pop3_unstuffer *u);

/* Unstuff `len` bytes into `out`, which must have room for POP3_UNSTUFF_OUT_MAX(len) bytes and
 * must not overlap `in`. Returns the bytes written. *consumed_r is len, or less when the
 * terminating line ended inside this chunk (the terminator is consumed, not written; what
 * follows it is the next response). The output holds each line with its own line end as sent
 * (CRLF, or a bare LF); the terminating line is not part of it. len may be 0. */
size_t pop3_unstuff(struct pop3_unstuffer *u, const char *in, size_t len, char *out,
                    size_t *consumed_r);

/* Adds dot-stuffing and the terminator, for a body the proxy sends itself (a replacement
 * notice). Line ends are normalised to CRLF: a bare LF becomes CRLF (a client may look only for
 * CRLF "." CRLF, so a bare LF before the terminator could leave it waiting forever); a CR not
 * followed by LF is left as is. A line starting with "." gets one more. finish() completes the
 * last line if it lacks a line end, then writes ".\r\n".
 * Round trip: unstuff(stuff(x)) is x with bare LFs turned into CRLF and, unless x is empty or
 * ends in LF, CRLF appended (LF alone if x ends in CR). */
struct pop3_stuffer {
    bool bol;     /* private: the next byte starts a line */
    bool prev_cr; /* private: the last byte written was CR */
};

#define POP3_STUFF_OUT_MAX(len) (2 * (len)) /* "." at line start → "..", LF → CRLF */
#define POP3_STUFF_FINISH_MAX   5           /* "\r\n.\r\n" */

void pop3_stuffer_init(struct pop3_stuffer *s);

/* Stuff `len` bytes (len may be 0) into `out` (room for POP3_STUFF_OUT_MAX(len) bytes, not
 * overlapping `in`). Returns the bytes written. */
size_t pop3_stuff(struct pop3_stuffer *s, const char *in, size_t len, char *out);

/* End the body: write the missing line end, if any, and ".\r\n" into `out` (room for
 * POP3_STUFF_FINISH_MAX bytes). Returns the bytes written. The stuffer is then reinitialised. */
size_t pop3_stuff_finish(struct pop3_stuffer *s, char *out);

#endif
