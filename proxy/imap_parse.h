/*
 * imap_parse — resumable, I/O-free IMAP tokenizers.
 *
 * Two machines live here:
 *
 *  1. imap_cmd_*: the pre-auth command parser. It tokenizes one whole client command — tag,
 *     command name, arguments (atoms, quoted strings with \" and \\ escapes, literals {n}
 *     (synchronising), {n+} (LITERAL+), ~{n} (BINARY), parenthesised lists, NIL) — into a
 *     caller-provided store. It is command-agnostic: it never decides whether a command exists;
 *     the dialogue does. So an unknown command carrying a literal has its literal swallowed as
 *     an argument and never runs as a command (nginx-tests mail_imap.t "literal not command").
 *
 *  2. imap_frame(): the relay framer used for both directions after login. It only finds
 *     boundaries: where a line ends, where a line announces a literal {n}/{n+}/~{n} (outside
 *     quoted strings), and it skips literal bytes by length with no per-byte work. It keeps the
 *     first IMAP_HEAD_MAX bytes of each command/response so the relay can classify it (tag,
 *     command name, "* CAPABILITY", "* 12 FETCH (") without holding the line.
 *
 * Neither allocates, reads sockets or logs. Both survive any split of bytes across calls: feeding
 * one byte at a time yields exactly the same results as feeding everything at once.
 */
#ifndef PORTCULLIS_IMAP_PARSE_H
#define PORTCULLIS_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IMAP_TAG_MAX  64  /* longer tags are a BAD command */
#define IMAP_NAME_MAX 32  /* command names (upper-cased copy) */
#define IMAP_ARGS_MAX 72  /* tokens per command: an ID list of 30 pairs plus parens fits */
#define IMAP_HEAD_MAX 128 /* framer: first bytes kept of each command/response */
/* imap_framer_init(): no cap on line length (the relay after login streams long lines) */
#define IMAP_LINE_UNLIMITED SIZE_MAX

/* ---------- 1. pre-auth command parser ---------- */

enum imap_arg_type {
    IMAP_ARG_ATOM,       /* includes NIL and numbers; as written */
    IMAP_ARG_QUOTED,     /* unescaped contents */
    IMAP_ARG_LITERAL,    /* contents; may hold any byte including NUL and CRLF */
    IMAP_ARG_LIST_OPEN,  /* "(" (no data) */
    IMAP_ARG_LIST_CLOSE, /* ")" (no data) */
};

struct imap_arg {
    enum imap_arg_type type;
    uint32_t off; /* into parser->store */
    uint32_t len;
};

enum imap_cmd_result {
    IMAP_CMD_MORE,     /* all input consumed; feed more */
    IMAP_CMD_DONE,     /* one whole command parsed (tag, name, args valid until reset) */
    IMAP_CMD_CONTINUE, /* a synchronising literal was announced and accepted: the caller sends
                          "+ OK\r\n" (RFC 3501 7.5) and keeps feeding */
    IMAP_CMD_BAD,      /* syntax error: `error` says why, `tag` holds the tag if one was read
                          (else empty). If `fatal` the session must end (BYE): the client is
                          about to send bytes we cannot skip safely (an oversized {n+}) or the line
                          is over max_line. Otherwise the parser has consumed through the bad
                          line's end and is ready for the next command after a reset. */
};

struct imap_cmd_parser {
    /* limits, set by init */
    size_t max_line;    /* bytes of one line excluding literal contents */
    size_t max_literal; /* bytes of any one literal */

    /* results, valid after DONE (tag also after BAD) */
    char tag[IMAP_TAG_MAX + 1];
    char name[IMAP_NAME_MAX + 1]; /* upper-cased */
    unsigned nargs;
    struct imap_arg args[IMAP_ARGS_MAX];
    const char *error; /* static string, after BAD */
    bool fatal;

    /* storage for argument bytes, owned by the caller */
    char *store;
    size_t store_cap;
    size_t store_len;

    /* private state */
    int state;           /* enum cmd_state in imap_parse.c */
    int list_depth;      /* open "(" not yet closed */
    size_t line_len;     /* text bytes of the current line (reset after each literal) */
    uint64_t lit_left;   /* literal header: length so far; literal data: bytes still to copy */
    bool lit_plus;       /* the literal being read is {n+} */
    bool lit_overflow;   /* its length has more than 20 digits or overflows 64 bits */
    unsigned lit_digits; /* digits read in the literal header */
    bool cr;             /* the previous byte was a CR: only LF may follow */
    int skip_tail;       /* skipping a bad line: where "{digits+}" at its end stands */
    unsigned tag_len;    /* bytes in tag[] so far */
    unsigned name_len;   /* bytes in name[] so far */
};

/* `store`/`cap` are the caller's buffer (cap bounds the total of all argument bytes). */
void imap_cmd_parser_init(struct imap_cmd_parser *p, char *store, size_t cap, size_t max_line,
                          size_t max_literal);
