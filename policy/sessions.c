/*
 * sessions — the live-session registry of one worker: registration at login, heartbeats, the
 * download-volume count, unregistration, and admin kicks from the subscriber connection.
 *
 * Each registered session is a hash P sess:{U}:<sid> plus a member of P conn:{U} (and of
 * P conn:{ip:A} unless the address is exempt), scored by its last heartbeat. One worker timer
 * heart-beats all of its sessions every `heartbeat` (one pipelined script per scope per
 * session); a session whose instance died is no longer refreshed, so its hash expires after
 * `session_ttl` and every check ignores (and trims) its set member after the same time.
 *
 * Download volume: bytes relayed to the client are read from the session (policy_bytes_cb) at
 * each heartbeat and added to P rl:{U}:bytes (a fixed window); the answer is the user's total
 * across all instances. Between flushes a session adds what it relayed itself, and flushes
 * early once that is more than 1/16 of the limit, so one fast download cannot run far past it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plog.h"
#include "policy_int.h"

/* The scope tags of a registered session (struct pol_keys at their real size): they point
 * into the entry's own `str`. */
struct sess_keys {
    const char *user; /* escaped */
    const char *net;  /* the client network, "" = none */
    const char *addr; /* address scope: `net`, or "" when exempt or none */
    bool has_addr;
    const char *sid;
};

/* One allocation: the struct and, in `str`, every string it keeps (the keys' tags and the
 * registry fields), each at its real size. An idle session holds this for its whole life. */
struct policy_sess {
    struct policy *p;
    struct policy_limits lim;
    struct sess_keys k;
    const char *user;     /* the name as the client sent it */
    const char *client;   /* the registry fields, "-" when not known */
    const char *backend;  /* */
    const char *instance; /* */
    const char *protocol; /* */
    uint64_t done;        /* the check's `done` (RL_DONE_*), sent with the registration */
    uint64_t started;
    policy_kick_cb *kick;
    policy_bytes_cb *bytes;
    void *arg;
    uint64_t flushed;     /* bytes already sent to Redis */
    uint64_t known_total; /* the user's window total in the last answer */
    uint64_t inflight;    /* bytes sent with the refresh in flight, not yet in known_total */
    struct rds_req *hb;   /* the sess script in flight */
    bool opening;         /* that script is the registration (carries the login's result) */
    char *aff;            /* owned: backend remembered at close (NULL = none) */
    uint64_t aff_ttl_ms;
    bool kicked; /* marked by a kick message, callback not yet run */
    struct policy_sess *prev, *next;
    char str[];
};

static void heartbeat_cb(struct ev_loop *loop, ev_timer *t, int revents);

void pol_sessions_init(struct policy *p)
{
    double hb = (double)p->conf.heartbeat_ms / 1000.0;
    ev_timer_init(&p->heartbeat, heartbeat_cb, hb, hb);
    p->heartbeat.data = p;
}

void pol_sessions_done(struct policy *p)
{
    ev_timer_stop(p->loop, &p->heartbeat);
    /* Handles still out belong to sessions that outlive the worker's policy: none do (the worker
     * closes every session first); detach them so a late close cannot touch freed memory. */
    for (struct policy_sess *s = p->sessions; s; s = s->next) {
        rds_cancel(&s->hb);
        s->p = NULL;
    }
    p->sessions = NULL;
}

static void sess_reply(void *arg, const redisReply *rep)
{
    struct policy_sess *s = arg;
    s->hb = NULL;
    s->inflight = 0;
    if (s->opening && (!rep || rep->type == REDIS_REPLY_ERROR)) {
        /* The login's result may not have reached Redis: the write-back makes the network
         * known there (local_login_unsynced). */
        struct local_login lk = {
            .user = s->k.user, .net = s->k.net, .addr = s->k.has_addr ? s->k.addr : NULL};
        local_login_unsynced(s->p->local, &lk, (uint64_t)(ev_now(s->p->loop) * 1000.0), LOCAL_OK);
    }
    s->opening = false;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        s->known_total = (uint64_t)rep->integer;
}

