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
 *    on the whole message, which the second connection (imap_fetcher.c) fetches with
 *    BODY.PEEK[] and scans once. The response stays held in s->down meanwhile (its literal can
 *    be larger than the buffer: it is not needed). Clean: released. Replaced: the held text
 *    goes out with the literal length rewritten, then the replacement slice, and the original
 *    literal bytes are dropped as they arrive. Verdicts are remembered per (mailbox,
 *    UIDVALIDITY, UID) so later chunks of the same message do not fetch it again.
 *
 * Output ordering. Bytes the relay released before a held response are in s->down's
 * [rpos, mark) and go first; a held response starts at `mark`, so what is before it always ends
 * at a response boundary. Our output blocks are installed as s->client.wbuf (`out`, a buf whose
 * storage is the block) only once s->down's sendable region and the client's ctl buffer are
 * empty, and while they are installed the down filter frames nothing: when the last block has
 * drained, wbuf goes back to s->down and the filter goes on. conn_flush() frees a drained wbuf's
 * storage, which is how a block's memory is returned.
 *
 * Keep-alive: while a response is held and nothing of it has been released, an untagged
 * "* OK Still scanning" goes to the client's ctl buffer every keepalive_interval: ctl is sent
 * after s->down's released bytes, which end at a response boundary, so it is always between
 * two responses. Nothing is released while ctl holds bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_scan.h"
#include "notice.h"
#include "worker.h"
#include <time.h>

static void cut(struct buf *b, size_t off, size_t len)
{
    memmove(b->data + off, b->data + off + len, b->wpos - (off + len));
    b->wpos -= (uint32_t)len;
}

static char *dup_bytes(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- verdict memory (per session) ---- */

static void memo_clear(struct sc_memo *m)
{
    free(m->mailbox);
    free(m->notice);
    memset(m, 0, sizeof *m);
}

int sc_memo_find(struct imap_scan *sc, const char *mailbox, uint32_t uidvalidity, uint64_t uid)
{
    if (!mailbox || !uid)
        return -1;
    for (int i = 0; i < SC_MEMO_MAX; i++) {
        struct sc_memo *m = &sc->memo[i];
        if (m->mailbox && m->uid == uid && m->uidvalidity == uidvalidity &&
            strcmp(m->mailbox, mailbox) == 0)
            return i;
    }
    return -1;
}

/* Where the body of a message starts (after the first empty line), or len. */
static size_t body_offset(const char *p, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return i + 4;
    return len;
}

int sc_memo_store(struct imap_scan *sc, const char *mailbox, uint32_t uidvalidity, uint64_t uid,
                  uint64_t orig_len, const struct msgscan_outcome *o)
{
    if (!mailbox || !uid)
        return -1;
    int i = sc_memo_find(sc, mailbox, uidvalidity, uid);
    if (i < 0) {
        i = (int)(sc->memo_next++ % SC_MEMO_MAX);
    }
    struct sc_memo *m = &sc->memo[i];
    memo_clear(m);
    m->mailbox = strdup(mailbox);
    if (!m->mailbox)
        return -1;
    m->uidvalidity = uidvalidity;
    m->uid = uid;
    m->orig_len = orig_len;
    m->replaced = o->replace;
    if (o->replace) {
        m->notice = dup_bytes(o->notice, o->notice_len);
        if (!m->notice) {
            memo_clear(m);
            return -1;
        }
        m->notice_len = o->notice_len;
        m->body_off = body_offset(m->notice, m->notice_len);
    }
    return i;
}

/* ---- login, mailbox tracking ---- */

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
    sc->part_memo = -1;
    buf_init(&sc->out, 0);
    ev_init(&sc->ka, NULL);
    st->sc = sc;
    return true;
}

static void out_release_all(struct session *s, struct imap_scan *sc);
static void ka_stop(struct session *s);

