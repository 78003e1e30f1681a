/*
 * imap_scan — virus scanning of message content in IMAP FETCH responses (backend → client).
 *
 * The relay's down filter calls two hooks: imap_scan_down_paused() at the top of its loop (may
 * it frame more?) and imap_scan_frame() after each framing step (what happens to these bytes?).
 * Everything that is not an untagged FETCH response goes through untouched. A FETCH response is
 * held from its first byte while its text is tokenized (imap_fetchitem.c); each literal is then
 * decided by the item name before it:
 *
 *  - not content (ENVELOPE strings, header sections): what is held is released and the
 *    literal streams; the rest of the response is held again until its next literal or end.
 *  - the whole message (BODY[], RFC822, BINARY[]): in-band. The response so far moves to
 *    `text0`, the literal's bytes move to `msg` as they arrive (so s->down keeps flowing: a
 *    25 MB message never needs a 25 MB relay buffer, only budget), the rest of the response to
 *    `text1`. The scan starts when the literal is complete; nothing after the response is framed
 *    until the verdict (later responses wait in s->down, and the backend is not read while it is
 *    full). Clean: text0, msg, text1 go out byte-identical. Replaced: text0 with the literal
 *    length rewritten, the notice, text1 (later content literals of the same response
 *    replaced too). Over max_scan_size: oversize_action (pass streams it without holding).
 *  - a part or a byte range (BODY[1], BODY[TEXT], BODY[]<o>, RFC822.TEXT, BINARY[2]): judged
 *    on the whole message, which the proxy fetched (BODY.PEEK[]) and scanned on this same
 *    connection just before it let the client's command go (imap_prefetch.c). The verdict is
 *    in the memo (the current selection's verdicts by UID); the UID comes from the response,
 *    or from the seq → UID map of our own FETCH, which saw the client's view. A part whose
 *    message is not in the memo is unjudged (error_action). Clean: released byte-identical.
 *    Replaced: the held text goes out with the literal length rewritten, then the
 *    replacement slice, and the original literal bytes are dropped as they arrive.
 *  - a response to our own FETCH (resp_pcj): judged like a whole message, its verdict kept in
 *    the memo, never sent; a FLAGS item the server merged into it goes to the client as
 *    `* n FETCH (FLAGS (...))`. Our tagged answer is swallowed (imap_prefetch.c).
 *
 * Output. A response put back (whole, or a part's head and replacement) is queued as blocks
 * on the client conn (conn_queue, with the scan budget a block holds released when it is sent
 * or dropped). A block goes out after every byte the relay released before it — a held response
 * starts at s->down's mark, so that ends at a response boundary — and before every byte
 * released after it. After putting a response back the down filter frames nothing until the
 * blocks are out: it is called again on CONN_EV_DRAINED (never waiting for a client read).
 *
 * Keep-alive (imap_keepalive.c): while a response is held and nothing of it has been released,
 * an untagged "* OK Still scanning" is queued every keepalive_interval.
 *
 * When the session ends (imap_scan_stop, the protocol's `stop`), the scan, the
 * budget wait and the keep-alive are cancelled and a held response is dropped; the client is
 * then between responses unless part of this one was released, so the BYE can follow.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_scan.h"
#include "notice.h"
#include "worker.h"
#include <time.h>

/* ---- login, stop ---- */

bool imap_scan_login(struct session *s)
{
    struct imap_state *st = imap_st(s);
    /* scan.enabled is read at start (the engine is loaded then): msgscan knows whether this
     * worker scans */
    if (!msgscan_on(s) || st->sc)
        return true;
    struct imap_scan *sc = calloc(1, sizeof *sc);
    if (!sc)
        return false;
    sc->pf_max = s->cfg->scan.max_prefetch_messages;
    sc->memo_max = 2 * sc->pf_max; /* one prefetch + what the client fetched whole since */
    sc->owner = msgscan_owner(s);  /* logged in: the user is known */
    imap_keepalive_init(&sc->ka);
    st->sc = sc;
    return true;
}

/* Forget the response being held: its text, message and verdict (with their budget). */
static void drop_held(struct imap_scan *sc)
{
    scan_grant_cancel(&sc->grant); /* a budget wait for it ends with it */
    free(sc->msg);
    msgscan_budget_release(sc->owner, sc->msg_budget);
    sc->msg = NULL;
    sc->msg_budget = sc->msg_len = sc->msg_have = 0;
    free(sc->text0);
    free(sc->text1);
    sc->text0 = sc->text1 = NULL;
    sc->text0_len = sc->text1_len = sc->text1_cap = 0;
    sc->nlits = 0;
    msgscan_outcome_clear(&sc->outcome);
    memset(&sc->outcome, 0, sizeof sc->outcome);
    sc->have_outcome = sc->submitted = false;
    sc->phase = SC_IDLE;
    sc->resp_open = false;
    sc->in_lit = false;
}

