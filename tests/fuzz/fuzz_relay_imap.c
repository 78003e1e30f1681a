/*
 * fuzz_relay_imap — libFuzzer harness for the IMAP relay + scan state machine fed from BOTH
 * sides: the fuzzer writes the client's bytes and the server's bytes, interleaved as it likes.
 * A real authenticated session runs through the unit tests' relay harness
 * (tests/unit/relay_harness.c: socketpairs, the real relay/imap_scan/msgscan, a stub scanner
 * that calls a message infected iff it holds the EICAR string).
 *
 * Script ops (low 3 bits of an op byte): raw client bytes; a dictionary client command; a raw
 * server line; a server FETCH response whose content item carries the EICAR message (the item
 * form, message number and decorations chosen by the fuzzer); a tagged OK/NO/BAD for the last
 * tag the proxy sent; a "+" continuation; the server's chunk size; a server BYE/close.
 * The proxy's own whole-message FETCHes (tag PCJn) are answered with the same EICAR message.
 *
 * The invariant, exactly: the mailbox's every message is infected (the same EICAR message),
 * so any byte of a message's content the server sends must be judged, never relayed as is.
 * The marker is placed by the harness only inside literals of FETCH content items (or an
 * unknown item, or a quoted string), always at a line boundary of the server stream: raw
 * server lines are made harmless for framing (no '{', so no literal can swallow the next
 * response; CRLF appended). Top-level header sections (BODY[HEADER], RFC822.HEADER) are passed
 * unscanned by design (docs/scanning.md), so the harness never puts the marker there. An input
 * holding "EICAR" anywhere is skipped (a client tag or
 * raw line echoed back must not produce a false positive). Then:
 *  - the client never receives "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" (raw or within an escaped
 *    quoted string): it gets the notice, a refusal, or nothing;
 *  - no crash, leak or UB (ASan/UBSan), and the harness always settles (a stalled relay shows
 *    as a 10 s settle, a libFuzzer timeout).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "../unit/relay_harness.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_relay_imap: %s\n", what);                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define EICAR_MARK "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"

static const char MSG_BODY[] = RH_EICAR "\r\n";
static const char MSG[] = "From: a@example.org\r\nSubject: t\r\n"
                          "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                          "--b\r\nContent-Type: text/plain\r\n\r\n" RH_EICAR "\r\n"
                          "--b\r\nContent-Type: message/rfc822\r\n\r\n"
                          "Subject: inner\r\nX-Payload: " RH_EICAR "\r\n\r\ninner\r\n--b--\r\n";

/* Content item forms: %s is the literal or quoted value. */
static const char *const items[] = {
    "BODY[]",  "BODY.PEEK[]", "BODY[1]",        "BODY[TEXT]",  "BINARY[1]",    "BODY[]<0>",
    "RFC822",  "X-UNKNOWN",   "BODY[2.TEXT]",   "RFC822.TEXT", "BODY[1.MIME]", "BINARY[]",
    "BODY[2]", "PREVIEW",     "BODY[2.HEADER]", "BODY[1]<5>",
};
static const char *const decor[] = {
    "",
    "UID 7 ",
    "FLAGS (\\Seen foo[) ",
    "FLAGS (x] y( \\Answered) UID 9 ",
    "ENVELOPE (NIL \"s[\" ((\"a\" NIL \"b\" \"c\")) NIL NIL NIL NIL NIL NIL NIL) ",
    "FLAGS (\"{5}\" z) ",
    "MODSEQ (12) ",
    "RFC822.SIZE 99 ",
};

struct srv {
    char *out;
    size_t len, cap;
    size_t chunk;
    char last_tag[64];
    char *in; /* what the proxy sent, not yet split into lines */
    size_t in_len, in_cap;
};

static void add(char **p, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1)
            nc *= 2;
        char *q = realloc(*p, nc);
        CHECK(q, "oom");
        *p = q;
        *cap = nc;
    }
    memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = '\0';
}

static void out_fmt(struct srv *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct srv *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    CHECK(n >= 0, "oom");
    add(&v->out, &v->len, &v->cap, s, (size_t)n);
    free(s);
}

/* Lines the proxy sent: remember the last tag, answer its own prefetches. */
static void backend_lines(struct rh *h, struct srv *v)
{
    size_t n = 0;
    char *got = rh_backend_received(h, &n);
    add(&v->in, &v->in_len, &v->in_cap, got, n);
    free(got);
    size_t pos = 0;
    char *lf;
    while ((lf = memchr(v->in + pos, '\n', v->in_len - pos))) {
        char *line = v->in + pos;
        size_t ll = (size_t)(lf - line);
        pos += ll + 1;
        size_t tl = 0;
        while (tl < ll && tl < sizeof v->last_tag - 1 && line[tl] != ' ' && line[tl] != '\r')
            tl++;
        if (tl == 0 || tl >= ll)
            continue;
        memcpy(v->last_tag, line, tl);
        v->last_tag[tl] = '\0';
        if (tl > 3 && strncmp(line, "PCJ", 3) == 0 && memmem(line, ll, "FETCH", 5))
            out_fmt(v, "* 1 FETCH (UID 7 BODY[] {%zu}\r\n%s)\r\n%s OK Fetch completed.\r\n",
                    sizeof MSG - 1, MSG, v->last_tag);
    }
    memmove(v->in, v->in + pos, v->in_len - pos);
    v->in_len -= pos;
}

