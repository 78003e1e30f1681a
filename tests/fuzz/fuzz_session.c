/*
 * libFuzzer harness for the IMAP session model: one real authenticated session (the unit tests'
 * relay harness: sess_accept() on socketpairs, the real relay and scanner glue, a stub scanner
 * that calls a message infected iff it holds the EICAR string) driven by a hostile client and a
 * hostile-but-valid server.
 *
 * The input is a script of client writes (raw bytes, or dictionary commands) and choices of how
 * the server answers (which FETCH item form carries the message, how its bytes are split). The
 * server side is a small reference IMAP server written here: it frames what the proxy sends it
 * with its own parser (lines, {n} / {n+} / ~{n} literals, IDLE), answers every command, sends
 * "+" only when a synchronising literal or IDLE is pending, and answers every FETCH with the
 * EICAR message in a content item (whole, part, partial, nested header, unknown item, quoted),
 * decorated with hostile keywords.
 *
 * Properties checked, abort() on any violation (the reference parse is the truth):
 *  - the client never receives the EICAR string, raw or as an escaped quoted string: every
 *    content form is judged or refused (default deny);
 *  - the server never receives a command the proxy refuses (COMPRESS, NOTIFY, URLFETCH,
 *    GENURLAUTH, RESETKEY, STARTTLS, LOGIN, AUTHENTICATE, UNAUTHENTICATE, ENABLE QRESYNC /
 *    IMAP4rev2, FETCH PREVIEW / SNIPPET): the proxy's model of the client's command stream never
 *    desynchronises from the server's framing (literal data, IDLE);
 *  - during IDLE the server receives nothing but DONE;
 *  - the data of a synchronising literal never reaches the server before its "+";
 *  - no crash, no sanitizer report, and the harness always settles.
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
            fprintf(stderr, "fuzz_session: %s\n", what);                                           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define EICAR_MARK "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"

/* The message every FETCH carries: EICAR in the body of its first (text) part. */
static const char MSG_BODY[] = RH_EICAR "\r\n";
static const char MSG[] = "From: a@example.org\r\nSubject: t\r\n"
                          "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                          "--b\r\nContent-Type: text/plain\r\n\r\n" RH_EICAR "\r\n"
                          "--b\r\nContent-Type: message/rfc822\r\n\r\n"
                          "Subject: inner\r\nX-Payload: " RH_EICAR "\r\n\r\ninner\r\n--b--\r\n";

/* ---- the reference server ---- */

struct ref {
    char *in; /* what the proxy sent, not yet consumed */
    size_t len, cap;
    bool in_lit; /* inside literal data */
    size_t lit_left;
    char *cmd; /* the command so far (its line text, literal data excluded) */
    size_t cmd_len, cmd_cap;
    bool idling;
    char idle_tag[64];
    unsigned variant; /* how the next FETCH is answered */
    size_t chunk;     /* how the server's bytes are split (0: whole) */
    char *out;        /* what the server answers next */
    size_t out_len, out_cap;
};

static void grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc *= 2;
    char *n = realloc(*p, nc);
    CHECK(n, "out of memory");
    *p = n;
    *cap = nc;
}

static void out_add(struct ref *r, const char *p, size_t n)
{
    grow(&r->out, &r->out_cap, r->out_len + n);
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
}

static void out_fmt(struct ref *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct ref *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    CHECK(n >= 0, "out of memory");
    out_add(r, s, (size_t)n);
    free(s);
}

static void cmd_add(struct ref *r, const char *p, size_t n)
{
    grow(&r->cmd, &r->cmd_cap, r->cmd_len + n + 1);
    memcpy(r->cmd + r->cmd_len, p, n);
    r->cmd_len += n;
    r->cmd[r->cmd_len] = '\0';
}

static bool is_atom_tag(const char *p, size_t n)
{
    if (n == 0 || n > 60)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= ' ' || c >= 0x7f || strchr("(){%*\"\\+]", c))
            return false;
    }
    return true;
}

