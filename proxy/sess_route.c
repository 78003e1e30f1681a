/*
 * sess_route — where a session's backend connection goes, and getting it there.
 *
 * Routing: Redis' answer (override > live session > recent session, sess_policy.c) goes before
 * the user's rendezvous order over the healthy backends (backend.c); a transparent listener
 * takes the connection's original destination instead (transparent.c).
 *
 * Connecting is the dialer's (backend.c: socket, source bind, connect timeout, PROXY header,
 * implicit TLS, failure log lines, health). This file fills in the dialer's target from the
 * session, fails over once to the user's next candidate when the connect fails or times out —
 * not when TLS fails: another server would not fix a certificate — and hands the outcome to the
 * protocol's login script as backend_event(s, SESS_EV_DIALED), always from a later loop turn
 * than the call that started the dial.
 */
#include <string.h>

#include "backend.h"
#include "sess_lookup.h"
#include "sess_policy.h"
#include "session.h"
#include "worker.h"

static const char *server_of(const struct cfg_backend *b)
{
    return b->server ? b->server : b->name;
}

/* The pool member of this session's protocol that Redis' answer (or a routing lookup) names:
 * a backend name (of either protocol: a user's POP3 session follows their IMAP session's
 * server) or a server. */
int sess_route_pool_index(const struct session *s, const char *name)
{
    const struct config *cfg = s->cfg;
    const char *srv = name;
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (strcmp(cfg->backends[i].name, name) == 0)
            srv = server_of(&cfg->backends[i]);
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (cfg->backends[i].protocol == s->listener->protocol &&
            strcmp(server_of(&cfg->backends[i]), srv) == 0)
            return (int)i;
    return -1;
}

/* Redis' routing (override > live session > recent session) goes before the hash order. */
static void apply_route(struct session *s)
{
    bool pinned = false;
    const char *kind = NULL;
    const char *want = sess_route_backend(s, &pinned, &kind);
    if (!want)
        return;
    int idx = sess_route_pool_index(s, want);
    const struct cfg_backend *b = idx >= 0 ? &s->cfg->backends[idx] : NULL;
    const struct backend_state *st = b ? s->rt->be_state[idx] : NULL;
    /* A drain (the file's, or portcullis-ctl's through Redis) beats every route: "no new
     * sessions" holds for users with an override or an affinity there too. */
    bool drained = b && (b->drain || (st && atomic_load(&st->admin_drain)));
    bool usable = b && !drained && (pinned || !st || atomic_load(&st->up));
    if (!usable) {
        sess_log(s, LOG_INFO, "event=route_ignored kind=%s backend=%s reason=%s", kind, want,
                 !b        ? "not_in_pool"
                 : drained ? "draining"
                           : "down");
        return;
    }
    size_t out[SESS_BE_CANDIDATES];
    size_t n = 0;
    out[n++] = (size_t)idx;
    for (size_t i = 0; i < s->be_ncand && n < SESS_BE_CANDIDATES; i++)
        if (s->be_cand[i] != (size_t)idx)
            out[n++] = s->be_cand[i];
    memcpy(s->be_cand, out, n * sizeof out[0]);
    s->be_ncand = pinned ? 1 : n;
    s->be_pinned = pinned;
    sess_log(s, LOG_DEBUG, "event=route kind=%s backend=%s", kind, b->name);
}

static void dial_log(struct backend_dial *d, enum log_level lvl, const char *msg)
{
    sess_log(d->arg, lvl, "%s", msg);
}

static void dial_done(struct backend_dial *d);

/* The dialer is set up on first use: a zeroed one (calloc'd s->pre) is idle, and cancelling
 * it at close is a no-op. Only before the relay (s->pre is freed when it starts). */
static struct backend_dial *dialer(struct session *s)
{
    struct backend_dial *d = &s->pre->dial;
    if (!d->loop)
        backend_dial_init(d, s->worker->loop, &s->backend, dial_done, dial_log, s);
    return d;
}

/* Dial s->be. The dialer's own timers bound the connect and an implicit TLS handshake, so the
 * session's phase timer is off until the login deadline starts. */
static void dial(struct session *s)
{
    struct backend_dial *d = dialer(s);
    d->be = s->be;
    d->state = s->be_state;
    d->fall = s->cfg->health.fall;
    d->ctx = s->be_ctx;
    d->client_sa = &s->pre->client_sa;
    d->local_sa = &s->pre->local_sa;
    d->bind_client = s->listener->transparent_source;
    d->connect_timeout = (double)s->cfg->limits.backend_connect_timeout_ms / 1000.0;
    d->tls_timeout = (double)s->cfg->limits.backend_login_timeout_ms / 1000.0;
    s->backend.rbuf = &s->down;
    s->backend.wbuf = NULL;
    buf_clear(&s->down);
    sess_set_state(s, SESS_BACKEND);
    sess_set_deadline(s, 0);
    backend_dial_start(d);
}