void imap_scan_stop(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (!sc)
        return;
    imap_keepalive_stop(&sc->ka);
    scan_held_stop(&sc->held);
    msgscan_cancel(&sc->judging);
    scan_grant_cancel(&sc->grant); /* waiting or granted: the bytes go back now */
    drop_held(sc);
}

void imap_scan_free(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    if (!sc)
        return;
    imap_scan_stop(s); /* (done by the protocol's stop already: memory only here) */
    free(sc->mailbox);
    free(sc->pending_mailbox);
    sc_memo_reset(sc);
    pf_free(sc);
    free(sc);
    st->sc = NULL;
}

/* ---- output blocks ---- */

/* The block's owner travels in `arg` (a pool_owner is an integer that fits a pointer): the
 * block may be dropped after the session's state is gone. */
_Static_assert(sizeof(uintptr_t) >= sizeof(pool_owner), "pool_owner fits in a pointer");

static void block_sent(void *arg, size_t budget)
{
    msgscan_budget_release((pool_owner)(uintptr_t)arg, budget);
}

static bool out_holding(struct session *s)
{
    return conn_queued_blocks(&s->client) > 0;
}

/* The client has not read our blocks for scan.held_timeout: their budget is everyone's. */
static bool out_expired(struct session *s)
{
    sess_log(s, LOG_INFO, "event=refused reason=held_timeout queued_bytes=%zu",
             conn_queued_bytes(&s->client));
    sess_end(s, "held_timeout", "Response not read in time; closing.");
    return true;
}

/* Queue a block for the client (after everything released so far). Takes `data` and its
 * budget in every case: on failure they are freed at once (the caller fails the session). */
static bool out_push(struct session *s, char *data, size_t len, size_t budget)
{
    pool_owner owner = imap_sc(s)->owner;
    if (!data || len == 0) {
        free(data);
        msgscan_budget_release(owner, budget);
        return data != NULL || len == 0;
    }
    if (budget)
        scan_held_arm(&imap_sc(s)->held, s, out_holding, out_expired);
    return conn_queue(&s->client, data, len, budget ? block_sent : NULL, (void *)(uintptr_t)owner,
                      budget);
}

/* keep-alive: only while nothing of the held response has gone out */
static bool ka_due(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (!sc || sc->resp_released)
        return false;
    return sc->phase == SC_BUDGET || sc->phase == SC_COLLECT || sc->phase == SC_SUFFIX ||
           sc->phase == SC_VERDICT_WAIT || sc->phase == SC_PART_WAIT;
}

static void ka_start(struct session *s)
{
    imap_keepalive_start(&imap_sc(s)->ka, s, ka_due);
}

static void ka_stop(struct session *s)
{
    imap_keepalive_stop(&imap_sc(s)->ka);
}

/* ---- whole message in-band ---- */

/* An asynchronous result arrived: let the down filter go on. Not from inside the filter's own
 * hooks (a result delivered synchronously): its loop looks again by itself. */
static void wake(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (s->closing || !sc || sc->busy)
        return;
    imap_relay_down(s);
    if (!s->closing)
        sess_pump(s);
}

/* Keep what the client is to get from an outcome: the notice when replaced (taken: `o` is
 * msgscan's), nothing else (the original, when delivered, is taken by the caller). */
static void keep_outcome(struct imap_scan *sc, struct msgscan_outcome *o)
{
    sc->have_outcome = true;
    sc->outcome = (struct msgscan_outcome){.verdict = o->verdict, .replace = o->replace};
    if (o->replace) {
        sc->outcome.notice = o->notice;
        sc->outcome.notice_len = o->notice_len;
        o->notice = NULL;
    }
}

static void judged_whole(void *arg, struct msgscan_outcome *o)
{
    struct session *s = arg;
    struct imap_scan *sc = imap_sc(s);
    sc->judging = NULL;
    sc->submitted = false;
    keep_outcome(sc, o);
    /* Delivered as it was: the original comes back with its budget. */
    bool orig = !o->replace && o->msg;
    sc->msg = orig ? o->msg : NULL;
    sc->msg_len = sc->msg_have = orig ? o->len : 0;
    sc->msg_budget = orig ? o->budget : 0;
    if (orig) {
        o->msg = NULL;
        o->budget = 0;
    }
    wake(s);
}

/* The session cannot go on: the held response is dropped (sess_end stops the scan), and as
 * nothing of it went out the BYE follows what the client already has. */
static void fail_session(struct session *s, const char *why)
{
    sess_log(s, LOG_WARN, "event=scan_error error=%s", LOG_QS(why));
    sess_end(s, why, "Internal error while scanning a message.");
}

/* The literal is complete: judge it (or, for an oversize message under `block`, only build
 * the notice from its head). */
