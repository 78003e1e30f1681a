/*
 * imap_scan — private state shared by imap_scan.c (the FETCH content filter on the relay's
 * down direction), imap_scan_memo.c (verdict memory, mailbox tracking, notice slices),
 * imap_keepalive.c (its keep-alive timer) and imap_fetcher.c (the second backend connection
 * that fetches a whole message when the client asked for only a part or a byte range of it).
 * The relay calls the hooks declared in imap.h; nothing else includes this header. Output goes
 * to the client conn's block queue (conn.h), never into the relay buffers.
 */
#ifndef PORTCULLIS_IMAP_SCAN_H
#define PORTCULLIS_IMAP_SCAN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap.h"
#include "imap_fetchitem.h"
#include "imap_keepalive.h"
#include "msgscan.h"

/* SC_HOLD_LINE: a FETCH line held longer than this starts to stream, but only while nothing in
 * it may be content (imap_scan.c: else the session ends). */
#define SC_MEMO_MAX    16         /* verdicts remembered per session for part/chunk fetches */
#define SC_LITS_MAX    8          /* content literals after the first in one held response */
#define SC_HOLD_SLACK  (4 * 1024) /* a held FETCH line over relay_buffer - this ends it */
#define SC_SUFFIX_MAX  (1 << 20)  /* bytes after the scanned literal held in one response */
#define SC_MAILBOX_MAX 1024

/* How one message was judged, as the client is to see it. */
struct sc_memo {
    char *mailbox;        /* owned; NULL = free slot */
    uint32_t uidvalidity; /* 0 when unknown */
    uint64_t uid;
    bool replaced; /* the client gets `notice` instead of the message */
    char *notice;  /* owned when replaced */
    size_t notice_len;
    size_t body_off;   /* where the notice's text (body) starts: replacement for parts */
    uint64_t orig_len; /* size of the original message */
};

/* A content literal after the scanned one, inside the held rest of the response. */
struct sc_lit {
    size_t hdr_off;  /* in text1: where "{" / "~{" starts */
    size_t data_off; /* in text1: its first byte */
    size_t len;
    enum fi_kind kind;
    bool ranged; /* sc_item_ranged() */
    uint64_t origin;
};

enum sc_phase {
    SC_IDLE,         /* no FETCH response in progress, or one that streams */
    SC_HOLD,         /* holding a FETCH response's text in s->down until a literal decides */
    SC_PASS_LIT,     /* streaming a literal that is not content (or passed unscanned) */
    SC_BUDGET,       /* a whole-message literal waits for memory budget; nothing framed */
    SC_COLLECT,      /* moving the literal's bytes out of s->down into msg */
    SC_SUFFIX,       /* moving the rest of the response into text1 (scan running) */
    SC_VERDICT_WAIT, /* the response is all in text0/msg/text1; waiting for the verdict */
    SC_PART_WAIT,    /* a part/chunk literal held in s->down; the fetcher is at work */
    SC_DROP_LIT,     /* dropping the original bytes of a replaced part/chunk */
};

struct imap_fetcher;

struct imap_scan {
    /* mailbox tracking (client's SELECT/EXAMINE) */
    char *mailbox; /* owned or NULL: the selected mailbox as the client named it */
    uint32_t uidvalidity;
    char *pending_mailbox; /* owned: a SELECT/EXAMINE in flight */
    char pending_tag[IMAP_TAG_MAX + 1];
    uint32_t pending_uidvalidity;

    /* the response being framed */
    bool resp_open;
    int resp_fetch; /* -1 undecided, 0 not an untagged FETCH, 1 FETCH */
    uint64_t seq;
    bool resp_released; /* some of it already went to the client: no keep-alive inside */
    bool in_lit;        /* the framer is inside literal bytes */
    struct fetch_items fi;
    enum sc_phase phase;

    /* whole message held in-band */
    char *text0; /* the response up to and including the literal header */
    size_t text0_len;
    char *msg; /* the literal */
    size_t msg_len, msg_have, msg_budget;
    char *text1; /* the rest of the response */
    size_t text1_len, text1_cap;
    struct sc_lit lits[SC_LITS_MAX];
    unsigned nlits;
    uint64_t lit_len; /* length of the literal being decided (framer's literal_len) */
    bool submitted;   /* the scan of msg is running */
    bool have_outcome;
    struct msgscan_outcome outcome; /* replace + notice (owned); never msg (that is in `msg`) */
    bool oversize_block; /* msg holds only the head of an oversize message: notice only */