void imap_scan_free(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    if (!sc)
        return;
    ka_stop(s);
    msgscan_cancel(&sc->judging);
    msgscan_wait_cancel(&sc->bwait);
    imap_fetcher_free(s);
    out_release_all(s, sc);
    free(sc->mailbox);
    free(sc->pending_mailbox);
    free(sc->msg); /* a message being collected or handed back, with its budget */
    msgscan_budget_release(sc->msg_budget);
    free(sc->text0);
    free(sc->text1);
    msgscan_outcome_clear(&sc->outcome);
    for (int i = 0; i < SC_MEMO_MAX; i++)
        memo_clear(&sc->memo[i]);
    free(sc);
    st->sc = NULL;
}

/* An astring (atom or quoted) at p; returns a malloc'd copy or NULL (literal, or malformed). */
static char *parse_astring(const char *p, size_t len)
{
    if (len == 0)
        return NULL;
    if (p[0] == '"') {
        char tmp[SC_MAILBOX_MAX];
        size_t o = 0;
        for (size_t i = 1; i < len; i++) {
            if (p[i] == '\\' && i + 1 < len)
                i++;
            else if (p[i] == '"')
                return dup_bytes(tmp, o);
            if (o >= sizeof tmp)
                return NULL;
            tmp[o++] = p[i];
        }
        return NULL;
    }
    if (p[0] == '{')
        return NULL;
    size_t n = 0;
    while (n < len && p[n] != ' ' && p[n] != '\r' && p[n] != '\n' && p[n] != '(')
        n++;
    return n ? dup_bytes(p, n) : NULL;
}

void imap_scan_command(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    if (!sc)
        return;
    const char *tag, *rest;
    size_t tl, rl;
    if (!imap_split_tag(st->upf.head, st->upf.head_len, &tag, &tl, &rest, &rl))
        return;
    size_t nl = 0;
    while (nl < rl && rest[nl] != ' ' && rest[nl] != '\r' && rest[nl] != '\n')
        nl++;
    bool sel = (nl == 6 && strncasecmp(rest, "SELECT", 6) == 0) ||
               (nl == 7 && strncasecmp(rest, "EXAMINE", 7) == 0);
    bool unsel = (nl == 5 && strncasecmp(rest, "CLOSE", 5) == 0) ||
                 (nl == 8 && strncasecmp(rest, "UNSELECT", 8) == 0);
    if (!sel && !unsel)
        return;
    /* RFC 3501 6.3.1: a SELECT deselects at once, and a failed one leaves nothing selected. */
    free(sc->mailbox);
    sc->mailbox = NULL;
    sc->uidvalidity = 0;
    free(sc->pending_mailbox);
    sc->pending_mailbox = NULL;
    sc->pending_tag[0] = '\0';
    if (!sel || nl + 1 >= rl)
        return;
    sc->pending_mailbox = parse_astring(rest + nl + 1, rl - nl - 1);
    if (sc->pending_mailbox && strcasecmp(sc->pending_mailbox, "INBOX") == 0)
        memcpy(sc->pending_mailbox, "INBOX", 5); /* RFC 3501 5.1: case-insensitive */
    sc->pending_uidvalidity = 0;
    memcpy(sc->pending_tag, tag, tl);
    sc->pending_tag[tl] = '\0';
}

/* A whole response that is not an untagged FETCH: watch the SELECT/EXAMINE in flight. */
static void note_other_response(struct imap_scan *sc, const struct imap_framer *f)
{
    if (!sc->pending_tag[0])
        return;
    const char *h = f->head;
    size_t hl = f->head_len;
    static const char uv[] = "* OK [UIDVALIDITY ";
    if (hl > sizeof uv && strncasecmp(h, uv, sizeof uv - 1) == 0) {
        sc->pending_uidvalidity = (uint32_t)strtoul(h + sizeof uv - 1, NULL, 10);
        return;
    }
    size_t tl = strlen(sc->pending_tag);
    if (hl > tl + 3 && memcmp(h, sc->pending_tag, tl) == 0 && h[tl] == ' ') {
        if (strncasecmp(h + tl + 1, "OK", 2) == 0 && sc->pending_mailbox) {
            sc->mailbox = sc->pending_mailbox;
            sc->pending_mailbox = NULL;
            sc->uidvalidity = sc->pending_uidvalidity;
        }
        free(sc->pending_mailbox);
        sc->pending_mailbox = NULL;
        sc->pending_tag[0] = '\0';
    }
}

