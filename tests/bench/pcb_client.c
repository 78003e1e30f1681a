/*
 * pcb_client — `pcbench run`: C clients each looping through sessions of one script.
 *
 *   login   TLS handshake, LOGIN, LOGOUT
 *   fetch   LOGIN, SELECT INBOX, FETCH 1:* BODY.PEEK[] (literals read fully), LOGOUT
 *   pop3    USER, PASS, STAT, RETR 1..n (read to the terminating dot), QUIT
 *   idle    LOGIN, IDLE, then hold: prints "READY held=N" once every connection is up, holds
 *           for --duration, reports
 *   mixed   per session: 35% fetch, 40% poll (LOGIN, SELECT, NOOP, LOGOUT), 25% pop3
 *   noop    LOGIN, then --noops NOOP round trips (each one a latency sample), LOGOUT
 *
 * Clients start sessions until --duration has passed (or --sessions were started), then the
 * sessions in flight finish; elapsed time runs to the last one. Every TLS session is a full
 * handshake (no client session cache). Latency samples are whole sessions, except in noop mode
 * where they are single NOOP round trips.
 *
 * Output: a human summary on stderr and one line "RESULT {json}" on stdout for the driver.
 *
 * Parsing is only what counting needs: tagged status of our own commands, EXISTS, FETCH
 * responses, literal lengths (the literal bytes are skipped by count, never scanned), and for
 * POP3 the status line and the CRLF.CRLF terminator of multi-line answers.
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcbench.h"

#define IN_CAP       32768 /* per connection; one TLS record fits twice */
#define OUT_CAP      512
#define PCB_LINE_MAX 8192

enum mode { M_LOGIN, M_FETCH, M_POP3, M_IDLE, M_MIXED, M_NOOP };
static const char *const mode_names[] = {"login", "fetch", "pop3", "idle", "mixed", "noop"};

enum kind { K_LOGIN, K_FETCH, K_POP3, K_POLL, K_NOOP, K_IDLE, K_NKINDS };
static const char *const kind_names[] = {"login", "fetch", "pop3", "poll", "noop", "idle"};

enum err { E_CONNECT, E_TLS, E_REFUSED, E_PROTO, E_EOF, E_TIMEOUT, E_SHORT, E_NERR };
static const char *const err_names[] = {"connect", "tls",     "refused", "protocol",
                                        "eof",     "timeout", "short"};

struct opts {
    const char *host;
    int port;      /* IMAP (or POP3 in pop3 mode) */
    int pop3_port; /* mixed mode */
    bool tls;
    bool resume; /* offer each client's last TLS session (ticket): resumed handshakes */
    enum mode mode;
    int conc;
    double duration;
    long sessions; /* 0 = by duration */
    const char *user_fmt;
    const char *pass;
    int nusers;
    int noops;
    double timeout;
    int ramp; /* idle: connections opening at once */
    const char *label;
    unsigned seed;
};

struct cl;

struct bench {
    struct ev_loop *loop;
    struct opts o;
    SSL_CTX *ctx;
    struct sockaddr_in sa_imap, sa_pop3;
    double t_start, t_end, t_last;
    bool stopping; /* no new sessions */
    long started, active;
    long held;    /* idle mode */
    long resumed; /* handshakes that resumed a session */
    long tickets; /* --resume: sessions (tickets) received */
    bool ready_printed;
    uint64_t ok[K_NKINDS];
    uint64_t ok_total;
    uint64_t bytes;     /* application bytes received by successful sessions */
    uint64_t lit_bytes; /* literal / RETR body bytes among them */
    uint64_t msgs;
    uint64_t errors[E_NERR];
    struct pcb_lat lat;
    ev_timer tick;
    struct cl *cls;
    unsigned rng;
};