static void whole_complete(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    char where[MSGSCAN_WHERE_MAX];
    sc_where(where, sizeof where, sc->mailbox, sc->fi.uid, sc->seq);
    char *m = sc->msg;
    size_t len = sc->msg_have, budget = sc->msg_budget;
    sc->msg = NULL;
    sc->msg_budget = 0;
    struct msgscan_item item = {.proto = "imap", .where = where};
    if (sc->oversize_block) {
        struct msgscan_outcome o = {0};
        bool ok = msgscan_oversize(s, &item, m, len, sc->lit_len, &o);
        free(m);
        msgscan_budget_release(sc->owner, budget);
        if (!ok) {
            fail_session(s, "out of memory");
            return;
        }
        keep_outcome(sc, &o);
        msgscan_outcome_clear(&o);
        return;
    }
    sc->submitted = true;
    sc->judging = msgscan_judge(s, &item, m, len, budget, judged_whole, s);
    if (!sc->judging) {
        sc->submitted = false;
        fail_session(s, "cannot submit scan");
    }
}

/* text1 with its content literals replaced by the notice's slices (same message); malloc'd. */
static char *replace_text1(struct imap_scan *sc, const char *notice, size_t nlen, size_t *len_r)
{
    size_t cap = sc->text1_len + 64;
    for (unsigned i = 0; i < sc->nlits; i++)
        cap += 32 + nlen;
    char *t1 = malloc(cap);
    if (!t1)
        return NULL;
    size_t w = 0, r = 0, body_off = sc_body_offset(notice, nlen);
    for (unsigned i = 0; i < sc->nlits; i++) {
        struct sc_lit *l = &sc->lits[i];
        memcpy(t1 + w, sc->text1 + r, l->hdr_off - r);
        w += l->hdr_off - r;
        const char *rp;
        size_t rn;
        sc_replacement(notice, nlen, body_off, l->kind, l->ranged, l->origin, l->len, &rp, &rn);
        w += sc_lit_hdr(t1 + w, 32, NULL, rn);
        memcpy(t1 + w, rp, rn);
        w += rn;
        r = l->data_off + l->len;
    }
    if (sc->text1_len > r)
        memcpy(t1 + w, sc->text1 + r, sc->text1_len - r);
    w += sc->text1_len - r;
    *len_r = w;
    return t1;
}

/* The FLAGS item in a response of our own FETCH ("FLAGS (" up to ")"; flags hold no
 * parentheses): the server told it to this connection, so the client must get it. */
static bool find_flags(const char *t, size_t n, const char **p_r, size_t *n_r)
{
    for (size_t i = 0; i + 7 <= n; i++) {
        if (strncasecmp(t + i, "FLAGS (", 7) != 0 || (i > 0 && t[i - 1] != ' ' && t[i - 1] != '('))
            continue;
        const char *e = memchr(t + i + 7, ')', n - i - 7);
        if (!e)
            return false;
        *p_r = t + i;
        *n_r = (size_t)(e + 1 - (t + i));
        return true;
    }
    return false;
}

/* A response of our own FETCH is judged (verdict in the memo): remember seq → UID, pass on a
 * merged FLAGS item, drop the rest. */
static void pcj_judged(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc->fi.uid)
        pf_map_add(sc, sc->seq, sc->fi.uid);
    const char *fp = NULL;
    size_t fn = 0;
    if (!(sc->text0 && find_flags(sc->text0, sc->text0_len, &fp, &fn)) && sc->text1)
        find_flags(sc->text1, sc->text1_len, &fp, &fn);
    bool ok = true;
    if (fp) {
        char *line = malloc(fn + 48);
        int k = line ? snprintf(line, fn + 48, "* %llu FETCH (%.*s)\r\n",
                                (unsigned long long)sc->seq, (int)fn, fp)
                     : -1;
        /* out_push takes the block in every case (queued or freed) */
        ok = line && k > 0 ? out_push(s, line, (size_t)k, 0) : (free(line), false);
    }
    drop_held(sc);
    imap_st(s)->down_part_out = false;
    ka_stop(s);
    if (!ok)
        fail_session(s, "out of memory");
}

/* The response is all held: queue it for the client, as it was or with the notice. */
static void release_whole(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    struct msgscan_outcome *o = &sc->outcome;
    if (sc->fi.uid && (!sc->oversize_block || sc->resp_pcj))
        sc_memo_store(sc, sc->fi.uid, sc->lit_len, o);
    if (sc->resp_pcj) {
        pcj_judged(s);
        return;
    }
    bool ok = true;
    if (!o->replace && !sc->msg) {
        fail_session(s, "scan returned no message");
        return;
    }
    if (!o->replace) {
        /* Not short-circuited: every push takes its block, queued or freed. */
        ok = out_push(s, sc->text0, sc->text0_len, 0);
        ok = out_push(s, sc->msg, sc->msg_len, sc->msg_budget) && ok;
        ok = out_push(s, sc->text1, sc->text1_len, 0) && ok;
        sc->text0 = sc->msg = sc->text1 = NULL;
        sc->msg_budget = 0;
    } else {
        free(sc->msg);
        msgscan_budget_release(sc->owner, sc->msg_budget);
        sc->msg = NULL;
        sc->msg_budget = 0;
        /* text0 ends in the literal header: rewrite its length */
        size_t h = sc_lit_hdr_start(sc->text0, sc->text0_len), t1_len = 0;
        char *t0 = malloc(h + 32);
        size_t t0_len = t0 ? h + sc_lit_hdr(t0 + h, 32, sc->text0 + h, o->notice_len) : 0;
        if (t0)
            memcpy(t0, sc->text0, h);
        char *t1 = replace_text1(sc, o->notice, o->notice_len, &t1_len);
        ok = t0 && t1;
        ok = out_push(s, t0, t0_len, 0) && ok;
        ok = out_push(s, o->notice, o->notice_len, 0) && ok;
        o->notice = NULL; /* the block owns it now; the memo has its own copy */
        ok = out_push(s, t1, t1_len, 0) && ok;
        free(sc->text0);
        free(sc->text1);
        sc->text0 = sc->text1 = NULL;
    }
    drop_held(sc);                     /* (what is left: lengths and the verdict) */
    imap_st(s)->down_part_out = false; /* the blocks end with the response */
    ka_stop(s);
    if (!ok)
        fail_session(s, "out of memory");
}

