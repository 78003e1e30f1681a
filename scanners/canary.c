/*
 * canary — built-in signature and test messages (see canary.h).
 */
#include "canary.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* '=' in it makes the quoted-printable variant encode it; long enough never to occur by chance
 * in real mail (a message that carries it is judged infected by Portcullis.Canary). */
const char CANARY_PAYLOAD[] = "PORTCULLIS-SCAN-CANARY=9d3f0c6a2b7e4185a6c1f0e2d4b8a937="
                              "THIS-IS-NOT-A-VIRUS";

static const char HEAD[] = "From: Portcullis <canary@portcullis.invalid>\r\n"
                           "To: Portcullis <canary@portcullis.invalid>\r\n"
                           "Date: Mon, 06 Jan 2025 10:00:00 +0000\r\n"
                           "Subject: portcullis scan canary\r\n"
                           "Message-ID: <canary@portcullis.invalid>\r\n"
                           "MIME-Version: 1.0\r\n";

bool canary_ndb(char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s:0:*:", CANARY_SIG);
    for (const unsigned char *p = (const unsigned char *)CANARY_PAYLOAD; *p && n + 3 < cap; p++)
        n += (size_t)snprintf(out + n, cap - n, "%02x", *p);
    if (n + 2 > cap)
        return false;
    out[n++] = '\n';
    out[n] = '\0';
    return n == strlen(CANARY_SIG) + 6 + 2 * strlen(CANARY_PAYLOAD);
}

/* A growing string; `ok` false after a failed allocation (every later append is a no-op). */
struct sb {
    char *p;
    size_t len, cap;
    bool ok;
};

static void put(struct sb *b, const void *s, size_t n)
{
    if (!b->ok)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->ok = false;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct sb *b, const char *s)
{
    put(b, s, strlen(s));
}

static void base64_lines(struct sb *b, const unsigned char *d, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t col = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        char q[4] = {t[(v >> 18) & 63], t[(v >> 12) & 63], i + 1 < n ? t[(v >> 6) & 63] : '=',
                     i + 2 < n ? t[v & 63] : '='};
        put(b, q, 4);
        if ((col += 4) >= 76) {
            puts_(b, "\r\n");
            col = 0;
        }
    }
    if (col)
        puts_(b, "\r\n");
}

static uint32_t crc32(const unsigned char *d, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= d[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

static void le16(struct sb *b, unsigned v)
{
    unsigned char x[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(b, x, 2);
}

static void le32(struct sb *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(b, x, 4);
}

/* A zip archive with one stored (uncompressed) member "canary.txt". */
static void zip_stored(struct sb *z, const char *data, size_t n)
{
    static const char name[] = "canary.txt";
    uint32_t crc = crc32((const unsigned char *)data, n);
    le32(z, 0x04034b50); /* local file header */
    le16(z, 10), le16(z, 0), le16(z, 0), le16(z, 0), le16(z, 0x21);
    le32(z, crc), le32(z, (uint32_t)n), le32(z, (uint32_t)n);
    le16(z, sizeof name - 1), le16(z, 0);
    put(z, name, sizeof name - 1);
    put(z, data, n);
    size_t cd = z->len;
    le32(z, 0x02014b50); /* central directory */
    le16(z, 20), le16(z, 10), le16(z, 0), le16(z, 0), le16(z, 0), le16(z, 0x21);
    le32(z, crc), le32(z, (uint32_t)n), le32(z, (uint32_t)n);
    le16(z, sizeof name - 1), le16(z, 0), le16(z, 0), le16(z, 0), le16(z, 0);
    le32(z, 0), le32(z, 0);
    put(z, name, sizeof name - 1);
    size_t cdlen = z->len - cd;
    le32(z, 0x06054b50); /* end of central directory */
    le16(z, 0), le16(z, 0), le16(z, 1), le16(z, 1);
    le32(z, (uint32_t)cdlen), le32(z, (uint32_t)cd), le16(z, 0);
}

static void attachment(struct sb *b, const char *ctype, const char *fname, const unsigned char *d,
                       size_t n)
{
    puts_(b, HEAD);
    puts_(b, "Content-Type: multipart/mixed; boundary=\"pcb1\"\r\n\r\n"
             "--pcb1\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n--pcb1\r\n");
    char h[256];
    snprintf(h, sizeof h,
             "Content-Type: %s; name=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n"
             "Content-Disposition: attachment; filename=\"%s\"\r\n\r\n",
             ctype, fname, fname);
    puts_(b, h);
    base64_lines(b, d, n);
    puts_(b, "--pcb1--\r\n");
}

bool canary_build(struct canary_msg out[CANARY_VARIANTS])
{
    static const char *const names[CANARY_VARIANTS] = {"plain", "base64", "qp", "zip"};
    const size_t plen = strlen(CANARY_PAYLOAD);
    memset(out, 0, sizeof *out * CANARY_VARIANTS);
    bool ok = true;
    for (int i = 0; i < CANARY_VARIANTS; i++) {
        struct sb b = {.ok = true};
        if (i == 0) {
            puts_(&b, HEAD);
            puts_(&b, "Content-Type: text/plain; charset=us-ascii\r\n\r\nHello,\r\n\r\n");
            puts_(&b, CANARY_PAYLOAD);
            puts_(&b, "\r\n");
        } else if (i == 1) {
            attachment(&b, "application/octet-stream", "canary.bin",
                       (const unsigned char *)CANARY_PAYLOAD, plen);
        } else if (i == 2) {
            /* Every byte =XX with soft line breaks: the raw text never holds the payload. */
            puts_(&b, HEAD);
            puts_(&b, "Content-Type: text/plain; charset=us-ascii\r\n"
                      "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
            for (size_t k = 0; k < plen; k++) {
                char q[8];
                snprintf(q, sizeof q, "=%02X", (unsigned char)CANARY_PAYLOAD[k]);
                puts_(&b, q);
                if (k % 24 == 23 && k + 1 < plen)
                    puts_(&b, "=\r\n");
            }
            puts_(&b, "\r\n");
        } else {
            struct sb z = {.ok = true};
            zip_stored(&z, CANARY_PAYLOAD, plen);
            if (z.ok)
                attachment(&b, "application/zip", "canary.zip", (const unsigned char *)z.p, z.len);
            else
                b.ok = false;
            free(z.p);
        }
        out[i].name = names[i];
        out[i].data = b.p;
        out[i].len = b.len;
        if (!b.ok)
            ok = false;
    }
    if (!ok)
        canary_free(out);
    return ok;
}

void canary_free(struct canary_msg m[CANARY_VARIANTS])
{
    for (int i = 0; i < CANARY_VARIANTS; i++) {
        free(m[i].data);
        m[i].data = NULL;
        m[i].len = 0;
    }
}
