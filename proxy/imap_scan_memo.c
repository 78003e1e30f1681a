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
#include <time.h>

#include "imap_allow.h"
#include "imap_scan.h"

/* Every name the relay accepts fits the scan fetcher's quoting buffer (imap_fetcher.c). */
_Static_assert(IMAP_ALLOW_MAILBOX_MAX <= SC_MAILBOX_MAX, "mailbox names the relay accepts");

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

static struct sc_memo *memo_lookup(struct imap_scan *sc, uint64_t uid)
{
    if (!uid || !sc->memo)
        return NULL;
    struct sc_memo *m = &sc->memo[memo_slot(sc->memo, sc->memo_cap, uid)];
    return m->uid == uid ? m : NULL;
}

/* A clean verdict counts only while the canary vouches for it (issue 16): once the scanner is
 * found broken, a clean verdict from the suspect window is as if never reached, so the part is
 * judged again (prefetched and scanned) rather than passed on the word of a failing engine. A
 * replaced one always stands. */
struct sc_memo *sc_memo_find(struct imap_scan *sc, uint64_t uid)
{
    struct sc_memo *m = memo_lookup(sc, uid);
    if (m && !m->replaced && !msgscan_clean_trusted(m->at))
        return NULL;
    return m;
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
    struct sc_memo *m = memo_lookup(sc, uid);
    if (!m) {
        if (sc->memo_count >= sc->memo_max || !memo_grow(sc))
            return NULL;
        m = &sc->memo[memo_slot(sc->memo, sc->memo_cap, uid)];
        sc->memo_count++;
    }
    memo_free_ent(m);
    m->uid = uid;
    m->orig_len = orig_len;
    m->at = time(NULL);
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

/* RFC 3501 6.3.1: a SELECT deselects at once, and a failed one leaves nothing selected. */
void imap_scan_unselect(struct session *s)
{
    struct imap_scan *sc = imap_st(s)->sc;
    if (!sc)
        return;
    free(sc->mailbox);
    sc->mailbox = NULL;
    sc->uidvalidity = 0;
    free(sc->pending_mailbox);
    sc->pending_mailbox = NULL;
    sc->pending_tag[0] = '\0';
    sc->pending_uidvalidity = 0;
    sc_memo_reset(sc); /* UIDs of no selection: a part still in flight is blocked (safe) */
}

/* The name was parsed whole by the relay (imap_allow_mailbox or the literal's bytes). */
void imap_scan_select(struct session *s, const char *tag, char *name)
{
    struct imap_scan *sc = imap_st(s)->sc;
    if (!sc) {
        free(name);
        return;
    }
    imap_scan_unselect(s);
    if (!name || !tag[0] || strlen(tag) >= sizeof sc->pending_tag) {
        free(name);
        return;
    }
    sc->pending_mailbox = name;
    memcpy(sc->pending_tag, tag, strlen(tag) + 1);
}

/* "n]" exactly, n a 32-bit number: the UIDVALIDITY response code's value. */
static bool uidvalidity_value(const char *p, size_t len, uint32_t *v)
{
    uint64_t n = 0;
    size_t i = 0;
    while (i < len && p[i] >= '0' && p[i] <= '9' && n <= UINT32_MAX)
        n = n * 10 + (uint64_t)(p[i++] - '0');
    if (i == 0 || i >= len || p[i] != ']' || n == 0 || n > UINT32_MAX)
        return false;
    *v = (uint32_t)n;
    return true;
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
        uint32_t v;
        if (uidvalidity_value(h + sizeof uv - 1, hl - (sizeof uv - 1), &v))
            sc->pending_uidvalidity = v;
        return;
    }
    size_t tl = strlen(sc->pending_tag);
    if (hl > tl + 3 && memcmp(h, sc->pending_tag, tl) == 0 && h[tl] == ' ') {
        sc_memo_reset(sc); /* a new selection (or none): its UIDs are other messages */
        /* Current only at the tagged OK ("OK" exactly, not a longer word). */
        if (strncasecmp(h + tl + 1, "OK", 2) == 0 && (h[tl + 3] == ' ' || h[tl + 3] == '\r') &&
            sc->pending_mailbox) {
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

/* Does the literal just announced carry a byte range ("<o>" after the section)? A whole
 * message range (PARTIAL) always does. A part's name that the tokenizer had to cut cannot show
 * it: default deny, it counts as ranged (the replacement is then never longer than the
 * server's literal). */
bool sc_item_ranged(enum fi_kind kind, const struct fetch_items *f)
{
    if (kind == FI_PARTIAL)
        return true;
    if (kind != FI_PART)
        return false;
    /* the item whose value the literal is (the tokenizer's item state lasts until the next
     * item): an origin, a cut name or an unknown item */
    return f->has_origin || f->name_cut || f->item_unknown;
}

/* The replacement bytes for a content literal that the server sent with `len` bytes (see
 * imap_scan.h for the contract). The source is the notice (WHOLE, PARTIAL) or its text, from
 * body_off (PART). Not ranged: all of the source. Ranged: exactly [origin, origin + len) of the
 * source, clipped to its end, and empty when origin is at or past its end — so a replacement is
 * never longer than what the server answered, and consecutive chunks of a notice put together
 * give the notice (cut at the original's size when the notice is the longer one). */
void sc_replacement(const char *notice, size_t nlen, size_t body_off, enum fi_kind kind,
                    bool ranged, uint64_t origin, uint64_t len, const char **p_r, size_t *n_r)
{
    const char *r = notice;
    size_t rl = nlen;
    if (kind == FI_PART) {
        if (body_off > nlen)
            body_off = nlen;
        r = notice + body_off;
        rl = nlen - body_off;
    }
    if (!ranged && kind != FI_PARTIAL) {
        *p_r = r;
        *n_r = rl;
        return;
    }
    if (origin >= rl) {
        *p_r = r + rl;
        *n_r = 0;
        return;
    }
    uint64_t room = rl - origin;
    *p_r = r + origin;
    *n_r = (size_t)(len < room ? len : room);
}
