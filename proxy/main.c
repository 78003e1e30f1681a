/*
 * main — command line, configuration, workers and the main thread's own loop (signals).
 * No protocol code lives here.
 *
 *   portcullis -c FILE        run in the foreground (systemd style), logs to stderr
 *   portcullis -t -c FILE     check the configuration (and load its certificates) and exit
 *
 * SIGHUP reloads the configuration: a new snapshot and new TLS contexts are built and published
 * only if everything validates; sessions in flight keep theirs. Keys marked restart-only in the
 * schema (listeners, workers, user, redis connection, ...) are not applied: each changed one is
 * logged as event=reload_partial. The log file is reopened. SIGTERM/SIGINT stop the process.
 *
 * Under systemd (Type=notify) the main thread reports READY=1 once listening, RELOADING=1 and
 * READY=1 around a reload, STOPPING=1 when the drain starts. sd_notify() is one datagram to
 * $NOTIFY_SOCKET, and does nothing when that is unset.
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "cfg_walk.h"
#include "config.h"
#include "log.h"
#include "admin.h"
#include "msgscan.h"
#include "health.h"
#include "metrics_proc.h"
#include "privdrop.h"
#include "route_maps.h"
#include "runtime.h"
#include "tls.h"
#include "version.h"
#include "worker.h"

static const char *config_path = "/etc/portcullis/portcullis.yaml";

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis [-t] [-c FILE]\n"
               "  -c, --config FILE  configuration (default /etc/portcullis/portcullis.yaml)\n"
               "  -t, --test         check the configuration and exit\n"
               "  -V, --version      print the version and exit\n"
               "  -h, --help         print this help and exit\n"
               "Signals: HUP reloads, TERM/INT drain and stop, USR1 reopens the log file.\n"
               "See portcullis(8), portcullis.yaml(5), portcullis-ctl(8).\n");
}

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"test", no_argument, NULL, 't'},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static struct rt *load(const char *path, char **error_r)
{
    struct config *cfg = cfg_load(path, error_r);
    if (!cfg)
        return NULL;
    struct rt *rt = rt_build(cfg, error_r);
    cfg_unref(&cfg);
    return rt;
}

/* What a reload cannot apply is said, key by key: a changed listener `bind` that silently kept
 * the old address would look like a reload that worked. At most this many lines per reload. */
#define RELOAD_PARTIAL_MAX 32

static void restart_change(void *arg, const char *path, const struct cfg_key *k, const void *a,
                           const void *b)
{
    unsigned *n = arg;
    if ((*n)++ >= RELOAD_PARTIAL_MAX)
        return;
    if (k->type == CFG_SEQ) {
        log_write(LOG_WARN,
                  "event=reload_partial key=%s change=entries_added_or_removed "
                  "note=\"needs a restart; the running entries stay\"",
                  path);
        return;
    }
    char va[512], vb[512], qa[600], qb[600];
    bool secret = k->flags & CFG_SECRET;
    log_write(LOG_WARN,
              "event=reload_partial key=%s running=%s file=%s note=\"needs a restart; the "
              "running value stays\"",
              path,
              log_qs(qa, sizeof qa, secret ? "(secret)" : cfg_walk_value(k, a, va, sizeof va)),
              log_qs(qb, sizeof qb, secret ? "(secret)" : cfg_walk_value(k, b, vb, sizeof vb)));
}

/* log.file / log.level / log.syslog take effect at once. The file is opened again even when
 * its name did not change: SIGHUP after a rotation (logrotate's postrotate) moves to the new
 * file, as SIGUSR1 does. On failure the old destination stays, and the log says so. */
static void reload_log(const struct config *cfg)
{
    log_use_syslog(cfg->log_syslog);
    if (!log_open((enum log_level)cfg->log_level, cfg->log_file)) {
        char q[300], e[160];
        log_write(LOG_ERROR,
                  "event=reload_partial key=log.file file=%s error=%s note=\"cannot open it; "
                  "lines go on to the old destination\"",
                  log_qs(q, sizeof q, cfg->log_file), log_qs(e, sizeof e, strerror(errno)));
    }
}

