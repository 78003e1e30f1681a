/*
 * backend — rendezvous selection and the process-wide backend health table (see backend.h).
 */
#include "backend.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

static struct backend_state states[BACKEND_MAX];
static size_t nstates;
static pthread_mutex_t states_lock = PTHREAD_MUTEX_INITIALIZER;

struct backend_state *backend_state_get(const char *name)
{
    struct backend_state *found = NULL;
    pthread_mutex_lock(&states_lock);
    for (size_t i = 0; i < nstates && !found; i++)
        if (strcmp(states[i].name, name) == 0)
            found = &states[i];
    if (!found && nstates < BACKEND_MAX) {
        found = &states[nstates++];
        snprintf(found->name, sizeof found->name, "%s", name);
        atomic_store(&found->up, true);
    }
    pthread_mutex_unlock(&states_lock);
    return found;
}

/* 64-bit FNV-1a over user, a 0 separator and the backend name, finished with the splitmix64
 * mixer: FNV alone clusters for inputs that differ only in their last bytes (user1, user2 …). */
static uint64_t hash64(const char *user, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)user; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    h = (h ^ 0) * 0x100000001b3ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

double backend_score(const char *user, const char *name, unsigned weight)
{
    /* u in (0,1): 53 random bits, offset by half a step so that log(u) is finite. */
    double u = ((double)(hash64(user ? user : "", name) >> 11) + 0.5) / 9007199254740992.0;
    return -(double)(weight ? weight : 1) / log(u);
}

size_t backend_candidates(const struct config *cfg, struct backend_state *const *st,
                          enum cfg_proto proto, const char *user, size_t *out, size_t max)
{
    double score[BACKEND_MAX];
    size_t n = 0;
    if (max > BACKEND_MAX)
        max = BACKEND_MAX;
    for (int pass = 0; pass < 2 && n == 0; pass++) {
        for (size_t i = 0; i < cfg->nbackends && i < BACKEND_MAX; i++) {
            const struct cfg_backend *b = &cfg->backends[i];
            if (b->protocol != proto || b->drain ||
                (st && st[i] && atomic_load(&st[i]->admin_drain)))
                continue;
            bool up = !st || !st[i] || atomic_load(&st[i]->up);
            if (pass == 0 && !up)
                continue;
            double sc = backend_score(user, b->server ? b->server : b->name, b->weight);
            /* insertion into the ranked list */
            size_t j = n < max ? n : max;
            while (j > 0 && score[j - 1] < sc) {
                if (j < max) {
                    score[j] = score[j - 1];
                    out[j] = out[j - 1];
                }
                j--;
            }
            if (j < max) {
                score[j] = sc;
                out[j] = i;
                if (n < max)
                    n++;
            }
        }
    }
    return n;
}

void backend_note_connect(struct backend_state *st, bool ok, unsigned fall)
{
    if (!st)
        return;
    if (ok) {
        atomic_store(&st->fails, 0);
        return;
    }
    atomic_fetch_add(&st->connect_failures, 1);
    unsigned f = atomic_fetch_add(&st->fails, 1) + 1;
    if (f >= (fall ? fall : 1) && atomic_exchange(&st->up, false))
        log_write(LOG_WARN, "event=backend_down backend=%s reason=connect_failures count=%u",
                  st->name, f);
}

void backend_set_admin_drained(const char **names, size_t n)
{
    pthread_mutex_lock(&states_lock);
    for (size_t i = 0; i < nstates; i++) {
        bool d = false;
        for (size_t k = 0; k < n && !d; k++)
            d = strcmp(states[i].name, names[k]) == 0;
        if (atomic_exchange(&states[i].admin_drain, d) != d)
            log_write(LOG_INFO, "event=backend_%s backend=%s by=portcullis-ctl",
                      d ? "drained" : "undrained", states[i].name);
    }
    pthread_mutex_unlock(&states_lock);
}
