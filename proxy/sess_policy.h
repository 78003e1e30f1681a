/*
 * sess_policy — the session's side of the login policy (policy/): static allow/deny lists,
 * the asynchronous Redis check before the backend login, counting the result, the registry
 * entry while the session lives, download-volume checks for the relays, and admin kicks.
 *
 * The protocol modules call three things: sess_login_check() instead of starting the backend
 * login, sess_login_result() when the backend answered (through sess_login_passed_on() for a
 * refusal passed on to the client), and sess_policy_download_blocked() before forwarding a
 * RETR/TOP/FETCH. session.c calls sess_policy_close() from sess_close(),
 * which cancels a check in flight (its callback will not run) and unregisters the session.
 */
#ifndef PORTCULLIS_SESS_POLICY_H
#define PORTCULLIS_SESS_POLICY_H

#include <stdbool.h>

struct session;
struct worker;

/* Per worker, on the worker's thread: create / drain and free its policy (w->policy). */
void sess_policy_worker_start(struct worker *w);
void sess_policy_worker_stop(struct worker *w);

typedef void sess_login_allowed(struct session *s);
/* `answer` is the protocol's refusal without the IMAP tag: "NO [UNAVAILABLE] …" for IMAP, the
 * whole "-ERR [SYS/TEMP] …" line for POP3 (no CRLF). */
typedef void sess_login_refused(struct session *s, const char *answer);

/* Decide the login in progress (s->user set). Exactly one of the callbacks runs, never before
 * this returns; the session is pumped afterwards. Not called back after sess_close(). */
void sess_login_check(struct session *s, sess_login_allowed *allowed, sess_login_refused *refused);
/* The backend login ended: ok → register; auth_failure → count a failed login; otherwise
 * (backend unavailable) only release the slot the check reserved. Call before s->user goes. */
void sess_login_result(struct session *s, bool ok, bool auth_failure);
/* Answer the client's login with a backend's refusal code and text, in the protocol's form. */
typedef void sess_refusal_answer(struct session *s, const char *code, const char *text);
/* The backend refused the login with a code that is not about the password (login_refusal.h,
 * LR_PASS_ON): logged as "unavailable", answered through `answer` with the backend's code and
 * text (a text of ours when it gave none), and the policy slot released, never counted toward a
 * lock-out. The protocol drops the backend and forgets the credentials before, and returns to
 * its pre-auth dialogue after. */
void sess_login_passed_on(struct session *s, const char *code, const char *text,
                          sess_refusal_answer *answer);
/* Over the user's download volume? (logs once per session when it starts refusing) */
bool sess_policy_download_blocked(struct session *s);
/* The backend Redis routes this user to (an override, a live session's, or the last one's), or
 * NULL: hash. *pinned_r: an administrator's override (no failover). *kind_r for logs. */
const char *sess_route_backend(struct session *s, bool *pinned_r, const char **kind_r);
/* From sess_close(): cancel, release or unregister. */
void sess_policy_close(struct session *s);
/* The relay starts: free the login check's state (the registry entry stays). */
void sess_policy_relay(struct session *s);

#endif