/* SIGHUP and `portcullis-ctl reload` (POST /reload on the admin listener), main thread. On
 * failure `why` gets the reason and the old configuration stays. */
static bool reload(const char *source, char *why, size_t cap)
{
    /* MONOTONIC_USEC lets systemd match this message to the reload it asked for (sd_notify(3)). */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)now.tv_sec * 1000000ULL +
                   (unsigned long long)now.tv_nsec / 1000);
    char *err = NULL;
    struct rt *cur = rt_current();
    struct rt *rt = load(config_path, &err);
    if (!rt) {
        char q[LOG_LINE_MAX / 2];
        log_write(LOG_ERROR,
                  "event=reload_failed source=%s error=%s note=\"old configuration kept\"", source,
                  log_qs(q, sizeof q, err ? err : "?"));
        snprintf(why, cap, "%s", err ? err : "?");
        free(err);
        route_maps_reload(cur->cfg); /* so do routing maps (issue 17), off the loop */
        rt_unref(&cur);
        metrics_config_reloaded(false);
        msgscan_reload(NULL); /* signatures still reload, with the scan settings in use */
        sd_notify(0, "READY=1\nSTATUS=reload failed, old configuration kept");
        return false;
    }
    reload_log(rt->cfg); /* first: what this reload says goes to the new destination */
    unsigned changes = 0;
    cfg_walk_diff(cfg_schema(), cur->cfg, rt->cfg, CFG_RESTART, restart_change, &changes);
    if (changes > RELOAD_PARTIAL_MAX)
        log_write(LOG_WARN, "event=reload_partial more=%u note=\"more restart-only keys changed\"",
                  changes - RELOAD_PARTIAL_MAX);
    msgscan_reload(rt->cfg);    /* off the loop; the result is logged when it is done */
    route_maps_reload(rt->cfg); /* issue 17: a loader thread; a bad map keeps the old one */
    char instance[128];
    snprintf(instance, sizeof instance, "%s", rt->cfg->instance);
    rt_publish(rt);
    rt_unref(&cur);
    metrics_config_reloaded(true);
    log_write(LOG_INFO, "event=reloaded source=%s instance=%s config=%s", source, LOG_QS(instance),
              config_path);
    sd_notify(0, "READY=1\nSTATUS=running");
    return true;
}

static void on_reload(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    char why[512];
    reload("sighup", why, sizeof why);
}

static bool admin_reload(char *why, size_t cap)
{
    return reload("admin", why, cap);
}

/* SIGTERM/SIGINT: drain. Workers stop accepting and end each session at its next idle point
 * (IMAP clients get "* BYE", in-flight FETCH/RETR responses finish); the process exits when no
 * session is left or limits.drain_timeout has passed. A second signal stops at once. */
static struct worker *g_workers;
static unsigned g_nworkers;
static ev_timer drain_timer;
static ev_tstamp drain_deadline;
static bool draining;

static void drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    unsigned left = atomic_load(&worker_connections);
    if (left == 0 || ev_now(loop) >= drain_deadline) {
        if (left)
            log_write(LOG_WARN, "event=drain_timeout sessions_left=%u", left);
        ev_break(loop, EVBREAK_ALL);
    }
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    if (draining) {
        log_write(LOG_INFO, "event=stopping signal=%d note=\"second signal: now\"", w->signum);
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    draining = true;
    sd_notify(0, "STOPPING=1");
    struct rt *rt = rt_current();
    double timeout = rt ? (double)rt->cfg->limits.drain_timeout_ms / 1000.0 : 0;
    rt_unref(&rt);
    log_write(LOG_INFO, "event=stopping signal=%d drain_timeout=%.1f sessions=%u", w->signum,
              timeout, atomic_load(&worker_connections));
    admin_set_healthy(false, "draining");
    for (unsigned i = 0; i < g_nworkers; i++)
        worker_drain(&g_workers[i]);
    drain_deadline = ev_now(loop) + timeout;
    ev_timer_init(&drain_timer, drain_poll, 0.05, 0.05);
    ev_timer_start(loop, &drain_timer);
}

static void on_usr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    if (!log_reopen())
        log_write(LOG_ERROR, "event=log_reopen_failed error=%s", LOG_QS(strerror(errno)));
}

