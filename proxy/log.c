/*
 * log — see log.h. One write(2) per line; the destination fd is swapped atomically on reopen so
 * worker threads never see a closed descriptor mid-line (the old fd is closed only after the new
 * one is installed; a line in flight on the old fd still completes).
 */
#include "log.h"
#include "log_queue.h"
#include "log_syslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_fd = 2;
static atomic_bool log_to_syslog;
static atomic_int log_threshold = LOG_INFO;
static char log_path[1024];
/* The fd is swapped and the old one closed under fd_mu, which every write holds: no write goes
 * to a closed (or reused) descriptor. */
static pthread_mutex_t fd_mu = PTHREAD_MUTEX_INITIALIZER;

/* issue 16: the writer thread (log_writer_start); before it starts and after it stops, lines
 * are written synchronously. */
static struct logq lq;
static pthread_t lw_thread;
static atomic_bool lw_on;

const char *log_level_name(enum log_level level)
{
    switch (level) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warn";
    case LOG_ERROR:
        return "error";
    }
    return "?";
}

static int open_file(const char *file)
{
    return open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}

/* Make `fd` the log's descriptor (2: stderr) and close the one it replaces, stderr never. */
static void install_fd(int fd)
{
    pthread_mutex_lock(&fd_mu);
    int old = atomic_exchange(&log_fd, fd);
    if (old != 2)
        close(old);
    pthread_mutex_unlock(&fd_mu);
}

void log_use_syslog(bool on)
{
    if (on && !atomic_load(&log_to_syslog))
        log_syslog_open();
    atomic_store(&log_to_syslog, on);
}

bool log_open(enum log_level level, const char *file)
{
    atomic_store(&log_threshold, (int)level);
    if (!file || !*file) {
        install_fd(2);
        log_path[0] = '\0';
        return true;
    }
    int fd = open_file(file);
    if (fd < 0)
        return false;
    snprintf(log_path, sizeof log_path, "%s", file);
    install_fd(fd);
    return true;
}

void log_set_level(enum log_level level)
{
    atomic_store(&log_threshold, (int)level);
}

bool log_reopen(void)
{
    if (!log_path[0])
        return true;
    int fd = open_file(log_path);
    if (fd < 0)
        return false;
    install_fd(fd);
    return true;
}

bool log_enabled(enum log_level level)
{
    return (int)level >= atomic_load(&log_threshold);
}

static void fd_write(const char *p, size_t len)
{
    pthread_mutex_lock(&fd_mu);
    int fd = atomic_load(&log_fd);
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        len -= (size_t)w;
    }
    pthread_mutex_unlock(&fd_mu);
}

/* One line (with "ts=… " and no newline) to syslog or the fd. */
static void emit(int level, char *line, size_t len)
{
    if (atomic_load(&log_to_syslog)) {
        /* syslog stamps time and host itself: send the logfmt fields after ts=. */
        line[len] = '\0';
        const char *body = memchr(line, ' ', len);
        log_syslog_write(level, body ? body + 1 : line);
        return;
    }
    line[len++] = '\n';
    fd_write(line, len);
}

static size_t stamp(char *line, size_t cap, enum log_level level)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, cap, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), log_level_name(level));
    return n > 0 ? (size_t)n : 0;
}

#define LW_BATCH (64 * 1024)

/* The writer: takes what is queued (in order) into one batch per wakeup and writes it with one
 * write(2); lines dropped meanwhile are reported once it has caught up. */
static void *lw_main(void *arg)
{
    (void)arg;
    char *batch = malloc(LW_BATCH + LOG_LINE_MAX + 2);
    char rec[LOG_LINE_MAX + 2];
    pthread_mutex_lock(&lq.mu);
    for (;;) {
        while (lq.len == 0 && !lq.stop)
            pthread_cond_wait(&lq.cv, &lq.mu);
        if (lq.len == 0 && lq.stop)
            break;
        size_t bl = 0;
        int level;
        long n;
        bool sys = atomic_load(&log_to_syslog);
        while (bl < LW_BATCH && (n = logq_pop_locked(&lq, &level, rec, LOG_LINE_MAX)) >= 0) {
            if (sys || !batch) {
                pthread_mutex_unlock(&lq.mu);
                emit(level, rec, (size_t)n);
                pthread_mutex_lock(&lq.mu);
                continue;
            }
            memcpy(batch + bl, rec, (size_t)n);
            bl += (size_t)n;
            batch[bl++] = '\n';
        }
        uint64_t dropped = lq.len == 0 ? lq.dropped : 0;
        if (dropped)
            lq.dropped = 0;
        pthread_mutex_unlock(&lq.mu);
        if (bl)
            fd_write(batch, bl);
        if (dropped) {
            size_t k = stamp(rec, sizeof rec, LOG_WARN);
            int m = snprintf(rec + k, sizeof rec - k - 1,
                             "event=log_dropped count=%llu note=\"log queue full\"",
                             (unsigned long long)dropped);
            emit(LOG_WARN, rec, k + (m > 0 ? (size_t)m : 0));
        }
        pthread_mutex_lock(&lq.mu);
    }
    pthread_mutex_unlock(&lq.mu);
    free(batch);
    return NULL;
}