struct cl {
    struct bench *b;
    int idx;
    int fd;
    SSL *ssl;
    ev_io io;
    ev_timer tmo;
    int events;
    enum kind kind;
    int step;
    bool connecting, handshaking, want_write, held, busy;
    bool cont;      /* the next line continues a response after a literal */
    bool multiline; /* POP3: inside a multi-line answer */
    int ml_state;   /* POP3: bytes of "\r\n.\r\n" matched */
    uint64_t lit_left;
    char *in;
    size_t ilen;
    char out[OUT_CAP];
    size_t olen, ooff;
    unsigned exists, nmsg, retr_next, noops_done;
    uint64_t bytes, lit_bytes;
    double t_start, t_op;
    int user;
    unsigned gen;      /* bumped per session: callbacks notice their session ended under them */
    SSL_SESSION *sess; /* --resume: the last session (ticket) the server gave this client */
};

static void cl_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void cl_tmo_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void session_start(struct cl *c);

static unsigned rnd(struct bench *b)
{
    b->rng = b->rng * 1103515245u + 12345u;
    return (b->rng >> 8) & 0xffffff;
}

/* ---- connection plumbing */

static void set_events(struct cl *c, int ev)
{
    if (ev == c->events)
        return;
    if (c->events)
        ev_io_stop(c->b->loop, &c->io);
    c->events = ev;
    if (ev) {
        ev_io_set(&c->io, c->fd, ev);
        ev_io_start(c->b->loop, &c->io);
    }
}

static void cl_close(struct cl *c)
{
    set_events(c, 0);
    ev_timer_stop(c->b->loop, &c->tmo);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->in);
    c->in = NULL;
    if (c->held) {
        c->held = false;
        c->b->held--;
    }
}

static void maybe_finish(struct bench *b)
{
    if (b->stopping && b->active == 0)
        ev_break(b->loop, EVBREAK_ALL);
}

static void next_session(struct cl *c)
{
    struct bench *b = c->b;
    if (c->busy) {
        c->busy = false;
        b->active--;
    }
    b->t_last = pcb_now();
    if (b->o.sessions && b->started >= b->o.sessions)
        b->stopping = true;
    if (b->stopping) {
        maybe_finish(b);
        return;
    }
    if (b->o.mode == M_IDLE)
        return; /* the tick opens connections, at most --ramp at once */
    session_start(c);
}

static void fail(struct cl *c, enum err e)
{
    c->b->errors[e]++;
    cl_close(c);
    /* A refused or broken server must not turn this into a busy loop of failures. */
    if (c->b->errors[e] > 1000 && c->b->ok_total == 0) {
        fprintf(stderr, "pcbench: >1000 %s errors and no success: giving up\n", err_names[e]);
        c->b->stopping = true;
    }
    next_session(c);
}

static void succeed(struct cl *c)
{
    struct bench *b = c->b;
    double t = pcb_now();
    b->ok[c->kind]++;
    b->ok_total++;
    b->bytes += c->bytes;
    b->lit_bytes += c->lit_bytes;
    b->msgs += c->nmsg;
    if (c->kind != K_NOOP)
        pcb_lat_add(&b->lat, t - c->t_start);
    /* A completed session ends cleanly: mark it so (nothing is sent), or OpenSSL's SSL_free
     * would flag the session not resumable. */
    if (c->ssl)
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    if (c->ssl && b->o.resume) {
        /* Offer the connection's own session next time, as clients do (Python's ssl, NSS):
         * after a resumption without a new ticket it is a fresh, resumable copy. */
        SSL_SESSION *cur = SSL_get1_session(c->ssl);
        if (cur && SSL_SESSION_is_resumable(cur)) {
            if (c->sess)
                SSL_SESSION_free(c->sess);
            c->sess = cur;
        } else if (cur) {
            SSL_SESSION_free(cur);
        }
    }
    cl_close(c);
    next_session(c);
}

static void update_events(struct cl *c)
{
    if (c->fd < 0)
        return;
    int ev = EV_READ;
    if (c->connecting || c->want_write || c->ooff < c->olen)
        ev |= EV_WRITE;
    if (c->connecting)
        ev = EV_WRITE;
    set_events(c, ev);
}

static void touch(struct cl *c)
{
    if (!c->held)
        ev_timer_again(c->b->loop, &c->tmo);
}