/* Word `i` (0-based, space-separated) of the command, upper-cased into buf. */
static size_t word(const char *cmd, unsigned i, char *buf, size_t cap)
{
    const char *p = cmd;
    for (unsigned k = 0; k < i; k++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    size_t n = 0;
    while (p[n] && p[n] != ' ' && p[n] != '(' && n + 1 < cap) {
        buf[n] = (char)((p[n] >= 'a' && p[n] <= 'z') ? p[n] - 32 : p[n]);
        n++;
    }
    buf[n] = '\0';
    return n;
}

static bool has_ci(const char *hay, const char *needle)
{
    return strcasestr(hay, needle) != NULL;
}

/* The FETCH answer: the message in one of the content forms, with hostile decorations. */
static void answer_fetch(struct ref *r, const char *tag, bool own)
{
    const char *mb = MSG_BODY;
    size_t ml = sizeof MSG - 1, bl = sizeof MSG_BODY - 1;
    if (own) {
        /* the proxy's own whole-message fetch: what it asked for */
        out_fmt(r, "* 1 FETCH (UID 7 BODY[] {%zu}\r\n", ml);
        out_add(r, MSG, ml);
        out_fmt(r, ")\r\n%s OK Fetch completed.\r\n", tag);
        return;
    }
    switch (r->variant % 16) {
    case 0:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[] {%zu}\r\n%s)\r\n", ml, MSG);
        break;
    case 1:
        out_fmt(r, "* 1 FETCH (FLAGS (foo[ \\Seen) BODY[] {%zu}\r\n%s)\r\n", ml, MSG);
        break;
    case 2:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[1] {%zu}\r\n%s)\r\n", bl, mb);
        break;
    case 3:
        out_fmt(r, "* 1 FETCH (BODY[TEXT] {%zu}\r\n%s)\r\n", bl, mb);
        break;
    case 4:
        out_fmt(r, "* 1 FETCH (UID 7 BINARY[1] ~{%zu}\r\n%s)\r\n", bl, mb);
        break;
    case 5:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[]<0> {%zu}\r\n%s)\r\n", ml, MSG);
        break;
    case 6:
        out_fmt(r, "* 1 FETCH (UID 7 RFC822 {%zu}\r\n%s)\r\n", ml, MSG);
        break;
    case 7:
        out_fmt(r, "* 1 FETCH (UID 7 X-UNKNOWN {%zu}\r\n%s)\r\n", bl, mb);
        break;
    case 8:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[2.HEADER] {%zu}\r\nX-Payload: %s\r\n\r\n)\r\n",
                strlen("X-Payload: " RH_EICAR "\r\n\r\n"), RH_EICAR);
        break;
    case 9:
        out_fmt(r,
                "* 1 FETCH (UID 7 ENVELOPE (NIL \"s[\" ((\"a\" NIL \"b\" \"c\")) NIL NIL NIL NIL "
                "NIL NIL NIL) BODY[] {%zu}\r\n%s)\r\n",
                ml, MSG);
        break;
    case 10:
        out_fmt(r, "* 1 FETCH (UID 7 FLAGS (x] y( \\Answered) BODY[1] {%zu}\r\n%s)\r\n", bl, mb);
        break;
    case 11: /* the body as a quoted string (escaped): PREVIEW-like, an unknown item */
        out_fmt(r, "* 1 FETCH (UID 7 PREVIEW \"X5O!P%%@AP[4\\\\PZX54(P^)7CC)7}$" EICAR_MARK
                   "!$H+H*\")\r\n");
        break;
    case 12:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[1] \"X5O!P%%@AP[4\\\\PZX54(P^)7CC)7}$" EICAR_MARK
                   "!$H+H*\")\r\n");
        break;
    case 13:
        out_fmt(r, "* 1 FETCH (UID 7 BODY[1]<0> {%zu}\r\n%s BODY[] {%zu}\r\n%s)\r\n", bl, mb, ml,
                MSG);
        break;
    case 14:
        out_fmt(r, "* 1 FETCH (UID 7 RFC822.TEXT {%zu}\r\n%s)\r\n", bl, mb);
        break;
    default:
        out_fmt(r, "* 1 FETCH (UID 7 FLAGS (\"{5}\" z) BODY[2] {%zu}\r\n%s)\r\n", bl, mb);
        break;
    }
    r->variant /= 16;
    out_fmt(r, "%s OK Fetch completed.\r\n", tag);
}

