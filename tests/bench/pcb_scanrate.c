/*
 * pcb_scanrate — `pcbench scanrate -D DBDIR -j THREADS [-s SECS] MSGDIR`: libclamav's own scan
 * rate over the messages in MSGDIR (one file per message), the reference for the "scanning on"
 * target. Each thread scans messages from memory with cl_scanmap_callback, with the same virtual
 * "Received:" first line and scan options as Portcullis' scanner (scanners/clamav.c), and
 * libclamav's clean-file cache off so repeated passes scan for real. Passes over the whole set
 * repeat until SECS have passed (at least one).
 *
 * -c keeps libclamav's clean-file cache on (its default, and Portcullis' scan.engine_cache) and
 * makes exactly one pass: the cold-cache reference for Portcullis run with its defaults. The
 * cache costs an MD5 per scanned object and only pays off on content seen before, which a
 * second pass would be.
 *
 * Output: a summary on stderr and "RESULT {json}" on stdout.
 */
#include <clamav.h>
#include <dirent.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "pcbench.h"

static const char PREFIX[] = "Received: by portcullis\r\n";
#define PREFIX_LEN (sizeof PREFIX - 1)

struct msg {
    char *data;
    size_t len;
};

struct sr {
    struct cl_engine *engine;
    struct msg *msgs;
    size_t nmsgs;
    double deadline;
    atomic_ulong next; /* message counter across passes */
    atomic_ulong scans;
    atomic_ulong bytes;
    atomic_ulong infected;
    atomic_ulong errors;
    unsigned long min_scans; /* one full pass */
};

struct handle {
    const struct msg *m;
};

static off_t pread_cb(void *h, void *out, size_t count, off_t offset)
{
    const struct msg *m = ((struct handle *)h)->m;
    size_t total = PREFIX_LEN + m->len, off = (size_t)offset, done = 0;
    if (off >= total)
        return 0;
    if (count > total - off)
        count = total - off;
    if (off < PREFIX_LEN) {
        size_t n = PREFIX_LEN - off < count ? PREFIX_LEN - off : count;
        memcpy(out, PREFIX + off, n);
        done = n;
        off += n;
    }
    if (done < count)
        memcpy((char *)out + done, m->data + (off - PREFIX_LEN), count - done);
    return (off_t)count;
}

static void *worker(void *arg)
{
    struct sr *s = arg;
    struct cl_scan_options so = {0};
    so.parse = ~0u;
    so.general = CL_SCAN_GENERAL_HEURISTICS;
    so.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
    for (;;) {
        unsigned long i = atomic_fetch_add(&s->next, 1);
        if (i >= s->min_scans && pcb_now() >= s->deadline)
            break;
        struct handle h = {&s->msgs[i % s->nmsgs]};
        cl_fmap_t *map = cl_fmap_open_handle(&h, 0, PREFIX_LEN + h.m->len, pread_cb, 0);
        if (!map) {
            atomic_fetch_add(&s->errors, 1);
            continue;
        }
        const char *vir = NULL;
        unsigned long scanned = 0;
        cl_error_t rc = cl_scanmap_callback(map, NULL, &vir, &scanned, s->engine, &so, NULL);
        cl_fmap_close(map);
        if (rc == CL_VIRUS)
            atomic_fetch_add(&s->infected, 1);
        else if (rc != CL_CLEAN)
            atomic_fetch_add(&s->errors, 1);
        atomic_fetch_add(&s->scans, 1);
        atomic_fetch_add(&s->bytes, h.m->len);
    }
    return NULL;
}

static int load_dir(struct sr *s, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    size_t cap = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        struct stat st;
        if (!f)
            continue;
        if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
            fclose(f);
            continue;
        }
        if (s->nmsgs == cap) {
            cap = cap ? cap * 2 : 256;
            struct msg *m = realloc(s->msgs, cap * sizeof *m);
            if (!m) {
                fclose(f);
                closedir(d);
                return -1;
            }
            s->msgs = m;
        }
        struct msg *m = &s->msgs[s->nmsgs];
        m->len = (size_t)st.st_size;
        m->data = malloc(m->len ? m->len : 1);
        if (!m->data || fread(m->data, 1, m->len, f) != m->len) {
            free(m->data);
            fclose(f);
            continue;
        }
        fclose(f);
        s->nmsgs++;
    }
    closedir(d);
    return 0;
}

