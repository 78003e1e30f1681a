/*
 * fuzz_backend_login — libFuzzer harness for the backend login scripts (imap_backend.c,
 * pop3_backend.c) with the SERVER's side fuzzer-controlled. A real session runs in-process
 * through the unit tests' relay harness (tests/unit/relay_harness.c: the client is a
 * socketpair, the loop and settle() are the harness's), but the login is not cut short: the
 * client sends a real LOGIN / AUTHENTICATE / USER+PASS / AUTH, the proxy's login policy and
 * dialer run, and the dialer really connects (TCP, loopback) to a listening socket the harness
 * holds: what it accepts is the backend. No msgscan worker (the relay after login is not the
 * subject here). Logs go at debug level to a file the harness reads after every input.
 *
 * Input: byte 0 chooses the protocol (bit 0), the client's login form (bits 1-3), a backend
 * behind STARTTLS/STLS (bit 4: the handshake with the fuzzer's bytes can only fail, which is
 * the point), how the run ends (bits 5-6) and a client ID before LOGIN (IMAP) or USER and PASS
 * in one write (POP3) (bit 7). Then script ops (low 3 bits of an op byte): raw server bytes;
 * a greeting; a capability list (CAPABILITY response / CAPA answer; the capabilities from the
 * next byte); a status answer to the proxy's last command (tagged with its tag for IMAP); a
 * "+" continuation; the server's chunk size; flush (and a pause: nothing sent); an untagged
 * line (ID, BYE, post-login CAPABILITY, …). The server's output accumulates and is sent when an
 * op's top bit is clear, so responses can be pipelined ahead of the commands they answer, or
 * held back. The run ends with the backend's FIN, its RST, the login deadline firing (the
 * session's timer, fed to the loop), or nothing.
 *
 * Invariants, exactly (an input holding the password's marker "s3cr3t", a SASL blob's base64
 * or the client's tag "Qz1" is skipped, so the server cannot echo them by chance):
 *  - the client's password / token (raw, or the base64 the client sent) never appears in the
 *    client's received bytes nor in the log output;
 *  - the client's login command gets at most one answer: IMAP one tagged "Qz1" line — "OK
 *    Logged in" or "OK [CAPABILITY atoms] Logged in" (one line, no control bytes: the
 *    backend's capabilities must not inject a response), or NO/BAD; POP3 one status line
 *    after the credentials ("+OK…" in one line, or "-ERR…" and then nothing more);
 *  - an answer matches the session's state: OK means relay (or closing), NO/-ERR means back in
 *    pre-auth with no backend connection, none means still logging in;
 *  - once the backend closed (FIN or RST) or the login deadline fired, the client has its
 *    answer: never silence;
 *  - the backend never receives a NUL byte (plain backends: the proxy's commands are text; a
 *    login answered ahead of our commands once sent them as the wiped bytes of the login);
 *  - no crash, leak or UB (ASan/UBSan), and the harness always settles (bounded ops; a stuck
 *    loop shows as a libFuzzer timeout).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "../unit/relay_harness.c"

#include <openssl/evp.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_backend_login: %s\n", what);                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define USER    "alice"
#define PASS    "Zk9-s3cr3t-pw"
#define TOKEN   "Tk9-s3cr3t-tok"
#define MARKER  "s3cr3t"
#define TAG     "Qz1"
#define XOAUTH2 "user=" USER "\001auth=Bearer " TOKEN "\001\001"
#define OAUTHB  "n,a=" USER ",\001auth=Bearer " TOKEN "\001\001"

/* The base64 SASL blobs the client sends (PLAIN without and with an authzid, XOAUTH2,
 * OAUTHBEARER): the client's secrets in the form it sent them. */
enum { B64_PLAIN, B64_PLAIN_AUTHZ, B64_XOAUTH2, B64_OAUTHB, B64_N };
static char g_b64[B64_N][128];