static bool budget_granted(void *arg, struct scan_grant *g);

/* Take the held response text out of s->down into text0 and start collecting the literal. */
static bool begin_collect(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    struct buf *b = &s->down;
    sc->text0 = sc_dup_bytes(buf_mptr(b), st->down_held);
    size_t want = sc->oversize_block ? NOTICE_HEADER_SCAN : (size_t)sc->lit_len;
    if (want > sc->lit_len)
        want = (size_t)sc->lit_len;
    sc->msg = malloc(want ? want : 1);
    if (!sc->text0 || !sc->msg) {
        fail_session(s, "out of memory");
        return false;
    }
    sc->text0_len = st->down_held;
    buf_cut_held(b, 0, st->down_held);
    st->down_held = 0;
    sc->msg_len = want;
    sc->msg_have = 0;
    sc->phase = SC_COLLECT;
    return true;
}

/* The grant arrived. A session closing, or no longer waiting for it, gives it back (returns
 * false: scan_grant releases it here — issue 16's leak was this early return keeping it). */
static bool budget_granted(void *arg, struct scan_grant *g)
{
    struct session *s = arg;
    struct imap_scan *sc = imap_sc(s);
    if (s->closing || !sc || sc->phase != SC_BUDGET)
        return false;
    sc->msg_budget = scan_grant_take(g);
    if (begin_collect(s))
        wake(s);
    return true;
}

/* A response of our own FETCH that is not judged: dropped to its end (SC_DROP_RESP). */
static void drop_resp(struct session *s)
{
    struct imap_state *st = imap_st(s);
    buf_cut_held(&s->down, 0, st->down_held);
    st->down_held = 0;
    st->sc->phase = SC_DROP_RESP;
}

/* A whole-message literal was announced. Returns true if the bytes are ours (held/moved). */
static bool start_whole(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    const struct cfg_scan *cs = &s->cfg->scan;
    sc->lit_len = st->downf.literal_len;
    sc->oversize_block = false;
    if (sc->lit_len > cs->max_scan_size) {
        if (cs->oversize_action == CFG_SCAN_PASS) {
            /* streamed without holding; msgscan logs and counts the pass */
            char where[MSGSCAN_WHERE_MAX];
            struct msgscan_outcome o = {0};
            sc_where(where, sizeof where, sc->mailbox, sc->fi.uid, sc->seq);
            struct msgscan_item item = {.proto = "imap", .where = where};
            bool judged = msgscan_oversize(s, &item, NULL, 0, sc->lit_len, &o);
            if (judged && sc->resp_pcj) {
                /* our own FETCH: its parts pass as the whole would (oversize_action pass) */
                sc_memo_store(sc, sc->fi.uid, sc->lit_len, &o);
                if (sc->fi.uid)
                    pf_map_add(sc, sc->seq, sc->fi.uid);
            }
            if (judged)
                msgscan_outcome_clear(&o);
            if (sc->resp_pcj) {
                drop_resp(s);
                return true;
            }
            sc->phase = SC_PASS_LIT;
            sc->resp_released = true;
            return false;
        }
        sc->oversize_block = true;
    }
    size_t need = sc->oversize_block ? NOTICE_HEADER_SCAN : (size_t)sc->lit_len;
    if (need > sc->lit_len)
        need = (size_t)sc->lit_len;
    enum msgscan_budget_rc rc = scan_grant_acquire(&sc->grant, s, need, budget_granted, s);
    ka_start(s);
    if (rc == MSGSCAN_BUDGET_TOO_BIG) {
        fail_session(s, "message larger than the scan memory budget");
        return true;
    }
    if (rc == MSGSCAN_BUDGET_WAIT) {
        sc->phase = SC_BUDGET; /* held in s->down; nothing framed until the grant */
        return true;
    }
    sc->msg_budget = scan_grant_take(&sc->grant);
    begin_collect(s);
    return true;
}

