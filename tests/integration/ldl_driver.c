/*
 * ldl_driver — drives proxy/ldaplookup.c on a libev loop for tests/integration/test_ldaplookup.py.
 *
 * Config from the environment (LDL_URI, LDL_BASE, LDL_FILTER, LDL_ATTR, LDL_BIND_DN, LDL_BIND_PW,
 * LDL_CA, LDL_CERT, LDL_KEY, LDL_STARTTLS=1, LDL_SASL_EXTERNAL=1, LDL_TIMEOUT,
 * LDL_CONNECT_TIMEOUT, LDL_BACKOFF_MIN, LDL_BACKOFF_MAX, LDL_MAX_CONNS, LDL_MAX_PENDING,
 * LDL_MAX_USER_LEN). Commands on stdin, one
 * per line; the user is hex-encoded so that any byte (NUL included) can be sent:
 *   lookup ID HEXUSER   → "ID FOUND host port ms" | "ID NOTFOUND ms reason" | "ID ERROR ms reason"
 *   cancel ID HEXUSER   → "ID CANCELLED" (a callback for it later prints "ID BUG callback after
 *                         cancel")
 *   ready               → "READY n" (connections bound now)
 * EOF frees the pool and exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "ldaplookup.h"

/*
 * LeakSanitizer: libldap 2.5.13's GnuTLS backend (tls_g.c, tlsg_ctx_init) never frees the key
 * and certificates it loads for a client certificate (gnutls_certificate_set_x509_key copies
 * them): ~14 KB per connection that uses cert_file/key_file, inside libgnutls. Not ours to fix
 * here; everything else stays checked.
 */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:gnutls_x509_privkey_init\nleak:gnutls_x509_crt_init\n"
           "leak:gnutls_x509_privkey_import\nleak:gnutls_x509_crt_list_import\n";
}

struct job {
    char id[32];
    double t0;
    bool cancelled;
};

static struct ldl_pool *pool;
static struct ev_loop *loop;
static char line[4096];
static size_t line_len;

static void on_answer(void *arg, const struct ldl_answer *a)
{
    struct job *j = arg;
    long ms = (long)((ev_time() - j->t0) * 1000);

    if (j->cancelled)
        printf("%s BUG callback after cancel\n", j->id);
    else if (a->status == LDL_FOUND)
        printf("%s FOUND %s %u %ld\n", j->id, a->host, a->port, ms);
    else
        printf("%s %s %ld %s\n", j->id, a->status == LDL_NOT_FOUND ? "NOTFOUND" : "ERROR", ms,
               a->reason ? a->reason : "-");
    fflush(stdout);
    free(j);
}

static int unhex(const char *h, char *out, size_t cap)
{
    size_t n = strlen(h) / 2;
    if (n > cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (char)v;
    }
    return (int)n;
}

static void command(char *l)
{
    char verb[16], id[32], hex[1100], user[550];
    int n = sscanf(l, "%15s %31s %1099s", verb, id, hex), ulen;
    struct job *j;
    struct ldl_req *r;

    if (n >= 1 && strcmp(verb, "ready") == 0) {
        printf("READY %u\n", ldl_pool_ready(pool));
        fflush(stdout);
        return;
    }
    if (n == 2)
        hex[0] = '\0';
    if (n < 2 || (ulen = unhex(hex, user, sizeof user)) < 0) {
        printf("? bad command\n");
        fflush(stdout);
        return;
    }
    j = calloc(1, sizeof *j);
    if (j == NULL)
        abort();
    snprintf(j->id, sizeof j->id, "%s", id);
    j->t0 = ev_time();
    r = ldl_lookup(pool, user, (size_t)ulen, on_answer, j);
    if (strcmp(verb, "cancel") == 0) {
        ldl_cancel(&r);
        printf("%s CANCELLED\n", id);
        fflush(stdout);
        free(j); /* a later callback would touch freed memory: ASan would say so */
    }
}

static void stdin_cb(struct ev_loop *l, ev_io *w, int revents)
{
    ssize_t n = read(w->fd, line + line_len, sizeof line - 1 - line_len);
    char *nl;
    (void)revents;
    if (n <= 0) {
        ev_io_stop(l, w);
        ev_break(l, EVBREAK_ALL);
        return;
    }
    line_len += (size_t)n;
    line[line_len] = '\0';
    while ((nl = strchr(line, '\n')) != NULL) {
        *nl = '\0';
        command(line);
        memmove(line, nl + 1, line_len - (size_t)(nl + 1 - line) + 1);
        line_len -= (size_t)(nl + 1 - line);
    }
    if (line_len == sizeof line - 1)
        line_len = 0;
}

static const char *env(const char *k, const char *dflt)
{
    const char *v = getenv(k);
    return v && *v ? v : dflt;
}

int main(void)
{
    struct ldl_config c;
    const char *err = NULL;
    ev_io in;

    signal(SIGPIPE, SIG_IGN);
    loop = ev_default_loop(0);
    ldl_config_init(&c);
    c.uri = env("LDL_URI", NULL);
    c.base = env("LDL_BASE", NULL);
    c.filter = env("LDL_FILTER", c.filter);
    c.attr = env("LDL_ATTR", c.attr);
    c.bind_dn = env("LDL_BIND_DN", NULL);
    c.bind_password = env("LDL_BIND_PW", NULL);
    c.ca_file = env("LDL_CA", NULL);
    c.cert_file = env("LDL_CERT", NULL);
    c.key_file = env("LDL_KEY", NULL);
    c.starttls = atoi(env("LDL_STARTTLS", "0")) != 0;
    c.sasl_external = atoi(env("LDL_SASL_EXTERNAL", "0")) != 0;
    c.timeout = atof(env("LDL_TIMEOUT", "2"));
    c.connect_timeout = atof(env("LDL_CONNECT_TIMEOUT", "3"));
    c.backoff_min = atof(env("LDL_BACKOFF_MIN", "0.1"));
    c.backoff_max = atof(env("LDL_BACKOFF_MAX", "10"));
    c.max_conns = (unsigned)atoi(env("LDL_MAX_CONNS", "2"));
    c.max_pending = (unsigned)atoi(env("LDL_MAX_PENDING", "1024"));
    c.max_user_len = (unsigned)atoi(env("LDL_MAX_USER_LEN", "256"));
    pool = ldl_pool_new(loop, &c, &err);
    if (pool == NULL) {
        fprintf(stderr, "ldl_driver: %s\n", err);
        return 2;
    }
    ev_io_init(&in, stdin_cb, 0, EV_READ);
    ev_io_start(loop, &in);
    ev_run(loop, 0);
    ldl_pool_free(&pool);
    return 0;
}