/* ---- output blocks ---- */

static void out_release_all(struct session *s, struct imap_scan *sc)
{
    (void)s;
    if (sc->out_active && sc->out.data) {
        buf_free(&sc->out);
        if (sc->outi < sc->outn)
            msgscan_budget_release(sc->outq[sc->outi].budget);
        sc->outi++;
    }
    for (unsigned i = sc->outi; i < sc->outn; i++) {
        free(sc->outq[i].data);
        msgscan_budget_release(sc->outq[i].budget);
    }
    sc->outn = sc->outi = 0;
    sc->out_active = false;
}

/* Queue a block for the client. Takes `data` and its budget in every case: on a full queue they
 * are freed at once (the caller fails the session), so no error path leaks them. */
static bool out_push(struct imap_scan *sc, char *data, size_t len, size_t budget)
{
    if (sc->outn >= SC_OUT_MAX) {
        free(data);
        msgscan_budget_release(budget);
        return false;
    }
    sc->outq[sc->outn++] = (struct sc_out){data, len, budget};
    return true;
}

/* Install the next non-empty block as the client's wbuf; false when none is left. */
static bool out_next(struct session *s, struct imap_scan *sc)
{
    while (sc->outi < sc->outn) {
        struct sc_out *o = &sc->outq[sc->outi];
        if (o->len == 0) {
            free(o->data);
            msgscan_budget_release(o->budget);
            sc->outi++;
            continue;
        }
        sc->out.data = o->data;
        sc->out.cap = (uint32_t)o->len;
        sc->out.rpos = 0;
        sc->out.mark = sc->out.wpos = (uint32_t)o->len;
        o->data = NULL; /* now sc->out's (conn_flush frees it when drained) */
        s->client.wbuf = &sc->out;
        sc->out_active = true;
        return true;
    }
    sc->outn = sc->outi = 0;
    sc->out_active = false;
    if (s->client.wbuf == &sc->out)
        s->client.wbuf = &s->down;
    return false;
}

/* May output be installed now without overtaking anything? */
static bool can_output(struct session *s)
{
    return s->client.wbuf == &s->down && buf_sendable(&s->down) == 0 && buf_empty(&s->client.ctl);
}

/* Send the installed blocks. conn_flush() is called here, not only from the I/O callbacks:
 * a block that drains inside sess_pump() produces no write event, and nothing else would
 * install the next one. True while output is still in progress (the socket is full). */
static bool out_pump(struct session *s, struct imap_scan *sc)
{
    for (;;) {
        if (s->client.wbuf != &sc->out) {
            /* The relay took wbuf back (error/close path): these blocks never go out. */
            out_release_all(s, sc);
            return false;
        }
        if (sc->out.data && sc->out.rpos != sc->out.wpos) {
            conn_flush(&s->client);
            if (s->client.error)
                return true; /* sess_pump() closes the session */
            if (sc->out.data && sc->out.rpos != sc->out.wpos)
                return true; /* a write event calls the filter again */
        }
        buf_free(&sc->out);
        msgscan_budget_release(sc->outq[sc->outi].budget);
        sc->outi++;
        if (!out_next(s, sc))
            return false;
    }
}

/* ---- keep-alive ---- */

static void ka_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = t->data;
    struct imap_scan *sc = imap_sc(s);
    if (s->closing || !sc || sc->resp_released || sc->out_active)
        return;
    if (sc->phase != SC_BUDGET && sc->phase != SC_COLLECT && sc->phase != SC_SUFFIX &&
        sc->phase != SC_VERDICT_WAIT && sc->phase != SC_PART_WAIT)
        return;
    if (!buf_empty(&s->client.ctl) || s->client.wbuf != &s->down)
        return;
    conn_ctl_printf(&s->client, "* OK Still scanning\r\n");
    sess_pump(s);
}

