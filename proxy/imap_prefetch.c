/*
 * imap_prefetch — parts and byte ranges are judged on the whole message, fetched by the proxy
 * on the client's own backend connection, between the client's commands (issue 15).
 *
 * Up (client → backend). Every client FETCH / UID FETCH line is held whole and parsed
 * (imap_cmdline.c). If it may return a part or a byte range (BODY[1], BODY[TEXT],
 * BODY[]<o.n>, RFC822.TEXT, BINARY[2], or an item not known to be content-free), it is not
 * forwarded: the relay stops framing client bytes behind it (order is kept), and once no client
 * command is outstanding on the backend (commands sent minus tagged answers seen; an IDLE
 * counts until its tagged answer) the proxy sends
 *
 *     PCJ<n> [UID ]FETCH <the client's set, verbatim> (UID BODY.PEEK[])
 *
 * Same connection, same set string, nothing in between: "*", "$" and sequence numbers mean
 * what they will mean for the client's command, and RFC 3501 7.4.1 forbids EXPUNGE responses
 * while a FETCH is answered, so the seq → UID map of our responses is the view of the client's
 * FETCH that follows at once. A line with a literal, one too long to hold, or one the parser
 * cannot read is refused with `tag BAD` (never guessed); one whose explicit set names more
 * than scan.max_prefetch_messages messages gets `tag NO [LIMIT]`.
 *
 * Down (imap_scan.c): while our FETCH is outstanding its `* n FETCH (UID u BODY[] {len}`
 * responses are judged in-band like a whole-message download and never sent; the verdicts go
 * to the memo (by UID) and seq → UID to `map`. Every other untagged response goes to the client
 * as the server sent it. Our tagged answer is swallowed here, then the held command goes on.
 * NO/BAD leaves the parts unjudged (error_action). Beyond max_prefetch_messages responses the
 * rest are dropped unjudged (their parts are then blocked).
 *
 * Then the client's part responses are decided from the memo by the UID in the response, or,
 * without one, by `map` — valid until the tagged answer of the command it was made for.
 * A UID FETCH of UIDs all judged already (memo, same selection) goes on without a prefetch: its
 * responses carry the UID.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_cmdline.h"
#include "imap_scan.h"
#include "sess_event.h"

/* ---- up ---- */

bool imap_prefetch_wants_line(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (!st->sc)
        return false;
    const char *tag, *rest;
    size_t tl, rl;
    if (!imap_split_tag(st->upf.head, st->upf.head_len, &tag, &tl, &rest, &rl))
        return false;
    if (rl >= 4 && strncasecmp(rest, "UID ", 4) == 0) {
        rest += 4;
        rl -= 4;
    }
    return rl >= 5 && strncasecmp(rest, "FETCH", 5) == 0 &&
           (rl == 5 || rest[5] == ' ' || rest[5] == '\r' || rest[5] == '\n');
}

bool imap_prefetch_up_blocked(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    return sc && sc->pf != PF_NONE;
}

void imap_prefetch_sent(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->sc && st->up_tag[0])
        st->sc->out_cmds++;
}

static void refuse_line(struct session *s, const char *tag, size_t tl, const char *answer,
                        const char *reason)
{
    char line[IMAP_TAG_MAX + 160];
    if (tl == 0 || tl > IMAP_TAG_MAX) {
        tag = "*";
        tl = 1;
    }
    int n = snprintf(line, sizeof line, "%.*s %s\r\n", (int)tl, tag, answer);
    sess_log(s, LOG_INFO, "event=refused reason=%s", reason);
    imap_relay_inject(s, line, (size_t)n);
}

static bool in_memo(void *arg, uint64_t uid)
{
    return sc_memo_find(arg, uid) != NULL;
}

