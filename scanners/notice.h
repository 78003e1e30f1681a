/*
 * notice — the RFC 5322 message that replaces a blocked one, and the sha256 helper for the
 * verdict-cache key.
 *
 * A notice carries no byte of the original (issue 15). notice_build() reads From, To, Date,
 * Subject and Message-ID from the original's header section (first occurrence each, unfolded,
 * at most NOTICE_RAW_MAX raw bytes) and, in NOTICE_FULL mode:
 *   - header: Subject, the From display and the To display are decoded (rfc2047.h: encoded-words
 *     decoded, controls and bidi characters removed, invalid UTF-8 replaced, capped at
 *     NOTICE_HEADER_TEXT octets) and written again as our own "=?utf-8?B?...?=" encoded-words,
 *     lines folded at 78: `From: <words> <portcullis@localhost>` (the original's text as the
 *     display name, our address), `To: <words>:;` (an empty group named by the original's text),
 *     `Subject: <words>`. Date is parsed and printed again by us (or the fallback). Message-ID
 *     is not copied (a notice is not the original message);
 *   - body (the template's %subject% %from% %to% %message_id%): the decoded text cut to
 *     NOTICE_SHOW_MAX octets ("..." when cut) when it was clean (nothing but printable text);
 *     otherwise "(N bytes, sha256 XXXXXXXXXXXXXXXX)" of the raw field. %date% is our date.
 * NOTICE_DESCRIBE mode (for notices that cannot be scanned before they are sent): fixed From and
 * Subject, no To, every field in the body described by size and sha256 only.
 * NOTICE_MINIMAL mode (what replaces a notice that matched a signature): a fixed text with the
 * verdict, the signature and the reference; nothing of the original, not even hashes, and the
 * configured template is not used.
 * Every mode adds MIME-Version, a text/plain utf-8 Content-Type and `X-Portcullis-Verdict:
 * infected; signature=NAME; ref=REF` (or `blocked; reason=CODE; ref=REF`). Output lines end in
 * CRLF; header lines are at most 78 octets, body lines at most 998.
 *
 * Before a FULL notice is sent, msgscan scans notice_scan_buffer(): the notice followed by the
 * decoded texts it shows (so a signature hidden in an encoded-word, invisible to a raw scan,
 * is still seen); a match sends the MINIMAL notice instead.
 *
 * The output depends only on the inputs (no clock, no randomness): building the notice of the
 * same message twice gives the same bytes, which IMAP chunked fetches rely on (each chunk is a
 * slice of the notice, built again per FETCH).
 *
 * Template placeholders: %signature% %ref% %subject% %from% %to% %date% %message_id% %reason%
 * %verdict%, and %% for a percent sign. Unknown %words% are copied as they are. LF or CRLF line
 * ends in the template both become CRLF.
 */
#ifndef PORTCULLIS_NOTICE_H
#define PORTCULLIS_NOTICE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define NOTICE_RAW_MAX     4096        /* raw bytes of one original field that are read */
#define NOTICE_HEADER_TEXT 200         /* octets of decoded text shown in a header field */
#define NOTICE_SHOW_MAX    60          /* octets of decoded text shown in the body */
#define NOTICE_HEADER_SCAN (256 << 10) /* bytes of the original searched for its header */
#define NOTICE_BODY_MAX    (64 << 10)  /* bytes of expanded body; the rest is cut */
#define SHA256_LEN         32

enum notice_verdict { NOTICE_INFECTED, NOTICE_BLOCKED };
enum notice_mode {
    NOTICE_FULL,     /* decoded, re-encoded fields (scan the result: notice_scan_buffer) */
    NOTICE_DESCRIBE, /* fields only by size and sha256 (a notice that is not scanned) */
    NOTICE_MINIMAL,  /* nothing of the original: what replaces a notice that matched */
};

struct notice_params {
    enum notice_verdict verdict;
    const char *signature;   /* INFECTED: the signature name; may be NULL otherwise */
    const char *reason_code; /* BLOCKED: token for the header, e.g. "oversize", "scan-error" */
    const char *reason_text; /* body text for %reason%; NULL = a default for the verdict */
    const char *ref;         /* reference id (quarantine file name, log key); required */
    const char *tmpl;        /* NULL or "" = the built-in template */
    time_t date_fallback;    /* Date: when the original has none (e.g. the verdict's time) */
    enum notice_mode mode;   /* 0 = NOTICE_FULL */
};

/* Build the notice. On success *out_r is a malloc'd buffer (NUL-terminated for convenience,
 * the NUL not counted) of *len_r bytes, owned by the caller. Returns false only when out of
 * memory. `orig` is only read. Never runs long: work is bounded by NOTICE_HEADER_SCAN and
 * NOTICE_BODY_MAX. */
bool notice_build(const struct notice_params *np, const char *orig, size_t orig_len, char **out_r,
                  size_t *len_r) __attribute__((warn_unused_result));

/* What msgscan scans before a NOTICE_FULL notice is sent: the notice (`notice`, `nlen` bytes, as
 * built from `orig`) followed by a blank line and the decoded header texts it shows, one per
 * line, so that text hidden by RFC 2047 is scanned as plain text too. malloc'd into *buf_r;
 * false only when out of memory. */
bool notice_scan_buffer(const char *notice, size_t nlen, const char *orig, size_t orig_len,
                        char **buf_r, size_t *len_r) __attribute__((warn_unused_result));

/* The built-in template (for docs and the config default). */
extern const char notice_default_template[];

/* sha256 of `len` bytes (OpenSSL EVP). */
void notice_sha256(const void *buf, size_t len, unsigned char out[SHA256_LEN]);
/* Lower-case hex of `n` bytes into `out` (2n + 1 bytes). Returns out. */
char *notice_hex(const unsigned char *in, size_t n, char *out);

#endif