/* Send what is queued; returns false after a fatal error (session failed and closed). */
static bool flush_out(struct cl *c)
{
    c->want_write = false;
    while (c->ooff < c->olen) {
        size_t len = c->olen - c->ooff;
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int rc = SSL_write(c->ssl, c->out + c->ooff, (int)len);
            if (rc <= 0) {
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->want_write = true;
                    return true;
                }
                if (e == SSL_ERROR_WANT_READ)
                    return true;
                fail(c, E_EOF);
                return false;
            }
            n = rc;
        } else {
            n = send(c->fd, c->out + c->ooff, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    c->want_write = true;
                    return true;
                }
                fail(c, E_EOF);
                return false;
            }
        }
        c->ooff += (size_t)n;
    }
    c->olen = c->ooff = 0;
    return true;
}

static bool sendf(struct cl *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool sendf(struct cl *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->out + c->olen, OUT_CAP - c->olen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= OUT_CAP - c->olen) {
        fail(c, E_PROTO);
        return false;
    }
    c->olen += (size_t)n;
    c->t_op = pcb_now();
    return flush_out(c);
}

/* ---- IMAP script */

static void user_name(struct cl *c, char *out, size_t cap)
{
    /* The format is a command-line option naming one %d. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(out, cap, c->b->o.user_fmt, c->user);
#pragma GCC diagnostic pop
}

static bool imap_cmd(struct cl *c, const char *cmd)
{
    c->step++;
    return sendf(c, "a%d %s\r\n", c->step, cmd);
}

/* The tagged OK to step `c->step` arrived: send the next command of the script. */
static void imap_next(struct cl *c)
{
    struct bench *b = c->b;
    char u[128], cmd[300];
    if (c->step == 0) { /* greeting */
        user_name(c, u, sizeof u);
        snprintf(cmd, sizeof cmd, "LOGIN %s %s", u, b->o.pass);
        imap_cmd(c, cmd);
        return;
    }
    switch (c->kind) {
    case K_LOGIN:
        if (c->step == 1)
            imap_cmd(c, "LOGOUT");
        else
            succeed(c);
        return;
    case K_FETCH:
        if (c->step == 1) {
            imap_cmd(c, "SELECT INBOX");
        } else if (c->step == 2) {
            if (c->exists)
                imap_cmd(c, "FETCH 1:* BODY.PEEK[]");
            else {
                c->step++;
                imap_cmd(c, "LOGOUT");
            }
        } else if (c->step == 3) {
            if (c->nmsg != c->exists) {
                fail(c, E_SHORT);
                return;
            }
            imap_cmd(c, "LOGOUT");
        } else {
            succeed(c);
        }
        return;
    case K_POLL:
        if (c->step == 1)
            imap_cmd(c, "SELECT INBOX");
        else if (c->step == 2)
            imap_cmd(c, "NOOP");
        else if (c->step == 3)
            imap_cmd(c, "LOGOUT");
        else
            succeed(c);
        return;
    case K_NOOP:
        if (c->step >= 2 && c->noops_done < (unsigned)b->o.noops) {
            /* a NOOP answer: one latency sample */
            pcb_lat_add(&b->lat, pcb_now() - c->t_op);
            c->noops_done++;
        }
        if (c->noops_done < (unsigned)b->o.noops)
            imap_cmd(c, "NOOP");
        else if (c->step == b->o.noops + 1 || (b->o.noops == 0 && c->step == 1))
            imap_cmd(c, "LOGOUT");
        else
            succeed(c);
        return;
    case K_IDLE:
        if (c->step == 1)
            imap_cmd(c, "IDLE");
        return;
    default:
        fail(c, E_PROTO);
    }
}

static bool parse_literal(const char *line, size_t len, uint64_t *n)
{
    /* "... {123}" at the end of the line (CR already stripped). */
    if (len < 3 || line[len - 1] != '}')
        return false;
    size_t i = len - 1;
    uint64_t v = 0, mul = 1;
    while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9') {
        v += (uint64_t)(line[i - 1] - '0') * mul;
        mul *= 10;
        i--;
    }
    if (i == 0 || i == len - 1 || line[i - 1] != '{')
        return false;
    *n = v;
    return true;
}