static int g_lfd = -1;      /* the listening socket the dialer connects to: the backend */
static struct rt *g_lrt[2]; /* [starttls]: backends plain / behind STARTTLS-STLS */
static int g_logfd = -1;    /* the log file, read and emptied after every input */
static char g_logpath[64];

#define LH_CONFIG                                                                                  \
    "admin: {enabled: false}\n"                                                                    \
    "health: {enabled: false}\n"                                                                   \
    "log: {level: debug}\n"                                                                        \
    "allow_plaintext_auth: true\n"                                                                 \
    "limits: {max_line: 4k}\n"                                                                     \
    "listeners:\n"                                                                                 \
    "  - {name: imap, bind: \"127.0.0.1:1143\", protocol: imap, tls: none}\n"                      \
    "  - {name: pop3, bind: \"127.0.0.1:1110\", protocol: pop3, tls: none}\n"                      \
    "backends:\n"                                                                                  \
    "  - {name: imap1, protocol: imap, host: 127.0.0.1, port: %u, tls: %s, tls_verify: false}\n"   \
    "  - {name: pop31, protocol: pop3, host: 127.0.0.1, port: %u, tls: %s, tls_verify: false}\n"   \
    "scan:\n"                                                                                      \
    "  enabled: true\n"                                                                            \
    "  database_dir: /tmp\n"                                                                       \
    "  threads: 1\n"

static struct rt *build_login_rt(unsigned port, bool starttls)
{
    char text[2048];
    const char *tls = starttls ? "starttls" : "none";
    snprintf(text, sizeof text, LH_CONFIG, port, tls, port, tls);
    char *err = NULL;
    struct config *cfg = cfg_load_string(text, strlen(text), "login.yaml", &err);
    if (!cfg) {
        fprintf(stderr, "login config: %s\n", err ? err : "?");
        free(err);
        return NULL;
    }
    struct rt *rt = rt_build(cfg, &err);
    cfg_unref(&cfg);
    if (!rt) {
        fprintf(stderr, "login runtime: %s\n", err ? err : "?");
        free(err);
    }
    return rt;
}

