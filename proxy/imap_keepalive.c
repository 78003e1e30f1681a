/*
 * imap_keepalive — see imap_keepalive.h. One repeating timer per session while a response is
 * held; stopped when the response is released or dropped and when the session stops.
 */
#include "imap_keepalive.h"

#include "session.h"
#include "worker.h"

static const char line[] = "* OK Still scanning\r\n";

static void ka_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct imap_keepalive *ka = t->data;
    struct session *s = ka->s;
    if (s->closing || !ka->due(s))
        return;
    /* One at a time: a client that does not read does not pile them up. */
    if (conn_pending_out(&s->client) > 0)
        return;
    if (!conn_queue_copy(&s->client, line, sizeof line - 1)) {
        sess_close(s, "out of memory");
        return;
    }
    sess_pump(s);
}

void imap_keepalive_init(struct imap_keepalive *ka)
{
    ka->on = false;
    ka->s = NULL;
    ev_init(&ka->t, ka_cb);
    ka->t.data = ka;
}

void imap_keepalive_start(struct imap_keepalive *ka, struct session *s,
                          bool (*due)(struct session *s))
{
    double iv = (double)s->cfg->scan.keepalive_interval_ms / 1000.0;
    if (ka->on || iv <= 0)
        return;
    ka->s = s;
    ka->due = due;
    ev_timer_set(&ka->t, iv, iv);
    ev_timer_start(s->worker->loop, &ka->t);
    ka->on = true;
}

void imap_keepalive_stop(struct imap_keepalive *ka)
{
    if (ka->on) {
        ev_timer_stop(ka->s->worker->loop, &ka->t);
        ka->on = false;
    }
}
