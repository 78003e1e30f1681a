/* scan_grant — see scan_grant.h. */
#include "scan_grant.h"

#include <assert.h>

#include "session.h"
#include "log.h"

static void granted(void *arg)
{
    struct scan_grant *g = arg;
    assert(g->state == SCAN_GRANT_WAITING);
    g->state = SCAN_GRANT_GRANTED;
    if (!g->cb(g->arg, g) && g->state == SCAN_GRANT_GRANTED)
        scan_grant_release(g); /* not wanted (closing, moved on): back to the pool now */
}

enum msgscan_budget_rc scan_grant_acquire(struct scan_grant *g, struct session *s, size_t bytes,
                                          scan_grant_fn *cb, void *arg)
{
    assert(g->state == SCAN_GRANT_IDLE); /* one request per grant at a time */
    g->bytes = bytes;
    g->owner = msgscan_owner(s);
    g->cb = cb;
    g->arg = arg;
    enum msgscan_budget_rc rc = msgscan_budget_acquire(s, bytes, &g->w, granted, g);
    if (rc == MSGSCAN_BUDGET_OK)
        g->state = SCAN_GRANT_GRANTED;
    else if (rc == MSGSCAN_BUDGET_WAIT)
        g->state = SCAN_GRANT_WAITING;
    return rc;
}

size_t scan_grant_take(struct scan_grant *g)
{
    assert(g->state == SCAN_GRANT_GRANTED);
    if (g->state != SCAN_GRANT_GRANTED)
        return 0;
    g->state = SCAN_GRANT_IDLE;
    size_t n = g->bytes;
    g->bytes = 0;
    return n;
}

void scan_grant_release(struct scan_grant *g)
{
    assert(g->state == SCAN_GRANT_GRANTED); /* never acquired, or released twice */
    if (g->state != SCAN_GRANT_GRANTED)
        return;
    g->state = SCAN_GRANT_IDLE;
    msgscan_budget_release(g->owner, g->bytes);
    g->bytes = 0;
}

void scan_grant_cancel(struct scan_grant *g)
{
    switch (g->state) {
    case SCAN_GRANT_WAITING:
        msgscan_wait_cancel(&g->w); /* a grant not yet delivered goes back inside the pool */
        g->state = SCAN_GRANT_IDLE;
        g->bytes = 0;
        break;
    case SCAN_GRANT_GRANTED:
        scan_grant_release(g);
        break;
    case SCAN_GRANT_IDLE:
        break;
    }
}

/* ---- held output ---- */

static void held_check(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct scan_held *h = t->data;
    struct session *s = h->s;
    if (s->closing || !h->holding(s)) {
        scan_held_stop(h);
        return;
    }
    ev_tstamp now = ev_now(loop);
    if (s->client.bytes_out != h->last_out) { /* the client reads: not held */
        h->last_out = s->client.bytes_out;
        h->since = now;
        return;
    }
    double limit = (double)s->cfg->scan.held_timeout_ms / 1000.0;
    if (now - h->since >= limit) {
        scan_held_stop(h);
        h->expire(s);
    }
}

void scan_held_arm(struct scan_held *h, struct session *s, scan_held_fn *holding,
                   scan_held_fn *expire)
{
    if (h->s && ev_is_active(&h->t))
        return;
    double limit = (double)s->cfg->scan.held_timeout_ms / 1000.0;
    double every = limit / 4 < 0.05 ? 0.05 : limit / 4 > 5 ? 5 : limit / 4;
    h->s = s;
    h->holding = holding;
    h->expire = expire;
    h->last_out = s->client.bytes_out;
    h->since = ev_now(s->client.loop);
    ev_timer_init(&h->t, held_check, every, every);
    h->t.data = h;
    ev_timer_start(s->client.loop, &h->t);
}

void scan_held_stop(struct scan_held *h)
{
    if (h->s)
        ev_timer_stop(h->s->client.loop, &h->t);
}