/* Dial candidate s->be_try (an index into s->be_cand). */
static void dial_candidate(struct session *s)
{
    size_t idx = s->be_cand[s->be_try];
    s->be = &s->cfg->backends[idx];
    s->be_index = (int)idx;
    s->be_state = s->rt->be_state[idx];
    s->be_ctx = s->rt->backend_ctx[idx];
    dial(s);
}

/* The connect failed or timed out: the user's next candidate, once, unless the route is pinned
 * or transparent. */
static bool next_candidate(struct session *s, const char *err)
{
    if (s->listener->transparent || s->be_pinned || s->be_try + 1 >= s->be_ncand)
        return false;
    const char *from = s->be->name;
    s->be_try++;
    sess_log(s, LOG_INFO, "event=backend_retry from=%s to=%s reason=%s", from,
             s->cfg->backends[s->be_cand[s->be_try]].name,
             LOG_QS(err && strcmp(err, "timeout") == 0 ? "connect timeout" : "connect failed"));
    dial_candidate(s);
    return true;
}

static void dial_done(struct backend_dial *d)
{
    struct session *s = d->arg;
    if (s->closing)
        return;
    if (d->result == BACKEND_DIAL_CONNECT && !d->starttls && next_candidate(s, d->err))
        return;
    if (d->result == BACKEND_DIAL_OK && !d->starttls) {
        /* Greeting, STARTTLS, TLS and the login answer: one deadline from the TCP connect. */
        double left = (double)s->cfg->limits.backend_login_timeout_ms / 1000.0 -
                      (ev_now(s->worker->loop) - d->connected_at);
        sess_set_deadline(s, left > 0.001 ? left : 0.001);
    }
    s->proto->backend_event(s, SESS_EV_DIALED);
    if (!s->closing)
        sess_pump(s);
}

static void connect_routed(struct session *s);

void sess_backend_connect(struct session *s)
{
    s->be_try = 0;
    s->be_ncand = 0;
    s->be_pinned = false;
    if (s->listener->transparent) {
        if (sess_transparent_target(s)) {
            dial(s);
        } else {
            sess_set_state(s, SESS_BACKEND);
            sess_set_deadline(s, 0);
            backend_dial_fail(dialer(s), BACKEND_DIAL_LOCAL, "no original destination");
        }
        return;
    }
    /* Issue 17: the routing lookups (sess_lookup.c) answer first, maybe from a later turn. */
    if (!sess_lookup_start(s, connect_routed))
        connect_routed(s);
}

/* Dial what the lookup chose (pinned: the mailbox lives there), or refuse the login. False:
 * the lookup leaves it to affinity and the hash. */
static bool apply_lookup(struct session *s)
{
    size_t idx = 0;
    const char *why = NULL;
    switch (sess_lookup_apply(s, &idx, &why)) {
    case SL_HASH:
        return false;
    case SL_POOL:
        s->be_cand[0] = idx;
        s->be_ncand = 1;
        s->be_pinned = true;
        dial_candidate(s);
        return true;
    case SL_DYNAMIC:
        s->be_ncand = 1;
        s->be_pinned = true;
        dial(s);
        return true;
    case SL_REFUSE_AUTH:
        sess_set_state(s, SESS_BACKEND);
        sess_set_deadline(s, 0);
        backend_dial_fail(dialer(s), BACKEND_DIAL_REFUSED, why);
        return true;
    case SL_REFUSE_TEMP:
        break;
    }
    sess_set_state(s, SESS_BACKEND);
    sess_set_deadline(s, 0);
    backend_dial_fail(dialer(s), BACKEND_DIAL_LOCAL, why);
    return true;
}

static void connect_routed(struct session *s)
{
    s->be_ncand = backend_candidates(s->cfg, s->rt->be_state, s->listener->protocol,
                                     s->user ? s->user : "", s->be_cand, SESS_BE_CANDIDATES);
    apply_route(s);
    if (apply_lookup(s))
        return;
    if (s->be_ncand == 0) {
        sess_log(s, LOG_ERROR, "event=backend_error error=\"no backend available\"");
        sess_set_state(s, SESS_BACKEND);
        sess_set_deadline(s, 0);
        backend_dial_fail(dialer(s), BACKEND_DIAL_LOCAL, "no backend available");
        return;
    }
    dial_candidate(s);
}

void sess_backend_start_tls(struct session *s)
{
    backend_dial_starttls(dialer(s));
}
