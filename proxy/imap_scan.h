/*
 * imap_scan — private state shared by imap_scan.c (the FETCH content filter on the relay's
 * down direction), imap_scan_memo.c (verdict memory, mailbox tracking, notice slices),
 * imap_keepalive.c (its keep-alive timer) and imap_prefetch.c (judging parts and byte ranges:
 * the whole message is fetched first on the same backend connection, between the client's
 * commands).
 * The relay calls the hooks declared in imap.h; nothing else includes this header. Output goes
 * to the client conn's block queue (conn.h), never into the relay buffers.
 */
#ifndef PORTCULLIS_IMAP_SCAN_H
#define PORTCULLIS_IMAP_SCAN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "imap.h"
#include "imap_fetchitem.h"
#include "imap_keepalive.h"
#include "msgscan.h"
#include "scan_grant.h"

#define SC_HOLD_LINE   (16 * 1024) /* an answer to our own FETCH longer than this is dropped */
#define SC_LITS_MAX    8           /* content literals after the first in one held response */
#define SC_HOLD_SLACK  (4 * 1024)  /* a held FETCH line over relay_buffer - this ends it */
#define SC_SUFFIX_MAX  (1 << 20)   /* bytes after the scanned literal held in one response */
#define SC_MAILBOX_MAX 1024

/* How one message of the selected mailbox was judged, as the client is to see it. The memo
 * holds the verdicts of the current selection only (cleared when a SELECT, EXAMINE, CLOSE or
 * UNSELECT completes), so the UID alone names the message: the UIDVALIDITY cannot change
 * within one selection. */
struct sc_memo {
    uint64_t uid;  /* 0 = free slot */
    bool replaced; /* the client gets `notice` instead of the message */
    char *notice;  /* owned when replaced */
    size_t notice_len;
    size_t body_off;   /* where the notice's text (body) starts: replacement for parts */
    uint64_t orig_len; /* size of the original message */
    time_t at;         /* when it was judged: a clean verdict is re-checked against the canary */
};

/* The proxy's own FETCH on the client's connection (imap_prefetch.c). */
enum pf_state {
    PF_NONE, /* no client command held */
    PF_WAIT, /* a client FETCH is held until no client command is outstanding */
    PF_SENT, /* our PCJ<n> FETCH is outstanding: its FETCH responses are judged, not sent */
};

/* seq → UID as our FETCH saw them: the view of the held client command that follows it */
struct pf_map_ent {
    uint64_t seq, uid;
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
    SC_PART_WAIT,    /* a part/chunk literal held in s->down; its verdict is applied next */
    SC_DROP_LIT,     /* dropping the original bytes of a replaced part/chunk */
    SC_DROP_RESP,    /* dropping a response of our own FETCH (not judged) to its end */
};

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
    /* issue 15: quoted content and unparsable text (imap_fetchitem.c) */
    bool quoted_wait;     /* SC_PART_WAIT for a whole held response with quoted content */
    bool part_strict;     /* the held text before this part may carry content: pass only clean */
    bool suffix_strict;   /* the same for the rest of a response held with a whole message */
    uint64_t part_uid;    /* the message the part belongs to (0: unknown) */
    const char *part_why; /* NULL: judged (in the memo under part_uid); else why not */
    bool resp_pcj;        /* this FETCH response answers our own FETCH: judged, never sent */

    /* keep-alive while a response is held (imap_keepalive.c) */
    struct imap_keepalive ka;

    struct sc_memo *memo; /* open-addressing hash by UID; memo_cap slots (power of two) */
    size_t memo_cap, memo_count, memo_max;

    /* same-connection judging (imap_prefetch.c) */
    enum pf_state pf;
    unsigned out_cmds;               /* client commands sent whose tagged answer has not come */
    unsigned pf_n;                   /* n of the last PCJ<n> */
    char held_tag[IMAP_TAG_MAX + 1]; /* the held command: the map is valid until its answer */
    char *pf_set;                    /* owned: the held command's sequence set, verbatim */
    bool pf_uid;                     /* ... of a UID FETCH */
    bool pf_failed;                  /* our FETCH was answered NO/BAD: its parts are unjudged */
    unsigned long pf_count;          /* FETCH responses of our FETCH so far */
    bool map_valid;                  /* `map` is the view of the command being answered */
    bool map_stale;                  /* an EXPUNGE/VANISHED came during our FETCH: no map */
    struct pf_map_ent *map;
    size_t map_len, map_cap;
    unsigned long pf_max; /* scan.max_prefetch_messages */

    struct scan_grant grant;     /* budget for a whole message held in-band */
    pool_owner owner;            /* the session's budget shares (msgscan_owner) */
    struct scan_held held;       /* our blocks (with their budget) the client does not read */
    struct msgscan_req *judging; /* its scan, NULL when none */
    bool busy;                   /* inside a relay hook: results are picked up there */
};

static inline struct imap_scan *imap_sc(struct session *s)
{
    return imap_st(s)->sc;
}

/* imap_scan_memo.c: verdict memory, mailbox tracking, replacement slices */
struct sc_memo *sc_memo_find(struct imap_scan *sc, uint64_t uid);
/* NULL when the memo is full (memo_max) or out of memory: the message is then unjudged for
 * later parts. */
struct sc_memo *sc_memo_store(struct imap_scan *sc, uint64_t uid, uint64_t orig_len,
                              const struct msgscan_outcome *o);
void sc_memo_reset(struct imap_scan *sc);
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

/* imap_prefetch.c — down side: a tagged response (head in st->downf) ended; true = it was
 * the answer to our own FETCH (swallowed by the caller). */
bool pf_tagged_end(struct session *s, const struct imap_framer *f);
/* Is this tagged response ours (head known)? */
bool pf_tagged_is_ours(struct session *s, const struct imap_framer *f);
/* Could it still be, once more of its head is in (a line that streams)? */
bool pf_tagged_may_be_ours(struct session *s, const struct imap_framer *f);
/* An untagged response that is not a FETCH ended (head in f): EXPUNGE moves the map's
 * sequence numbers as it does the client's, VANISHED voids it. */
void pf_note_untagged(struct imap_scan *sc, const struct imap_framer *f);
/* A judged response of our FETCH: remember seq → uid for the held command. */
void pf_map_add(struct imap_scan *sc, uint64_t seq, uint64_t uid);
/* The UID of `seq` in the view of the command being answered (0: unknown). */
uint64_t pf_map_uid(const struct imap_scan *sc, uint64_t seq);
void pf_free(struct imap_scan *sc);

/* imap_scan.c: logfmt fragment naming a message for msgscan: mailbox="…" uid=N (or seq=N).
 * Both files call msgscan_* directly, as pop3_scan.c does. */
void sc_where(char *buf, size_t cap, const char *mailbox, uint64_t uid, uint64_t seq);

#endif
