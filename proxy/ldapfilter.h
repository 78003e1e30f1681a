/*
 * ldapfilter — the pure parts of the LDAP lookup source (ldaplookup.c): RFC 4515 escaping of a
 * user name, expansion of the search filter template and parsing of the host attribute's value.
 *
 * No I/O, no allocation, no libldap: unit-tested in tests/unit/test_ldaplookup.c and fuzzed by
 * tests/fuzz/fuzz_ldapfilter.c. Invariant: bytes that come from the user name only ever reach
 * the filter escaped, so a user name cannot add, close or widen a filter component.
 */
#ifndef PORTCULLIS_LDAPFILTER_H
#define PORTCULLIS_LDAPFILTER_H

#include <stdbool.h>
#include <stddef.h>

#define LDL_HOST_MAX 255 /* longest host (or pool entry name) accepted from the directory */

/*
 * RFC 4515 section 3:
 *   assertionvalue = valueencoding
 *   valueencoding  = 0*(normal / escaped)
 *   normal         = UTF1SUBSET / UTFMB      ; UTF1SUBSET excludes NUL, "(", ")", "*", "\"
 *   escaped        = ESC HEX HEX
 * We escape exactly the excluded bytes plus the other C0 controls and DEL (legal escaped, and
 * they keep logs and server-side parsers honest). UTF-8 sequences pass through unchanged.
 *
 * Appends the escaped form of in[0..len) to out at *pos (cap bytes in all). Returns false if it
 * does not fit; out is always NUL-terminated when cap > 0.
 */
bool ldl_escape(char *out, size_t cap, size_t *pos, const char *in, size_t len);

/*
 * Validates a filter template: "%u" (whole user, escaped), "%n" (local part: before the last
 * '@'), "%d" (domain: after the last '@', empty if none), "%%" (a literal '%'); any other '%'
 * is an error. The template's literal text must have balanced parentheses, start with '(' and
 * hold no control characters.
 * Returns true or sets *error_r to a static message.
 */
bool ldl_template_check(const char *tmpl, const char **error_r);

/*
 * Expands a template checked by ldl_template_check() for user[0..ulen) into out (cap bytes).
 * Returns the length written (NUL-terminated), or -1 if the result does not fit in cap.
 */
long ldl_template_expand(char *out, size_t cap, const char *tmpl, const char *user, size_t ulen);

/*
 * Parses a host attribute value: "host", "host:port", "[v6addr]" or "[v6addr]:port"; a value
 * without a port may also be a pool entry name (the routing chain decides). Copies the host
 * part (without brackets) into host_r (LDL_HOST_MAX + 1 bytes) and sets *port_r (0 = none).
 * Returns false for an empty or over-long value, spaces or control bytes, or a bad port, with a
 * static message in *error_r.
 */
bool ldl_parse_host(const char *val, size_t len, char *host_r, unsigned *port_r,
                    const char **error_r);

#endif
