/*
 * pcb_serve — `pcbench serve -p PORT`: a minimal plaintext IMAP server on 127.0.0.1 for the
 * idle-scale benchmark, where Dovecot's process per session (~5 MB each) would be the limit.
 *
 * It accepts any LOGIN, answers SELECT with an empty mailbox, IDLE with a continuation (ending at
 * DONE), LOGOUT with BYE, everything else with OK. Literals ({n} and {n+}) are skipped by length,
 * a synchronising one after a "+" continuation. One small struct per connection and no buffers
 * beyond one line, so the proxies in front are what the measurement sees.
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcbench.h"

#define SRV_LINE 1024
#define CAPS     "IMAP4rev1 LITERAL+ ID IDLE AUTH=PLAIN"

struct sconn {
    int fd;
    ev_io io;
    bool idling;
    bool have_cmd;      /* tag/cmd of a command continued after a literal */
    unsigned long skip; /* literal bytes still to skip */
    char tag[32], cmd[16];
    unsigned len;
    char line[SRV_LINE];
};

static struct ev_loop *loop;
static long nconns;

static void sc_close(struct sconn *c)
{
    ev_io_stop(loop, &c->io);
    close(c->fd);
    free(c);
    nconns--;
}

static bool reply(struct sconn *c, const char *s)
{
    size_t len = strlen(s);
    /* Answers are a few dozen bytes to a client that reads them: a short write is a broken
     * peer, not a case to queue for. */
    return send(c->fd, s, len, MSG_NOSIGNAL) == (ssize_t)len;
}

/* A complete command: tag and command word are in c->tag / c->cmd. */
static bool command(struct sconn *c)
{
    char out[256];
    const char *t = c->tag, *cmd = c->cmd;
    if (strcasecmp(cmd, "LOGIN") == 0 || strcasecmp(cmd, "AUTHENTICATE") == 0)
        snprintf(out, sizeof out, "%s OK [CAPABILITY " CAPS "] Logged in\r\n", t);
    else if (strcasecmp(cmd, "CAPABILITY") == 0)
        snprintf(out, sizeof out, "* CAPABILITY " CAPS "\r\n%s OK done\r\n", t);
    else if (strcasecmp(cmd, "ID") == 0)
        snprintf(out, sizeof out, "* ID NIL\r\n%s OK done\r\n", t);
    else if (strcasecmp(cmd, "SELECT") == 0 || strcasecmp(cmd, "EXAMINE") == 0)
        snprintf(out, sizeof out,
                 "* FLAGS ()\r\n* 0 EXISTS\r\n* 0 RECENT\r\n%s OK [READ-WRITE] selected\r\n", t);
    else if (strcasecmp(cmd, "IDLE") == 0) {
        c->idling = true;
        return reply(c, "+ idling\r\n");
    } else if (strcasecmp(cmd, "LOGOUT") == 0) {
        snprintf(out, sizeof out, "* BYE bye\r\n%s OK done\r\n", t);
        reply(c, out);
        return false;
    } else if (strcasecmp(cmd, "STARTTLS") == 0)
        snprintf(out, sizeof out, "%s BAD no TLS here\r\n", t);
    else
        snprintf(out, sizeof out, "%s OK done\r\n", t);
    return reply(c, out);
}

/* One line (without CRLF). Returns false to close. */
static bool line(struct sconn *c, char *l, unsigned len)
{
    l[len] = 0;
    if (c->idling) {
        if (strcasecmp(l, "DONE") != 0)
            return false;
        c->idling = false;
        char out[64];
        snprintf(out, sizeof out, "%s OK IDLE done\r\n", c->tag);
        return reply(c, out);
    }
    if (!c->have_cmd) {
        char *sp = strchr(l, ' ');
        if (!sp)
            return reply(c, "* BAD no tag\r\n");
        *sp = 0;
        size_t tl = strlen(l) < sizeof c->tag - 1 ? strlen(l) : sizeof c->tag - 1;
        memcpy(c->tag, l, tl);
        c->tag[tl] = 0;
        char *arg = sp + 1, *e = strchr(arg, ' ');
        size_t cl = e ? (size_t)(e - arg) : strlen(arg);
        if (cl >= sizeof c->cmd)
            cl = sizeof c->cmd - 1;
        memcpy(c->cmd, arg, cl);
        c->cmd[cl] = 0;
        *sp = ' ';
    }
    /* a literal at the end: skip its bytes, the command continues after it */
    if (len >= 3 && l[len - 1] == '}') {
        char *open = strrchr(l, '{');
        if (open) {
            bool plus = l[len - 2] == '+';
            c->skip = strtoul(open + 1, NULL, 10);
            c->have_cmd = true;
            return plus || reply(c, "+ go on\r\n");
        }
    }
    c->have_cmd = false;
    return command(c);
}

static void sc_cb(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    (void)revents;
    struct sconn *c = w->data;
    char buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        sc_close(c);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (c->skip) {
            size_t take = (size_t)(n - i) < c->skip ? (size_t)(n - i) : c->skip;
            c->skip -= take;
            i += (ssize_t)take - 1;
            continue;
        }
        char ch = buf[i];
        if (ch == '\n') {
            unsigned len = c->len;
            if (len && c->line[len - 1] == '\r')
                len--;
            c->len = 0;
            if (!line(c, c->line, len)) {
                sc_close(c);
                return;
            }
            continue;
        }
        if (c->len >= SRV_LINE - 1) {
            sc_close(c);
            return;
        }
        c->line[c->len++] = ch;
    }
}

static void accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
    (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct sconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        ev_io_init(&c->io, sc_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(l, &c->io);
        nconns++;
        static const char greet[] = "* OK [CAPABILITY " CAPS "] pcbench stand-in ready\r\n";
        if (send(fd, greet, sizeof greet - 1, MSG_NOSIGNAL) < 0)
            sc_close(c);
    }
}

int pcb_serve_main(int argc, char **argv)
{
    int port = 0, ch;
    while ((ch = getopt(argc, argv, "p:")) != -1) {
        if (ch == 'p')
            port = atoi(optarg);
        else
            port = -1;
    }
    if (port <= 0) {
        fputs("usage: pcbench serve -p PORT   (plaintext IMAP stand-in on 127.0.0.1)\n", stderr);
        return 2;
    }
    pcb_raise_nofile(70000);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "pcbench serve: port %d: %s\n", port, strerror(errno));
        return 1;
    }
    loop = ev_default_loop(EVFLAG_AUTO);
    ev_io aw;
    ev_io_init(&aw, accept_cb, fd, EV_READ);
    ev_io_start(loop, &aw);
    ev_run(loop, 0);
    return 0;
}
