/*
 * imap_fetchitem — which message data a literal in an untagged FETCH response carries.
 *
 * A streaming tokenizer for the text of one "* n FETCH (...)" response (RFC 3501 7.4.2,
 * RFC 3516 for BINARY): the relay feeds it every byte of the response's lines (never the
 * literal contents, which it skips by length) and, when the framer reports a literal, asks
 * what the literal is. The answer comes from the msg-att name just before "{n}" / "~{n}" at the
 * top level of the attribute list; literals nested deeper (ENVELOPE and BODYSTRUCTURE strings)
 * are never message content. It also picks up the UID item when it comes before the literal.
 *
 *     msg-att-static = ... / "RFC822" [".HEADER" / ".TEXT"] SP nstring /
 *                      "BODY" section ["<" number ">"] SP nstring /
 *                      "BINARY" section-binary ["<" number ">"] SP (nstring / literal8) /
 *                      "UID" SP uniqueid
 *
 * Kinds:
 *   WHOLE    the whole message: BODY[], RFC822, BINARY[] (no origin) — scanned in-band
 *   PARTIAL  a byte range of the whole message: BODY[]<o>, BINARY[]<o> — judged on the whole
 *            message; replaced by the same range of the notice
 *   PART     one section: BODY[TEXT], BODY[1], BODY[2.1], RFC822.TEXT, BINARY[2] (with or
 *            without <o>) — judged on the whole message; replaced by the notice's text
 *   NONE     header-only sections (BODY[HEADER], BODY[HEADER.FIELDS (...)], BODY[1.MIME],
 *            BODY[1.HEADER], RFC822.HEADER) and anything else: a header section carries no
 *            attachment content, so it passes without delay
 *
 * Pure: no I/O, no allocation; bounded state (a name longer than FI_NAME_MAX is kept cut, and a
 * cut name is classified from its start, which is where HEADER.FIELDS shows).
 */
#ifndef PORTCULLIS_IMAP_FETCHITEM_H
#define PORTCULLIS_IMAP_FETCHITEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FI_NAME_MAX 64

enum fi_kind { FI_NONE, FI_WHOLE, FI_PARTIAL, FI_PART };

struct fetch_items {
    int depth;     /* "(" nesting outside brackets; 1 = the msg-att list */
    int bracket;   /* "[" nesting: spaces and parens there belong to the name */
    bool in_quote; /* inside a quoted string */
    bool escape;   /* the previous byte was a backslash inside a quoted string */
    char tok[FI_NAME_MAX];
    size_t tok_len;
    bool tok_cut;
    char last[FI_NAME_MAX]; /* the last atom at depth 1: the name before a value */
    size_t last_len;
    bool last_cut;
    bool prev_uid; /* the last atom at depth 1 was "UID": the next one is its value */
    uint64_t uid;  /* 0 until a UID item was seen */
    /* the literal just announced */
    int lit_depth;
    char lit_name[FI_NAME_MAX];
    size_t lit_name_len;
    bool lit_name_cut;
};

void fi_init(struct fetch_items *f);
/* Feed response text (lines, including the "{n}\r\n" literal headers; never literal data). */
void fi_feed(struct fetch_items *f, const char *p, size_t len);
/* After the framer reported a literal (all of its header line fed): what it carries. *origin_r
 * is the <o> of the item (0 without one). */
enum fi_kind fi_literal_kind(const struct fetch_items *f, uint64_t *origin_r);
/* Classify an item name as written in a response ("BODY[1.MIME]", "RFC822", "BODY[]<0>"). */
enum fi_kind fi_classify(const char *name, size_t len, bool cut, uint64_t *origin_r);
/* Is `head` (the first bytes of a response) an untagged FETCH? 1 yes (with *seq_r), 0 no,
 * -1 undecided (a prefix of one: need more bytes unless the line is complete). */
int fi_is_fetch(const char *head, size_t len, uint64_t *seq_r);

#endif
