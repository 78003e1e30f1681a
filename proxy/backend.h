/*
 * backend — which backend a user's session goes to, and what the process knows about each
 * backend's health.
 *
 * Selection is weighted rendezvous (highest-random-weight) hashing of the user name over the
 * healthy, non-draining backends of the session's protocol: every instance computes the same
 * order without talking to the others, the same user lands on the same server (its caches, its
 * IMAP state), and adding, removing or losing a backend moves only the users whose best choice it
 * was. Weights scale a backend's share (score = -weight / ln(u), u uniform in (0,1) from the
 * hash: the standard weighted form, whose shares are proportional to the weights).
 *
 * Health lives outside the config snapshot, in a process-wide table keyed by backend name, so
 * that it survives reloads; workers read it with atomics, the main thread's active checks and the
 * workers' connect failures write it.
 */
#ifndef PORTCULLIS_BACKEND_H
#define PORTCULLIS_BACKEND_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define BACKEND_MAX 256 /* distinct backend names over the process's life */

struct backend_state {
    char name[72];                  /* CFG_NAME_MAX + 1 */
    atomic_bool up;                 /* takes new sessions (health); starts true */
    atomic_uint fails;              /* consecutive failures (active checks and connects) */
    atomic_uint oks;                /* consecutive successful active checks while down */
    atomic_uint active;             /* live sessions on this backend, this process */
    atomic_ullong connect_failures; /* total, for metrics */
    atomic_bool admin_drain; /* drained with portcullis-ctl (Redis), on top of the config's */
};

/* The names drained by an administrator right now (every other backend is undrained). */
void backend_set_admin_drained(const char **names, size_t n);

/* The state record of a backend name (created on first use, never freed; NULL only when more
 * than BACKEND_MAX names were ever configured). Thread-safe. */
struct backend_state *backend_state_get(const char *name);

/* Candidates for `user` among cfg's backends of `proto`, best first: healthy and not draining,
 * in rendezvous order. Writes up to `max` indexes into cfg->backends; returns how many. If no
 * backend is healthy, unhealthy (but not draining) ones are returned in the same order: a pool
 * that is entirely down is more likely misjudged than really down, and the client gets a prompt
 * error from the connect anyway. */
size_t backend_candidates(const struct config *cfg, struct backend_state *const *states,
                          enum cfg_proto proto, const char *user, size_t *out, size_t max);

/* The rendezvous score of (user, backend name, weight); exposed for tests. */
double backend_score(const char *user, const char *name, unsigned weight);

/* Passive health: a connect to this backend failed / succeeded. `fall` consecutive failures
 * mark it down (logged once). */
void backend_note_connect(struct backend_state *st, bool ok, unsigned fall);

#endif
