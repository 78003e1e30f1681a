/*
 * admin — the admin HTTP listener on the main thread's loop: GET /metrics (Prometheus text
 * format), GET /healthz (200 "ok" when the listeners are up and, with scanning enabled, the
 * engine is loaded; 503 otherwise), POST /reload (what SIGHUP does, with the result in the
 * answer: `portcullis-ctl reload`) and POST /reload-signatures (the scanning engine only,
 * answered when the new engine is in service: `portcullis-ctl reload-signatures`).
 * HTTP/1.0-style: one request per connection, bounded request size and time, never blocks a
 * worker loop.
 */
#ifndef PORTCULLIS_ADMIN_H
#define PORTCULLIS_ADMIN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Bind the admin listener of `cfg` (if enabled). False with *error_r (malloc'd) on failure. */
bool admin_start(struct ev_loop *loop, const struct config *cfg, char **error_r);
void admin_stop(void);

/* POST /reload calls this (on the main loop); false with the reason in `why`. */
typedef bool admin_reload_fn(char *why, size_t cap);
void admin_set_reload(admin_reload_fn *fn);

/* What /healthz reports; set by main (listeners bound, engine loaded). */
void admin_set_healthy(bool ok, const char *why);

#endif
