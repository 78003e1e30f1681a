/*
 * pcbench — the load generator of `make bench` (issue 8): one process, one libev loop, many
 * IMAP/POP3 client connections over TLS. Subcommands:
 *
 *   pcbench run   ...   drive sessions against a server and report (pcb_client.c)
 *   pcbench serve ...   a tiny plaintext IMAP backend for the idle-scale run (pcb_serve.c):
 *                       Dovecot's process-per-session costs ~5 MB per idle session
 *   pcbench scanrate .. libclamav's own scan rate over a directory of messages (pcb_scanrate.c)
 *
 * A session counts as work only when every step of its script was answered OK (and, for FETCH
 * and RETR, when every message announced was read to its last byte): failed sessions go to the
 * error counters, never to the rates.
 */
#ifndef PCBENCH_H
#define PCBENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int pcb_client_main(int argc, char **argv);
int pcb_serve_main(int argc, char **argv);
int pcb_scanrate_main(int argc, char **argv);

/* Shared helpers (pcbench.c). */
double pcb_now(void);
/* Raise RLIMIT_NOFILE to the hard limit (or `want` when running as root). */
void pcb_raise_nofile(long want);
/* Latency samples in seconds; percentiles sort the array in place. */
struct pcb_lat {
    double *v;
    size_t n, cap;
};
void pcb_lat_add(struct pcb_lat *l, double secs);
double pcb_lat_pct(struct pcb_lat *l, double pct); /* call after pcb_lat_sort */
void pcb_lat_sort(struct pcb_lat *l);

#endif