static void b64(char *out, size_t cap, const char *p, size_t n)
{
    CHECK(4 * ((n + 2) / 3) + 1 <= cap, "base64 buffer");
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)p, (int)n);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (rh_group_setup(NULL) != 0)
        abort();
    g_lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (g_lfd < 0 || bind(g_lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(g_lfd, 64) != 0 ||
        getsockname(g_lfd, (struct sockaddr *)&a, &al) != 0)
        abort();
    for (int t = 0; t < 2; t++)
        if (!(g_lrt[t] = build_login_rt(ntohs(a.sin_port), t == 1)))
            abort();
    snprintf(g_logpath, sizeof g_logpath, "%s/fuzz_backend_login.XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    g_logfd = mkstemp(g_logpath);
    if (g_logfd < 0 || !log_open(LOG_DEBUG, g_logpath))
        abort();
    unlink(g_logpath); /* log.c keeps its descriptor; nothing is left behind */
    static const char plain[] = "\0" USER "\0" PASS;
    static const char plainz[] = USER "\0" USER "\0" PASS;
    b64(g_b64[B64_PLAIN], sizeof g_b64[0], plain, sizeof plain - 1);
    b64(g_b64[B64_PLAIN_AUTHZ], sizeof g_b64[0], plainz, sizeof plainz - 1);
    b64(g_b64[B64_XOAUTH2], sizeof g_b64[0], XOAUTH2, strlen(XOAUTH2));
    b64(g_b64[B64_OAUTHB], sizeof g_b64[0], OAUTHB, strlen(OAUTHB));
    return 0;
}

/* ---- growing byte strings ---- */

struct str {
    char *p;
    size_t len, cap;
};

static void add(struct str *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t nc = s->cap ? s->cap : 256;
        while (nc < s->len + n + 1)
            nc *= 2;
        char *q = realloc(s->p, nc);
        CHECK(q, "oom");
        s->p = q;
        s->cap = nc;
    }
    if (n)
        memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static void adds(struct str *s, const char *z)
{
    add(s, z, strlen(z));
}

static void addf(struct str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(struct str *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *z = NULL;
    int n = vasprintf(&z, fmt, ap);
    va_end(ap);
    CHECK(n >= 0, "oom");
    add(s, z, (size_t)n);
    free(z);
}

/* ---- the secrets ---- */

static bool holds(const char *p, size_t n, const char *z)
{
    return n && memmem(p, n, z, strlen(z)) != NULL;
}

/* Does `p` hold a client secret: the password or token (their common marker), a SASL blob as
 * the client sent it, or the blob's part that encodes the secret? */
static bool secret_in(const char *p, size_t n)
{
    if (holds(p, n, MARKER))
        return true;
    for (int i = 0; i < B64_N; i++) {
        char mid[17];
        snprintf(mid, sizeof mid, "%s", g_b64[i] + 12);
        if (holds(p, n, g_b64[i]) || holds(p, n, mid))
            return true;
    }
    return false;
}

/* Everything logged since the last call (then the log is emptied). */
static void check_log(void)
{
    struct stat st;
    CHECK(fstat(g_logfd, &st) == 0, "log fstat");
    if (st.st_size == 0)
        return;
    size_t n = (size_t)st.st_size;
    char *p = malloc(n);
    CHECK(p, "oom");
    ssize_t r = pread(g_logfd, p, n, 0);
    CHECK(r >= 0, "log read");
    if (getenv("FUZZ_LOGIN_TRACE"))
        fwrite(p, 1, (size_t)r, stderr);
    CHECK(!secret_in(p, (size_t)r), "a client secret in the log");
    free(p);
    CHECK(ftruncate(g_logfd, 0) == 0, "log truncate"); /* log.c appends: it writes at 0 again */
}

/* ---- the client ---- */

struct run {
    struct rh *h;
    bool imap;
    struct str seen;   /* the client's received bytes after the greeting (and pre-login words) */
    struct str out;    /* the server's output not yet sent */
    struct str in;     /* what the backend received, not yet split into lines */
    struct str be_all; /* everything the backend received (FUZZ_LOGIN_TRACE) */
    char last_tag[8];
    size_t chunk;
    bool backend; /* the dialer's connection was accepted */
};

static void client_take(struct run *r, struct str *into)
{
    size_t n = 0;
    char *got = rh_client_received(r->h, &n);
    add(into, got, n);
    free(got);
    CHECK(!secret_in(into->p, into->len), "a client secret sent to the client");
}

/* A session on `rt`'s listener of `proto`, greeted, before any command: open_session() of the
 * relay harness without its short-cut login. */
static struct rh *open_client(enum rh_proto proto, struct rt *rt)
{
    struct rh *h = calloc(1, sizeof *h);
    CHECK(h, "oom");
    h->w.loop = g_loop;
    ev_async_init(&h->w.wake, wake_cb);
    h->w.wake.data = &h->w;
    ev_async_start(g_loop, &h->w.wake);
    h->started0 = atomic_load(&stub_started);
    int csv[2];
    socketpair_nb(csv);
    h->cfd = csv[1];
    h->bfd = -1; /* accept_backend() */
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    inet_pton(AF_INET, "192.0.2.7", &peer.sin_addr);
    atomic_fetch_add(&worker_connections, 1); /* the listener's count, given back at bury */
    CHECK(sess_accept(&h->w, csv[0], &rt->cfg->listeners[proto == RH_IMAP ? 0 : 1], rt,
                      (struct sockaddr *)&peer, sizeof peer),
          "sess_accept");
    h->s = h->w.sessions;
    CHECK(h->s && !h->s->closing, "no session");
    settle(h);
    return h;
}

static void client_send(struct run *r, const char *z)
{
    if (rh_session(r->h))
        rh_client_send(r->h, z, strlen(z), 0);
}

/* The client's login: IMAP LOGIN (quoted, synchronising literals, LITERAL+), AUTHENTICATE
 * PLAIN / XOAUTH2 / OAUTHBEARER with and without an initial response; POP3 USER/PASS, AUTH
 * with and without an initial response. The proxy's answers before the last credential bytes
 * (its "+ " to a literal or an empty AUTH, "+OK" to USER) go to `pre`. */
static void client_login(struct run *r, unsigned form, bool extra, struct str *pre)
{
    if (r->imap) {
        if (extra)
            client_send(r, "Qz0 ID (\"name\" \"fz\" \"version\" \"1\")\r\n");
        switch (form) {
        case 0:
            client_send(r, TAG " LOGIN " USER " \"" PASS "\"\r\n");
            break;
        case 1:
            client_send(r, TAG " LOGIN {5}\r\n");
            client_send(r, USER " {13}\r\n");
            client_take(r, pre);
            client_send(r, PASS "\r\n");
            break;
        case 2:
            client_send(r, TAG " LOGIN " USER " {13+}\r\n" PASS "\r\n");
            break;
        case 3:
        case 4:
            client_send(r, TAG " AUTHENTICATE PLAIN\r\n");
            client_take(r, pre);
            client_send(r, g_b64[form == 3 ? B64_PLAIN : B64_PLAIN_AUTHZ]);
            client_send(r, "\r\n");
            break;
        case 5:
            client_send(r, TAG " AUTHENTICATE PLAIN ");
            client_send(r, g_b64[B64_PLAIN]);
            client_send(r, "\r\n");
            break;
        case 6:
            client_send(r, TAG " AUTHENTICATE XOAUTH2 ");
            client_send(r, g_b64[B64_XOAUTH2]);
            client_send(r, "\r\n");
            break;
        default:
            client_send(r, TAG " AUTHENTICATE OAUTHBEARER ");
            client_send(r, g_b64[B64_OAUTHB]);
            client_send(r, "\r\n");
            break;
        }
        return;
    }
    switch (form) {
    case 0:
    case 1:
        if (extra) {
            /* USER and PASS in one write: the "+OK" to USER is the first line after them */
            client_send(r, "USER " USER "\r\nPASS " PASS "\r\n");
            break;
        }
        client_send(r, "USER " USER "\r\n");
        client_take(r, pre);
        client_send(r, "PASS " PASS "\r\n");
        break;
    case 2:
    case 3:
        client_send(r, "AUTH PLAIN\r\n");
        client_take(r, pre);
        client_send(r, g_b64[form == 2 ? B64_PLAIN : B64_PLAIN_AUTHZ]);
        client_send(r, "\r\n");
        break;
    case 4:
    case 5:
        client_send(r, "AUTH PLAIN ");
        client_send(r, g_b64[B64_PLAIN]);
        client_send(r, "\r\n");
        break;
    case 6:
        client_send(r, "AUTH XOAUTH2 ");
        client_send(r, g_b64[B64_XOAUTH2]);
        client_send(r, "\r\n");
        break;
    default:
        client_send(r, "AUTH OAUTHBEARER ");
        client_send(r, g_b64[B64_OAUTHB]);
        client_send(r, "\r\n");
        break;
    }
}

/* ---- the server ---- */

/* Take the dialer's connection from the listening socket, once it is there (at most ~1 s: a
 * valid login always dials). */
static void accept_backend(struct run *r)
{
    for (int tries = 0; !r->backend && tries < 200 && rh_session(r->h); tries++) {
        int fd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            /* Closing it resets the connection: no TIME_WAIT left behind per input. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            /* No Nagle: a small write behind an unacknowledged one would wait for the proxy's
             * delayed ACK, after settle() gave up, and the harness would see a stall. */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            r->h->bfd = fd;
            r->backend = true;
            return;
        }
        struct pollfd p = {.fd = g_lfd, .events = POLLIN};
        poll(&p, 1, 5);
        rh_settle(r->h);
    }
}

/* What the proxy sent the backend: remember the last tag (IMAP: our tags are one letter). */
static void backend_lines(struct run *r)
{
    if (!r->backend)
        return;
    size_t n = 0;
    char *got = rh_backend_received(r->h, &n);
    add(&r->in, got, n);
    add(&r->be_all, got, n);
    free(got);
    size_t pos = 0;
    char *lf;
    while ((lf = memchr(r->in.p + pos, '\n', r->in.len - pos))) {
        const char *line = r->in.p + pos;
        size_t ll = (size_t)(lf - line);
        pos += ll + 1;
        if (r->imap && ll >= 2 && line[0] >= 'A' && line[0] <= 'Z' && line[1] == ' ') {
            r->last_tag[0] = line[0];
            r->last_tag[1] = '\0';
        }
    }
    memmove(r->in.p, r->in.p + pos, r->in.len - pos);
    r->in.len -= pos;
}

static void flush_server(struct run *r)
{
    backend_lines(r);
    if (!r->backend || !r->out.len || !rh_session(r->h))
        return;
    if (getenv("FUZZ_LOGIN_TRACE"))
        show("server sends", r->out.p, r->out.len);
    rh_backend_send(r->h, r->out.p, r->out.len, r->chunk);
    r->out.len = 0;
    backend_lines(r);
}

static const char *const imap_caps[] = {
    "LITERAL+",     "SASL-IR",          "ID",       "AUTH=PLAIN",
    "AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "STARTTLS", "IMAP4rev1",
};

static void imap_caplist(struct str *o, uint8_t bits)
{
    adds(o, "IMAP4rev1");
    for (unsigned k = 0; k < 7; k++)
        if (bits & (1u << k)) {
            adds(o, " ");
            adds(o, imap_caps[k]);
        }
    if (bits & 0x80)
        adds(o, " IDLE THREAD=REFS QUOTA=RES-STORAGE x-unknown");
}

static void pop3_capa(struct str *o, uint8_t bits)
{
    adds(o, "+OK Capability list follows\r\n");
    if (bits & 1)
        adds(o, "USER\r\n");
    if (bits & 2)
        adds(o, "STLS\r\n");
    if (bits & 4)
        adds(o, "XCLIENT ADDR PORT\r\n");
    if (bits & 0x38) {
        adds(o, "SASL");
        if (bits & 8)
            adds(o, " PLAIN");
        if (bits & 0x10)
            adds(o, " XOAUTH2");
        if (bits & 0x20)
            adds(o, " OAUTHBEARER");
        adds(o, "\r\n");
    }
    if (bits & 0x40)
        adds(o, "TOP\r\nUIDL\r\nRESP-CODES\r\n..weird\r\n");
    adds(o, (bits & 0x80) ? ".\r\n" : "PIPELINING\r\n.\r\n");
}

/* One script op; returns the input bytes it used beyond the op byte. */
static size_t server_op(struct run *r, uint8_t op, const uint8_t *d, size_t left)
{
    struct str *o = &r->out;
    uint8_t arg = left ? d[0] : 0;
    unsigned sel = (op >> 3) & 15;
    const char *tag = r->last_tag[0] ? r->last_tag : "L";
    size_t used = 0;
    switch (op & 7) {
    case 0: { /* raw server bytes */
        size_t n = left ? arg : 0;
        used = left ? 1 : 0;
        if (n > left - used)
            n = left - used;
        add(o, (const char *)d + used, n);
        used += n;
        break;
    }
    case 1: /* a greeting */
        if (r->imap) {
            static const char *const g[] = {"* OK ready",   "* OK [CAPABILITY ", "* BYE go away",
                                            "* PREAUTH hi", "* OK [ALERT] hi",   "+ ?",
                                            "* ok lower"};
            const char *z = g[sel % (sizeof g / sizeof *g)];
            adds(o, z);
            if (strchr(z, '[') && strstr(z, "CAPABILITY")) {
                imap_caplist(o, arg);
                adds(o, "] ready");
                used = 1;
            }
            adds(o, "\r\n");
        } else {
            static const char *const g[] = {"+OK ready",
                                            "+OK [XCLIENT] Dovecot ready.",
                                            "+OK <1.2@host> apop",
                                            "-ERR busy",
                                            "+OK",
                                            "+ what"};
            adds(o, g[sel % (sizeof g / sizeof *g)]);
            adds(o, "\r\n");
        }
        break;
    case 2: /* a capability list */
        used = left ? 1 : 0;
        if (r->imap) {
            adds(o, (sel & 1) ? "* CAPABILITY " : "* capability ");
            imap_caplist(o, arg);
            adds(o, "\r\n");
            if (sel & 2)
                addf(o, "%s OK done\r\n", tag);
        } else {
            pop3_capa(o, arg);
        }
        break;
    case 3: /* a status answer to the proxy's last command */
        if (r->imap) {
            static const char *const st[] = {
                "OK done",
                "NO [AUTHENTICATIONFAILED] bad",
                "BAD what",
                "OK [CAPABILITY IMAP4rev1 IDLE MOVE THREAD=REFS] Logged in",
                "NO [UNAVAILABLE] later",
                "OK [ALERT] hi",
                "ok lower",
                "OK",
                "NO",
                "OK [CAPABILITY IMAP4rev1",
                "OK [CAPABILITY] empty",
            };
            addf(o, "%s %s\r\n", tag, st[sel % (sizeof st / sizeof *st)]);
        } else {
            static const char *const st[] = {
                "+OK",
                "-ERR [AUTH] no",
                "-ERR [IN-USE] locked",
                "-ERR [SYS/TEMP] later",
                "-ERR [LOGIN-DELAY] wait",
                "+OK Logged in.",
                "-ERR",
                "+OK [XCLIENT] fine",
                "-ERR [SYS/PERM] no",
                "+OK 2 320",
            };
            adds(o, st[sel % (sizeof st / sizeof *st)]);
            adds(o, "\r\n");
        }
        break;
    case 4: { /* a continuation */
        static const char *const c[] = {"+ ", "+ go ahead", "+ eyJzdGF0dXMiOiI0MDEifQ==", "+",
                                        "+OK"};
        adds(o, c[sel % (sizeof c / sizeof *c)]);
        adds(o, "\r\n");
        break;
    }
    case 5: /* the server's chunk size (0 = whole writes) */
        r->chunk = sel;
        return 0;
    case 6: /* flush what is pending, or pause (nothing sent) */
        if (sel & 1)
            flush_server(r);
        else
            backend_lines(r);
        return 0;
    default:
        if (r->imap) {
            static const char *const u[] = {
                "* ID NIL",
                "* ID (\"name\" \"srv\")",
                "* BYE shutting down",
                "* OK [ALERT] x",
                "* CAPABILITY IMAP4rev1 IDLE",
                "* 3 EXISTS",
                "I OK ID done",
                "* NO warn",
                "C OK done",
                "L OK done",
                "S OK begin",
                "* CAPABILITY {4}\r\nabcd",
            };
            adds(o, u[sel % (sizeof u / sizeof *u)]);
            adds(o, "\r\n");
        } else {
            static const char *const u[] = {".", "+OK", "-ERR", "+ ", "+OK [XCLIENT]", "..", ""};
            adds(o, u[sel % (sizeof u / sizeof *u)]);
            adds(o, "\r\n");
        }
        break;
    }
    if (!(op & 0x80))
        flush_server(r);
    return used;
}

/* ---- the checks ---- */

/* An IMAP atom character (RFC 3501 ATOM-CHAR; resp-specials "]" excluded too). */
static bool atom_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && !strchr("(){%*\"\\]", c);
}

