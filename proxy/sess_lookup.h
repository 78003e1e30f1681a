/*
 * sess_lookup — a session's side of the routing lookup chain (route_chain.h, issue 17): ask
 * the worker's chain where the user lives, then tell the dialer (sess_route.c) what to do.
 *
 * Precedence (docs/routing.md): an administrator's override (`portcullis-ctl route`) wins and
 * no lookup is made; then the lookup's answer — it is the directory's word on where the mailbox
 * is, so it goes before affinity, which only keeps hashed users steady; then affinity and the
 * rendezvous hash as before. A backend chosen by a lookup is pinned (no failover: another
 * server does not have the mailbox); a drained one refuses the login with a temporary error.
 *
 * Failures: a lookup error or timeout is logged with the source and reason and, with
 * routing.on_error: refuse, ends the login with NO [UNAVAILABLE] / -ERR [SYS/TEMP] (a dial
 * failure of kind LOCAL: never a failed password); with fallback, the user is hashed. A user
 * no lookup knows is hashed (routing.unknown: hash) or refused like a wrong password
 * (refuse: NO [AUTHENTICATIONFAILED] / -ERR [AUTH], counted, so that the answer does not tell
 * an unknown user from a wrong password).
 *
 * auth_http (route_http.h): a refusal is answered like a wrong password (SL_REFUSE_AUTH,
 * counted) after the service's Auth-Wait, on a timer the session's close cancels; an OK's
 * Auth-User/Auth-Pass replace the login's credentials toward the backend (s->login_creds, set
 * by the protocol when the login starts); s->user, the client-visible user, stays.
 */
#ifndef PORTCULLIS_SESS_LOOKUP_H
#define PORTCULLIS_SESS_LOOKUP_H

#include <stdbool.h>
#include <stddef.h>

struct session;
struct worker;

typedef void sess_lookup_done(struct session *s);

/* Start the lookup of s->user. True: pending, done(s) runs from the loop (not after
 * sess_close). False: nothing to wait for (no lookups, an override, or answered at once). */
bool sess_lookup_start(struct session *s, sess_lookup_done *done);

enum sess_lookup_route {
    SL_HASH,        /* affinity and the rendezvous hash decide, as without lookups */
    SL_POOL,        /* the pool entry *idx_r, pinned */
    SL_DYNAMIC,     /* s->be, be_state, be_ctx set to a dynamic backend: dial it, pinned */
    SL_REFUSE_AUTH, /* unknown user, routing.unknown: refuse */
    SL_REFUSE_TEMP, /* lookup failed with on_error: refuse, or the backend is draining */
};
/* What the answer means for this session (after apply_route). *why_r: static text. */
enum sess_lookup_route sess_lookup_apply(struct session *s, size_t *idx_r, const char **why_r);

/* From sess_close(), after the dial is cancelled: cancel a lookup, release a dynamic backend. */
void sess_lookup_close(struct session *s);
/* From sess_free(): the memory. */
void sess_lookup_free(struct session *s);
/* Worker end: drop its chain. */
void sess_lookup_worker_stop(struct worker *w);

#endif