bool log_writer_start(size_t queue_bytes)
{
    if (atomic_load(&lw_on))
        return true;
    if (!logq_init(&lq, queue_bytes))
        return false;
    /* The writer takes no process signal (the main loop handles them). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&lw_thread, NULL, lw_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        logq_fini(&lq);
        return false;
    }
    atomic_store(&lw_on, true);
    return true;
}

void log_writer_stop(void)
{
    if (!atomic_load(&lw_on))
        return;
    pthread_mutex_lock(&lq.mu);
    lq.stop = true;
    pthread_cond_signal(&lq.cv);
    pthread_mutex_unlock(&lq.mu);
    pthread_join(lw_thread, NULL); /* it exits only with the queue empty: nothing is lost */
    atomic_store(&lw_on, false);
    /* A line queued between the writer's last look and lw_on going false. */
    char rec[LOG_LINE_MAX + 2];
    int level;
    long n;
    pthread_mutex_lock(&lq.mu);
    while ((n = logq_pop_locked(&lq, &level, rec, LOG_LINE_MAX)) >= 0)
        emit(level, rec, (size_t)n);
    pthread_mutex_unlock(&lq.mu);
}

unsigned long long log_dropped_total(void)
{
    return atomic_load(&lw_on) ? (unsigned long long)logq_dropped_total(&lq) : 0;
}

void log_write(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[LOG_LINE_MAX];
    int n = (int)stamp(line, sizeof line, level);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len;
    if (m < 0) {
        len = (size_t)n;
    } else if ((size_t)m >= sizeof line - (size_t)n - 1) {
        static const char cut[] = " truncated=1";
        len = sizeof line - 1 - sizeof cut;
        memcpy(line + len, cut, sizeof cut - 1);
        len += sizeof cut - 1;
    } else {
        len = (size_t)n + (size_t)m;
    }
    /* Never blocks on the destination: queued for the writer thread (dropped and counted when
     * its queue is full). */
    if (atomic_load(&lw_on)) {
        logq_push(&lq, (int)level, line, len);
        return;
    }
    emit((int)level, line, len);
}

/* Length of a valid UTF-8 sequence starting at s (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

const char *log_q(char *buf, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    static const char ell[] = "\xe2\x80\xa6"; /* … */
    if (cap < 8) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    size_t o = 0;
    size_t lim = cap - 1 /* NUL */ - 1 /* closing quote */ - (sizeof ell - 1);
    buf[o++] = '"';
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        char tmp[4];
        size_t tl;
        size_t step = 1;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            tl = 2;
        } else if (c >= 0x20 && c < 0x7f) {
            tmp[0] = (char)c;
            tl = 1;
        } else if (c >= 0x80 && (step = utf8_len(u + i, len - i)) > 0) {
            tl = step;
            if (o + tl > lim)
                break;
            memcpy(buf + o, u + i, tl);
            o += tl;
            i += step;
            continue;
        } else {
            step = 1;
            tmp[0] = '\\';
            tmp[1] = 'x';
            tmp[2] = hex[c >> 4];
            tmp[3] = hex[c & 15];
            tl = 4;
        }
        if (o + tl > lim)
            break;
        memcpy(buf + o, tmp, tl);
        o += tl;
        i += step;
    }
    if (i < len) {
        memcpy(buf + o, ell, sizeof ell - 1);
        o += sizeof ell - 1;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

const char *log_qs(char *buf, size_t cap, const char *s)
{
    return log_q(buf, cap, s, s ? strlen(s) : 0);
}

const char *log_hostport(char *buf, size_t cap, const char *ip, unsigned port)
{
    snprintf(buf, cap, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    return buf;
}
