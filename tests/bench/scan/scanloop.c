/* Build: cc -O2 -D_GNU_SOURCE -Iscanners -o build/scanloop tests/bench/scan/scanloop.c
 * build/libportcullis.a \ -lev -lclamav -lssl -lcrypto -lyaml -lhiredis -lpthread Run:
 * build/scanloop MSGDIR DBFILE   (MSGDIR/DB as printed by tests/bench/scan/scan_pop3.py) */
/* libclamav's own rate via scanner_scan() on the same messages: T threads, each a share. */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "scanner.h"
static struct scanner *sc;
static char *bufs[10000];
static size_t lens[10000];
static int n, nt;
static void *run(void *a)
{
    long k = (long)a;
    struct scan_result r;
    for (int i = (int)k; i < n; i += nt) {
        scanner_scan(sc, bufs[i], lens[i], &r);
        if (r.verdict)
            printf("verdict %d\n", r.verdict);
    }
    return NULL;
}
int main(int argc, char **argv)
{
    struct scan_options o = {.database_dir = argv[2],
                             .tmpdir = "/dev/shm",
                             .max_scan_size = 25u << 20,
                             .max_file_size = 25u << 20,
                             .max_recursion = 16,
                             .max_files = 10000,
                             .scan_timeout_ms = 60000,
                             .disable_cache = true};
    char *err = NULL;
    sc = scanner_clamav_new(&o, &err);
    if (!sc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    DIR *d = opendir(argv[1]);
    struct dirent *e;
    size_t tot = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", argv[1], e->d_name);
        FILE *f = fopen(p, "rb");
        fseek(f, 0, SEEK_END);
        lens[n] = ftell(f);
        rewind(f);
        bufs[n] = malloc(lens[n]);
        if (fread(bufs[n], 1, lens[n], f) != lens[n])
            return 1;
        fclose(f);
        tot += lens[n];
        n++;
    }
    for (nt = 1; nt <= 2; nt++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        pthread_t th[2];
        for (long k = 0; k < nt; k++)
            pthread_create(&th[k], NULL, run, (void *)k);
        for (int k = 0; k < nt; k++)
            pthread_join(th[k], NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double el = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
        printf("scanner_scan threads=%d: %d msgs %.1f MB in %.2fs = %.0f msg/s %.1f MB/s\n", nt, n,
               tot / 1e6, el, n / el, tot / 1e6 / el);
    }
    scanner_destroy(&sc);
    return 0;
}