/* Enough descriptors for max_connections sessions (client + backend each) plus slack. */
static bool raise_nofile(unsigned max_conn)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return false;
    rlim_t want = (rlim_t)max_conn * 2 + 256;
    if (rl.rlim_cur >= want)
        return true;
    rl.rlim_cur = want <= rl.rlim_max ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want) {
        log_write(LOG_WARN,
                  "event=nofile_limit wanted=%llu got=%llu note=\"limits.max_connections may "
                  "not be reachable; raise LimitNOFILE\"",
                  (unsigned long long)want, (unsigned long long)rl.rlim_cur);
        return false;
    }
    return true;
}

/* `-t`: what start checks after loading the file, except binding. The privileges are really
 * dropped (the process exits right after), so the signature files and scan.tmpdir are checked
 * as the user that will scan, and the engine is built as start builds it (as long as start
 * takes). Lines below warn are not wanted on a check's output. */
static bool check_start(const struct config *cfg, char **error_r)
{
    log_set_level(LOG_WARN);
    if (!privdrop(cfg, error_r))
        return false;
    if (!msgscan_check(cfg, error_r)) {
        char *e = *error_r;
        if (asprintf(error_r, "scanner: %s", e ? e : "cannot start") < 0)
            *error_r = NULL;
        free(e);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    bool test_only = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tVh", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'V':
            printf("portcullis %s\n", PORTCULLIS_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) { /* `portcullis foo.yaml` would otherwise run the default file */
        fprintf(stderr, "portcullis: unexpected argument '%s' (the file goes after -c)\n",
                argv[optind]);
        usage(stderr);
        return 2;
    }
    tls_global_init();
    char *err = NULL;
    struct rt *rt = load(config_path, &err);
    if (!rt) {
        fprintf(stderr, "portcullis: %s\n", err ? err : "cannot load configuration");
        free(err);
        return 1;
    }
    /* Routing maps (issue 17) load here, before any worker: a bad map is a start-up error. */
    if (!route_maps_load(rt->cfg, &err)) {
        fprintf(stderr, "portcullis: %s\n", err ? err : "cannot load the routing maps");
        free(err);
        rt_unref(&rt);
        route_maps_stop();
        return 1;
    }
    if (test_only) {
        route_maps_stop();
        bool ok = check_start(rt->cfg, &err);
        rt_unref(&rt);
        if (!ok) {
            fprintf(stderr, "portcullis: %s\n", err ? err : "the configuration cannot start");
            free(err);
            return 1;
        }
        printf("portcullis: configuration %s is valid\n", config_path);
        return 0;
    }
    const struct config *cfg = rt->cfg;
    metrics_proc_start(PORTCULLIS_VERSION);
    log_use_syslog(cfg->log_syslog);
    if (!log_open((enum log_level)cfg->log_level, cfg->log_file)) {
        fprintf(stderr, "portcullis: cannot open log file %s: %s\n", cfg->log_file,
                strerror(errno));
        rt_unref(&rt);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Workers must not receive process signals: block them before creating threads; the main
     * loop's ev_signal watchers unblock what they handle. */
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGABRT);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &all, &old);
    /* Every line from here on goes through the writer thread; at exit (every path) it writes
     * what is queued. */
    if (log_writer_start(cfg->log_queue_size))
        atexit(log_writer_stop);
    else
        log_write(LOG_WARN, "event=log_writer_failed note=\"lines are written synchronously\"");

    raise_nofile(cfg->limits.max_connections);
    /* Memory holds passwords in flight and mail being scanned: never write it to a core file. */
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    unsigned nworkers = cfg->workers ? cfg->workers : 1;
    /* issue 16: every start-up failure below goes through `fail`, which gives back what was
     * made (sockets, loops, the snapshot, the message): LeakSanitizer finds nothing at exit. */
    struct worker *workers = calloc(nworkers, sizeof *workers);
    unsigned nbound = 0, nstarted = 0;
    struct ev_loop *loop = NULL;
    bool scanner_up = false;
    if (!workers)
        goto fail;
    for (unsigned i = 0; i < nworkers; i++) {
        workers[i].id = (int)i;
        nbound = i + 1; /* a half-bound worker is unbound too */
        if (!worker_bind(&workers[i], cfg, &err)) {
            fprintf(stderr, "portcullis: %s\n", err ? err : "cannot bind");
            log_write(LOG_ERROR, "event=bind_failed error=%s", LOG_QS(err ? err : "?"));
            goto fail;
        }
    }
    loop = ev_default_loop(EVFLAG_AUTO);
    admin_set_reload(admin_reload);
    if (!admin_start(loop, cfg, &err)) {
        fprintf(stderr, "portcullis: %s\n", err ? err : "cannot bind the admin listener");
        log_write(LOG_ERROR, "event=bind_failed error=%s", LOG_QS(err ? err : "?"));
        goto fail;
    }
    /* Everything privileged is done: sockets are bound, files opened. */
    if (!privdrop(cfg, &err)) {
        fprintf(stderr, "portcullis: %s\n", err ? err : "cannot drop privileges");
        log_write(LOG_ERROR, "event=privdrop_failed error=%s", LOG_QS(err ? err : "?"));
        goto fail;
    }
    /* After the privilege drop: the scanner's private work dir must be the scanning user's. */
    if (!msgscan_process_init(cfg, loop, &err)) {
        fprintf(stderr, "portcullis: scanner: %s\n", err ? err : "cannot start");
        log_write(LOG_ERROR, "event=scanner_failed error=%s", LOG_QS(err ? err : "?"));
        goto fail;
    }
    scanner_up = true;
    rt_publish(rt_ref(rt));
    g_workers = workers;
    g_nworkers = nworkers;
    for (unsigned i = 0; i < nworkers; i++) {
        if (!worker_start(&workers[i])) {
            log_write(LOG_ERROR, "event=thread_failed");
            goto fail;
        }
        nstarted = i + 1;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++)
        log_write(LOG_INFO, "event=listening name=%s bind=%s protocol=%s tls=%s",
                  cfg->listeners[i].name, cfg->listeners[i].bind,
                  cfg_proto_name(cfg->listeners[i].protocol),
                  cfg->listeners[i].tls == CFG_TLS_IMPLICIT   ? "implicit"
                  : cfg->listeners[i].tls == CFG_TLS_STARTTLS ? "starttls"
                                                              : "none");
    log_write(LOG_INFO, "event=started version=%s instance=%s workers=%u config=%s",
              PORTCULLIS_VERSION, LOG_QS(cfg->instance), nworkers, config_path);
    rt_unref(&rt);
    admin_set_healthy(true, "ok");
    sd_notify(0, "READY=1\nSTATUS=running");

    ev_signal sig_hup, sig_term, sig_int, sig_usr1;
    ev_signal_init(&sig_hup, on_reload, SIGHUP);
    ev_signal_init(&sig_term, on_stop, SIGTERM);
    ev_signal_init(&sig_int, on_stop, SIGINT);
    ev_signal_init(&sig_usr1, on_usr1, SIGUSR1);
    ev_signal_start(loop, &sig_hup);
    ev_signal_start(loop, &sig_term);
    ev_signal_start(loop, &sig_int);
    ev_signal_start(loop, &sig_usr1);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    health_start(loop);
    ev_run(loop, 0);
    health_stop();
    admin_stop();

    for (unsigned i = 0; i < nworkers; i++)
        worker_stop(&workers[i]);
    free(workers);
    msgscan_process_fini(); /* after the workers: no session holds a scan any more */
    route_maps_stop();
    struct rt *last = rt_current();
    rt_publish(NULL);
    rt_unref(&last);
    log_write(LOG_INFO, "event=stopped");
    return 0;

fail:
    admin_stop();
    for (unsigned i = 0; i < nstarted; i++)
        worker_stop(&workers[i]);
    for (unsigned i = nstarted; i < nbound; i++)
        worker_unbind(&workers[i]);
    free(workers);
    if (scanner_up)
        msgscan_process_fini();
    route_maps_stop();
    struct rt *pub = rt_current();
    rt_publish(NULL);
    rt_unref(&pub);
    rt_unref(&rt);
    free(err);
    if (loop)
        ev_loop_destroy(loop);
    return 1;
}