static bool suffix_append(struct session *s, const char *p, size_t n)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc->text1_len + n > SC_SUFFIX_MAX) {
        fail_session(s, "FETCH response too large to hold for scanning");
        return false;
    }
    if (sc->text1_len + n > sc->text1_cap) {
        size_t nc = sc->text1_cap ? sc->text1_cap * 2 : 512;
        while (nc < sc->text1_len + n)
            nc *= 2;
        char *t = realloc(sc->text1, nc);
        if (!t) {
            fail_session(s, "out of memory");
            return false;
        }
        sc->text1 = t;
        sc->text1_cap = nc;
    }
    memcpy(sc->text1 + sc->text1_len, p, n);
    sc->text1_len += n;
    return true;
}

/* ---- parts and chunks ---- */

/* A part/chunk literal was announced: its verdict is the memo's, for the UID the response
 * names or, without one, the UID our own FETCH saw at that sequence number. */
static void start_part(struct session *s, enum fi_kind kind, uint64_t origin)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    sc->part_kind = kind;
    sc->part_origin = origin;
    sc->part_ranged = sc_item_ranged(kind, &sc->fi);
    sc->lit_len = st->downf.literal_len;
    sc->phase = SC_PART_WAIT;
    sc->part_uid = sc->fi.uid ? sc->fi.uid : pf_map_uid(sc, sc->seq);
    sc->part_why = NULL;
    if (!sc->part_uid)
        sc->part_why = "message-not-identified";
    else if (!sc_memo_find(sc, sc->part_uid))
        sc->part_why = sc->pf_failed ? "prefetch-failed" : "message-not-judged";
}

/* The verdict for the held part is in (and output may start): apply it. Returns true while
 * the filter must stay paused. */
static bool apply_part(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    struct buf *b = &s->down;
    struct sc_memo *m = sc->part_why ? NULL : sc_memo_find(sc, sc->part_uid);
    const char *why = sc->part_why ? sc->part_why : "message-not-judged";
    if (m && m->replaced && !m->notice) {
        m = NULL; /* its notice could not be kept */
        why = "out-of-memory";
    }
    bool replace;
    struct msgscan_outcome blocked = {0};
    const char *notice = NULL;
    size_t nlen = 0, body_off = 0;
    if (m) {
        replace = m->replaced;
        notice = m->notice;
        nlen = m->notice_len;
        body_off = m->body_off;
    } else {
        /* The whole message could not be judged: error_action (msgscan logs it). */
        char where[MSGSCAN_WHERE_MAX];
        sc_where(where, sizeof where, sc->mailbox, sc->part_uid, sc->seq);
        struct msgscan_item item = {.proto = "imap", .where = where};
        if (!msgscan_unjudged(s, &item, NULL, 0, why, &blocked)) {
            fail_session(s, "out of memory");
            return true;
        }
        replace = blocked.replace;
        if (replace) {
            notice = blocked.notice;
            nlen = blocked.notice_len;
            body_off = sc_body_offset(notice, nlen);
        }
    }
    ka_stop(s);
    if (!replace) {
        buf_release(b, st->down_held);
        st->down_held = 0;
        st->down_part_out = true;
        sc->resp_released = true;
        sc->phase = SC_PASS_LIT;
        return false;
    }
    const char *rp;
    size_t rn;
    sc_replacement(notice, nlen, body_off, sc->part_kind, sc->part_ranged, sc->part_origin,
                   sc->lit_len, &rp, &rn);
    const char *held = buf_mptr(b);
    size_t h = sc_lit_hdr_start(held, st->down_held);
    char *blk = malloc(h + 32 + rn);
    if (!blk) {
        msgscan_outcome_clear(&blocked);
        fail_session(s, "out of memory");
        return true;
    }
    memcpy(blk, held, h);
    size_t w = h + sc_lit_hdr(blk + h, 32, held + h, rn);
    memcpy(blk + w, rp, rn);
    w += rn;
    msgscan_outcome_clear(&blocked);
    buf_cut_held(b, 0, st->down_held);
    st->down_held = 0;
    st->down_part_out = true;
    sc->resp_released = true;
    sc->phase = SC_DROP_LIT;
    if (!out_push(s, blk, w, 0))
        fail_session(s, "out of memory");
    return true;
}

/* ---- quoted content and unparsable text (issue 15) ----
 *
 * A content item whose value is a quoted string (PREVIEW, SNIPPET, any unknown item, a small
 * BODY[1] sent as "...") carries message text without a literal, and text the tokenizer could
 * not parse may carry anything. Such a response passes only when its message was judged clean.
 * Held whole (no literal in it): it is judged like a part at its end and, if not clean, each
 * quoted content string is replaced with NIL (unparsable text: the response is dropped).
 * Mixed with a literal, or too long to hold: not clean means the session ends (fail closed). */

/* The message of the held part was judged, and judged clean. */
static bool judged_clean(struct imap_scan *sc)
{
    const struct sc_memo *m = sc->part_why ? NULL : sc_memo_find(sc, sc->part_uid);
    return m && !m->replaced;
}