/* Forget the last command; call after DONE or non-fatal BAD before parsing the next one. */
void imap_cmd_parser_reset(struct imap_cmd_parser *p);
/* Feed `len` bytes. *consumed_r tells how many were used (the rest belong to later calls).
 * Returns at the first event; call again with the remaining bytes. DONE, BAD and CONTINUE each
 * consume at least the LF they end on. DONE and BAD are repeated (consuming nothing) until
 * imap_cmd_parser_reset(); after a fatal BAD the parser stays stuck. */
enum imap_cmd_result imap_cmd_parse(struct imap_cmd_parser *p, const char *in, size_t len,
                                    size_t *consumed_r);
/* Pointer to argument i's bytes (not NUL-terminated; use args[i].len). */
const char *imap_cmd_arg(const struct imap_cmd_parser *p, unsigned i);
/* True if argument i is a string (atom, quoted or literal) equal to `s`, case-insensitively. */
bool imap_cmd_arg_is(const struct imap_cmd_parser *p, unsigned i, const char *s);

/* ---------- 2. relay framer ---------- */

enum imap_frame_event {
    IMAP_FRAME_MORE,        /* all input consumed, no boundary reached */
    IMAP_FRAME_LITERAL,     /* a line announcing a literal ended (after its CRLF); literal_len,
                               literal_plus, literal_binary describe it; literal bytes follow */
    IMAP_FRAME_LITERAL_END, /* the last byte of the literal was consumed; the message continues */
    IMAP_FRAME_END,         /* a whole command/response ended (its final CRLF consumed) */
    IMAP_FRAME_ERROR,       /* a line over max_line (without literals; never with
                               IMAP_LINE_UNLIMITED) or a malformed literal header (e.g.
                               {99999999999999999999}); error says which */
};

struct imap_framer {
    size_t max_line; /* set by init */

    /* about the current command/response (valid from its first byte until the next one) */
    char head[IMAP_HEAD_MAX]; /* its first bytes (first line only), not NUL-terminated */
    size_t head_len;
    unsigned nliterals;    /* literals seen so far in this command/response */
    uint64_t literal_len;  /* valid after IMAP_FRAME_LITERAL */
    uint64_t literal_left; /* literal bytes not yet consumed */
    bool literal_plus;     /* {n+} */
    bool literal_binary;   /* ~{n} */
    const char *error;     /* after IMAP_FRAME_ERROR */

    /* private state */
    int state;             /* enum frame_state in imap_parse.c */
    size_t line_len;       /* bytes of the current line so far, CR included, LF not */
    bool in_quote;         /* inside a quoted string */
    bool in_escape;        /* the previous byte was a backslash inside a quoted string */
    bool prev_cr;          /* the last byte consumed by the previous call was a CR */
    int lit_state;         /* tracking "[~]{digits[+]}" at the end of the line */
    uint64_t lit_acc;      /* its length so far */
    unsigned lit_digits;   /* its digits so far */
    bool lit_acc_overflow; /* more than 20 digits or over 2^64-1 */
    bool lit_acc_plus;     /* "+" seen */
    bool lit_acc_binary;   /* "~" seen before "{" */
    bool at_start;         /* the next byte starts a new command/response */
};

/* max_line: bytes of text per line (CRLF and literal contents excluded), or IMAP_LINE_UNLIMITED:
 * the relay after login frames lines of any length (only head[] and the literal-header state
 * are kept, so memory does not grow with the line). */
void imap_framer_init(struct imap_framer *f, size_t max_line);
/* Feed bytes; stops at the first event. In literal state it skips min(len, literal_left) bytes
 * at once. *consumed_r is how many bytes were used. After IMAP_FRAME_ERROR the framer is stuck
 * (the caller ends the session).
 * A zero-length literal ({0}, {0+}, ~{0}): the call after IMAP_FRAME_LITERAL returns
 * IMAP_FRAME_LITERAL_END with *consumed_r == 0, exactly once and whatever len is (even 0); this
 * is the only event that consumes nothing, so a loop calling until its bytes are used up cannot
 * spin. */
enum imap_frame_event imap_frame(struct imap_framer *f, const char *in, size_t len,
                                 size_t *consumed_r);
/* True when the framer is between two commands/responses (nothing of the next one seen). */
bool imap_framer_at_boundary(const struct imap_framer *f);

/* Helpers on a head (or any line) for the dialogues: split "tag SP word" without copying.
 * Returns false if the text does not start with a tag then a space. */
bool imap_split_tag(const char *line, size_t len, const char **tag_r, size_t *tag_len_r,
                    const char **rest_r, size_t *rest_len_r);

/* Is `c` an ATOM-CHAR (RFC 3501 9: any CHAR except atom-specials)? */
bool imap_is_atom_char(unsigned char c);

/* Relay helper: the server refused a client's synchronising literal (a tagged NO/BAD came
 * instead of "+"), so the client will not send its bytes (RFC 3501 7.5) and what it sends next
 * is a new command. Valid only while the framer waits for a {n} / ~{n} literal of which nothing
 * has been consumed yet; ends the current command there, so the framer is at a boundary.
 * Returns false and changes nothing otherwise (including {n+}, whose bytes always come). */
bool imap_framer_cancel_literal(struct imap_framer *f);

#endif
