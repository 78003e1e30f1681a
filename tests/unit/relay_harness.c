/*
 * relay_harness — see relay_harness.h. Included by each tests/unit/test_relay_*.c (the Makefile
 * builds every test_*.c as its own binary), after cmocka.h.
 */
#include "relay_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "imap.h"
#include "log.h"
#include "metrics.h"
#include "msgscan.h"
#include "pop3.h"
#include "runtime.h"
#include "scanner.h"
#include "session.h"
#include "worker.h"

/* ---- the stub scanner (link seam for scanner_clamav_new) ---- */

static atomic_uint stub_started; /* scans the stub was asked for (rh_scans) */
static atomic_uint stub_all;     /* every stub call, notices included (settle) */
static pthread_mutex_t stub_mu = PTHREAD_MUTEX_INITIALIZER;
static char *stub_last;
static size_t stub_last_len;
/* The content of the last "@NOTICE@" matched (for "@SLICE:…@" later in the same run). */
static char *g_notice;
static size_t g_notice_len;

static bool has(const char *buf, size_t len, const char *needle)
{
    return memmem(buf, len, needle, strlen(needle)) != NULL;
}

/* The deterministic verdict function (runs on a pool thread). */
static void stub_scan(struct scanner *s, const char *buf, size_t len, struct scan_result *r)
{
    (void)s;
    /* msgscan scans every notice before it is sent: judged like anything else, but not counted
     * as a message scan nor kept as "the last message scanned". */
    bool notice = has(buf, len, "\r\nX-Portcullis-Verdict: ");
    atomic_fetch_add(&stub_all, 1);
    if (!notice)
        atomic_fetch_add(&stub_started, 1);
    memset(r, 0, sizeof *r);
    if (has(buf, len, RH_EICAR) || has(buf, len, RH_MARK_INFECTED)) {
        r->verdict = SCAN_INFECTED;
        snprintf(r->signature, sizeof r->signature, "%s", RH_SIGNATURE);
    } else if (has(buf, len, RH_MARK_LIMIT)) {
        r->verdict = SCAN_LIMIT;
        snprintf(r->signature, sizeof r->signature, "Heuristics.Limits.Exceeded.MaxRecursion");
    } else if (has(buf, len, RH_MARK_ERROR)) {
        r->verdict = SCAN_ERROR;
        snprintf(r->signature, sizeof r->signature, "stub error");
    } else {
        r->verdict = SCAN_CLEAN;
    }
    snprintf(r->engine_version, sizeof r->engine_version, "harness-stub-1");
    r->generation = 1;
    r->scanned_bytes = len;
    r->elapsed_us = 1;
    if (notice)
        return;
    pthread_mutex_lock(&stub_mu);
    free(stub_last);
    stub_last = malloc(len + 1);
    if (stub_last) {
        memcpy(stub_last, buf, len);
        stub_last[len] = '\0';
    }
    stub_last_len = len;
    pthread_mutex_unlock(&stub_mu);
}

static bool stub_reload(struct scanner *s, const struct scan_options *o, char **error_r)
{
    (void)s, (void)o;
    *error_r = NULL;
    return true;
}

static void stub_version(struct scanner *s, char *buf, size_t cap)
{
    (void)s;
    snprintf(buf, cap, "harness-stub-1");
}

static uint64_t stub_generation(struct scanner *s)
{
    (void)s;
    return 1;
}

static void stub_destroy(struct scanner *s)
{
    scanner_base_fini(s);
    free(s);
}

static const struct scanner_ops stub_ops = {
    .name = "harness-stub",
    .scan = stub_scan,
    .reload = stub_reload,
    .version = stub_version,
    .generation = stub_generation,
    .destroy = stub_destroy,
};

struct scanner *scanner_clamav_new(const struct scan_options *o, char **error_r)
{
    (void)o;
    *error_r = NULL;
    struct scanner *s = calloc(1, sizeof *s);
    if (!s || !scanner_base_init(s, &stub_ops)) {
        free(s);
        return NULL;
    }
    return s;
}

