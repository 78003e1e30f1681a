/*
 * rfc2047 — header text of a hostile original, decoded for display and encoded again by us.
 *
 * The notice that replaces a blocked message shows a few of the original's header fields. None
 * of the original's bytes are copied: a field value is decoded to plain UTF-8 text
 * (r2047_decode: RFC 2047 encoded-words decoded, invalid UTF-8 replaced, control and bidi
 * characters removed, whitespace collapsed, length capped), and the proxy writes it again as
 * RFC 2047 encoded-words of its own (r2047_field: "=?utf-8?B?...?=", each at most 75 characters,
 * whole characters per word, header lines folded at 78 octets).
 *
 * Pure functions, bounded work (linear in the input), no allocation beyond one scratch buffer
 * in r2047_decode.
 */
#ifndef PORTCULLIS_RFC2047_H
#define PORTCULLIS_RFC2047_H

#include <stdbool.h>
#include <stddef.h>

#define R2047_WORD_MAX  75   /* RFC 2047 2: an encoded-word is at most 75 characters */
#define R2047_LINE_MAX  78   /* RFC 5322 2.1.1: lines SHOULD be at most 78 octets */
#define R2047_TEXT_MAX  512  /* longest text r2047_field accepts */
#define R2047_FIELD_CAP 2048 /* room r2047_field needs for R2047_TEXT_MAX octets of text */

/* Decode the unfolded value of an unstructured header field (raw bytes as received) into
 * display text in `out` (cap + 1 bytes: NUL-terminated):
 *   - encoded-words =?charset[*lang]?B|Q?text?= decoded; whitespace between two adjacent
 *     encoded-words dropped (RFC 2047 6.2). Charsets utf-8 and us-ascii are taken as UTF-8,
 *     iso-8859-1 / latin1 / windows-1252 converted from Latin-1; any other charset leaves the
 *     bytes as they are (then checked as UTF-8 like everything else);
 *   - invalid UTF-8 becomes U+FFFD; C0/C1 controls, DEL, and bidi/format characters (U+200E/F,
 *     U+202A..E, U+2066..9, U+2028/9, U+FEFF) are removed; runs of whitespace become one SP;
 *     leading and trailing whitespace is dropped;
 *   - at most `cap` octets, cut on a character boundary.
 * *clean_r (may be NULL) is false when anything but whitespace had to be replaced or removed.
 * Returns the length of the text. Returns 0 with out = "" when out of memory. */
size_t r2047_decode(const char *in, size_t n, char *out, size_t cap, bool *clean_r);

/* Write one header field "Name: <words>[ trailer]\r\n" into out (cap bytes, NUL-terminated):
 * `text` (n octets of UTF-8, n <= R2047_TEXT_MAX) as "=?utf-8?B?...?=" encoded-words of at most
 * R2047_WORD_MAX characters each, never splitting a UTF-8 sequence, separated by folding
 * whitespace so that no line is longer than R2047_LINE_MAX octets; `trailer` (NULL or a short
 * ASCII token of ours, e.g. "<portcullis@localhost>" or ":;") follows after one space or on a
 * continuation line. Empty text: "Name: trailer". Returns the length, or 0 when `cap` is too
 * small or the text too long (R2047_FIELD_CAP is always enough). */
size_t r2047_field(const char *name, const char *text, size_t n, const char *trailer, char *out,
                   size_t cap);

#endif