static void ka_start(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    double iv = (double)s->cfg->scan.keepalive_interval_ms / 1000.0;
    if (sc->ka_on || iv <= 0)
        return;
    ev_timer_init(&sc->ka, ka_cb, iv, iv);
    sc->ka.data = s;
    ev_timer_start(s->worker->loop, &sc->ka);
    sc->ka_on = true;
}

static void ka_stop(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc && sc->ka_on) {
        ev_timer_stop(s->worker->loop, &sc->ka);
        sc->ka_on = false;
    }
}

/* ---- replacement text ---- */

/* Where the literal header "{n}" / "~{n}" starts at the end of `p` (a line ending in it). */
static size_t lit_hdr_start(const char *p, size_t len)
{
    size_t i = len;
    while (i > 0 && p[i - 1] != '{')
        i--;
    if (i == 0)
        return len;
    return i - 1;
}

/* Write "{n}\r\n" (after a "~" when the original was a literal8) into out. */
static size_t lit_hdr(char *out, size_t cap, const char *orig_hdr, size_t n)
{
    (void)orig_hdr;
    int k = snprintf(out, cap, "{%zu}\r\n", n);
    return k > 0 ? (size_t)k : 0;
}

/* The replacement bytes for a literal of `kind` at `origin` that had `len` bytes. PARTIAL of a
 * message of orig_len bytes: the same range of the notice, except that the original's last
 * chunk gets the rest of the notice (a notice longer than the message is then still whole
 * for a client that stops at the message's end); a part: the notice's text, sliced likewise. */