char *rh_last_scanned(size_t *len_r)
{
    pthread_mutex_lock(&stub_mu);
    char *c = NULL;
    if (stub_last) {
        c = malloc(stub_last_len + 1);
        assert_non_null(c);
        memcpy(c, stub_last, stub_last_len + 1);
        *len_r = stub_last_len;
    }
    pthread_mutex_unlock(&stub_mu);
    return c;
}

/* ---- config snapshots, the loop ---- */

/* Every variant has scan.enabled (the process-wide scanner and pool are set up once, from
 * RH_SCAN_ON); RH_SCAN_OFF runs simply start no msgscan worker. database_dir only has to be
 * readable: the stub loads nothing. No keep-alive lines within a test's time. */
#define RH_CONFIG                                                                                  \
    "admin: {enabled: false}\n"                                                                    \
    "health: {enabled: false}\n"                                                                   \
    "log: {level: error}\n"                                                                        \
    "listeners:\n"                                                                                 \
    "  - {name: imap, bind: \"127.0.0.1:1143\", protocol: imap, tls: none}\n"                      \
    "  - {name: pop3, bind: \"127.0.0.1:1110\", protocol: pop3, tls: none}\n"                      \
    "backends:\n"                                                                                  \
    "  - {name: imap1, protocol: imap, host: 127.0.0.1, port: 10143}\n"                            \
    "  - {name: pop31, protocol: pop3, host: 127.0.0.1, port: 10110}\n"                            \
    "scan:\n"                                                                                      \
    "  enabled: true\n"                                                                            \
    "  database_dir: /tmp\n"                                                                       \
    "  threads: 1\n"                                                                               \
    "  keepalive_interval: 1h\n"

/* More scan: keys for RH_SCAN_ON (the process-wide pool is sized from that variant): a test
 * file that needs a small budget or shares defines it before including this file. */
#ifndef RH_CONFIG_EXTRA
#define RH_CONFIG_EXTRA ""
#endif

static const char *const scan_extra[] = {
    [RH_SCAN_OFF] = "",
    [RH_SCAN_ON] = RH_CONFIG_EXTRA,
    [RH_SCAN_SMALL_PASS] = "  max_scan_size: 1k\n  oversize_action: pass\n",
    [RH_SCAN_SMALL_BLOCK] = "  max_scan_size: 1k\n  oversize_action: block\n",
    [RH_SCAN_DOT_NOTICE] = "  notice_template: \".withheld: %signature%\\n.\\n..\\nend\\n\"\n",
    [RH_SCAN_LIMITS_PASS] = "  limits_action: pass\n",
    [RH_SCAN_PREFETCH2] = "  max_prefetch_messages: 2\n",
};

static struct rt *g_rt[RH_SCAN_VARIANTS];
static struct ev_loop *g_loop;

static struct rt *build_rt(enum rh_scan v)
{
    char text[2048];
    snprintf(text, sizeof text, "%s%s", RH_CONFIG, scan_extra[v]);
    char *err = NULL;
    struct config *cfg = cfg_load_string(text, strlen(text), "harness.yaml", &err);
    if (!cfg) {
        fprintf(stderr, "harness config: %s\n", err ? err : "?");
        free(err);
        return NULL;
    }
    struct rt *rt = rt_build(cfg, &err);
    cfg_unref(&cfg);
    if (!rt) {
        fprintf(stderr, "harness runtime: %s\n", err ? err : "?");
        free(err);
    }
    return rt;
}