static char *num(char *buf, size_t cap, uint64_t v)
{
    return pol_num(buf, cap, v);
}

/* Register (`opening`: with the login's result) or refresh: one script for both scopes.
 * False when it was not sent. */
static bool send_sess(struct policy_sess *s, bool opening)
{
    struct policy *p = s->p;
    if (!rds_ready(p->cmd) || s->hb)
        return false; /* a refresh still out carries fresh enough data */
    struct pol_ukeys uk;
    char kc[RL_KEY_MAX], ks[RL_KEY_MAX], kb[RL_KEY_MAX], ac[RL_KEY_MAX], ap[RL_KEY_MAX];
    char suffix[POL_SID_MAX + 2];
    snprintf(suffix, sizeof suffix, ":%s", s->k.sid);
    if (!pol_user_keys(p, s->k.user, s->k.net, &uk) ||
        !pol_key(p, kc, sizeof kc, "conn", s->k.user, "") ||
        !pol_key(p, ks, sizeof ks, "sess", s->k.user, suffix) ||
        !pol_key(p, kb, sizeof kb, "rl", s->k.user, ":bytes"))
        return false;
    if (s->k.has_addr && (!pol_key(p, ac, sizeof ac, "conn", s->k.addr, "") ||
                          !pol_key(p, ap, sizeof ap, "pend", s->k.addr, "")))
        return false;
    uint64_t cur = s->bytes ? s->bytes(s->arg) : s->flushed;
    uint64_t delta = cur > s->flushed ? cur - s->flushed : 0;
    bool counting = s->lim.download_limit > 0;
    char ttl[24], d[24], win[24], kttl[24], kmax[24], done[24], started[24], total[24];
    const char *argv[40];
    size_t lens[40];
    int n = 0;
    argv[n++] = kc;
    argv[n++] = ks;
    argv[n++] = kb;
    argv[n++] = uk.k[POL_FAIL_UA];
    argv[n++] = uk.k[POL_PEND_U];
    argv[n++] = uk.k[POL_PEND_UA];
    argv[n++] = uk.k[POL_KNOWN_U];
    if (s->k.has_addr) {
        argv[n++] = ac;
        argv[n++] = ap;
    }
    int nkeys = n;
    const char *args[] = {s->k.sid,
                          num(ttl, sizeof ttl, p->conf.session_ttl_ms),
                          opening ? "1" : "0",
                          num(d, sizeof d, counting ? delta : 0),
                          num(win, sizeof win, counting ? s->lim.download_window_ms : 0),
                          s->k.net,
                          num(kttl, sizeof kttl, pol_known_ttl(&s->lim) + pol_known_slack(&s->lim)),
                          num(kmax, sizeof kmax, s->lim.known_max),
                          num(done, sizeof done, opening ? s->done : 0),
                          "user",
                          s->user,
                          "client",
                          s->client,
                          "backend",
                          s->backend,
                          "instance",
                          s->instance,
                          "protocol",
                          s->protocol,
                          "started",
                          num(started, sizeof started, s->started),
                          "bytes",
                          num(total, sizeof total, cur),
                          "id",
                          s->k.sid};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        argv[n++] = args[i];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    /* Without a volume limit nothing waits for the answer: it may wait for the next check's
     * write (redis.c). With one, the answer is the user's total, needed before the next FETCH. */
    s->hb = (counting ? rds_eval : rds_eval_lazy)(p->cmd, &p->s_sess, nkeys, n, argv, lens,
                                                  sess_reply, s);
    if (!s->hb)
        return false;
    s->opening = opening;
    s->flushed = cur;
    s->inflight = counting ? delta : 0;
    return true;
}

static void heartbeat_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct policy *p = t->data;
    for (struct policy_sess *s = p->sessions; s; s = s->next)
        send_sess(s, false);
}

