/*
 * imap_allow — the client's side of the IMAP session as the proxy allows it (issue 15: default
 * deny). Pure functions on bytes the relay holds; no I/O, no allocation except the mailbox name.
 *
 *  - capabilities: every CAPABILITY list the client sees passes an allow-list of extensions the
 *    proxy can inspect (docs/protocols.md lists each and why the others are stripped);
 *  - commands after login: known IMAP4rev1 commands and the allowed extensions' commands pass;
 *    everything else is refused with a reason (a sess_event refusal reason) and a BAD text;
 *  - FETCH: the whole command line is parsed and only items the scanner models pass;
 *  - SELECT/EXAMINE: the mailbox argument is parsed whole (atom, quoted, or literal header).
 */
#ifndef PORTCULLIS_IMAP_ALLOW_H
#define PORTCULLIS_IMAP_ALLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sess_event.h"

#define IMAP_ALLOW_MAILBOX_MAX 1024 /* longest mailbox name SELECT/EXAMINE may carry */

/* ---- capabilities ---- */

/* Is capability `tok` (len bytes, no spaces) one the proxy passes? `preauth`: the proxy's own
 * pre-login list (STARTTLS, LOGINDISABLED, AUTH=*, SASL-IR are valid there only). */
bool imap_allow_cap(const char *tok, size_t len, bool preauth);
/* Keep only allowed capabilities of a space-separated list, in place; returns the new length. */
size_t imap_allow_filter_caps(char *caps, size_t len, bool preauth);
/* From the first bytes of a backend response: can it carry a capability list ("* CAPABILITY",
 * or "[CAPABILITY" as the response code of a status response, tagged or untagged)?
 * 1 yes (hold its whole first line), 0 no, -1 not known yet (need more bytes; `line_done` says
 * the first line is all there is). */
int imap_allow_caps_response(const char *r, size_t len, bool line_done);
/* Filter the capability list in a whole response line (with or without CRLF) in place; returns
 * the new length (unchanged when the line carries none). */
size_t imap_allow_caps_line(char *line, size_t len);

/* ---- commands after login ---- */

enum imap_allow_kind {
    IA_OTHER,
    IA_FETCH,  /* FETCH or UID FETCH */
    IA_SELECT, /* SELECT or EXAMINE */
    IA_CLOSE,  /* CLOSE or UNSELECT: nothing selected afterwards */
    IA_IDLE,
    IA_NOTAG, /* no "tag SP name": let the server answer it */
};

enum imap_allow_verdict {
    IA_MORE,   /* need more of the line */
    IA_PASS,   /* forward */
    IA_REFUSE, /* answer "tag BAD text", log reason */
};

struct imap_allow_cmd {
    enum imap_allow_kind kind;
    enum sess_reason reason; /* IA_REFUSE */
    const char *text;        /* IA_REFUSE: the BAD text (static) */
    /* IA_SELECT: where the mailbox name is, after IA_PASS on the whole line */
    bool mbox_literal;    /* the line ends in the literal header of the name */
    uint64_t mbox_litlen; /* ... of that many bytes */
    size_t mbox_off;      /* else the astring at [off, off+len) of the line */
    size_t mbox_len;
};

/* Classify the command whose first line is at `p` (`len` bytes held so far, from the tag on).
 * `line_done`: the line is complete (`p` ends with CRLF or with a literal header "{n}" CRLF);
 * `literal`: it ends with a literal header. Commands whose arguments are judged (FETCH, ENABLE,
 * SELECT/EXAMINE) return IA_MORE until line_done; the caller bounds how much it holds. */
enum imap_allow_verdict imap_allow_command(const char *p, size_t len, bool line_done, bool literal,
                                           struct imap_allow_cmd *out);

/* The FETCH arguments after "FETCH SP" (without CRLF): sequence set, items, modifiers. NULL if
 * allowed, else the BAD text; *reason_r says why. */
const char *imap_allow_fetch_args(const char *p, size_t len, enum sess_reason *reason_r);

/* Decode a mailbox astring (atom or quoted with \" \\ escapes) at p; the name's bytes go to
 * out (cap >= len suffices). Returns the decoded length, or -1 if malformed. INBOX in any case
 * becomes "INBOX" (RFC 3501 5.1); modified UTF-7 is kept verbatim. */
long imap_allow_mailbox(const char *p, size_t len, char *out, size_t cap);

#endif
