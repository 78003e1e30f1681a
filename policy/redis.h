/*
 * redis — one hiredis 0.14 async connection on a libev loop, with what 0.14 lacks: a connect
 * timeout, a per-command timeout, reconnect with back-off, and EVALSHA with a NOSCRIPT → EVAL
 * fallback (libs-notes section 2, pitfalls 8–10).
 *
 * A connection is either a command connection or a subscriber (SUBSCRIBE on one channel):
 * hiredis drops a subscribed connection that is sent any other command (pitfall 9), so each
 * worker has one of each.
 *
 * States: DOWN (a reconnect timer is armed) → CONNECTING (TCP connect, AUTH, SELECT, CLIENT
 * SETNAME, then PING or SUBSCRIBE) → READY. Commands are accepted only when READY; otherwise
 * rds_call() returns NULL at once, which the caller treats as "Redis unavailable". A failure of
 * any kind — refused, reset, AUTH error, connect timeout, a command timing out with nothing
 * heard from the server since — ends the connection: every pending command is answered NULL and
 * a reconnect is scheduled (back-off doubling from backoff_min to backoff_max, with jitter).
 *
 * Callbacks: a request's callback runs exactly once, on the loop, never from inside the call
 * that issued it; `reply` is NULL when there was no answer (timeout, connection lost, freed) and
 * valid only during the callback. After its callback ran, or after rds_cancel(), the handle is
 * gone. Nothing here blocks: the host must be a numeric address (names are resolved at config
 * load) or a unix socket path.
 */
#ifndef PORTCULLIS_REDIS_H
#define PORTCULLIS_REDIS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct rds;
struct rds_req;

struct rds_opts {
    const char *host; /* numeric address; ignored when `socket` is set */
    uint16_t port;
    const char *socket;      /* unix socket path or NULL */
    const char *username;    /* ACL user (Redis 6+) or NULL */
    const char *password;    /* NULL = no AUTH; never logged */
    unsigned db;             /* SELECT when not 0 */
    const char *client_name; /* CLIENT SETNAME, or NULL */
    const char *subscribe;   /* channel: this is a subscriber connection */
    double connect_timeout;  /* seconds, TCP connect through the first PING */
    double command_timeout;  /* seconds per command */
    double backoff_min, backoff_max;
    unsigned max_pending; /* commands in flight; more are refused like "unavailable" */
};

typedef void rds_reply_cb(void *arg, const redisReply *reply);
/* Subscriber: one published message (valid only during the call). */
typedef void rds_message_cb(void *arg, const char *msg, size_t len);
/* The connection became ready (up = true) or was lost (up = false). */
typedef void rds_state_cb(void *arg, bool up);

struct rds_stats {
    uint64_t commands, timeouts, noscript, errors, connects, failures;
};

/* Create and start connecting (asynchronously). Strings are copied. NULL on out of memory. */
struct rds *rds_new(struct ev_loop *loop, const struct rds_opts *o, const char *what,
                    rds_state_cb *on_state, rds_message_cb *on_message, void *arg);
/* Abort everything (pending callbacks get NULL, synchronously) and free. NULL-safe. */
void rds_free(struct rds **r);

bool rds_ready(const struct rds *r);
size_t rds_pending(const struct rds *r);
const struct rds_stats *rds_stats(const struct rds *r);
/* The same counters summed over every connection of the process (atomics: any thread may read
 * them, e.g. the /metrics collector on the main thread), and how many connections are ready. */
void rds_totals(struct rds_stats *out, unsigned *ready_r);

/* A script: its text and the SHA1 EVALSHA uses (computed once by rds_script_init). */
struct rds_script {
    const char *name;
    const char *text;
    char sha[41];
};
void rds_script_init(struct rds_script *s, const char *name, const char *text);
/* Load `s` (SCRIPT LOAD) at every (re)connect, before the connection counts as ready. `s` must
 * outlive the connection. Call right after rds_new(). */
#define RDS_MAX_SCRIPTS 12
bool rds_preload(struct rds *r, const struct rds_script *s);

/* Send a command (binary-safe argv). NULL = not sent (not ready, too many pending, OOM): the
 * callback will not run. */
struct rds_req *rds_call(struct rds *r, int argc, const char **argv, const size_t *lens,
                         rds_reply_cb *cb, void *arg);
/* EVALSHA sha nkeys args…, resent once as EVAL on NOSCRIPT. argv holds keys then arguments. */
struct rds_req *rds_eval(struct rds *r, const struct rds_script *s, int nkeys, int argc,
                         const char **argv, const size_t *lens, rds_reply_cb *cb, void *arg);
/* The same for a command nobody waits for: it is written with the next command that is waited
 * for, or after RDS_LAZY_DELAY seconds, whichever comes first (redis.c, issue 19). */
#define RDS_LAZY_DELAY 0.005
struct rds_req *rds_eval_lazy(struct rds *r, const struct rds_script *s, int nkeys, int argc,
                              const char **argv, const size_t *lens, rds_reply_cb *cb, void *arg);
/* The callback will not run; NULLs *req. Safe on NULL. */
void rds_cancel(struct rds_req **req);

#endif