static void replacement(const char *notice, size_t nlen, size_t body_off, uint64_t orig_len,
                        enum fi_kind kind, uint64_t origin, uint64_t len, const char **p_r,
                        size_t *n_r)
{
    const char *r = notice;
    size_t rl = nlen;
    if (kind == FI_PART) {
        r = notice + body_off;
        rl = nlen - body_off;
    }
    if (kind == FI_WHOLE || (kind == FI_PART && origin == 0)) {
        *p_r = r;
        *n_r = rl;
        return;
    }
    if (origin >= rl || (kind == FI_PARTIAL && origin >= orig_len)) {
        *p_r = r;
        *n_r = 0;
        return;
    }
    uint64_t end = origin + len;
    if (kind == FI_PARTIAL && end >= orig_len)
        end = rl;
    if (end > rl)
        end = rl;
    *p_r = r + origin;
    *n_r = (size_t)(end - origin);
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

static void fail_session(struct session *s, const char *why)
{
    sess_log(s, LOG_WARN, "event=scan_error error=\"%s\"", why);
    s->proto->bye(s, "Internal error while scanning a message.");
    sess_close_after_flush(s, why);
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
        msgscan_budget_release(budget);
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

/* The response is all held: send it on, as it was or with the notice. */
static void release_whole(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    struct msgscan_outcome *o = &sc->outcome;
    if (sc->mailbox && sc->fi.uid && !sc->oversize_block)
        sc_memo_store(sc, sc->mailbox, sc->uidvalidity, sc->fi.uid, sc->lit_len, o);
    bool ok = true;
    if (!o->replace && !sc->msg) {
        fail_session(s, "scan returned no message");
        return;
    }
    if (!o->replace) {
        /* Not short-circuited: every push takes its block, queued or freed. */
        ok = out_push(sc, sc->text0, sc->text0_len, 0);
        ok = out_push(sc, sc->msg, sc->msg_len, sc->msg_budget) && ok;
        ok = out_push(sc, sc->text1, sc->text1_len, 0) && ok;
        sc->text0 = sc->msg = sc->text1 = NULL;
        sc->msg_budget = 0;
    } else {
        free(sc->msg);
        msgscan_budget_release(sc->msg_budget);
        sc->msg = NULL;
        sc->msg_budget = 0;
        /* text0 ends in the literal header: rewrite its length */
        size_t h = lit_hdr_start(sc->text0, sc->text0_len);
        char *t0 = malloc(h + 32);
        if (t0) {
            memcpy(t0, sc->text0, h);
            size_t k = lit_hdr(t0 + h, 32, sc->text0 + h, o->notice_len);
            ok = out_push(sc, t0, h + k, 0);
        } else {
            ok = false;
        }
        ok = out_push(sc, o->notice, o->notice_len, 0) && ok;
        o->notice = NULL; /* the block owns it now; the memo has its own copy */
        /* text1 with its content literals replaced too (same message) */
        size_t cap = sc->text1_len + 64;
        for (unsigned i = 0; i < sc->nlits; i++)
            cap += 32 + sc->outq[1].len;
        char *t1 = ok ? malloc(cap) : NULL;
        if (t1) {
            size_t w = 0, r = 0;
            for (unsigned i = 0; i < sc->nlits; i++) {
                struct sc_lit *l = &sc->lits[i];
                memcpy(t1 + w, sc->text1 + r, l->hdr_off - r);
                w += l->hdr_off - r;
                const char *rp;
                size_t rn;
                replacement(sc->outq[1].data, sc->outq[1].len,
                            body_offset(sc->outq[1].data, sc->outq[1].len), sc->lit_len, l->kind,
                            l->origin, l->len, &rp, &rn);
                w += lit_hdr(t1 + w, 32, NULL, rn);
                memcpy(t1 + w, rp, rn);
                w += rn;
                r = l->data_off + l->len;
            }
            if (sc->text1_len > r)
                memcpy(t1 + w, sc->text1 + r, sc->text1_len - r);
            w += sc->text1_len - r;
            ok = out_push(sc, t1, w, 0);
        } else {
            ok = false;
        }
        free(sc->text0);
        free(sc->text1);
        sc->text0 = sc->text1 = NULL;
    }
    sc->text0_len = sc->text1_len = sc->text1_cap = 0;
    sc->nlits = 0;
    sc->have_outcome = false;
    memset(&sc->outcome, 0, sizeof sc->outcome);
    sc->phase = SC_IDLE;
    ka_stop(s);
    if (!ok) {
        fail_session(s, "out of memory");
        return;
    }
    out_next(s, sc);
}

static void budget_granted(void *arg);

/* Take the held response text out of s->down into text0 and start collecting the literal. */
static bool begin_collect(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    struct buf *b = &s->down;
    sc->text0 = dup_bytes(b->data + b->mark, st->down_held);
    size_t want = sc->oversize_block ? NOTICE_HEADER_SCAN : (size_t)sc->lit_len;
    if (want > sc->lit_len)
        want = (size_t)sc->lit_len;
    sc->msg = malloc(want ? want : 1);
    if (!sc->text0 || !sc->msg) {
        fail_session(s, "out of memory");
        return false;
    }
    sc->text0_len = st->down_held;
    cut(b, b->mark, st->down_held);
    st->down_held = 0;
    sc->msg_len = want;
    sc->msg_have = 0;
    sc->phase = SC_COLLECT;
    return true;
}

static void budget_granted(void *arg)
{
    struct session *s = arg;
    struct imap_scan *sc = imap_sc(s);
    if (s->closing || !sc || sc->phase != SC_BUDGET)
        return;
    sc->msg_budget = sc->oversize_block ? NOTICE_HEADER_SCAN : (size_t)sc->lit_len;
    if (begin_collect(s))
        wake(s);
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
            if (msgscan_oversize(s, &item, NULL, 0, sc->lit_len, &o))
                msgscan_outcome_clear(&o);
            sc->phase = SC_PASS_LIT;
            sc->resp_released = true;
            return false;
        }
        sc->oversize_block = true;
    }
    size_t need = sc->oversize_block ? NOTICE_HEADER_SCAN : (size_t)sc->lit_len;
    if (need > sc->lit_len)
        need = (size_t)sc->lit_len;
    enum msgscan_budget_rc rc = msgscan_budget_acquire(s, need, &sc->bwait, budget_granted, s);
    ka_start(s);
    if (rc == MSGSCAN_BUDGET_TOO_BIG) {
        fail_session(s, "message larger than the scan memory budget");
        return true;
    }
    if (rc == MSGSCAN_BUDGET_WAIT) {
        sc->phase = SC_BUDGET; /* held in s->down; nothing framed until the grant */
        return true;
    }
    sc->msg_budget = need;
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

static void part_fetched(struct session *s, int rc, int memo)
{
    struct imap_scan *sc = imap_sc(s);
    if (!sc || sc->phase != SC_PART_WAIT)
        return;
    sc->part_rc = rc;
    sc->part_memo = memo;
    wake(s);
}

/* A part/chunk literal was announced: decide now from memory or ask the fetcher. */
static void start_part(struct session *s, enum fi_kind kind, uint64_t origin)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    sc->part_kind = kind;
    sc->part_origin = origin;
    sc->lit_len = st->downf.literal_len;
    sc->phase = SC_PART_WAIT;
    int i = sc_memo_find(sc, sc->mailbox, sc->uidvalidity, sc->fi.uid);
    if (i >= 0) {
        char q[SC_MAILBOX_MAX + 8];
        sess_log(s, LOG_DEBUG, "event=scan_memo mailbox=%s uid=%llu",
                 log_q(q, sizeof q, sc->mailbox, strlen(sc->mailbox)),
                 (unsigned long long)sc->fi.uid);
        sc->part_rc = 1;
        sc->part_memo = i;
        return;
    }
    if (!sc->mailbox) {
        sc->part_rc = -1; /* no mailbox we could name to the second connection */
        sc->part_memo = -1;
        return;
    }
    sc->part_rc = 2;
    ka_start(s);
    if (!imap_fetcher_request(s, sc->mailbox, sc->uidvalidity, sc->fi.uid, sc->fi.uid ? 0 : sc->seq,
                              part_fetched)) {
        sc->part_rc = -1;
        sc->part_memo = -1;
    }
}

