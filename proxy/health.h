/*
 * health — active health checks of the backends, run on the main thread's loop.
 *
 * Every `health.interval` each configured backend gets one check: a non-blocking connect, the
 * TLS handshake for implicit-TLS backends (verified like a session's), and a greeting ("* OK" /
 * "+OK") within `health.timeout`. `rise` good checks in a row bring a down backend up, `fall`
 * failures in a row (checks here, connect failures in sessions) take it down. State lives in
 * backend.c's process-wide table, so it survives reloads; the checks follow the published
 * runtime, so a reload that adds or removes backends changes what is checked.
 */
#ifndef PORTCULLIS_HEALTH_H
#define PORTCULLIS_HEALTH_H

#include <ev.h>

/* Start checking (reads rt_current() at every round). */
void health_start(struct ev_loop *loop);
void health_stop(void);

#endif
