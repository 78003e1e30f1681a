/*
 * imap_idle — where a shutdown may end an authenticated IMAP session without cutting anything:
 * no response is being relayed or held (for scanning), no command is being relayed, and nothing
 * waits in either buffer. A client in IDLE is at such a point: RFC 3501 7.1.5 lets the server
 * send an untagged BYE at any time, and clients reconnect.
 */
#include "imap.h"

bool imap_relay_idle(struct session *s)
{
    struct imap_state *st = imap_st(s);
    return imap_framer_at_boundary(&st->downf) && st->down_held == 0 &&
           imap_framer_at_boundary(&st->upf) && st->up_held == 0 && buf_empty(&s->up) &&
           buf_empty(&s->down) && buf_empty(&st->inject) && imap_scan_idle(s);
}
