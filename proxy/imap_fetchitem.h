/*
 * imap_fetchitem — a streaming tokenizer of one untagged FETCH response: which message data each
 * literal and quoted string in "* n FETCH (msg-att ...)" carries.
 *
 * The relay feeds it every byte of the response's text (lines, including each "{n}\r\n" /
 * "~{n}\r\n" literal header, never the literal's data, which the framer skips by length) in
 * pieces of any size; the result never depends on where the pieces are cut. It parses the whole
 * grammar (RFC 3501 7.4.2, RFC 9051, RFC 3516 BINARY): atoms, quoted strings with "\" escapes,
 * literals and literal8, parenthesised lists, NIL, and section specs "[...]" — only directly after
 * the item names BODY, BINARY, BINARY.SIZE (and BODY.PEEK / BINARY.PEEK, which servers should not
 * send) — with an optional "<origin>". A "[" anywhere else is an atom character (a keyword
 * "foo[" in FLAGS), never a section. No argument is copied into a buffer that can be cut and then
 * guessed from: item names are bounded (FI_NAME_MAX) and a longer one is simply unknown.
 *
 * What each top-level msg-att value is:
 *   WHOLE    BODY[], RFC822, BINARY[] (no origin)
 *   PARTIAL  BODY[]<o>, BINARY[]<o>: a byte range of the whole message
 *   PART     BODY[TEXT], BODY[1], BODY[2.1], RFC822.TEXT, BINARY[n] (with or without <o>), and
 *            the header sections of nested messages: BODY[2.HEADER], BODY[2.MIME],
 *            BODY[1.2.HEADER.FIELDS (...)] (an attached message's header is attacker content)
 *   NONE     top-level header sections (BODY[HEADER], BODY[HEADER.FIELDS[.NOT] (...)],
 *            RFC822.HEADER) and the known non-content items FLAGS, UID, INTERNALDATE,
 *            RFC822.SIZE, ENVELOPE, BODYSTRUCTURE, BODY (no section), BINARY.SIZE, MODSEQ,
 *            EMAILID, THREADID, SAVEDATE — when their value has the item's syntax; literals and
 *            strings nested inside ENVELOPE / BODYSTRUCTURE are NONE
 * Default deny: any other item (PREVIEW, SNIPPET, X-..., a cut name, a malformed section) and a
 * known item whose value does not have its syntax is content: a literal anywhere in its value is
 * PART, and so is every non-empty quoted string in it.
 *
 * Quoted content: a content item (or unknown one) whose value is a quoted string instead of a
 * literal must not pass unjudged either: fi_quoted_content() says there is one and fi_spans()
 * where (offsets in the text fed so far, counting only fed bytes), so that a caller holding the
 * text can replace each with NIL. At most FI_SPANS_MAX are kept; more set an error.
 *
 * Errors (unbalanced parentheses, a "]" without a section, a value where none may be, garbage,
 * anything after the final CRLF) are sticky: fi_error() returns the reason, and from then on
 * fi_literal_kind() answers PART (unjudgeable: default deny). The caller must not trust
 * anything about the response once an error is set.
 *
 * Pure: no I/O, no allocation, bounded state.
 */
#ifndef PORTCULLIS_IMAP_FETCHITEM_H
#define PORTCULLIS_IMAP_FETCHITEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FI_NAME_MAX  16 /* longest known item name: BODYSTRUCTURE, RFC822.HEADER (13) */
#define FI_KW_MAX    18 /* longest section keyword: HEADER.FIELDS.NOT (17) */
#define FI_SPANS_MAX 8  /* quoted content strings remembered per response */

enum fi_kind { FI_NONE, FI_WHOLE, FI_PARTIAL, FI_PART };

/* A quoted content string in the fed text: off is its opening '"', len includes both quotes. */
struct fi_span {
    size_t off, len;
};

struct fetch_items {
    /* parser state (private) */
    int st;              /* the byte-level state (imap_fetchitem.c) */
    unsigned word_i;     /* index in "FETCH" */
    unsigned seq_digits; /* digits of the sequence number */
    char name[FI_NAME_MAX];
    size_t name_len;
    bool name_cut;
    /* section being read */
    bool has_sec;
    bool sec_bad;     /* semantically malformed: the item is unknown */
    bool sec_seg_num; /* the current dotted segment is all digits so far */
    size_t sec_seg_len;
    bool sec_in_kw; /* a non-numeric segment started: the rest is the keyword */
    unsigned sec_parts;
    char sec_kw[FI_KW_MAX];
    size_t sec_kw_len;
    bool sec_list; /* a header list followed the section atom */
    bool has_origin;
    uint64_t origin;
    unsigned origin_digits;
    /* the item whose value is being read */
    int item_type; /* expected value syntax (imap_fetchitem.c) */
    enum fi_kind item_kind;
    bool item_unknown; /* default deny: strings and literals in it are content */
    bool item_uid;     /* the item is UID */
    unsigned vdepth;   /* list nesting inside the value */
    bool just_opened;  /* the last byte was "(" of a list */
    bool after_list;   /* the last value in a list was a list: "(" may follow directly */
    bool in_hl;        /* the quoted string / literal being read belongs to a header list */
    char atom[24];     /* first bytes of the atom being read (NIL, UID's number) */
    size_t atom_len;
    size_t q_start; /* offset of the quoted string being read */
    unsigned lit_digits;
    size_t off;      /* bytes fed so far */
    const char *err; /* sticky error */

    /* results */
    uint64_t uid;          /* 0 until a UID item was seen */
    bool uid_late;         /* the UID came after a literal had been announced */
    unsigned nlits;        /* literals announced so far */
    enum fi_kind lit_kind; /* the literal just announced */
    uint64_t lit_origin;
    bool done; /* the final ")" CRLF was read */
    struct fi_span spans[FI_SPANS_MAX];
    unsigned nspans;
};

void fi_init(struct fetch_items *f);
/* Feed response text (lines, including the "{n}\r\n" literal headers; never literal data). */
void fi_feed(struct fetch_items *f, const char *p, size_t len);
/* After the framer reported a literal (all of its header line fed): what it carries. *origin_r
 * is the <o> of the item (0 without one). FI_PART whenever fi_error() is set. */
enum fi_kind fi_literal_kind(const struct fetch_items *f, uint64_t *origin_r);
/* The sticky error's reason, or NULL. */
const char *fi_error(const struct fetch_items *f);
/* Was a non-empty quoted string of content (or of an unknown item) seen? */
bool fi_quoted_content(const struct fetch_items *f);
/* The spans of those strings (at most FI_SPANS_MAX; more set an error). */
const struct fi_span *fi_spans(const struct fetch_items *f, unsigned *n_r);
/* May the text fed so far go to the client before the response is complete? Not after an
 * error, not once quoted content was seen, and not while inside a quoted string of content
 * (its start would be gone before it is known to be content). */
bool fi_may_release(const struct fetch_items *f);
/* Is `head` (the first bytes of a response) an untagged FETCH? 1 yes (with *seq_r), 0 no,
 * -1 undecided (a prefix of one: need more bytes unless the line is complete). */
int fi_is_fetch(const char *head, size_t len, uint64_t *seq_r);

#endif