static void flush_server(struct rh *h, struct srv *v)
{
    for (int round = 0; round < 8 && rh_session(h); round++) {
        backend_lines(h, v);
        if (!v->len)
            return;
        char *o = v->out;
        size_t ol = v->len;
        v->out = NULL;
        v->len = v->cap = 0;
        rh_backend_send(h, o, ol, v->chunk);
        free(o);
    }
}

static const char *const dict[] = {
    "a1 SELECT INBOX\r\n",
    "a2 FETCH 1 (BODY[])\r\n",
    "a3 FETCH 1 (BODY.PEEK[1])\r\n",
    "a4 UID FETCH 7 (BODY.PEEK[]<0.20>)\r\n",
    "a5 IDLE\r\n",
    "DONE\r\n",
    "a6 APPEND INBOX {5}\r\n",
    "hello\r\n",
    "a7 NOOP\r\n",
    "a8 FETCH 1:* (UID BODY.PEEK[2.MIME] BODY.PEEK[TEXT])\r\n",
    "a9 UID FETCH 1:* (FLAGS)\r\n",
    "b1 FETCH 1 RFC822.TEXT\r\n",
    "b2 FETCH 1 (BINARY.PEEK[1])\r\n",
    "b3 LOGOUT\r\n",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (rh_group_setup(NULL) != 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memmem(data, size, "EICAR", 5))
        return 0;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct srv v = {0};
    char *seen = NULL;
    size_t seen_len = 0, seen_cap = 0;
    size_t i = 0;
    unsigned steps = 0;
    while (i < size && steps++ < 48 && rh_session(h)) {
        uint8_t op = data[i++];
        uint8_t arg = i < size ? data[i] : 0;
        switch (op & 7) {
        case 0: { /* raw client bytes */
            size_t n = i < size ? data[i++] : 0;
            if (n > size - i)
                n = size - i;
            rh_client_send(h, (const char *)data + i, n, op >> 3);
            i += n;
            break;
        }
        case 1: { /* a dictionary command */
            const char *c = dict[(op >> 3) % (sizeof dict / sizeof *dict)];
            rh_client_send(h, c, strlen(c), 0);
            break;
        }
        case 2: { /* a raw server line, made harmless for framing: no '{', CRLF-ended */
            size_t n = i < size ? data[i++] : 0;
            if (n > size - i)
                n = size - i;
            char *l = malloc(n + 3);
            CHECK(l, "oom");
            memcpy(l, data + i, n);
            for (size_t k = 0; k < n; k++)
                if (l[k] == '{')
                    l[k] = '(';
            memcpy(l + n, "\r\n", 3);
            add(&v.out, &v.len, &v.cap, l, n + 2);
            free(l);
            i += n;
            break;
        }
        case 3: { /* FETCH with EICAR content: item, decoration, message number, form */
            i++;
            const char *it = items[(op >> 3) % (sizeof items / sizeof *items)];
            const char *d = decor[arg % (sizeof decor / sizeof *decor)];
            unsigned num = (arg >> 3) % 4 + 1;
            bool whole = (arg & 0x80) != 0;
            const char *m = whole ? MSG : MSG_BODY;
            size_t ml = whole ? sizeof MSG - 1 : sizeof MSG_BODY - 1;
            if ((arg & 0x60) == 0x60)
                out_fmt(&v,
                        "* %u FETCH (%s%s \"X5O!P%%@AP[4\\\\PZX54(P^)7CC)7}$" EICAR_MARK
                        "!$H+H*\")\r\n",
                        num, d, it);
            else
                out_fmt(&v, "* %u FETCH (%s%s %s{%zu}\r\n%s)\r\n", num, d, it,
                        (arg & 0x40) ? "~" : "", ml, m);
            break;
        }
        case 4: { /* tagged completion for the last tag the proxy sent */
            static const char *const st[] = {"OK", "NO", "BAD", "OK [ALERT] x"};
            out_fmt(&v, "%s %s done\r\n", v.last_tag[0] ? v.last_tag : "*", st[(op >> 3) & 3]);
            break;
        }
        case 5:
            out_fmt(&v, "+ go\r\n");
            break;
        case 6:
            v.chunk = op >> 3;
            break;
        default:
            if (op & 0x80)
                out_fmt(&v, "* BYE going away\r\n");
            else
                out_fmt(&v, "* %u EXISTS\r\n* %u EXPUNGE\r\n", (op >> 3) & 7, (op >> 4) & 3);
            break;
        }
        flush_server(h, &v);
        size_t n = 0;
        char *got = rh_client_received(h, &n);
        add(&seen, &seen_len, &seen_cap, got, n);
        free(got);
        CHECK(!memmem(seen, seen_len, EICAR_MARK, strlen(EICAR_MARK)),
              "the client received the EICAR string");
    }
    rh_free(&h);
    free(v.out);
    free(v.in);
    free(seen);
    return 0;
}