static void refuse_unparsed(struct session *s, const char *why)
{
    sess_log(s, LOG_INFO, "event=refused reason=fetch_content_unjudged error=%s", LOG_QS(why));
    sess_end(s, why, "FETCH response carries content the proxy cannot replace.");
}

/* The held response (all of it in s->down, all of it fed to the tokenizer) with every quoted
 * content string replaced by NIL; malloc'd, NULL if a span is not inside the held text. */
static char *nil_spans(struct session *s, size_t *len_r)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    const char *held = buf_mptr(&s->down);
    size_t base = sc->fi.off - st->down_held; /* fed offset of the first held byte */
    unsigned n;
    const struct fi_span *sp = fi_spans(&sc->fi, &n);
    char *out = malloc(st->down_held + 1);
    if (!out)
        return NULL;
    size_t w = 0, r = 0;
    for (unsigned i = 0; i < n; i++) {
        if (sp[i].off < base + r || sp[i].off + sp[i].len > base + st->down_held) {
            free(out);
            return NULL;
        }
        size_t at = sp[i].off - base;
        memcpy(out + w, held + r, at - r);
        w += at - r;
        static const char nil[3] = {'N', 'I', 'L'}; /* a span is at least 3 bytes: "x" */
        memcpy(out + w, nil, sizeof nil);
        w += sizeof nil;
        r = at + sp[i].len;
    }
    memcpy(out + w, held + r, st->down_held - r);
    *len_r = w + st->down_held - r;
    return out;
}

/* The verdict for a held response with quoted content (or unparsable text) is in. */
static void apply_quoted(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    struct buf *b = &s->down;
    sc->quoted_wait = false;
    sc->phase = SC_IDLE;
    ka_stop(s);
    if (judged_clean(sc)) {
        buf_release(b, st->down_held);
        st->down_held = 0;
        st->down_part_out = false;
        return;
    }
    char q[SC_MAILBOX_MAX + 8];
    const char *mb = sc->mailbox ? log_q(q, sizeof q, sc->mailbox, strlen(sc->mailbox)) : "-";
    size_t len = 0;
    char *text = fi_error(&sc->fi) ? NULL : nil_spans(s, &len);
    if (!text && !fi_error(&sc->fi)) {
        refuse_unparsed(s, "quoted content outside the held FETCH response");
        return;
    }
    sess_log(s, LOG_INFO,
             "event=refused reason=fetch_quoted_content mailbox=%s uid=%llu seq=%llu "
             "action=%s judged=%s",
             mb, (unsigned long long)sc->fi.uid, (unsigned long long)sc->seq, text ? "nil" : "drop",
             !sc->part_why && sc_memo_find(sc, sc->part_uid) ? "blocked" : "unjudged");
    buf_cut_held(b, 0, st->down_held);
    st->down_held = 0;
    if (!text) {
        /* unparsable: nothing of it can be shown to be free of the content */
        if (sc->resp_released)
            refuse_unparsed(s, "unparsable FETCH response partly sent");
        return;
    }
    st->down_part_out = false;
    if (!out_push(s, text, len, 0))
        fail_session(s, "out of memory");
}

/* ---- the hooks ---- */

/* May the down filter frame more? Not while our blocks are being sent (CONN_EV_DRAINED brings
 * it back) or while a response waits for its verdict or budget (the result brings it back). */
static bool down_paused(struct session *s, struct imap_scan *sc)
{
    if (conn_queued_blocks(&s->client) > 0)
        return true;
    switch (sc->phase) {
    case SC_BUDGET:
        return true;
    case SC_VERDICT_WAIT:
        if (!sc->have_outcome)
            return true;
        if (sc->suffix_strict && sc->outcome.replace)
            refuse_unparsed(s, "quoted content or unparsable text after a blocked message");
        else
            release_whole(s);
        break;
    case SC_PART_WAIT:
        if (sc->quoted_wait)
            apply_quoted(s);
        else if (sc->part_strict && !judged_clean(sc))
            refuse_unparsed(s, "quoted content or unparsable text before a blocked part");
        else
            apply_part(s);
        break;
    default:
        return false;
    }
    return s->closing || conn_queued_blocks(&s->client) > 0;
}

bool imap_scan_down_paused(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (!sc)
        return false;
    sc->busy = true;
    bool r = down_paused(s, sc);
    sc->busy = false;
    return r;
}

static bool scan_frame(struct session *s, struct imap_scan *sc, enum imap_frame_event ev,
                       size_t used);

bool imap_scan_frame(struct session *s, enum imap_frame_event ev, size_t used)
{
    struct imap_scan *sc = imap_sc(s);
    sc->busy = true;
    bool r = scan_frame(s, sc, ev, used);
    sc->busy = false;
    return r;
}

