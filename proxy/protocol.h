/*
 * protocol — the vtable a mail protocol module (IMAP, POP3) plugs into the generic session
 * (after nginx's ngx_mail_protocol_t). The session owns sockets, TLS, timers and the close path;
 * the protocol owns the dialogue, the backend login script and the relay filters.
 *
 * Every hook runs on the session's worker loop and may call sess_close(); after it returns the
 * session checks s->closing before touching anything.
 */
#ifndef PORTCULLIS_PROTOCOL_H
#define PORTCULLIS_PROTOCOL_H

#include <stdbool.h>

struct session;

struct protocol {
    const char *name;
    /* Allocate protocol state; false = out of memory. */
    int (*init)(struct session *s);
    /* The client is ready for a greeting (after accept, or after the implicit TLS handshake). */
    void (*greet)(struct session *s);
    /* Pre-auth: new bytes from the client in s->up. */
    void (*client_input)(struct session *s);
    /* A STARTTLS/STLS handshake on the client side completed. */
    void (*starttls_done)(struct session *s);
    /* Backend login phase: the backend conn connected, finished TLS, or has input in s->down. */
    void (*backend_event)(struct session *s, int events);
    /* Relay filters: process new client bytes (s->up) / backend bytes (s->down), releasing
     * what may be sent (buf.h verbs) or queueing their own output (conn_queue). Also called on
     * CONN_EV_WRITE and CONN_EV_DRAINED of the conn they write to, so a filter that paused for
     * its output (held bytes put back, our own words in ctl) goes on when it is out. */
    void (*relay_up)(struct session *s);
    void (*relay_down)(struct session *s);
    /* Queue a protocol-correct farewell to the client ("* BYE …" / "-ERR …"). After login it
     * goes at the next response boundary of what the client gets; after `stop` that is right
     * after what was released — or nowhere, when the client is inside a response that was
     * partly sent (a cut connection is then the only honest signal). */
    void (*bye)(struct session *s, const char *text);
    /* Relay: is the session at an idle point — no response in progress, no command waiting
     * for one — where a shutdown may end it without cutting anything? */
    bool (*idle)(struct session *s);
    /* The session ends (sess_end, or at sess_close): cancel everything asynchronous — scans,
     * keep-alive timers, budget waits — and drop responses held for a
     * verdict. Idempotent; the state stays valid for `bye` and `destroy`. */
    void (*stop)(struct session *s);
    /* Relay, backend gone: has the down filter still something to deliver without new backend
     * input (a response held for its verdict or being put back, bytes not framed yet)? A
     * closing session waits for it (limits.backend_lost_timeout). */
    bool (*holding)(struct session *s);
    /* Free protocol state (wipe secrets). Only memory: `stop` has run. */
    void (*destroy)(struct session *s);
};

extern const struct protocol imap_protocol;
extern const struct protocol pop3_protocol;

#endif