/* A whole command arrived: check it against what the proxy must never forward, answer it. */
static void on_command(struct ref *r)
{
    const char *c = r->cmd;
    if (r->idling) {
        CHECK(strcasecmp(c, "DONE") == 0, "a command reached the server during IDLE");
        r->idling = false;
        out_fmt(r, "%s OK Idle completed.\r\n", r->idle_tag);
        return;
    }
    char tag[64], name[32], sub[32];
    size_t tl = word(c, 0, tag, sizeof tag);
    word(c, 1, name, sizeof name);
    if (strcmp(name, "UID") == 0) {
        word(c, 2, sub, sizeof sub);
        memmove(name, sub, sizeof name);
    }
    static const char *const denied[] = {
        "COMPRESS", "NOTIFY", "URLFETCH",     "GENURLAUTH",     "RESETKEY",
        "STARTTLS", "LOGIN",  "AUTHENTICATE", "UNAUTHENTICATE", "XAPPLEPUSHSERVICE"};
    for (size_t i = 0; i < sizeof denied / sizeof *denied; i++)
        CHECK(strcmp(name, denied[i]) != 0, "a refused command reached the server");
    if (strcmp(name, "ENABLE") == 0)
        CHECK(!has_ci(c, "QRESYNC") && !has_ci(c, "IMAP4REV2"),
              "ENABLE of a stripped extension reached the server");
    if (strcmp(name, "FETCH") == 0)
        CHECK(!has_ci(c, "PREVIEW") && !has_ci(c, "SNIPPET"),
              "a FETCH of an unmodelled item reached the server");
    /* The reference server echoes only well-formed tags: no false positive from an EICAR tag. */
    if (!is_atom_tag(tag, tl)) {
        out_fmt(r, "* BAD Invalid tag.\r\n");
        return;
    }
    if (strcmp(name, "IDLE") == 0) {
        r->idling = true;
        snprintf(r->idle_tag, sizeof r->idle_tag, "%s", tag);
        out_fmt(r, "+ idling\r\n");
    } else if (strcmp(name, "FETCH") == 0) {
        answer_fetch(r, tag, has_ci(c, "BODY.PEEK[]") && strncmp(tag, "PCJ", 3) == 0);
    } else if (strcmp(name, "SELECT") == 0 || strcmp(name, "EXAMINE") == 0) {
        out_fmt(r,
                "* 3 EXISTS\r\n* OK [UIDVALIDITY 42] UIDs valid\r\n%s OK [READ-WRITE] "
                "Select completed.\r\n",
                tag);
    } else if (strcmp(name, "LOGOUT") == 0) {
        out_fmt(r, "* BYE Logging out\r\n%s OK Logout completed.\r\n", tag);
    } else {
        out_fmt(r, "%s OK Completed.\r\n", tag);
    }
}

/* Frame what the proxy sent (the server's parse). */
static void ref_consume(struct ref *r)
{
    size_t pos = 0;
    for (;;) {
        if (r->in_lit) {
            size_t n = r->len - pos < r->lit_left ? r->len - pos : r->lit_left;
            pos += n;
            r->lit_left -= n;
            if (r->lit_left)
                break;
            r->in_lit = false;
            continue;
        }
        char *lf = memchr(r->in + pos, '\n', r->len - pos);
        if (!lf)
            break;
        size_t ll = (size_t)(lf - (r->in + pos)) + 1;
        const char *line = r->in + pos;
        size_t tl = ll - 1;
        if (tl && line[tl - 1] == '\r')
            tl--;
        pos += ll;
        /* a literal announced at the line's end? */
        size_t n = 0;
        bool sync = false, lit = false;
        if (tl >= 3 && line[tl - 1] == '}') {
            size_t i = tl - 1;
            bool plus = line[i - 1] == '+';
            size_t d = plus ? i - 1 : i;
            size_t k = d;
            while (k > 0 && line[k - 1] >= '0' && line[k - 1] <= '9')
                k--;
            if (k > 0 && k < d && line[k - 1] == '{' && d - k <= 9) {
                for (size_t j = k; j < d; j++)
                    n = n * 10 + (size_t)(line[j] - '0');
                lit = true;
                sync = !plus;
                cmd_add(r, line, k - 1);
                cmd_add(r, "{}", 2);
            }
        }
        if (!lit) {
            cmd_add(r, line, tl);
            if (r->cmd_len == 0 && !r->idling) {
                continue; /* an empty line */
            }
            on_command(r);
            r->cmd_len = 0;
            continue;
        }
        if (sync) {
            /* the proxy may not send the data before our go-ahead */
            CHECK(pos == r->len || n == 0, "literal data reached the server before its '+'");
            out_fmt(r, "+ go ahead\r\n");
        }
        r->in_lit = n > 0;
        r->lit_left = n;
    }
    memmove(r->in, r->in + pos, r->len - pos);
    r->len -= pos;
}