static void log_unparsed(struct session *s, struct imap_scan *sc)
{
    const char *e = fi_error(&sc->fi);
    if (e)
        sess_log(s, LOG_INFO, "event=fetch_unparsed error=%s seq=%llu", LOG_QS(e),
                 (unsigned long long)sc->seq);
}

static bool scan_frame(struct session *s, struct imap_scan *sc, enum imap_frame_event ev,
                       size_t used)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->down;
    const struct imap_framer *f = &st->downf;
    bool lit_data = sc->in_lit;
    if (ev == IMAP_FRAME_LITERAL)
        sc->in_lit = true;
    else if (ev == IMAP_FRAME_LITERAL_END)
        sc->in_lit = false;

    if (!sc->resp_open) {
        sc->resp_open = true;
        sc->resp_fetch = -1;
        sc->resp_released = false;
        sc->phase = SC_IDLE;
        sc->quoted_wait = sc->part_strict = sc->suffix_strict = false;
        fi_init(&sc->fi);
    }
    if (sc->resp_fetch < 0) {
        bool line_done = ev != IMAP_FRAME_MORE;
        int r = fi_is_fetch(f->head, f->head_len, &sc->seq);
        if (r < 0 && (line_done || f->head_len >= IMAP_HEAD_MAX))
            r = 0;
        if (r < 0)
            return true; /* hold until we know */
        sc->resp_fetch = r;
        sc->resp_pcj = r == 1 && sc->pf == PF_SENT;
        if (r == 1) {
            sc->phase = SC_HOLD;
            /* all of the response so far is held: tokenize it whole */
            fi_feed(&sc->fi, buf_mptr(b), st->down_held);
            lit_data = false;
            used = 0;
        }
    }
    if (sc->resp_fetch == 0) {
        bool tagged = f->head_len > 0 && f->head[0] != '*' && f->head[0] != '+';
        bool ours = tagged && pf_tagged_is_ours(s, f);
        if (tagged && !ours && ev == IMAP_FRAME_MORE && pf_tagged_may_be_ours(s, f))
            return true; /* held until its tag is complete */
        if (ours) {
            /* our FETCH's tagged answer: swallowed whole, however it arrives */
            buf_cut_held(b, 0, st->down_held);
            st->down_held = 0;
        }
        if (ev == IMAP_FRAME_END) {
            if (!ours)
                sc_note_other_response(sc, f);
            if (!tagged)
                pf_note_untagged(sc, f);
            sc->resp_open = false;
            if (tagged)
                pf_tagged_end(s, f);
        }
        return ours;
    }

    /* an untagged FETCH */
    size_t end = st->down_held; /* held offset of the end of this step's bytes */
    const char *chunk = buf_mptr(b) + end - used;
    if (!lit_data && used)
        fi_feed(&sc->fi, chunk, used);
    bool mine = false;
    switch (sc->phase) {
    case SC_IDLE:
    case SC_HOLD:
        /* Lines are framed without a cap after login (issue 15), but a FETCH response is held
         * until its content is judged, and no part of it streams unjudged: text too long to
         * hold ends the session. Counted without the line's LF, so the outcome does not
         * depend on how the bytes arrive. An answer to our own FETCH is never released: over
         * SC_HOLD_LINE it is dropped and its messages stay unjudged. */
        if (sc->resp_pcj && st->down_held > SC_HOLD_LINE) {
            drop_resp(s);
            return true;
        }
        if (st->down_held >
                s->cfg->limits.relay_buffer - SC_HOLD_SLACK + (ev == IMAP_FRAME_MORE ? 0 : 1) &&
            ev == IMAP_FRAME_MORE && fi_may_release(&sc->fi)) {
            /* Nothing held may be content yet to be judged (the tokenizer proves it): let the
             * start go, keep the tail (a literal header at its end may have to change). */
            buf_release(b, st->down_held - 64);
            st->down_held = 64;
            st->down_part_out = true;
            sc->resp_released = true;
        } else if (st->down_held >
                   s->cfg->limits.relay_buffer - SC_HOLD_SLACK + (ev == IMAP_FRAME_MORE ? 0 : 1)) {
            sess_log(s, LOG_WARN, "event=refused reason=fetch_line_too_long held=%zu",
                     st->down_held);
            sess_end(s, "FETCH response line too long to scan", "FETCH response too long to scan.");
            return true;
        }
        if (ev == IMAP_FRAME_MORE) {
            sc->phase = SC_HOLD;
            mine = true;
        } else if (ev == IMAP_FRAME_LITERAL) {
            uint64_t origin;
            enum fi_kind k = fi_literal_kind(&sc->fi, &origin);
            if (sc->resp_pcj && (k != FI_WHOLE || sc->pf_count >= sc->pf_max)) {
                if (k == FI_WHOLE && sc->pf_count++ == sc->pf_max)
                    sess_log(s, LOG_WARN, "event=prefetch_limit max=%lu action=unjudged",
                             sc->pf_max);
                drop_resp(s);
                mine = true;
            } else if (fi_error(&sc->fi) || fi_quoted_content(&sc->fi)) {
                /* the held text may carry content itself: judged on the whole message, and
                 * it passes only if that is clean (else the session ends) */
                log_unparsed(s, sc);
                sc->part_strict = true;
                start_part(s, k == FI_NONE ? FI_PART : k, origin);
                mine = true;
            } else if (k == FI_WHOLE) {
                if (sc->resp_pcj)
                    sc->pf_count++;
                mine = start_whole(s);
            } else if (k == FI_PARTIAL || k == FI_PART) {
                start_part(s, k, origin);
                mine = true;
            } else {
                sc->phase = SC_PASS_LIT;
                sc->resp_released = true;
            }
        } else if (ev == IMAP_FRAME_END && (fi_error(&sc->fi) || fi_quoted_content(&sc->fi))) {
            /* held whole: judged like a part, then released or rewritten (apply_quoted) */
            log_unparsed(s, sc);
            start_part(s, FI_PART, 0);
            sc->quoted_wait = true;
            mine = true;
        }
        /* END: no content in it; all of it goes, unless it answers our own FETCH (an
         * unsolicited FETCH, FLAGS only, goes on) */
        if (ev == IMAP_FRAME_END && sc->resp_pcj &&
            memmem(buf_mptr(b), st->down_held, "BODY[", 5)) {
            buf_cut_held(b, 0, st->down_held);
            st->down_held = 0;
            mine = true;
        }
        break;
    case SC_DROP_RESP:
        buf_cut_held(b, 0, st->down_held);
        st->down_held = 0;
        mine = true;
        break;
    case SC_PASS_LIT:
        if (ev == IMAP_FRAME_LITERAL_END)
            sc->phase = SC_HOLD;
        break;
    case SC_DROP_LIT:
        buf_cut_held(b, end - used, used);
        st->down_held -= used;
        if (ev == IMAP_FRAME_LITERAL_END)
            sc->phase = SC_HOLD;
        mine = true;
        break;
    case SC_COLLECT: {
        size_t room = sc->msg_len - sc->msg_have;
        size_t n = used < room ? used : room; /* oversize under block: keep only the head */
        memcpy(sc->msg + sc->msg_have, chunk, n);
        sc->msg_have += n;
        buf_cut_held(b, end - used, used);
        st->down_held -= used;
        mine = true;
        if (ev == IMAP_FRAME_LITERAL_END) {
            sc->phase = SC_SUFFIX;
            whole_complete(s);
        }
        break;
    }
    case SC_SUFFIX:
        mine = true;
        if (!suffix_append(s, chunk, used))
            break;
        buf_cut_held(b, end - used, used);
        st->down_held -= used;
        if (ev == IMAP_FRAME_LITERAL) {
            uint64_t origin;
            enum fi_kind k = fi_literal_kind(&sc->fi, &origin);
            if (k != FI_NONE) {
                if (sc->nlits >= SC_LITS_MAX) {
                    fail_session(s, "too many content literals in one FETCH response");
                    break;
                }
                sc->lits[sc->nlits++] = (struct sc_lit){
                    .hdr_off = sc_lit_hdr_start(sc->text1, sc->text1_len),
                    .data_off = sc->text1_len,
                    .len = (size_t)f->literal_len,
                    .kind = k,
                    .ranged = sc_item_ranged(k, &sc->fi),
                    .origin = origin,
                };
            }
        } else if (ev == IMAP_FRAME_END) {
            sc->phase = SC_VERDICT_WAIT;
        }
        if (fi_error(&sc->fi) || fi_quoted_content(&sc->fi))
            sc->suffix_strict = true; /* text1 cannot be rewritten: pass only clean */
        break;
    case SC_BUDGET:
    case SC_VERDICT_WAIT:
    case SC_PART_WAIT:
        mine = true; /* not reached: the filter is paused */
        break;
    }
    if (ev == IMAP_FRAME_END) {
        sc->resp_open = false;
        if (sc->phase == SC_HOLD || sc->phase == SC_PASS_LIT || sc->phase == SC_DROP_RESP)
            sc->phase = SC_IDLE;
    }
    return mine;
}

bool imap_scan_idle(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    return !sc || (sc->phase == SC_IDLE && conn_queued_blocks(&s->client) == 0 && !sc->resp_open);
}

bool imap_scan_holding(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    return sc &&
           (sc->phase == SC_BUDGET || sc->phase == SC_VERDICT_WAIT || sc->phase == SC_PART_WAIT);
}

/* ---- logging ---- */

void sc_where(char *buf, size_t cap, const char *mailbox, uint64_t uid, uint64_t seq)
{
    char q[SC_MAILBOX_MAX + 8];
    const char *mb = mailbox ? log_q(q, sizeof q, mailbox, strlen(mailbox)) : "-";
    if (uid)
        snprintf(buf, cap, "mailbox=%s uid=%llu", mb, (unsigned long long)uid);
    else
        snprintf(buf, cap, "mailbox=%s seq=%llu", mb, (unsigned long long)seq);
}