/* The verdict for the held part is in (and output may start): apply it. Returns true while
 * the filter must stay paused. */
static bool apply_part(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    struct buf *b = &s->down;
    struct sc_memo *m = sc->part_rc == 1 && sc->part_memo >= 0 ? &sc->memo[sc->part_memo] : NULL;
    bool replace;
    struct msgscan_outcome blocked = {0};
    const char *notice = NULL;
    size_t nlen = 0, body_off = 0;
    uint64_t orig_len = 0;
    if (m) {
        replace = m->replaced;
        notice = m->notice;
        nlen = m->notice_len;
        body_off = m->body_off;
        orig_len = m->orig_len;
    } else {
        /* The whole message could not be judged: error_action (msgscan logs it). */
        char where[MSGSCAN_WHERE_MAX];
        sc_where(where, sizeof where, sc->mailbox, sc->fi.uid, sc->seq);
        struct msgscan_item item = {.proto = "imap", .where = where};
        if (!msgscan_unjudged(s, &item, NULL, 0,
                              sc->part_rc == 0 ? "message-not-found" : "fetch-failed", &blocked)) {
            fail_session(s, "out of memory");
            return true;
        }
        replace = blocked.replace;
        if (replace) {
            notice = blocked.notice;
            nlen = blocked.notice_len;
            body_off = body_offset(notice, nlen);
            orig_len = 0;
        }
    }
    ka_stop(s);
    if (!replace) {
        b->mark += (uint32_t)st->down_held;
        st->down_held = 0;
        sc->resp_released = true;
        sc->phase = SC_PASS_LIT;
        return false;
    }
    const char *rp;
    size_t rn;
    uint64_t ol = orig_len;
    if (!m)
        ol = sc->part_origin + sc->lit_len; /* unknown: treat this chunk as the last */
    replacement(notice, nlen, body_off, ol, sc->part_kind, sc->part_origin, sc->lit_len, &rp, &rn);
    const char *held = b->data + b->mark;
    size_t h = lit_hdr_start(held, st->down_held);
    char *blk = malloc(h + 32 + rn);
    if (!blk) {
        msgscan_outcome_clear(&blocked);
        fail_session(s, "out of memory");
        return true;
    }
    memcpy(blk, held, h);
    size_t w = h + lit_hdr(blk + h, 32, held + h, rn);
    memcpy(blk + w, rp, rn);
    w += rn;
    msgscan_outcome_clear(&blocked);
    cut(b, b->mark, st->down_held);
    st->down_held = 0;
    sc->resp_released = true;
    sc->phase = SC_DROP_LIT;
    out_push(sc, blk, w, 0);
    out_next(s, sc);
    return true;
}