static void imap_line(struct cl *c, const char *line, size_t len)
{
    uint64_t lit;
    if (c->cont) {
        c->cont = false;
        if (parse_literal(line, len, &lit)) {
            c->lit_left = lit;
            c->cont = true;
        }
        return;
    }
    if (len >= 2 && line[0] == '*' && line[1] == ' ') {
        if (c->step == 0) {
            if (len >= 4 && memcmp(line, "* OK", 4) == 0)
                imap_next(c);
            else
                fail(c, E_REFUSED);
            return;
        }
        const char *sp = memchr(line + 2, ' ', len - 2);
        if (sp) {
            size_t rest = len - (size_t)(sp + 1 - line);
            if (rest >= 6 && memcmp(sp + 1, "EXISTS", 6) == 0)
                c->exists = (unsigned)strtoul(line + 2, NULL, 10);
            else if (rest >= 5 && memcmp(sp + 1, "FETCH", 5) == 0)
                c->nmsg++;
        }
        if (parse_literal(line, len, &lit)) {
            c->lit_left = lit;
            c->cont = true;
        }
        return;
    }
    if (line[0] == '+') {
        if (c->kind == K_IDLE && c->step == 2 && !c->held) {
            struct bench *b = c->b;
            c->held = true;
            b->held++;
            ev_timer_stop(b->loop, &c->tmo);
            pcb_lat_add(&b->lat, pcb_now() - c->t_start);
            b->ok[K_IDLE]++;
            b->ok_total++;
        }
        return;
    }
    char tag[16];
    int tl = snprintf(tag, sizeof tag, "a%d ", c->step);
    if (len < (size_t)tl + 2 || memcmp(line, tag, (size_t)tl) != 0) {
        fail(c, E_PROTO);
        return;
    }
    if (memcmp(line + tl, "OK", 2) != 0) {
        fail(c, c->step == 1 ? E_REFUSED : E_PROTO);
        return;
    }
    imap_next(c);
}

/* ---- POP3 script: steps 0 greeting, 1 USER, 2 PASS, 3 STAT, 4 RETR..., 5 QUIT */

static void pop3_next(struct cl *c)
{
    char u[128];
    switch (c->step) {
    case 0:
        user_name(c, u, sizeof u);
        c->step = 1;
        sendf(c, "USER %s\r\n", u);
        return;
    case 1:
        c->step = 2;
        sendf(c, "PASS %s\r\n", c->b->o.pass);
        return;
    case 2:
        c->step = 3;
        sendf(c, "STAT\r\n");
        return;
    case 3:
    case 4:
        if (c->retr_next <= c->exists) {
            c->step = 4;
            sendf(c, "RETR %u\r\n", c->retr_next++);
            return;
        }
        c->step = 5;
        sendf(c, "QUIT\r\n");
        return;
    default:
        succeed(c);
    }
}

static void pop3_line(struct cl *c, const char *line, size_t len)
{
    if (len < 3 || memcmp(line, "+OK", 3) != 0) {
        fail(c, c->step == 2 || c->step == 0 ? E_REFUSED : E_PROTO);
        return;
    }
    if (c->step == 3)
        c->exists = (unsigned)strtoul(line + 3, NULL, 10);
    if (c->step == 4) {
        c->multiline = true;
        c->ml_state = 2; /* the status line's CRLF counts toward "\r\n.\r\n" */
        return;
    }
    pop3_next(c);
}

/* Skip a multi-line body up to and including "\r\n.\r\n"; returns bytes consumed. */
static size_t pop3_body(struct cl *c, const char *p, size_t len)
{
    static const char term[] = "\r\n.\r\n";
    size_t i = 0;
    /* Finish a partial match byte by byte (KMP on a pattern whose only border is "\r\n"). */
    while (i < len && c->ml_state > 0) {
        char ch = p[i++];
        if (ch == term[c->ml_state])
            c->ml_state++;
        else
            c->ml_state = ch == '\r' ? 1 : 0;
        if (c->ml_state == 5)
            goto done;
    }
    {
        const char *m = memmem(p + i, len - i, term, 5);
        if (m) {
            i = (size_t)(m - p) + 5;
            goto done;
        }
    }
    /* No terminator: remember how much of it the tail matches (at most 4 bytes). */
    for (size_t k = len > i + 4 ? len - 4 : i; k < len; k++) {
        char ch = p[k];
        if (ch == term[c->ml_state])
            c->ml_state++;
        else
            c->ml_state = ch == '\r' ? 1 : 0;
    }
    c->lit_bytes += len;
    return len;
done:
    c->lit_bytes += i;
    c->multiline = false;
    c->ml_state = 0;
    c->nmsg++;
    pop3_next(c);
    return i;
}