int rh_group_setup(void **state)
{
    (void)state;
    log_set_level(getenv("RH_DEBUG") ? LOG_DEBUG : LOG_ERROR);
    g_loop = ev_loop_new(EVFLAG_AUTO);
    if (!g_loop)
        return -1;
    for (int v = 0; v < RH_SCAN_VARIANTS; v++) {
        g_rt[v] = build_rt((enum rh_scan)v);
        if (!g_rt[v])
            return -1;
    }
    char *err = NULL;
    if (!msgscan_process_init(g_rt[RH_SCAN_ON]->cfg, g_loop, &err)) {
        fprintf(stderr, "harness msgscan: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    return 0;
}

int rh_group_teardown(void **state)
{
    (void)state;
    msgscan_process_fini();
    for (int v = 0; v < RH_SCAN_VARIANTS; v++)
        rt_unref(&g_rt[v]);
    ev_loop_destroy(g_loop);
    g_loop = NULL;
    free(stub_last);
    stub_last = NULL;
    free(g_notice);
    g_notice = NULL;
    return 0;
}

/* ---- one session ---- */

/* What one peer received: p[0, len), of which [0, checked) the expectations have seen. */
struct rx {
    char *p;
    size_t len, cap, checked;
    bool eof;
};

struct rh {
    struct worker w;
    struct session *s; /* NULL once buried */
    int cfd, bfd;      /* our ends: the client, the backend */
    struct rx crx, brx;
    unsigned started0; /* stub scans before this run */
    bool slow;         /* the client reads RH_SLOW_READ bytes per loop run, small socket buffer */
    bool deaf;         /* the client reads nothing (rh_client_deaf) */
};

void rh_client_deaf(struct rh *h, bool deaf)
{
    h->deaf = deaf;
}

static void reap(struct worker *w)
{
    while (w->graveyard) {
        struct session *s = w->graveyard;
        w->graveyard = s->next;
        sess_free(s);
    }
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop, (void)revents;
    reap(a->data);
}

/* Read what `fd` has (at most `max` bytes when max > 0: a slow reader). */
static void rx_read(int fd, struct rx *r, size_t *moved, size_t max)
{
    if (fd < 0 || r->eof)
        return;
    for (;;) {
        if (r->cap - r->len < 4096) {
            r->cap = r->cap ? r->cap * 2 : 8192;
            r->p = realloc(r->p, r->cap);
            assert_non_null(r->p);
        }
        size_t want = r->cap - r->len - 1;
        if (max && want > max)
            want = max;
        ssize_t n = read(fd, r->p + r->len, want);
        if (n > 0) {
            r->len += (size_t)n;
            *moved += (size_t)n;
            if (max)
                break;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            r->eof = true;
            *moved += 1;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    r->p[r->len] = '\0';
}

static void guard_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)t, (void)revents;
}

/* Is a scan job queued or running on a pool thread? Read from the scan metrics: the pool
 * itself is msgscan's. */
static unsigned long scan_metric(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    return p ? strtoul(p + strlen(name), NULL, 10) : 0;
}

static bool scan_pending(struct rh *h)
{
    (void)h;
    struct buf b;
    buf_init(&b, 64 << 10);
    metrics_render(g_rt[RH_SCAN_ON]->cfg, &b);
    bool pending = false;
    if (b.data) {
        b.data[b.wpos < b.cap ? b.wpos : b.cap - 1] = '\0';
        pending = scan_metric(b.data, "portcullis_scan_queue{state=\"queued\"} ") +
                      scan_metric(b.data, "portcullis_scan_queue{state=\"running\"} ") +
                      scan_metric(b.data, "portcullis_scan_queue{state=\"done\"} ") >
                  0;
    }
    buf_free(&b);
    return pending;
}

/* Run the loop until nothing moves: no bytes to either peer, no scan result on its way.
 *
 * The pool takes a job off `running` and sends the loop's ev_async under one lock, so a job
 * seen neither queued nor running has its result signalled; the non-blocking runs after that
 * check take it. Hence "settled" = two checks in a row find the pool idle with loop runs in
 * between (a job that ends just before the first check is delivered before the second; one
 * that its delivery submits is seen by the second). While the pool is busy, block on the loop
 * for the ev_async, for at most 10 s of wall time (a scan thread may wait for a CPU on a
 * loaded machine; a blocking run may also return early for another watcher). */
static void settle(struct rh *h)
{
    int idle = 0, clear = 0;
    unsigned calls0 = atomic_load(&stub_all);
    double deadline = 0;
    for (;;) {
        ev_run(g_loop, EVRUN_NOWAIT);
        size_t moved = 0;
        if (!h->deaf)
            rx_read(h->cfd, &h->crx, &moved, h->slow ? RH_SLOW_READ : 0);
        rx_read(h->bfd, &h->brx, &moved, 0);
        if (h->w.graveyard) {
            reap(&h->w);
            h->s = NULL;
        }
        /* Closed outside the loop (a test calling sess_end): wake_cb may have reaped it. */
        if (!h->w.sessions)
            h->s = NULL;
        if (moved) {
            idle = clear = 0;
            continue;
        }
        if (++idle < 3)
            continue;
        if (!h->s || !h->w.scan)
            return;
        idle = 0;
        /* A verdict can submit another job (the notice's own scan) from the loop: settled only
         * when no stub call started between the two idle checks either. */
        unsigned calls = atomic_load(&stub_all);
        if (!scan_pending(h)) {
            if (clear > 0 && calls != calls0)
                clear = 0;
            calls0 = calls;
            if (++clear >= 2)
                return;
            continue;
        }
        clear = 0;
        if (deadline == 0)
            deadline = ev_time() + 10.0;
        else if (ev_time() > deadline)
            return; /* the expectations will report what is missing */
        ev_timer t;
        ev_timer_init(&t, guard_cb, 0.001, 0.);
        ev_timer_start(g_loop, &t);
        ev_run(g_loop, EVRUN_ONCE);
        ev_timer_stop(g_loop, &t);
    }
}

static void send_to(struct rh *h, int fd, const char *p, size_t len, size_t chunk);

static void socketpair_nb(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

static struct rh *open_session(enum rh_proto proto, enum rh_scan scan, bool slow, const char *user)
{
    struct rh *h = calloc(1, sizeof *h);
    assert_non_null(h);
    h->slow = slow;
    h->w.loop = g_loop;
    ev_async_init(&h->w.wake, wake_cb);
    h->w.wake.data = &h->w;
    ev_async_start(g_loop, &h->w.wake);
    if (scan != RH_SCAN_OFF)
        assert_true(msgscan_worker_start(&h->w));
    h->started0 = atomic_load(&stub_started);

    struct rt *rt = g_rt[scan];
    const struct config *cfg = rt->cfg;
    int li = proto == RH_IMAP ? 0 : 1;
    int csv[2], bsv[2];
    socketpair_nb(csv);
    socketpair_nb(bsv);
    h->cfd = csv[1];
    h->bfd = bsv[1];
    if (slow) {
        /* the smallest send buffer the kernel allows: the proxy's writes to the client fill it
         * and its write events (CONN_EV_WRITE) carry the rest */
        int one = 1;
        setsockopt(csv[0], SOL_SOCKET, SO_SNDBUF, &one, sizeof one);
    }
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    inet_pton(AF_INET, "192.0.2.7", &peer.sin_addr);
    atomic_fetch_add(&worker_connections, 1); /* the listener's count, given back at bury */
    assert_true(
        sess_accept(&h->w, csv[0], &cfg->listeners[li], rt, (struct sockaddr *)&peer, sizeof peer));
    struct session *s = h->w.sessions;
    assert_non_null(s);
    assert_false(s->closing);
    h->s = s;
    settle(h); /* the greeting */
    /* One pre-auth command answered by the proxy itself, as a client's first words usually
     * are: the pre-auth parser then holds its line store, which the POP3 relay goes on using. */
    const char *first = proto == RH_IMAP ? "P1 CAPABILITY\r\n" : "CAPA\r\n";
    send_to(h, h->cfd, first, strlen(first), 0);
    assert_non_null(h->s);

    /* The backend accepted the login: what imap_backend.c / pop3_backend.c do on its OK. */
    s->user = strdup(user);
    s->be = &cfg->backends[li];
    s->be_index = li;
    s->backend.fd = bsv[0];
    sess_set_state(s, SESS_BACKEND);
    if (proto == RH_IMAP) {
        struct imap_state *st = imap_st(s);
        snprintf(st->lg->tag, sizeof st->lg->tag, "L1");
        assert_int_equal(creds_from_login(&st->lg->creds, "alice", 5, "secret", 6), CREDS_OK);
        imap_preauth_login_ok(s);
    } else {
        pop3_preauth_login_ok(s, "+OK Logged in.", 14);
    }
    settle(h);
    assert_non_null(h->s);
    assert_int_equal(h->s->state, SESS_RELAY);
    /* issue 19 item 4: the relay carries no pre-auth parser or login state */
    if (proto == RH_IMAP)
        assert_null(imap_st(h->s)->lg);
    /* Greeting and login answer are not part of any case. */
    h->crx.checked = h->crx.len;
    h->brx.checked = h->brx.len;
    return h;
}

struct rh *rh_open(enum rh_proto proto, enum rh_scan scan)
{
    return open_session(proto, scan, false, "alice");
}

struct rh *rh_open_as(enum rh_proto proto, enum rh_scan scan, const char *user)
{
    return open_session(proto, scan, false, user);
}

static void send_to(struct rh *h, int fd, const char *p, size_t len, size_t chunk)
{
    if (!chunk)
        chunk = len ? len : 1;
    size_t off = 0;
    while (off < len) {
        size_t n = len - off < chunk ? len - off : chunk;
        size_t sent = 0;
        int spins = 0;
        while (sent < n) {
            /* MSG_NOSIGNAL: a peer the proxy closed is EPIPE, not a SIGPIPE killing the test */
            ssize_t w = send(fd, p + off + sent, n - sent, MSG_NOSIGNAL);
            if (w > 0) {
                sent += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN && spins++ < 1000) {
                settle(h);
                continue;
            }
            return; /* closed, or stuck: the expectations will say so */
        }
        off += n;
        settle(h);
    }
}

void rh_client_send(struct rh *h, const char *p, size_t len, size_t chunk)
{
    send_to(h, h->cfd, p, len, chunk);
}

void rh_backend_send(struct rh *h, const char *p, size_t len, size_t chunk)
{
    send_to(h, h->bfd, p, len, chunk);
}

static char *take(struct rx *r, size_t *len_r)
{
    size_t n = r->len - r->checked;
    char *c = malloc(n + 1);
    assert_non_null(c);
    if (n)
        memcpy(c, r->p + r->checked, n);
    c[n] = '\0';
    r->checked = r->len;
    *len_r = n;
    return c;
}

char *rh_client_received(struct rh *h, size_t *len_r)
{
    settle(h);
    return take(&h->crx, len_r);
}

char *rh_backend_received(struct rh *h, size_t *len_r)
{
    settle(h);
    return take(&h->brx, len_r);
}

void rh_settle(struct rh *h)
{
    settle(h);
}

bool rh_closed(struct rh *h)
{
    settle(h);
    return h->s == NULL;
}

struct session *rh_session(struct rh *h)
{
    return h->s;
}

unsigned rh_scans(struct rh *h)
{
    return atomic_load(&stub_started) - h->started0;
}

void rh_free(struct rh **hp)
{
    struct rh *h = *hp;
    if (!h)
        return;
    /* Closed outside settle() (a test's sess_close): wake_cb may already have reaped it. */
    if (!h->w.sessions)
        h->s = NULL;
    if (h->s && !h->s->closing)
        sess_close(h->s, "harness end");
    reap(&h->w);
    h->s = NULL;
    msgscan_worker_stop(&h->w);
    ev_async_stop(g_loop, &h->w.wake);
    /* Drain pending events of this run (the pool client is gone; nothing refers to `h`). */
    ev_run(g_loop, EVRUN_NOWAIT);
    close(h->cfd);
    close(h->bfd);
    free(h->crx.p);
    free(h->brx.p);
    free(h);
    *hp = NULL;
}

/* ---- test data ---- */

char *rh_message(size_t n, const char *extra)
{
    size_t cap = n + 512 + (extra ? strlen(extra) : 0);
    char *m = malloc(cap);
    assert_non_null(m);
    int k = snprintf(m, cap, "From: a@example.org\r\nSubject: big one\r\n%s%s\r\n",
                     extra ? extra : "", extra ? "\r\n" : "");
    size_t o = (size_t)k;
    for (unsigned line = 0; o + 72 < n; line++) {
        for (unsigned i = 0; i < 70; i++)
            m[o + i] = (char)('a' + (line * 7 + i) % 26);
        if (line % 37 == 5)
            m[o] = '.';
        m[o + 70] = '\r';
        m[o + 71] = '\n';
        o += 72;
    }
    m[o] = '\0';
    return m;
}

char *rh_stuff(const char *m)
{
    size_t n = strlen(m);
    char *o = malloc(2 * n + 1);
    assert_non_null(o);
    size_t w = 0;
    bool bol = true;
    for (size_t i = 0; i < n; i++) {
        if (bol && m[i] == '.')
            o[w++] = '.';
        o[w++] = m[i];
        bol = m[i] == '\n';
    }
    o[w] = '\0';
    return o;
}

char *rh_strf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    return s;
}

/* ---- notices ---- */

/* A dot-stuffed POP3 body ending "\r\n.\r\n", CRLF lines, no line a lone "." (or ".x"). */
static size_t match_pop_notice(const char *got, size_t len)
{
    const char *t = memmem(got, len, "\r\n.\r\n", 5);
    if (!t)
        return 0;
    size_t n = (size_t)(t - got) + 5;
    /* every line before the terminator: a "." at its start must be doubled */
    for (size_t i = 0; i < (size_t)(t - got) + 2;) {
        const char *lf = memchr(got + i, '\n', n - i);
        size_t l = lf ? (size_t)(lf - (got + i)) + 1 : n - i;
        if (got[i] == '.' && !(l > 1 && got[i + 1] == '.'))
            return 0;
        if (l >= 2 && got[i + l - 2] != '\r')
            return 0; /* bare LF inside the notice */
        i += l;
    }
    return n;
}

/* An IMAP literal header "{n}\r\n" at got: its length in *n_r; returns the header's size or 0. */
static size_t literal_hdr(const char *got, size_t len, size_t *n_r)
{
    if (len < 4 || got[0] != '{')
        return 0;
    char *end;
    unsigned long n = strtoul(got + 1, &end, 10);
    if (end == got + 1 || (size_t)(end - got) + 3 > len || end[0] != '}' || end[1] != '\r' ||
        end[2] != '\n')
        return 0;
    size_t hdr = (size_t)(end - got) + 3;
    if (hdr + n > len)
        return 0;
    *n_r = n;
    return hdr;
}

static size_t body_start(const char *p, size_t len)
{
    const char *e = memmem(p, len, "\r\n\r\n", 4);
    return e ? (size_t)(e - p) + 4 : len;
}

/* Match one placeholder `name` (between the @s) at got; returns bytes used or 0. */
static size_t match_placeholder(const char *name, size_t nl, const char *got, size_t len,
                                const char **why)
{
    size_t n = 0, hdr;
    if (nl == 6 && strncmp(name, "NOTICE", 6) == 0) {
        hdr = literal_hdr(got, len, &n);
        if (!hdr || n == 0 || !has(got + hdr, n, RH_SIGNATURE)) {
            *why = "no infected-notice literal here";
            return 0;
        }
        free(g_notice);
        g_notice = malloc(n + 1);
        memcpy(g_notice, got + hdr, n);
        g_notice[n] = '\0';
        g_notice_len = n;
        return hdr + n;
    }
    if (nl == 7 && strncmp(name, "BLOCKED", 7) == 0) {
        hdr = literal_hdr(got, len, &n);
        if (!hdr || !has(got + hdr, n, "withheld") || has(got + hdr, n, RH_SIGNATURE)) {
            *why = "no blocked-notice literal here";
            return 0;
        }
        return hdr + n;
    }
    if (nl == 9 && strncmp(name, "POPNOTICE", 9) == 0) {
        size_t u = match_pop_notice(got, len);
        if (!u || !has(got, u, RH_SIGNATURE)) {
            *why = "no infected POP3 notice here";
            return 0;
        }
        return u;
    }
    if (nl == 10 && strncmp(name, "POPBLOCKED", 10) == 0) {
        size_t u = match_pop_notice(got, len);
        if (!u || !has(got, u, "withheld") || has(got, u, RH_SIGNATURE)) {
            *why = "no blocked POP3 notice here";
            return 0;
        }
        return u;
    }
    if (nl == 10 && strncmp(name, "NOTICETEXT", 10) == 0) {
        /* the text of an infected notice (a part of a replaced message whose notice the
         * client never saw whole): the signature named, no header block before it */
        hdr = literal_hdr(got, len, &n);
        if (!hdr || !has(got + hdr, n, RH_SIGNATURE) || !has(got + hdr, n, "withheld") ||
            (n >= 5 && strncmp(got + hdr, "From:", 5) == 0)) {
            *why = "no infected-notice text literal here";
            return 0;
        }
        return hdr + n;
    }
    if (nl > 9 && strncmp(name, "CLEANLIT:", 9) == 0) {
        /* CLEANLIT:n — a literal of exactly n bytes holding no infected content */
        unsigned long k = strtoul(name + 9, NULL, 10);
        hdr = literal_hdr(got, len, &n);
        if (!hdr || n != k || has(got + hdr, n, RH_MARK_INFECTED) || has(got + hdr, n, "EICAR")) {
            *why = "no clean literal of that length here";
            return 0;
        }
        return hdr + n;
    }
    if (nl == 3 && strncmp(name, "NUM", 3) == 0) {
        size_t u = 0;
        while (u < len && got[u] >= '0' && got[u] <= '9')
            u++;
        if (!u)
            *why = "no number here";
        return u;
    }
    bool body = nl > 10 && strncmp(name, "BODYSLICE:", 10) == 0;
    if (body || (nl > 6 && strncmp(name, "SLICE:", 6) == 0)) {
        /* SLICE:o:n / BODYSLICE:o:n — a literal holding bytes [o, o+n) of the last notice (or
         * of its body); n = 0: to the end */
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%.*s", (int)nl, name);
        unsigned long o = 0, k = 0;
        sscanf(strchr(tmp, ':') + 1, "%lu:%lu", &o, &k);
        if (!g_notice) {
            *why = "SLICE before any NOTICE";
            return 0;
        }
        size_t base = body ? body_start(g_notice, g_notice_len) : 0;
        size_t avail = g_notice_len - base;
        size_t from = o < avail ? o : avail;
        size_t to = k == 0 || from + k > avail ? avail : from + k;
        hdr = literal_hdr(got, len, &n);
        if (!hdr || n != to - from || memcmp(got + hdr, g_notice + base + from, n) != 0) {
            *why = "literal is not the expected slice of the notice";
            return 0;
        }
        return hdr + n;
    }
    *why = "unknown placeholder";
    return 0;
}

bool rh_match_notice(const char *pattern, const char *got, size_t got_len, const char **why)
{
    size_t gi = 0;
    const char *p = pattern;
    while (*p) {
        const char *close = p[0] == '@' ? strchr(p + 1, '@') : NULL;
        if (close && close > p + 1 && (p[1] >= 'A' && p[1] <= 'Z')) {
            size_t u =
                match_placeholder(p + 1, (size_t)(close - p - 1), got + gi, got_len - gi, why);
            if (!u)
                return false;
            gi += u;
            p = close + 1;
            continue;
        }
        if (gi >= got_len || got[gi] != *p) {
            *why = "bytes differ";
            return false;
        }
        gi++;
        p++;
    }
    if (gi != got_len) {
        *why = "extra bytes";
        return false;
    }
    return true;
}

/* ---- running cases ---- */

static void show(const char *label, const char *p, size_t n)
{
    fprintf(stderr, "  %s (%zu bytes): \"", label, n);
    for (size_t i = 0; i < n && i < 4000; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r')
            fputs("\\r", stderr);
        else if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '"' || c == '\\')
            fprintf(stderr, "\\%c", c);
        else if (c < 32 || c > 126)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputs(n > 4000 ? "...\"\n" : "\"\n", stderr);
}

#define MODE_SLOW ((size_t)-1) /* whole writes, a slow client reader */

/* "whole", "bytes", "split@k" or "slow-reader" */
static const char *mode_name(size_t mode, char *buf, size_t cap)
{
    if (mode == MODE_SLOW)
        return "slow-reader";
    if (mode == 0)
        return "whole";
    if (mode == 1)
        return "bytes";
    snprintf(buf, cap, "split@%zu", mode - 1);
    return buf;
}

/* Run the steps with sends cut as `mode` says: 0 whole, 1 byte by byte, k >= 2: each send
 * split once, after byte k-1. Returns false (after printing) on a mismatch. */
static bool run_once(const struct rh_case *c, size_t mode)
{
    struct rh *h = open_session(c->proto, c->scan, mode == MODE_SLOW, "alice");
    char mbuf[32];
    const char *mn = mode_name(mode, mbuf, sizeof mbuf);
    bool ok = true;
    const char *why = NULL;
    size_t si = 0;
    char *got = NULL;
    size_t got_len = 0;
    for (const struct rh_step *st = c->steps; st->op != RH_END && ok; st++, si++) {
        size_t tl = st->text ? strlen(st->text) : 0;
        switch (st->op) {
        case RH_C:
        case RH_B: {
            int fd = st->op == RH_C ? h->cfd : h->bfd;
            if (mode <= 1 || mode == MODE_SLOW) {
                send_to(h, fd, st->text, tl, mode == 1 ? 1 : 0);
            } else {
                size_t k = mode - 1 < tl ? mode - 1 : tl;
                send_to(h, fd, st->text, k, 0);
                send_to(h, fd, st->text + k, tl - k, 0);
            }
            break;
        }
        case RH_C_WHOLE:
            send_to(h, h->cfd, st->text, tl, 0);
            break;
        case RH_EXPECT_C:
        case RH_EXPECT_B:
            got = st->op == RH_EXPECT_C ? rh_client_received(h, &got_len)
                                        : rh_backend_received(h, &got_len);
            if (got_len != tl || memcmp(got, st->text, tl) != 0) {
                ok = false;
                why = st->op == RH_EXPECT_C ? "client received other bytes"
                                            : "backend received other bytes";
                fprintf(stderr, "case \"%s\" mode %s, step %zu: %s\n", c->name, mn, si, why);
                show("want", st->text, tl);
                show("got ", got, got_len);
            }
            free(got);
            break;
        case RH_EXPECT_C_NOTICE:
            got = rh_client_received(h, &got_len);
            if (!rh_match_notice(st->text, got, got_len, &why)) {
                ok = false;
                fprintf(stderr, "case \"%s\" mode %s, step %zu: %s\n", c->name, mn, si, why);
                show("want", st->text, tl);
                show("got ", got, got_len);
            }
            free(got);
            break;
        case RH_EXPECT_CLOSED:
        case RH_EXPECT_OPEN:
            if (rh_closed(h) != (st->op == RH_EXPECT_CLOSED)) {
                ok = false;
                fprintf(stderr, "case \"%s\" mode %s, step %zu: session %s\n", c->name, mn, si,
                        st->op == RH_EXPECT_CLOSED ? "still open" : "closed");
            }
            break;
        case RH_EXPECT_SCANNED: {
            settle(h);
            size_t n = 0;
            char *m = rh_last_scanned(&n);
            if (!m || n != tl || memcmp(m, st->text, tl) != 0) {
                ok = false;
                fprintf(stderr, "case \"%s\" mode %s, step %zu: scanned other bytes\n", c->name, mn,
                        si);
                show("want", st->text, tl);
                show("got ", m ? m : "", m ? n : 0);
            }
            free(m);
            break;
        }
        case RH_EXPECT_NSCANS:
            settle(h);
            if (rh_scans(h) != st->n) {
                ok = false;
                fprintf(stderr, "case \"%s\" mode %s, step %zu: %u scans, want %u\n", c->name, mn,
                        si, rh_scans(h), st->n);
            }
            break;
        case RH_B_EOF:
            shutdown(h->bfd, SHUT_WR);
            settle(h);
            break;
        case RH_C_EOF:
            shutdown(h->cfd, SHUT_WR);
            settle(h);
            break;
        default:
            break;
        }
    }
    rh_free(&h);
    return ok;
}

void rh_run_case(const struct rh_case *c)
{
    size_t maxlen = 0;
    for (const struct rh_step *st = c->steps; st->op != RH_END; st++)
        if ((st->op == RH_C || st->op == RH_B) && strlen(st->text) > maxlen)
            maxlen = strlen(st->text);
    bool ok = run_once(c, 0) && run_once(c, MODE_SLOW);
    if (c->big) {
        /* a few splits only: near both ends and in the middle */
        size_t ks[] = {1, 2, 7, maxlen / 2, maxlen - 2, maxlen - 1};
        for (size_t i = 0; ok && i < sizeof ks / sizeof ks[0]; i++)
            if (ks[i] >= 1 && ks[i] < maxlen)
                ok = run_once(c, ks[i] + 1);
    } else {
        ok = ok && run_once(c, 1);
        for (size_t k = 1; ok && k < maxlen; k++)
            ok = run_once(c, k + 1);
    }
    if (!ok)
        fail_msg("case \"%s\" failed (see above)", c->name);
}
