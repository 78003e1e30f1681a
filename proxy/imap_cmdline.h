/*
 * imap_cmdline — a client's FETCH / UID FETCH command line, parsed whole (RFC 3501 6.4.5,
 * RFC 3516 BINARY, RFC 4551/7162 modifiers), so the relay can tell whether the answer may
 * carry a part or a byte range of a message (judged on the whole message fetched first on the
 * same connection, imap_prefetch.c) and repeat the client's sequence set verbatim.
 *
 *     fetch    = tag SP ["UID" SP] "FETCH" SP sequence-set SP
 *                ("ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")")
 *                [SP "(" modifiers ")"] CRLF
 *
 * Pure: no allocation, no copies: the tag and the set point into the line. Bounded only by
 * the line the caller holds. Default deny: a fetch-att that is not known to carry no content
 * (ENVELOPE, FLAGS, header sections, ...) and is not the whole message counts as a part.
 */
#ifndef PORTCULLIS_IMAP_CMDLINE_H
#define PORTCULLIS_IMAP_CMDLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum icl_rc {
    ICL_NOT_FETCH, /* another command (or no tag): not ours */
    ICL_FETCH,     /* a FETCH parsed whole */
    ICL_BAD,       /* a FETCH that cannot be parsed: refuse it, never guess */
};

struct icl_fetch {
    const char *tag; /* into the line */
    size_t tag_len;
    bool uid;        /* UID FETCH */
    const char *set; /* the sequence set, verbatim, into the line */
    size_t set_len;
    bool whole; /* asks for a whole message (BODY[], RFC822, BINARY[]) */
    bool part;  /* asks for a part, a byte range, or an item not known to be content-free */
};

/* Parse one command line (with or without its CRLF). */
enum icl_rc icl_parse_fetch(const char *line, size_t len, struct icl_fetch *out);

/* Walk an explicit sequence set ("1,4:7"): calls fn (unless NULL: count only) for every
 * number, in order; stops and returns false at "*" / "$" / junk, when fn returns false, or
 * when more than `max` numbers would be visited. */
bool icl_set_each(const char *set, size_t len, uint64_t max, bool (*fn)(void *arg, uint64_t n),
                  void *arg);

#endif
