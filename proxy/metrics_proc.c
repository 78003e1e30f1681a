/*
 * metrics_proc — see metrics_proc.h.
 */
#include "metrics_proc.h"

#include <dirent.h>
#include <ev.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

static char version_label[64] = "unknown";
static double start_time;            /* seconds since the epoch */
static atomic_int reload_ok = 1;     /* the last reload applied */
static atomic_llong reload_ok_at_ms; /* when a reload (or the start) last applied */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The kernel's start time of this process (what process_start_time_seconds means in every
 * client library): /proc/self/stat field 22 in clock ticks since boot, plus btime. Falls back
 * to now, which at start is within milliseconds of it. */
static double proc_start_time(void)
{
    double t = now_s();
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return t;
    char line[1024];
    bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    /* The command name (field 2) may hold spaces and parentheses: count from the last ')'. */
    char *p = got ? strrchr(line, ')') : NULL;
    unsigned long long ticks = 0;
    for (int field = 2; p && field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (p && field == 21)
            ticks = strtoull(p + 1, NULL, 10);
    }
    unsigned long long btime = 0;
    f = fopen("/proc/stat", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &btime) == 1)
            break;
    if (f)
        fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (!ticks || !btime || hz <= 0)
        return t;
    return (double)btime + (double)ticks / (double)hz;
}

void metrics_proc_start(const char *version)
{
    char esc[sizeof version_label];
    snprintf(version_label, sizeof version_label, "%s", metrics_label(esc, sizeof esc, version));
    start_time = proc_start_time();
    metrics_config_reloaded(true);
}

void metrics_config_reloaded(bool ok)
{
    atomic_store(&reload_ok, ok ? 1 : 0);
    if (ok)
        atomic_store(&reload_ok_at_ms, (long long)(now_s() * 1000.0));
}

/* Open descriptors, the directory's own excluded. */
static long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    const struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

static void header(struct buf *o, const char *name, const char *type, const char *help)
{
    buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_proc_render(struct buf *o)
{
    header(o, "portcullis_build_info", "gauge",
           "Always 1; the labels say which build runs and the libraries it was built with.");
    buf_printf(o, "portcullis_build_info{version=\"%s\",openssl=\"%s\",libev=\"%d.%d\"} 1\n",
               version_label, OpenSSL_version(OPENSSL_VERSION_STRING), ev_version_major(),
               ev_version_minor());
    header(o, "portcullis_config_last_reload_successful", "gauge",
           "1 if the last configuration reload (or the start) applied; 0: the old "
           "configuration is still in use.");
    buf_printf(o, "portcullis_config_last_reload_successful %d\n", atomic_load(&reload_ok));
    header(o, "portcullis_config_last_reload_success_timestamp_seconds", "gauge",
           "When a configuration last applied (start or reload).");
    buf_printf(o, "portcullis_config_last_reload_success_timestamp_seconds %.3f\n",
               (double)atomic_load(&reload_ok_at_ms) / 1000.0);

    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        header(o, "process_cpu_seconds_total", "counter", "User and system CPU time spent.");
        buf_printf(o, "process_cpu_seconds_total %.6f\n",
                   (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    }
    unsigned long long vsz = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    bool statm = f && fscanf(f, "%llu %llu", &vsz, &rss) == 2;
    if (f)
        fclose(f);
    if (statm) {
        unsigned long long page = (unsigned long long)sysconf(_SC_PAGESIZE);
        header(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        buf_printf(o, "process_resident_memory_bytes %llu\n", rss * page);
        header(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        buf_printf(o, "process_virtual_memory_bytes %llu\n", vsz * page);
    }
    long fds = open_fds();
    if (fds >= 0) {
        header(o, "process_open_fds", "gauge", "Open file descriptors.");
        buf_printf(o, "process_open_fds %ld\n", fds);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        header(o, "process_max_fds", "gauge", "Limit of open file descriptors (RLIMIT_NOFILE).");
        buf_printf(o, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
    header(o, "process_start_time_seconds", "gauge",
           "Start time of the process since the epoch, in seconds.");
    buf_printf(o, "process_start_time_seconds %.2f\n", start_time);
}