/* The proxy's tagged OK to the client: "OK Logged in" or "OK [CAPABILITY atoms] Logged in". */
static bool ok_line_sane(const char *p, size_t n)
{
    static const char tail[] = "] Logged in\r\n";
    static const char head[] = TAG " OK [CAPABILITY ";
    static const char plain[] = TAG " OK Logged in\r\n";
    if (n == sizeof plain - 1 && memcmp(p, plain, n) == 0)
        return true;
    if (n < sizeof head - 1 + sizeof tail - 1 || memcmp(p, head, sizeof head - 1) != 0 ||
        memcmp(p + n - (sizeof tail - 1), tail, sizeof tail - 1) != 0)
        return false;
    for (size_t i = sizeof head - 1; i < n - (sizeof tail - 1); i++)
        if (!atom_char((unsigned char)p[i]) && p[i] != ' ')
            return false;
    return true;
}

enum answer { ANS_NONE, ANS_OK, ANS_NO };

/* IMAP: the tagged answers to TAG in what the client received (the client sent nothing after
 * its login, and the server's bytes never hold TAG: any such line is the proxy's). */
static enum answer imap_answer(const struct str *seen)
{
    enum answer a = ANS_NONE;
    size_t pos = 0;
    while (pos < seen->len) {
        const char *line = seen->p + pos;
        const char *lf = memchr(line, '\n', seen->len - pos);
        size_t ll = lf ? (size_t)(lf - line) + 1 : seen->len - pos;
        pos += ll;
        if (ll < 4 || memcmp(line, TAG " ", 4) != 0)
            continue;
        CHECK(a == ANS_NONE, "two answers to the login");
        CHECK(lf, "the login's answer is not a whole line");
        if (ll >= 7 && memcmp(line + 4, "OK ", 3) == 0) {
            CHECK(ok_line_sane(line, ll), "the login's OK is not one clean line");
            a = ANS_OK;
        } else {
            CHECK((ll >= 7 && memcmp(line + 4, "NO ", 3) == 0) ||
                      (ll >= 8 && memcmp(line + 4, "BAD ", 4) == 0),
                  "the login's answer is neither OK nor NO/BAD");
            a = ANS_NO;
        }
    }
    return a;
}