int pcb_scanrate_main(int argc, char **argv)
{
    const char *db = NULL;
    int threads = 1, ch, cache = 0;
    double secs = 5;
    while ((ch = getopt(argc, argv, "cD:j:s:")) != -1) {
        switch (ch) {
        case 'c':
            cache = 1;
            break;
        case 'D':
            db = optarg;
            break;
        case 'j':
            threads = atoi(optarg);
            break;
        case 's':
            secs = atof(optarg);
            break;
        default:
            db = NULL;
            optind = argc + 1;
        }
    }
    if (!db || optind != argc - 1 || threads < 1 || threads > 64) {
        fputs("usage: pcbench scanrate -D DBDIR [-c] [-j THREADS] [-s SECS] MSGDIR\n", stderr);
        return 2;
    }
    static struct sr S;
    struct sr *s = &S;
    if (load_dir(s, argv[optind]) < 0 || s->nmsgs == 0) {
        fprintf(stderr, "pcbench scanrate: no messages in %s\n", argv[optind]);
        return 1;
    }
    char tmpl[] = "/tmp/pcbench-scan.XXXXXX";
    char *tmp = mkdtemp(tmpl);
    unsigned sigs = 0;
    if (!tmp || cl_init(CL_INIT_DEFAULT) != CL_SUCCESS || !(s->engine = cl_engine_new())) {
        fputs("pcbench scanrate: libclamav init failed\n", stderr);
        return 1;
    }
    if (!cache)
        cl_engine_set_num(s->engine, CL_ENGINE_DISABLE_CACHE, 1);
    else
        secs = 0; /* one pass: a second would be answered from the cache */
    cl_engine_set_num(s->engine, CL_ENGINE_MAX_SCANSIZE, 100LL << 20);
    cl_engine_set_num(s->engine, CL_ENGINE_MAX_FILESIZE, 26LL << 20);
    cl_engine_set_str(s->engine, CL_ENGINE_TMPDIR, tmp);
    cl_error_t rc = cl_load(db, s->engine, &sigs, CL_DB_STDOPT);
    if (rc == CL_SUCCESS)
        rc = cl_engine_compile(s->engine);
    if (rc != CL_SUCCESS) {
        fprintf(stderr, "pcbench scanrate: %s: %s\n", db, cl_strerror(rc));
        return 1;
    }
    s->min_scans = s->nmsgs;
    double t0 = pcb_now();
    s->deadline = t0 + secs;
    pthread_t tid[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, worker, s);
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    double el = pcb_now() - t0;
    rmdir(tmp);
    unsigned long scans = atomic_load(&s->scans), bytes = atomic_load(&s->bytes);
    fprintf(stderr,
            "pcbench scanrate: %d threads, %zu messages, %lu scans (%lu infected, %lu errors) "
            "in %.2f s: %.1f scans/s, %.1f MB/s\n",
            threads, s->nmsgs, scans, atomic_load(&s->infected), atomic_load(&s->errors), el,
            (double)scans / el, (double)bytes / 1e6 / el);
    printf(
        "RESULT {\"mode\":\"scanrate\",\"cache\":%d,\"threads\":%d,\"messages\":%zu,\"scans\":%lu,"
        "\"infected\":%lu,\"errors\":%lu,\"elapsed\":%.6f,\"scans_per_s\":%.3f,"
        "\"mb_per_s\":%.3f}\n",
        cache, threads, s->nmsgs, scans, atomic_load(&s->infected), atomic_load(&s->errors), el,
        (double)scans / el, (double)bytes / 1e6 / el);
    cl_engine_free(s->engine);
    return 0;
}
