/*
 * pcbench — entry point and the small helpers the subcommands share (see pcbench.h).
 */
#include "pcbench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

double pcb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void pcb_raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (geteuid() == 0 && want > 0 && (rlim_t)want > rl.rlim_max)
        rl.rlim_max = (rlim_t)want;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void pcb_lat_add(struct pcb_lat *l, double secs)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        double *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return; /* a lost sample only thins the percentiles */
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = secs;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void pcb_lat_sort(struct pcb_lat *l)
{
    if (l->n > 1)
        qsort(l->v, l->n, sizeof *l->v, cmp_double);
}

double pcb_lat_pct(struct pcb_lat *l, double pct)
{
    if (l->n == 0)
        return 0;
    size_t i = (size_t)(pct / 100.0 * (double)(l->n - 1) + 0.5);
    if (i >= l->n)
        i = l->n - 1;
    return l->v[i];
}

static void usage(void)
{
    fputs("usage: pcbench run|serve|scanrate [options]   (pcbench SUBCOMMAND --help)\n", stderr);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    if (strcmp(argv[1], "run") == 0)
        return pcb_client_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "serve") == 0)
        return pcb_serve_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "scanrate") == 0)
        return pcb_scanrate_main(argc - 1, argv + 1);
    usage();
    return 2;
}
