/*
 * notice — the RFC 5322 message that replaces a blocked one, and the sha256 helper for the
 * verdict-cache key.
 *
 * notice_build() copies From, To, Date, Subject and Message-ID from the original's header
 * section (first occurrence each; unfolded; control bytes dropped; cut to NOTICE_FIELD_MAX
 * bytes on a UTF-8 boundary), adds MIME-Version, a text/plain utf-8 Content-Type and
 * `X-Portcullis-Verdict: infected; signature=NAME; ref=REF` (or `blocked; reason=CODE;
 * ref=REF`), and a body from a template. Output lines end in CRLF and are at most 998 octets.
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

#define NOTICE_FIELD_MAX   900         /* bytes of one copied header value */
#define NOTICE_HEADER_SCAN (256 << 10) /* bytes of the original searched for its header */
#define NOTICE_BODY_MAX    (64 << 10)  /* bytes of expanded body; the rest is cut */
#define SHA256_LEN         32

enum notice_verdict { NOTICE_INFECTED, NOTICE_BLOCKED };

struct notice_params {
    enum notice_verdict verdict;
    const char *signature;   /* INFECTED: the signature name; may be NULL otherwise */
    const char *reason_code; /* BLOCKED: token for the header, e.g. "oversize", "scan-error" */
    const char *reason_text; /* body text for %reason%; NULL = a default for the verdict */
    const char *ref;         /* reference id (quarantine file name, log key); required */
    const char *tmpl;        /* NULL or "" = the built-in template */
    time_t date_fallback;    /* Date: when the original has none (e.g. the verdict's time) */
};

/* Build the notice. On success *out_r is a malloc'd buffer (NUL-terminated for convenience,
 * the NUL not counted) of *len_r bytes, owned by the caller. Returns false only when out of
 * memory. `orig` is only read. Never runs long: work is bounded by NOTICE_HEADER_SCAN and
 * NOTICE_BODY_MAX. */
bool notice_build(const struct notice_params *np, const char *orig, size_t orig_len, char **out_r,
                  size_t *len_r) __attribute__((warn_unused_result));

/* The built-in template (for docs and the config default). */
extern const char notice_default_template[];

/* sha256 of `len` bytes (OpenSSL EVP). */
void notice_sha256(const void *buf, size_t len, unsigned char out[SHA256_LEN]);
/* Lower-case hex of `n` bytes into `out` (2n + 1 bytes). Returns out. */
char *notice_hex(const unsigned char *in, size_t n, char *out);

#endif
