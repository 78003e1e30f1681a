/*
 * imap_keepalive — an untagged "* OK Still scanning" to the client every
 * scan.keepalive_interval while a FETCH response is held for its verdict, so clients with a
 * short read timeout do not give up on a large message being scanned.
 *
 * The line is queued as a block on the client conn (conn_queue): it goes right after what was
 * released, which ends at a response boundary as long as nothing of the held response went
 * out — the owner's `due` callback says when that is so. A client that does not read gets no
 * more than one line queued at a time.
 */
#ifndef PORTCULLIS_IMAP_KEEPALIVE_H
#define PORTCULLIS_IMAP_KEEPALIVE_H

#include <ev.h>
#include <stdbool.h>

struct session;

struct imap_keepalive {
    ev_timer t;
    bool on;
    struct session *s;
    bool (*due)(struct session *s); /* may a line go out now? */
};

void imap_keepalive_init(struct imap_keepalive *ka);
/* Start the timer unless running or the interval is 0. */
void imap_keepalive_start(struct imap_keepalive *ka, struct session *s,
                          bool (*due)(struct session *s));
/* Idempotent. */
void imap_keepalive_stop(struct imap_keepalive *ka);

#endif