/* ---- input */

static void process_input(struct cl *c)
{
    size_t pos = 0;
    unsigned gen = c->gen;
    while (pos < c->ilen && c->gen == gen && c->fd >= 0) {
        char *p = c->in + pos;
        size_t avail = c->ilen - pos;
        if (c->lit_left) {
            size_t take = avail < c->lit_left ? avail : (size_t)c->lit_left;
            c->lit_left -= take;
            c->lit_bytes += take;
            pos += take;
            continue;
        }
        if (c->multiline) {
            pos += pop3_body(c, p, avail);
            continue;
        }
        char *nl = memchr(p, '\n', avail);
        if (!nl)
            break;
        size_t ll = (size_t)(nl - p);
        pos += ll + 1;
        if (ll && p[ll - 1] == '\r')
            ll--;
        if (c->kind == K_POP3)
            pop3_line(c, p, ll);
        else
            imap_line(c, p, ll);
    }
    if (c->fd < 0 || c->gen != gen)
        return; /* the session ended (and maybe a new one started on this slot) */
    if (pos < c->ilen) {
        memmove(c->in, c->in + pos, c->ilen - pos);
        c->ilen -= pos;
        if (c->ilen >= PCB_LINE_MAX) {
            fail(c, E_PROTO);
            return;
        }
    } else {
        c->ilen = 0;
    }
}

static void do_read(struct cl *c)
{
    unsigned gen = c->gen;
    for (int rounds = 0; rounds < 64 && c->fd >= 0 && c->gen == gen; rounds++) {
        size_t room = IN_CAP - c->ilen;
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            int rc = SSL_read(c->ssl, c->in + c->ilen, (int)room);
            if (rc <= 0) {
                int e = SSL_get_error(c->ssl, rc);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->want_write = true;
                    return;
                }
                fail(c, E_EOF);
                return;
            }
            n = rc;
        } else {
            n = recv(c->fd, c->in + c->ilen, room, 0);
            if (n == 0) {
                fail(c, E_EOF);
                return;
            }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                fail(c, E_EOF);
                return;
            }
        }
        c->bytes += (uint64_t)n;
        c->ilen += (size_t)n;
        touch(c);
        process_input(c);
    }
}

static void do_handshake(struct cl *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->handshaking = false;
        c->want_write = false;
        if (SSL_session_reused(c->ssl))
            c->b->resumed++;
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        c->want_write = false;
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->want_write = true;
        return;
    }
    fail(c, E_TLS);
}

static void cl_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct cl *c = w->data;
    unsigned gen = c->gen;
    if (c->connecting) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            fail(c, E_CONNECT);
            return;
        }
        c->connecting = false;
        if (c->ssl) {
            c->handshaking = true;
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_connect_state(c->ssl);
        }
    }
    if (c->handshaking) {
        do_handshake(c);
        if (c->gen == gen && !c->handshaking)
            do_read(c); /* the greeting may have come with the last flight */
    } else {
        if ((revents & EV_WRITE) && c->ooff < c->olen && !flush_out(c))
            return;
        if (c->gen == gen)
            do_read(c);
    }
    if (c->gen == gen && c->fd >= 0)
        update_events(c);
}

static void cl_tmo_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    fail(w->data, E_TIMEOUT);
}

static enum kind pick_kind(struct bench *b)
{
    switch (b->o.mode) {
    case M_LOGIN:
        return K_LOGIN;
    case M_FETCH:
        return K_FETCH;
    case M_POP3:
        return K_POP3;
    case M_IDLE:
        return K_IDLE;
    case M_NOOP:
        return K_NOOP;
    case M_MIXED: {
        unsigned r = rnd(b) % 100;
        return r < 35 ? K_FETCH : r < 75 ? K_POLL : K_POP3;
    }
    }
    return K_LOGIN;
}