/* Run the exchange until nobody has anything more to say. */
static void exchange(struct rh *h, struct ref *r)
{
    for (int round = 0; round < 32; round++) {
        size_t n = 0;
        char *got = rh_backend_received(h, &n);
        grow(&r->in, &r->cap, r->len + n + 1);
        memcpy(r->in + r->len, got, n);
        r->len += n;
        free(got);
        ref_consume(r);
        if (r->out_len == 0)
            return;
        char *o = r->out;
        size_t ol = r->out_len;
        r->out = NULL;
        r->out_len = r->out_cap = 0;
        if (!rh_session(h)) {
            free(o);
            return;
        }
        rh_backend_send(h, o, ol, r->chunk);
        free(o);
    }
}

/* ---- the client ---- */

static const char *const dict[] = {
    "a1 SELECT INBOX\r\n",
    "a2 FETCH 1 (BODY[])\r\n",
    "a3 FETCH 1 (BODY.PEEK[1])\r\n",
    "a4 UID FETCH 7 (BODY.PEEK[]<0.20>)\r\n",
    "a5 FETCH 1 (PREVIEW)\r\n",
    "a6 IDLE\r\n",
    "DONE\r\n",
    "a7 COMPRESS DEFLATE\r\n",
    "a8 APPEND INBOX {20}\r\n",
    "a9 APPEND INBOX {5+}\r\nhello\r\n",
    "b1 NOTIFY SET (selected (MessageNew))\r\n",
    "b2 ENABLE QRESYNC\r\n",
    "b3 URLFETCH imap://x\r\n",
    "b4 FETCH 1 (FLAGS BINARY.PEEK[1])\r\n",
    "b5 NOOP\r\n",
    "b6 SELECT {5}\r\n",
    "INBOX\r\n",
    "b7 FETCH 1:* (UID BODY.PEEK[2.MIME] BODY.PEEK[TEXT])\r\n",
    "b8 EXAMINE \"a b\"\r\n",
    "b9 FETCH 1 (SNIPPET (FUZZY))\r\n",
    "c1 STARTTLS\r\n",
    "c2 LOGIN a b\r\n",
    "c3 UID FETCH 1:* (FLAGS)\r\n",
    "c4 ENABLE CONDSTORE\r\n",
    "c5 CLOSE\r\n",
    "c6 FETCH 1 RFC822.TEXT\r\n",
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
    /* A tag or an APPEND the client writes may hold the marker itself, and the proxy's and the
     * server's answers echo tags: only the server's content may carry it. */
    if (memmem(data, size, "EICAR", 5))
        return 0;
    struct rh *h = rh_open(RH_IMAP, RH_SCAN_ON);
    struct ref r = {0};
    char *seen = NULL; /* everything the client received */
    size_t seen_len = 0, seen_cap = 0;
    size_t i = 0;
    unsigned steps = 0;
    while (i < size && steps++ < 64 && rh_session(h)) {
        uint8_t op = data[i++];
        switch (op & 7) {
        case 0: { /* raw client bytes, in pieces of (op >> 3) bytes (0: whole) */
            size_t n = i < size ? data[i++] : 0;
            if (n > size - i)
                n = size - i;
            rh_client_send(h, (const char *)data + i, n, op >> 3);
            i += n;
            break;
        }
        case 3: /* how the server answers the next FETCH (the low bits first) */
            r.variant = op >> 3;
            if (i < size)
                r.variant |= (unsigned)data[i++] << 5;
            break;
        case 4: /* in pieces of how many bytes the server sends (0: whole) */
            r.chunk = op >> 3;
            break;
        default: { /* a dictionary command: whole, byte by byte or in 3-byte pieces */
            const char *c = dict[(op >> 3) % (sizeof dict / sizeof *dict)];
            size_t chunk = (op & 7) == 2 ? 1 : (op & 7) == 5 ? 3 : 0;
            rh_client_send(h, c, strlen(c), chunk);
            break;
        }
        }
        exchange(h, &r);
        size_t n = 0;
        char *got = rh_client_received(h, &n);
        grow(&seen, &seen_cap, seen_len + n + 1);
        memcpy(seen + seen_len, got, n);
        seen_len += n;
        seen[seen_len] = '\0';
        free(got);
        CHECK(!memmem(seen, seen_len, EICAR_MARK, strlen(EICAR_MARK)),
              "the client received the EICAR string");
    }
    rh_free(&h);
    free(r.in);
    free(r.cmd);
    free(r.out);
    free(seen);
    return 0;
}