    /* part/chunk held in s->down */
    enum fi_kind part_kind;
    uint64_t part_origin;
    bool part_ranged; /* sc_item_ranged() */
    int part_rc;      /* fetcher result: 1 judged, 0 gone, -1 error; 2 pending */
    int part_memo;    /* memo slot index of the verdict, or -1 */
    /* issue 15: quoted content and unparsable text (imap_fetchitem.c) */
    bool quoted_wait;   /* SC_PART_WAIT for a whole held response with quoted content */
    bool part_strict;   /* the held text before this part may carry content: pass only clean */
    bool suffix_strict; /* the same for the rest of a response held with a whole message */

    /* keep-alive while a response is held (imap_keepalive.c) */
    struct imap_keepalive ka;

    struct sc_memo memo[SC_MEMO_MAX];
    unsigned memo_next;

    struct imap_fetcher *fetcher; /* owned (imap_fetcher.c) */
    struct msgscan_wait bwait;    /* budget for a whole message held in-band */
    struct msgscan_req *judging;  /* its scan, NULL when none */
    bool busy;                    /* inside a relay hook: results are picked up there */
};

static inline struct imap_scan *imap_sc(struct session *s)
{
    return imap_st(s)->sc;
}

/* imap_scan_memo.c: verdict memory, mailbox tracking, replacement slices */
int sc_memo_find(struct imap_scan *sc, const char *mailbox, uint32_t uidvalidity, uint64_t uid);
int sc_memo_store(struct imap_scan *sc, const char *mailbox, uint32_t uidvalidity, uint64_t uid,
                  uint64_t orig_len, const struct msgscan_outcome *o);
void sc_memo_clear(struct sc_memo *m);
char *sc_dup_bytes(const char *p, size_t n);
/* A whole response that is not an untagged FETCH: watch the SELECT/EXAMINE in flight. */
void sc_note_other_response(struct imap_scan *sc, const struct imap_framer *f);
/* Where the body of a message starts (after the first empty line), or len. */
size_t sc_body_offset(const char *p, size_t len);
/* Where the literal header "{n}" / "~{n}" starts at the end of `p` (a line ending in it). */
size_t sc_lit_hdr_start(const char *p, size_t len);
/* Write "{n}\r\n" into out; returns its length. */
size_t sc_lit_hdr(char *out, size_t cap, const char *orig_hdr, size_t n);
/* Is the literal just announced (fi_literal_kind() gave `kind`) a byte range? PARTIAL always;
 * PART when its name ends in "<o>", or when the name was cut (then unknown: default deny). */
bool sc_item_ranged(enum fi_kind kind, const struct fetch_items *f);
/* The replacement for a content literal of `kind` that the server answered with `len` bytes.
 * Source: the notice (WHOLE, PARTIAL) or the notice's text from body_off (PART). Not ranged:
 * the whole source. Ranged (PARTIAL, or a PART with <origin>): exactly the source's bytes
 * [origin, origin + len) clipped to its end; nothing ({0}) when origin is at or past its end.
 * A ranged replacement is never longer than `len`. Pure. */
void sc_replacement(const char *notice, size_t nlen, size_t body_off, enum fi_kind kind,
                    bool ranged, uint64_t origin, uint64_t len, const char **p_r, size_t *n_r);

/* imap_fetcher.c — the second backend connection.
 * Fetch `UID FETCH uid (UID BODY.PEEK[])` (or `FETCH seq (UID BODY.PEEK[])` when uid is 0) from
 * `mailbox` (EXAMINE, read-only) and judge it; `done` runs later on the loop, exactly once,
 * unless the session closes first: rc 1 = judged (memo slot in *memo_r), 0 = no such message,
 * -1 = error. Returns false when a request is already in flight. */
typedef void fetcher_done_fn(struct session *s, int rc, int memo);
bool imap_fetcher_request(struct session *s, const char *mailbox, uint32_t uidvalidity,
                          uint64_t uid, uint64_t seq, fetcher_done_fn *done);
void imap_fetcher_free(struct session *s);

/* imap_scan.c: logfmt fragment naming a message for msgscan: mailbox="…" uid=N (or seq=N).
 * Both files call msgscan_* directly, as pop3_scan.c does. */
void sc_where(char *buf, size_t cap, const char *mailbox, uint64_t uid, uint64_t seq);

#endif