/* Send our FETCH once nothing of the client's is outstanding. */
static void pf_maybe_send(struct session *s)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc->pf != PF_WAIT || sc->out_cmds > 0)
        return;
    size_t sl = strlen(sc->pf_set);
    size_t cap = sl + 64;
    char *cmd = malloc(cap);
    if (!cmd) {
        sess_end(s, "out of memory", "Internal error.");
        return;
    }
    sc->pf_n++;
    int n = snprintf(cmd, cap, "PCJ%u %sFETCH %s (UID BODY.PEEK[])\r\n", sc->pf_n,
                     sc->pf_uid ? "UID " : "", sc->pf_set);
    if (sc->memo_count > sc->pf_max)
        sc_memo_reset(sc); /* room for every verdict of this prefetch */
    sc->pf = PF_SENT;
    sc->pf_count = 0;
    sc->pf_failed = false;
    sc->map_len = 0;
    sc->map_valid = false;
    sc->map_stale = false;
    if (!conn_queue(&s->backend, cmd, (size_t)n, NULL, NULL, 0)) {
        sess_end(s, "out of memory", "Internal error.");
        return;
    }
    sess_log(s, LOG_DEBUG, "event=prefetch n=%u uid=%d", sc->pf_n, sc->pf_uid ? 1 : 0);
}

enum pf_line imap_prefetch_line(struct session *s, const char *line, size_t len, bool bad)
{
    struct imap_scan *sc = imap_sc(s);
    struct icl_fetch f;
    enum icl_rc rc = bad ? ICL_BAD : icl_parse_fetch(line, len, &f);
    if (rc == ICL_NOT_FETCH)
        return PF_LINE_PASS;
    if (rc == ICL_BAD) {
        const char *tag, *rest;
        size_t tl = 0, rl;
        if (!imap_split_tag(imap_st(s)->upf.head, imap_st(s)->upf.head_len, &tag, &tl, &rest, &rl))
            tl = 0;
        refuse_line(s, tag, tl,
                    "BAD FETCH with a literal, or one this proxy cannot parse, is not accepted.",
                    "fetch_unparsed");
        return PF_LINE_REFUSED;
    }
    if (!f.part)
        return PF_LINE_PASS;
    /* UIDs all judged in this selection, and no selection change under way: no prefetch. */
    if (f.uid && !sc->pending_tag[0] && sc->memo_count > 0 &&
        icl_set_each(f.set, f.set_len, sc->memo_count, in_memo, sc))
        return PF_LINE_PASS;
    if (!f.uid && !icl_set_each(f.set, f.set_len, sc->pf_max, NULL, NULL) &&
        icl_set_each(f.set, f.set_len, UINT64_MAX, NULL, NULL)) {
        refuse_line(s, f.tag, f.tag_len,
                    "NO [LIMIT] Too many messages in one part fetch; fetch fewer at a time.",
                    "prefetch_limit");
        return PF_LINE_REFUSED;
    }
    free(sc->pf_set);
    sc->pf_set = malloc(f.set_len + 1);
    if (!sc->pf_set) {
        sess_end(s, "out of memory", "Internal error.");
        return PF_LINE_REFUSED;
    }
    memcpy(sc->pf_set, f.set, f.set_len);
    sc->pf_set[f.set_len] = '\0';
    sc->pf_uid = f.uid;
    memcpy(sc->held_tag, f.tag, f.tag_len);
    sc->held_tag[f.tag_len] = '\0';
    sc->pf = PF_WAIT;
    pf_maybe_send(s);
    return PF_LINE_HELD;
}

/* ---- down ---- */

static bool head_tag_is(const struct imap_framer *f, const char *tag)
{
    size_t tl = strlen(tag);
    return tl && f->head_len > tl && memcmp(f->head, tag, tl) == 0 && f->head[tl] == ' ';
}

bool pf_tagged_is_ours(struct session *s, const struct imap_framer *f)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc->pf != PF_SENT)
        return false;
    char tag[24];
    snprintf(tag, sizeof tag, "PCJ%u", sc->pf_n);
    return head_tag_is(f, tag);
}

bool pf_tagged_may_be_ours(struct session *s, const struct imap_framer *f)
{
    struct imap_scan *sc = imap_sc(s);
    if (sc->pf != PF_SENT)
        return false;
    char tag[24];
    int tl = snprintf(tag, sizeof tag, "PCJ%u ", sc->pf_n);
    return f->head_len < (size_t)tl && memcmp(f->head, tag, f->head_len) == 0;
}