static void session_start(struct cl *c)
{
    struct bench *b = c->b;
    if (b->o.sessions && b->started >= b->o.sessions) {
        b->stopping = true;
        maybe_finish(b);
        return;
    }
    b->started++;
    b->active++;
    c->busy = true;
    c->gen++;
    c->kind = pick_kind(b);
    c->step = 0;
    c->cont = c->multiline = c->want_write = false;
    c->ml_state = 0;
    c->lit_left = 0;
    c->ilen = c->olen = c->ooff = 0;
    c->exists = c->nmsg = c->noops_done = 0;
    c->retr_next = 1;
    c->bytes = c->lit_bytes = 0;
    c->user = (int)((unsigned)(b->started - 1) % (unsigned)b->o.nusers);
    c->t_start = pcb_now();
    c->in = malloc(IN_CAP);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!c->in || fd < 0) {
        fprintf(stderr, "pcbench: socket: %s\n", strerror(errno));
        c->fd = -1;
        b->errors[E_CONNECT]++;
        b->stopping = true;
        c->busy = false;
        b->active--;
        free(c->in);
        c->in = NULL;
        maybe_finish(b);
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const struct sockaddr_in *sa =
        c->kind == K_POP3 && b->o.mode == M_MIXED ? &b->sa_pop3 : &b->sa_imap;
    if (b->o.tls) {
        c->ssl = SSL_new(b->ctx);
        if (!c->ssl) {
            fail(c, E_TLS);
            return;
        }
        SSL_set_app_data(c->ssl, c);
        if (b->o.resume && c->sess)
            SSL_set_session(c->ssl, c->sess);
    }
    c->connecting = true;
    c->handshaking = false;
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        fail(c, E_CONNECT);
        return;
    }
    ev_timer_set(&c->tmo, 0., b->o.timeout);
    ev_timer_again(b->loop, &c->tmo);
    update_events(c);
}

/* ---- run control */

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct bench *b = w->data;
    double now = pcb_now();
    if (b->o.mode == M_IDLE) {
        long target = b->o.conc;
        if (!b->ready_printed && b->started >= target && b->active - b->held == 0) {
            /* every connection is either held or failed: the holding period starts now */
            b->ready_printed = true;
            b->t_end = now + b->o.duration;
            printf("READY held=%ld\n", b->held);
            fflush(stdout);
        }
        if (!b->ready_printed) {
            /* open the next batch, at most --ramp opening at once */
            for (int i = 0; i < b->o.conc && b->active - b->held < b->o.ramp; i++) {
                struct cl *c = &b->cls[i];
                if (c->fd < 0 && !c->busy && b->started < target)
                    session_start(c);
            }
        } else if (now >= b->t_end) {
            ev_break(loop, EVBREAK_ALL);
        }
        return;
    }
    if (!b->stopping && b->o.duration > 0 && now - b->t_start >= b->o.duration) {
        b->stopping = true;
        maybe_finish(b);
    }
    if (b->stopping && now - b->t_start >= b->o.duration + b->o.timeout + 5)
        ev_break(loop, EVBREAK_ALL); /* stragglers: counted below as timeouts */
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct cl *c = SSL_get_app_data(ssl);
    if (!c)
        return 0;
    c->b->tickets++;
    if (c->sess)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1; /* we keep the reference */
}

static int parse_mode(const char *s)
{
    for (int i = 0; i < (int)(sizeof mode_names / sizeof *mode_names); i++)
        if (strcmp(s, mode_names[i]) == 0)
            return i;
    return -1;
}

