/*
 * imap_scan_memo — what the FETCH scanner (imap_scan.c) remembers and derives per session: the
 * mailbox the client selected (SELECT/EXAMINE tracking, for the log), the verdicts of the
 * messages of the current selection already judged (parts and chunks are decided from them),
 * and the slices of a notice that stand in for a replaced part or
 * byte range. No I/O and no buffers of the relay: plain functions on struct imap_scan.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_scan.h"

/* A NUL-terminated malloc'd copy of p[0 .. n) (also used by imap_scan.c). */
char *sc_dup_bytes(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- verdict memory (per selection) ---- */

static void memo_free_ent(struct sc_memo *m)
{
    free(m->notice);
    memset(m, 0, sizeof *m);
}

void sc_memo_reset(struct imap_scan *sc)
{
    for (size_t i = 0; i < sc->memo_cap; i++)
        memo_free_ent(&sc->memo[i]);
    free(sc->memo);
    sc->memo = NULL;
    sc->memo_cap = sc->memo_count = 0;
}

static size_t memo_slot(const struct sc_memo *tab, size_t cap, uint64_t uid)
{
    size_t i = (size_t)(uid * 0x9E3779B97F4A7C15ULL) & (cap - 1);
    while (tab[i].uid && tab[i].uid != uid)
        i = (i + 1) & (cap - 1);
    return i;
}

struct sc_memo *sc_memo_find(struct imap_scan *sc, uint64_t uid)
{
    if (!uid || !sc->memo)
        return NULL;
    struct sc_memo *m = &sc->memo[memo_slot(sc->memo, sc->memo_cap, uid)];
    return m->uid == uid ? m : NULL;
}

/* Where the body of a message starts (after the first empty line), or len. */
size_t sc_body_offset(const char *p, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return i + 4;
    return len;
}

/* Keep the table at most half full: double it (rehashing) when it would not be. */
static bool memo_grow(struct imap_scan *sc)
{
    if ((sc->memo_count + 1) * 2 <= sc->memo_cap)
        return true;
    size_t ncap = sc->memo_cap ? sc->memo_cap * 2 : 64;
    struct sc_memo *t = calloc(ncap, sizeof *t);
    if (!t)
        return false;
    for (size_t i = 0; i < sc->memo_cap; i++)
        if (sc->memo[i].uid)
            t[memo_slot(t, ncap, sc->memo[i].uid)] = sc->memo[i];
    free(sc->memo);
    sc->memo = t;
    sc->memo_cap = ncap;
    return true;
}

struct sc_memo *sc_memo_store(struct imap_scan *sc, uint64_t uid, uint64_t orig_len,
                              const struct msgscan_outcome *o)
{
    if (!uid)
        return NULL;
    struct sc_memo *m = sc_memo_find(sc, uid);
    if (!m) {
        if (sc->memo_count >= sc->memo_max || !memo_grow(sc))
            return NULL;
        m = &sc->memo[memo_slot(sc->memo, sc->memo_cap, uid)];
        sc->memo_count++;
    }
    memo_free_ent(m);
    m->uid = uid;
    m->orig_len = orig_len;
    m->replaced = o->replace;
    if (o->replace) {
        m->notice = sc_dup_bytes(o->notice, o->notice_len);
        if (!m->notice) {
            /* keep the slot as "replaced, no notice": apply_part then blocks it */
            return NULL;
        }
        m->notice_len = o->notice_len;
        m->body_off = sc_body_offset(m->notice, m->notice_len);
    }
    return m;
}

/* ---- mailbox tracking ---- */

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
                return sc_dup_bytes(tmp, o);
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
    return n ? sc_dup_bytes(p, n) : NULL;
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
    /* The memo is the old selection's until the backend has answered (responses to commands
     * sent before this one still come): sc_note_other_response clears it then. */
    memcpy(sc->pending_tag, tag, tl);
    sc->pending_tag[tl] = '\0';
    if (!sel || nl + 1 >= rl)
        return;
    sc->pending_mailbox = parse_astring(rest + nl + 1, rl - nl - 1);
    if (sc->pending_mailbox && strcasecmp(sc->pending_mailbox, "INBOX") == 0)
        memcpy(sc->pending_mailbox, "INBOX", 5); /* RFC 3501 5.1: case-insensitive */
    sc->pending_uidvalidity = 0;
}

/* A whole response that is not an untagged FETCH: watch the SELECT/EXAMINE in flight. */
void sc_note_other_response(struct imap_scan *sc, const struct imap_framer *f)
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
        sc_memo_reset(sc); /* a new selection (or none): its UIDs are other messages */
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

/* ---- replacement text ---- */

/* Where the literal header "{n}" / "~{n}" starts at the end of `p` (a line ending in it). */
size_t sc_lit_hdr_start(const char *p, size_t len)
{
    size_t i = len;
    while (i > 0 && p[i - 1] != '{')
        i--;
    if (i == 0)
        return len;
    return i - 1;
}

/* Write "{n}\r\n" (after a "~" when the original was a literal8) into out. */
size_t sc_lit_hdr(char *out, size_t cap, const char *orig_hdr, size_t n)
{
    (void)orig_hdr;
    int k = snprintf(out, cap, "{%zu}\r\n", n);
    return k > 0 ? (size_t)k : 0;
}

/* The replacement bytes for a literal of `kind` at `origin` that had `len` bytes. PARTIAL of a
 * message of orig_len bytes: the same range of the notice, except that the original's last
 * chunk gets the rest of the notice (a notice longer than the message is then still whole
 * for a client that stops at the message's end); a part: the notice's text, sliced likewise. */
void sc_replacement(const char *notice, size_t nlen, size_t body_off, uint64_t orig_len,
                    enum fi_kind kind, uint64_t origin, uint64_t len, const char **p_r, size_t *n_r)
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