/* POP3: `post` is what the client received after its credentials were answered by the
 * proxy itself (the "+OK" to a pipelined USER is in `pre`: the login's answer needs the
 * backend, which the script has not yet spoken as). */
static enum answer pop3_answer(const struct str *post)
{
    const char *p = post->p ? post->p : "";
    size_t n = post->len;
    const char *lf = memchr(p, '\n', n);
    if (!lf) {
        CHECK(n == 0 || n < 3 || memcmp(p, "+OK", 3) == 0 || memcmp(p, "-ER", 3) == 0,
              "the login's answer is neither +OK nor -ERR");
        return ANS_NONE;
    }
    size_t ll = (size_t)(lf - p) + 1;
    CHECK(memchr(p, '\0', ll) == NULL, "a NUL in the login's answer");
    if (ll >= 4 && memcmp(p, "-ERR", 4) == 0) {
        CHECK(ll == n, "bytes after the login's -ERR");
        return ANS_NO;
    }
    CHECK(ll >= 3 && memcmp(p, "+OK", 3) == 0, "the login's answer is neither +OK nor -ERR");
    CHECK(p[ll - 2] == '\r', "the login's +OK does not end in CRLF");
    return ANS_OK;
}

static void check_state(struct run *r, enum answer a)
{
    struct session *s = rh_session(r->h);
    if (!s || s->closing)
        return;
    switch (a) {
    case ANS_OK:
        CHECK(s->state == SESS_RELAY, "answered OK but not in relay");
        break;
    case ANS_NO:
        CHECK(s->state == SESS_PREAUTH, "answered NO but not back in pre-auth");
        CHECK(s->backend.fd < 0, "answered NO with the backend still connected");
        break;
    default:
        CHECK(s->state == SESS_BACKEND, "no answer, yet not logging in");
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || memmem(data, size, TAG, 3) || secret_in((const char *)data, size))
        return 0;
    uint8_t b0 = data[0];
    struct run r = {.imap = (b0 & 1) == 0};
    unsigned form = (b0 >> 1) & 7;
    bool starttls = (b0 & 0x10) != 0;
    unsigned end = (b0 >> 5) & 3;
    bool extra = (b0 & 0x80) != 0;

    r.h = open_client(r.imap ? RH_IMAP : RH_POP3, g_lrt[starttls]);
    struct str greet = {0}, pre = {0}, post = {0};
    client_take(&r, &greet);
    CHECK(greet.len > 0, "no greeting");
    /* Left over from an earlier input (none expected): not this session's backend. */
    for (int fd; (fd = accept4(g_lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0;)
        close(fd);
    client_login(&r, form, extra, &pre);
    client_take(&r, &pre);
    CHECK(r.imap ? imap_answer(&pre) == ANS_NONE : !holds(pre.p, pre.len, "-ERR"),
          "the login answered before the backend spoke");
    accept_backend(&r);
    CHECK(r.backend || !rh_session(r.h), "the proxy never connected to the backend");

    size_t i = 1;
    unsigned steps = 0;
    while (i < size && steps++ < 64 && rh_session(r.h)) {
        uint8_t op = data[i++];
        i += server_op(&r, op, data + i, size - i);
        client_take(&r, &post);
        check_log();
        enum answer a = r.imap ? imap_answer(&post) : pop3_answer(&post);
        check_state(&r, a);
    }
    flush_server(&r);
    bool ended = false;
    if (rh_session(r.h) && r.backend) {
        switch (end) {
        case 1: /* the backend closes */
            shutdown(r.h->bfd, SHUT_WR);
            ended = true;
            break;
        case 2: /* the backend resets */
            close(r.h->bfd);
            r.h->bfd = -1;
            ended = true;
            break;
        case 3: /* the login deadline passes */
            if (r.h->s->state == SESS_BACKEND && ev_is_active(&r.h->s->timer)) {
                ev_feed_event(g_loop, &r.h->s->timer, EV_TIMER);
                ended = true;
            }
            break;
        default: /* nothing more: the server holds back */
            break;
        }
        rh_settle(r.h);
    }
    client_take(&r, &post);
    check_log();
    enum answer a = r.imap ? imap_answer(&post) : pop3_answer(&post);
    check_state(&r, a);
    if (getenv("FUZZ_LOGIN_TRACE")) {
        fprintf(stderr, "-- %s form %u%s end %u%s: %s\n", r.imap ? "imap" : "pop3", form,
                starttls ? " starttls" : "", end, extra ? " extra" : "",
                rh_session(r.h) ? "open" : "closed");
        show("client pre ", pre.p ? pre.p : "", pre.len);
        show("client post", post.p ? post.p : "", post.len);
        show("backend got", r.be_all.p ? r.be_all.p : "", r.be_all.len);
        struct session *s = rh_session(r.h);
        if (s)
            fprintf(stderr, "  state %d bstate %d reading %d fd %d events %d down %zu\n", s->state,
                    r.imap ? (imap_st(s)->lg ? (int)imap_st(s)->lg->bstate : -1)
                           : (int)pop3_st(s)->bstate,
                    s->backend.reading, s->backend.fd, s->backend.events, buf_len(&s->down));
    }
    /* The proxy's commands are text: a NUL is wiped login bytes sent anyway (a TLS handshake
     * after STARTTLS/STLS is binary). */
    if (!starttls)
        CHECK(!r.be_all.len || !memchr(r.be_all.p, '\0', r.be_all.len),
              "the backend received a NUL byte");
    CHECK(!ended || a != ANS_NONE, "the backend is gone and the client has no answer");
    rh_free(&r.h);
    check_log();
    free(greet.p);
    free(pre.p);
    free(post.p);
    free(r.out.p);
    free(r.in.p);
    free(r.be_all.p);
    return 0;
}