/* ---- the hooks ---- */

static bool down_paused(struct session *s, struct imap_scan *sc)
{
    if (sc->out_active && out_pump(s, sc))
        return true;
    switch (sc->phase) {
    case SC_BUDGET:
        return true;
    case SC_VERDICT_WAIT:
        if (!sc->have_outcome || !can_output(s))
            return true;
        release_whole(s);
        break;
    case SC_PART_WAIT:
        if (sc->part_rc == 2 || !can_output(s))
            return true;
        apply_part(s);
        break;
    default:
        return false;
    }
    if (s->closing || s->state != SESS_RELAY)
        return true;
    return sc->out_active && out_pump(s, sc);
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
        if (r == 1) {
            sc->phase = SC_HOLD;
            /* all of the response so far is held: tokenize it whole */
            fi_feed(&sc->fi, b->data + b->mark, st->down_held);
            lit_data = false;
            used = 0;
        }
    }
    if (sc->resp_fetch == 0) {
        if (ev == IMAP_FRAME_END) {
            note_other_response(sc, f);
            sc->resp_open = false;
        }
        return false;
    }

    /* an untagged FETCH */
    size_t end = b->mark + st->down_held;
    const char *chunk = b->data + end - used;
    if (!lit_data && used)
        fi_feed(&sc->fi, chunk, used);
    bool mine = false;
    switch (sc->phase) {
    case SC_IDLE:
    case SC_HOLD:
        if (ev == IMAP_FRAME_MORE) {
            sc->phase = SC_HOLD;
            if (st->down_held > SC_HOLD_LINE) {
                /* A very long line: let its start go (only the literal header at its end may
                 * have to change). No keep-alive inside this response any more. */
                b->mark += (uint32_t)(st->down_held - 64);
                st->down_held = 64;
                sc->resp_released = true;
            }
            mine = true;
        } else if (ev == IMAP_FRAME_LITERAL) {
            uint64_t origin;
            enum fi_kind k = fi_literal_kind(&sc->fi, &origin);
            if (k == FI_WHOLE) {
                mine = start_whole(s);
            } else if (k == FI_PARTIAL || k == FI_PART) {
                start_part(s, k, origin);
                mine = true;
            } else {
                sc->phase = SC_PASS_LIT;
                sc->resp_released = true;
            }
        }
        /* END: no content in it; all of it goes */
        break;
    case SC_PASS_LIT:
        if (ev == IMAP_FRAME_LITERAL_END)
            sc->phase = SC_HOLD;
        break;
    case SC_DROP_LIT:
        cut(b, end - used, used);
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
        cut(b, end - used, used);
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
        cut(b, end - used, used);
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
                    .hdr_off = lit_hdr_start(sc->text1, sc->text1_len),
                    .data_off = sc->text1_len,
                    .len = (size_t)f->literal_len,
                    .kind = k,
                    .origin = origin,
                };
            }
        } else if (ev == IMAP_FRAME_END) {
            sc->phase = SC_VERDICT_WAIT;
        }
        break;
    case SC_BUDGET:
    case SC_VERDICT_WAIT:
    case SC_PART_WAIT:
        mine = true; /* not reached: the filter is paused */
        break;
    }
    if (ev == IMAP_FRAME_END) {
        sc->resp_open = false;
        if (sc->phase == SC_HOLD || sc->phase == SC_PASS_LIT)
            sc->phase = SC_IDLE;
    }
    return mine;
}

bool imap_scan_idle(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    return !sc || (sc->phase == SC_IDLE && !sc->out_active && !sc->resp_open);
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