static void usage(void)
{
    fputs("usage: pcbench run -m login|fetch|pop3|idle|mixed|noop -p PORT [options]\n"
          "  -H HOST          server address (127.0.0.1)\n"
          "  -p PORT          IMAP port (POP3 port in pop3 mode)\n"
          "  -P PORT          POP3 port for the pop3 share of mixed mode\n"
          "  -c N             concurrent clients (idle: connections to hold) (1)\n"
          "  -d SECS          duration (idle: holding time) (5)\n"
          "  -n N             stop after N sessions (0 = by duration)\n"
          "  -u FMT           user name, %d = client's user number (bench%d)\n"
          "  -w PASS          password (benchpw)\n"
          "  -U N             number of users (1)\n"
          "  -N N             NOOPs per session in noop mode (1000)\n"
          "  -t SECS          stall timeout per session (30)\n"
          "  -r N             idle: connections opening at once (64)\n"
          "  -l LABEL         label in the RESULT line\n"
          "  --plain          no TLS\n"
          "  --resume         resume TLS sessions (each client offers its last ticket)\n",
          stderr);
}

int pcb_client_main(int argc, char **argv)
{
    static struct bench B;
    struct bench *b = &B;
    struct opts *o = &b->o;
    *o = (struct opts){.host = "127.0.0.1",
                       .tls = true,
                       .mode = M_LOGIN,
                       .conc = 1,
                       .duration = 5,
                       .user_fmt = "bench%d",
                       .pass = "benchpw",
                       .nusers = 1,
                       .noops = 1000,
                       .timeout = 30,
                       .ramp = 64,
                       .label = "",
                       .seed = 1};
    static const struct option lo[] = {{"plain", no_argument, NULL, 'T'},
                                       {"resume", no_argument, NULL, 'R'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "m:H:p:P:c:d:n:u:w:U:N:t:r:l:s:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': {
            int m = parse_mode(optarg);
            if (m < 0) {
                usage();
                return 2;
            }
            o->mode = (enum mode)m;
            break;
        }
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            o->port = atoi(optarg);
            break;
        case 'P':
            o->pop3_port = atoi(optarg);
            break;
        case 'c':
            o->conc = atoi(optarg);
            break;
        case 'd':
            o->duration = atof(optarg);
            break;
        case 'n':
            o->sessions = atol(optarg);
            break;
        case 'u':
            o->user_fmt = optarg;
            break;
        case 'w':
            o->pass = optarg;
            break;
        case 'U':
            o->nusers = atoi(optarg);
            break;
        case 'N':
            o->noops = atoi(optarg);
            break;
        case 't':
            o->timeout = atof(optarg);
            break;
        case 'r':
            o->ramp = atoi(optarg);
            break;
        case 'l':
            o->label = optarg;
            break;
        case 's':
            o->seed = (unsigned)atoi(optarg);
            break;
        case 'R':
            o->resume = true;
            break;
        case 'T':
            o->tls = false;
            break;
        default:
            usage();
            return 2;
        }
    }
    const char *pct = strchr(o->user_fmt, '%');
    if (o->port <= 0 || o->conc <= 0 || o->nusers <= 0 || o->ramp <= 0 || o->noops < 0 ||
        (o->mode == M_MIXED && o->pop3_port <= 0) ||
        (pct && (pct[1] != 'd' || strchr(pct + 1, '%')))) {
        usage();
        return 2;
    }
    pcb_raise_nofile((long)o->conc * 2 + 1024);
    b->rng = o->seed;
    memset(&b->sa_imap, 0, sizeof b->sa_imap);
    b->sa_imap.sin_family = AF_INET;
    b->sa_imap.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &b->sa_imap.sin_addr) != 1) {
        fprintf(stderr, "pcbench: -H takes an IPv4 address\n");
        return 2;
    }
    b->sa_pop3 = b->sa_imap;
    b->sa_pop3.sin_port = htons((uint16_t)o->pop3_port);

    if (o->tls) {
        b->ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(b->ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(b->ctx, SSL_VERIFY_NONE, NULL);
        /* every session a full handshake: the figure the targets are about */
        if (o->resume) {
            /* TLS 1.3 tickets arrive after the handshake: the callback is the reliable way */
            SSL_CTX_set_session_cache_mode(b->ctx, SSL_SESS_CACHE_CLIENT |
                                                       SSL_SESS_CACHE_NO_INTERNAL_STORE);
            SSL_CTX_sess_set_new_cb(b->ctx, new_session_cb);
        } else {
            SSL_CTX_set_session_cache_mode(b->ctx, SSL_SESS_CACHE_OFF);
        }
        SSL_CTX_set_mode(b->ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    b->loop = ev_default_loop(EVFLAG_AUTO);
    b->cls = calloc((size_t)o->conc, sizeof *b->cls);
    if (!b->cls)
        return 1;
    for (int i = 0; i < o->conc; i++) {
        struct cl *c = &b->cls[i];
        c->b = b;
        c->idx = i;
        c->fd = -1;
        ev_init(&c->io, cl_io_cb);
        c->io.data = c;
        ev_init(&c->tmo, cl_tmo_cb);
        c->tmo.data = c;
    }
    b->t_start = b->t_last = pcb_now();
    ev_timer_init(&b->tick, tick_cb, 0.01, 0.01);
    b->tick.data = b;
    ev_timer_start(b->loop, &b->tick);
    if (o->mode != M_IDLE)
        for (int i = 0; i < o->conc && !b->stopping; i++)
            session_start(&b->cls[i]);
    ev_run(b->loop, 0);

    double elapsed = (o->mode == M_IDLE ? pcb_now() : b->t_last) - b->t_start;
    long unfinished = 0, held = b->held;
    for (int i = 0; i < o->conc; i++) {
        struct cl *c = &b->cls[i];
        if (c->busy && !c->held)
            unfinished++;
        cl_close(c);
        if (c->sess)
            SSL_SESSION_free(c->sess);
    }
    b->errors[E_TIMEOUT] += (uint64_t)unfinished;
    uint64_t nerr = 0;
    for (int e = 0; e < E_NERR; e++)
        nerr += b->errors[e];

    pcb_lat_sort(&b->lat);
    double mb = (double)b->bytes / 1e6;
    double rate = elapsed > 0 ? (double)b->ok_total / elapsed : 0;
    double mbps = elapsed > 0 ? mb / elapsed : 0;
    double p50 = pcb_lat_pct(&b->lat, 50) * 1e3, p90 = pcb_lat_pct(&b->lat, 90) * 1e3,
           p99 = pcb_lat_pct(&b->lat, 99) * 1e3, pmax = pcb_lat_pct(&b->lat, 100) * 1e3;
    fprintf(stderr,
            "pcbench %s %s c=%d: %llu ok, %llu errors in %.2f s: %.1f sessions/s, %.1f MB/s; "
            "latency ms p50 %.3f p90 %.3f p99 %.3f max %.3f\n",
            mode_names[o->mode], o->label, o->conc, (unsigned long long)b->ok_total,
            (unsigned long long)nerr, elapsed, rate, mbps, p50, p90, p99, pmax);
    printf("RESULT {\"mode\":\"%s\",\"label\":\"%s\",\"conc\":%d,\"elapsed\":%.6f,"
           "\"sessions\":%llu,\"sessions_per_s\":%.3f,\"bytes\":%llu,\"body_bytes\":%llu,"
           "\"mb_per_s\":%.3f,\"msgs\":%llu,\"held\":%ld,\"resumed\":%ld,\"tickets\":%ld,"
           "\"samples\":%zu,"
           "\"lat_ms\":{\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"max\":%.4f},\"kinds\":{",
           mode_names[o->mode], o->label, o->conc, elapsed, (unsigned long long)b->ok_total, rate,
           (unsigned long long)b->bytes, (unsigned long long)b->lit_bytes, mbps,
           (unsigned long long)b->msgs, held, b->resumed, b->tickets, b->lat.n, p50, p90, p99,
           pmax);
    for (int k = 0; k < K_NKINDS; k++)
        printf("%s\"%s\":%llu", k ? "," : "", kind_names[k], (unsigned long long)b->ok[k]);
    printf("},\"errors\":%llu,\"error_kinds\":{", (unsigned long long)nerr);
    for (int e = 0; e < E_NERR; e++)
        printf("%s\"%s\":%llu", e ? "," : "", err_names[e], (unsigned long long)b->errors[e]);
    printf("}}\n");
    fflush(stdout);
    free(b->cls);
    free(b->lat.v);
    if (b->ctx)
        SSL_CTX_free(b->ctx);
    return 0;
}