void pol_sessions_resync(struct policy *p)
{
    heartbeat_cb(p->loop, &p->heartbeat, 0);
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

/* Copies `v` to *at, moves *at past it: the entry's `str` (policy_session_open). */
static const char *put(char **at, const char *v)
{
    size_t n = strlen(v) + 1;
    char *o = *at;
    memcpy(o, v, n);
    *at += n;
    return o;
}

struct policy_sess *policy_session_open(struct policy *p, const struct policy_limits *lim,
                                        const struct policy_who *w,
                                        const struct policy_sess_info *info, policy_kick_cb *kick,
                                        policy_bytes_cb *bytes, void *arg)
{
    struct pol_keys k; /* fixed-size: on the stack only, the entry keeps its strings */
    pol_scope_keys(p, lim, w, &k);
    const char *v[] = {k.user,
                       k.net,
                       k.sid,
                       or_dash(w->user),
                       or_dash(info->client),
                       or_dash(info->backend),
                       or_dash(info->instance),
                       or_dash(info->protocol)};
    size_t len = 0;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        len += strlen(v[i]) + 1;
    struct policy_sess *s = calloc(1, sizeof *s + len);
    if (!s)
        return NULL;
    char *at = s->str;
    s->p = p;
    s->lim = *lim;
    s->k.user = put(&at, v[0]);
    s->k.net = put(&at, v[1]);
    s->k.has_addr = k.has_addr;
    s->k.addr = k.has_addr ? s->k.net : "";
    s->k.sid = put(&at, v[2]);
    s->user = put(&at, v[3]);
    s->client = put(&at, v[4]);
    s->backend = put(&at, v[5]);
    s->instance = put(&at, v[6]);
    s->protocol = put(&at, v[7]);
    s->done = w->done;
    s->started = info->started;
    s->kick = kick;
    s->bytes = bytes;
    s->arg = arg;
    s->flushed = bytes ? bytes(arg) : 0;
    s->next = p->sessions;
    if (p->sessions)
        p->sessions->prev = s;
    p->sessions = s;
    if (p->nsessions++ == 0)
        ev_timer_again(p->loop, &p->heartbeat);
    /* One script registers the session and records the login's result (reservations released,
     * the (user, network) failures forgotten, the network known). */
    struct local_login lk = {
        .user = s->k.user, .net = s->k.net, .addr = s->k.has_addr ? s->k.addr : NULL};
    p->wb_lim = *lim;
    bool sent = send_sess(s, true);
    local_login_done(p->local, &lk, lim, (uint64_t)(ev_now(p->loop) * 1000.0), LOCAL_OK, sent,
                     NULL);
    return s;
}

void policy_session_close(struct policy_sess **sp)
{
    struct policy_sess *s = *sp;
    if (!s)
        return;
    *sp = NULL;
    struct policy *p = s->p;
    rds_cancel(&s->hb);
    if (p) {
        if (s->prev)
            s->prev->next = s->next;
        else
            p->sessions = s->next;
        if (s->next)
            s->next->prev = s->prev;
        if (--p->nsessions == 0)
            ev_timer_stop(p->loop, &p->heartbeat);
        char kc[RL_KEY_MAX], ks[RL_KEY_MAX], kb[RL_KEY_MAX], ka[RL_KEY_MAX], kac[RL_KEY_MAX];
        char suffix[POL_SID_MAX + 2];
        snprintf(suffix, sizeof suffix, ":%s", s->k.sid);
        uint64_t cur = s->bytes ? s->bytes(s->arg) : s->flushed;
        char d[24], win[24], attl[24];
        bool counting = s->lim.download_limit > 0;
        if (pol_key(p, kc, sizeof kc, "conn", s->k.user, "") &&
            pol_key(p, ks, sizeof ks, "sess", s->k.user, suffix) &&
            pol_key(p, kb, sizeof kb, "rl", s->k.user, ":bytes") &&
            pol_key(p, ka, sizeof ka, "aff", s->k.user, "") &&
            (!s->k.has_addr || pol_key(p, kac, sizeof kac, "conn", s->k.addr, ""))) {
            /* One script: both session sets, the hash, the byte count, the recent affinity. */
            const char *argv[] = {
                kc,
                ks,
                kb,
                ka,
                kac,
                s->k.sid,
                num(d, sizeof d, counting && cur > s->flushed ? cur - s->flushed : 0),
                num(win, sizeof win, counting ? s->lim.download_window_ms : 0),
                s->aff ? s->aff : "",
                num(attl, sizeof attl, s->aff_ttl_ms)};
            int nkeys = s->k.has_addr ? 5 : 4;
            const char **av = argv;
            size_t lens[10];
            if (!s->k.has_addr) {
                argv[4] = argv[5]; /* no address set: shift the arguments down */
                argv[5] = argv[6];
                argv[6] = argv[7];
                argv[7] = argv[8];
                argv[8] = argv[9];
            }
            int n = nkeys + 5;
            for (int i = 0; i < n; i++)
                lens[i] = strlen(av[i]);
            if (rds_ready(p->cmd))
                rds_eval_lazy(p->cmd, &p->s_close, nkeys, n, av, lens, NULL, NULL);
        }
    }
    free(s->aff);
    free(s);
}

void policy_session_affinity(struct policy_sess *s, const char *backend, uint64_t ttl_ms)
{
    if (!s || !backend || !ttl_ms)
        return;
    free(s->aff);
    s->aff = strdup(backend);
    s->aff_ttl_ms = ttl_ms;
}

bool policy_session_over_volume(struct policy_sess *s)
{
    if (!s || !s->p || s->lim.download_limit == 0)
        return false;
    uint64_t cur = s->bytes ? s->bytes(s->arg) : s->flushed;
    uint64_t unflushed = cur > s->flushed ? cur - s->flushed : 0;
    uint64_t early = s->lim.download_limit / 16;
    if (early < 65536)
        early = 65536;
    if (unflushed >= early && !s->hb)
        send_sess(s, false);
    uint64_t pending = cur > s->flushed ? cur - s->flushed : 0;
    return s->known_total + s->inflight + pending >= s->lim.download_limit;
}

void pol_sessions_count(struct policy *p, const char *user, const char *addr, unsigned *nu,
                        unsigned *na)
{
    *nu = *na = 0;
    for (struct policy_sess *s = p->sessions; s; s = s->next) {
        if (strcmp(s->k.user, user) == 0)
            (*nu)++;
        if (addr && s->k.has_addr && strcmp(s->k.addr, addr) == 0)
            (*na)++;
    }
}

void policy_kick(struct policy *p, const char *msg, size_t len)
{
    char target[3 * RL_USER_MAX + 1];
    if (len == 0 || len > RL_USER_MAX || memchr(msg, 0, len))
        return;
    char raw[RL_USER_MAX + 1];
    memcpy(raw, msg, len);
    raw[len] = '\0';
    unsigned n = 0;
    for (struct policy_sess *s = p->sessions; s; s = s->next) {
        rl_user_key(raw, s->lim.fold_case, target, sizeof target);
        if (strcmp(s->k.sid, raw) == 0 || strcmp(s->user, raw) == 0 ||
            strcmp(s->k.user, target) == 0) {
            s->kicked = true;
            n++;
        }
    }
    char q[300];
    plog(n ? PLOG_INFO : PLOG_DEBUG, "event=kick target=%s sessions=%u",
         plog_q(q, sizeof q, msg, len), n);
    /* The callback closes the session, which unlinks it: restart the walk after each one. */
    for (;;) {
        struct policy_sess *s = p->sessions;
        while (s && !s->kicked)
            s = s->next;
        if (!s)
            break;
        s->kicked = false;
        if (s->kick)
            s->kick(s->arg);
    }
}
