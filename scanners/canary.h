/*
 * canary — the scanner's self-test (docs/scanning.md "Failing closed").
 *
 * A built-in signature (CANARY_SIG, an .ndb body signature over CANARY_PAYLOAD, loaded into
 * every engine beside the configured databases) and one generated message per encoding the
 * scanner claims to handle: plain text, a base64 attachment, a quoted-printable body and a zip
 * (stored) in a base64 attachment. Only the plain variant has the payload in its raw bytes;
 * every other one is detected only if libclamav decoded it — which needs its temp files, so a
 * broken work directory fails the canary. The signature is ours, so it is present whatever
 * databases the operator configures (official, third-party or test); EICAR is not used because
 * its detection depends on the configured databases.
 */
#ifndef PORTCULLIS_CANARY_H
#define PORTCULLIS_CANARY_H

#include <stdbool.h>
#include <stddef.h>

#define CANARY_SIG      "Portcullis.Canary" /* libclamav reports it with ".UNOFFICIAL" */
#define CANARY_VARIANTS 4

struct canary_msg {
    const char *name; /* "plain", "base64", "qp", "zip" */
    char *data;       /* malloc'd */
    size_t len;
};

/* The .ndb file's text (one line, NUL-terminated) into out; false when it does not fit. */
bool canary_ndb(char *out, size_t cap);
/* Build every variant; false (nothing left allocated) when out of memory. */
bool canary_build(struct canary_msg out[CANARY_VARIANTS]);
void canary_free(struct canary_msg m[CANARY_VARIANTS]);
/* The payload, for tests. */
extern const char CANARY_PAYLOAD[];

#endif