bool pf_tagged_end(struct session *s, const struct imap_framer *f)
{
    struct imap_state *st = imap_st(s);
    struct imap_scan *sc = st->sc;
    if (pf_tagged_is_ours(s, f)) {
        char tag[24];
        int tl = snprintf(tag, sizeof tag, "PCJ%u", sc->pf_n);
        bool ok = f->head_len >= (size_t)tl + 3 && strncasecmp(f->head + tl + 1, "OK", 2) == 0;
        if (!ok) {
            char e[96];
            size_t el = f->head_len - (size_t)tl - 1;
            while (el > 0 && (f->head[tl + 1 + el - 1] == '\r' || f->head[tl + 1 + el - 1] == '\n'))
                el--;
            sess_log(s, LOG_WARN, "event=prefetch_failed answer=%s",
                     log_q(e, sizeof e, f->head + tl + 1, el));
        }
        sc->pf_failed = !ok;
        sc->pf = PF_NONE;
        sc->map_valid = !sc->map_stale;
        imap_relay_release_held(s);
        imap_prefetch_sent(s);
        return true;
    }
    if (sc->out_cmds > 0)
        sc->out_cmds--;
    if (sc->map_valid && head_tag_is(f, sc->held_tag))
        sc->map_valid = false; /* the command the map was made for is over */
    pf_maybe_send(s);
    return false;
}

void pf_note_untagged(struct imap_scan *sc, const struct imap_framer *f)
{
    /* "* n EXPUNGE" moves sequence numbers as it does for the client, which reads it in the
     * same order: the map follows (RFC 3501 forbids it during a FETCH by sequence number, not
     * during a UID FETCH). "* VANISHED" names UIDs, not positions: the map is void. */
    const char *h = f->head;
    size_t n = f->head_len, i = 2;
    if (n < 3 || h[0] != '*' || h[1] != ' ' || (sc->pf != PF_SENT && !sc->map_valid))
        return;
    if (n >= 11 && strncasecmp(h + 2, "VANISHED ", 9) == 0) {
        sc->map_valid = false;
        sc->map_stale = sc->pf == PF_SENT;
        return;
    }
    uint64_t seq = 0;
    while (i < n && h[i] >= '0' && h[i] <= '9' && seq < UINT32_MAX)
        seq = seq * 10 + (uint64_t)(h[i++] - '0');
    if (i == 2 || n < i + 8 || strncasecmp(h + i, " EXPUNGE", 8) != 0)
        return;
    size_t w = 0;
    for (size_t r = 0; r < sc->map_len; r++) {
        if (sc->map[r].seq == seq)
            continue;
        sc->map[w] = sc->map[r];
        if (sc->map[w].seq > seq)
            sc->map[w].seq--;
        w++;
    }
    sc->map_len = w;
}

void pf_map_add(struct imap_scan *sc, uint64_t seq, uint64_t uid)
{
    if (sc->map_len == sc->map_cap) {
        size_t nc = sc->map_cap ? sc->map_cap * 2 : 64;
        struct pf_map_ent *m = realloc(sc->map, nc * sizeof *m);
        if (!m)
            return; /* that message is then unjudged by seq: blocked, never guessed */
        sc->map = m;
        sc->map_cap = nc;
    }
    sc->map[sc->map_len++] = (struct pf_map_ent){seq, uid};
}

uint64_t pf_map_uid(const struct imap_scan *sc, uint64_t seq)
{
    if (!sc->map_valid)
        return 0;
    /* Responses come in set order, mostly ascending: a binary search would do, a scan is
     * bounded by max_prefetch_messages. */
    for (size_t i = 0; i < sc->map_len; i++)
        if (sc->map[i].seq == seq)
            return sc->map[i].uid;
    return 0;
}

void pf_free(struct imap_scan *sc)
{
    free(sc->pf_set);
    sc->pf_set = NULL;
    free(sc->map);
    sc->map = NULL;
    sc->map_len = sc->map_cap = 0;
}
