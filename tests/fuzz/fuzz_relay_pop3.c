/*
 * fuzz_relay_pop3 — libFuzzer harness for the POP3 relay + scan fed from both sides: the
 * fuzzer writes the client's bytes (raw or dictionary commands, any split) and decides when
 * and how the server answers each command the proxy forwarded (+OK / -ERR, how the bytes are
 * split, RETR/TOP bodies in several dot-stuffed forms, answers held back and pipelined).
 * A real authenticated session runs through tests/unit/relay_harness.c with the stub scanner
 * (infected iff the message holds the EICAR string).
 *
 * The invariant, exactly: every message in the maildrop is infected. The server is honest
 * about framing (POP3 framing depends on the command, so a server answering NOOP with a
 * message body is not a mail-content threat but a protocol break) and answers the commands it
 * received in order; every RETR/TOP answer that is +OK carries the EICAR message (TOP: its
 * header and first lines, which hold the marker). An input holding "EICAR" is skipped. Then:
 *  - the client never receives "EICAR-STANDARD-ANTIVIRUS-TEST-FILE": every RETR/TOP body is
 *    replaced by the notice, refused, or not delivered;
 *  - no crash, leak or UB, and the harness always settles.
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
            fprintf(stderr, "fuzz_relay_pop3: %s\n", what);                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define EICAR_MARK "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"

/* Dot-stuffed already: the "..x" line is a stuffed ".x". */
static const char *const bodies[] = {
    "Subject: t\r\n\r\n" RH_EICAR "\r\n",
    "Subject: t\r\nX-P: " RH_EICAR "\r\n\r\nbody\r\n..dot\r\n",
    "Subject: t\r\n\r\n..\r\n" RH_EICAR "\r\n...\r\n",
    "From: a\r\n\r\n" RH_EICAR, /* no final line end before the terminator */
};

#define MAXQ 32
struct srv {
    char q[MAXQ][16]; /* commands forwarded, not yet answered (upper-cased first word) */
    unsigned nq;
    char *in;
    size_t in_len, in_cap;
    size_t chunk;
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

static void collect(struct rh *h, struct srv *v)
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
        if (v->nq == MAXQ)
            continue;
        size_t k = 0;
        char *w = v->q[v->nq++];
        while (k < ll && k < 15 && line[k] != ' ' && line[k] != '\r') {
            char c = line[k];
            w[k++] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
        }
        w[k] = '\0';
    }
    memmove(v->in, v->in + pos, v->in_len - pos);
    v->in_len -= pos;
}

/* Answer the oldest forwarded command. */
static void answer(struct rh *h, struct srv *v, uint8_t how)
{
    if (!v->nq)
        return;
    char cmd[16];
    memcpy(cmd, v->q[0], sizeof cmd);
    memmove(v->q[0], v->q[1], (v->nq - 1) * sizeof v->q[0]);
    v->nq--;
    char *o = NULL;
    size_t ol = 0, oc = 0;
    bool ok = (how & 3) != 0;
    if (!ok) {
        const char *e = "-ERR no such message\r\n";
        add(&o, &ol, &oc, e, strlen(e));
    } else if (strcmp(cmd, "RETR") == 0 || strcmp(cmd, "TOP") == 0) {
        const char *b = bodies[(how >> 2) & 3];
        const char *st = (how & 0x10) ? "+OK message follows\r\n" : "+OK\r\n";
        add(&o, &ol, &oc, st, strlen(st));
        add(&o, &ol, &oc, b, strlen(b));
        const char *t = b[strlen(b) - 1] == '\n' ? ".\r\n" : "\r\n.\r\n";
        add(&o, &ol, &oc, t, strlen(t));
    } else if (strcmp(cmd, "LIST") == 0 || strcmp(cmd, "UIDL") == 0 || strcmp(cmd, "CAPA") == 0) {
        const char *m = "+OK\r\n1 120\r\n2 99\r\n.\r\n";
        add(&o, &ol, &oc, m, strlen(m));
    } else if (strcmp(cmd, "STAT") == 0) {
        add(&o, &ol, &oc, "+OK 2 219\r\n", 11);
    } else {
        add(&o, &ol, &oc, "+OK\r\n", 5);
    }
    rh_backend_send(h, o, ol, (how & 0x20) ? v->chunk : 0);
    free(o);
}

static const char *const dict[] = {
    "RETR 1\r\n", "TOP 1 0\r\n", "TOP 1 2\r\n", "LIST\r\n",     "UIDL\r\n",
    "STAT\r\n",   "NOOP\r\n",    "DELE 1\r\n",  "RSET\r\n",     "RETR 2\r\n",
    "QUIT\r\n",   "CAPA\r\n",    "LIST 1\r\n",  "TOP 2 99\r\n",
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
    struct rh *h = rh_open(RH_POP3, RH_SCAN_ON);
    struct srv v = {0};
    char *seen = NULL;
    size_t seen_len = 0, seen_cap = 0;
    size_t i = 0;
    unsigned steps = 0;
    while (i < size && steps++ < 48 && rh_session(h)) {
        uint8_t op = data[i++];
        switch (op & 3) {
        case 0: { /* raw client bytes */
            size_t n = i < size ? data[i++] : 0;
            if (n > size - i)
                n = size - i;
            rh_client_send(h, (const char *)data + i, n, op >> 2);
            i += n;
            break;
        }
        case 1: { /* a dictionary command, whole or byte by byte */
            const char *c = dict[(op >> 3) % (sizeof dict / sizeof *dict)];
            rh_client_send(h, c, strlen(c), (op & 4) ? 1 : 0);
            break;
        }
        case 2: /* the server answers the oldest command */
            collect(h, &v);
            answer(h, &v, op >> 2);
            break;
        default:
            v.chunk = op >> 2;
            break;
        }
        collect(h, &v);
        size_t n = 0;
        char *got = rh_client_received(h, &n);
        add(&seen, &seen_len, &seen_cap, got, n);
        free(got);
        CHECK(!memmem(seen, seen_len, EICAR_MARK, strlen(EICAR_MARK)),
              "the client received the EICAR string");
    }
    rh_free(&h);
    free(v.in);
    free(seen);
    return 0;
}
