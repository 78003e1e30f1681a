/*
 * pop3 — state shared by the POP3 protocol's three parts: the pre-auth dialogue
 * (pop3_preauth.c), the backend login script (pop3_backend.c) and the pipelined relay
 * (pop3_relay.c). Not a public API: only those files include it.
 */
#ifndef PORTCULLIS_POP3_H
#define PORTCULLIS_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "creds.h"
#include "pop3_parse.h"
#include "sess_event.h"
#include "session.h"

enum pop3_bstate {
    PB_NONE,
    PB_CONNECT,  /* the dialer: TCP connect [+ implicit TLS] */
    PB_GREETING, /* waiting for "+OK" */
    PB_CAPA,     /* waiting for our CAPA's multi-line answer */
    PB_STLS,     /* waiting for the STLS answer */
    PB_STLS_HS,  /* STLS handshake to the backend */
    PB_XCLIENT,  /* waiting for the XCLIENT answer */
    PB_USER,     /* waiting for the USER answer */
    PB_PASS,     /* waiting for the PASS answer */
    PB_AUTH,     /* AUTH sent; waiting for +OK/-ERR (or an error challenge) */
};

/* Where `TOP n k` ends a message, found as its bytes go by (stuffed or not: an empty line and
 * a line end are the same either way): the header through its first empty line (CRLF or a bare
 * LF; a message that starts with one has an empty header, one without any is all header), then
 * k lines. Dovecot cuts the same way on the CRLF-normalised message it sends. */
struct pop3_topcut {
    uint32_t left; /* body lines still to pass */
    bool in_body;  /* the header's empty line has passed */
    bool bol;      /* the next byte starts a line */
    bool cr_only;  /* the current line so far is a lone CR */
    bool done;     /* the cut point was reached: nothing more belongs to the answer */
};

/* What the relay knows about one command the backend has not answered yet. */
enum pop3_qkind {
    PQ_FORWARD, /* forwarded; the backend answers it */
    PQ_LOCAL,   /* refused by the proxy; `local` holds our one-line answer */
};

/* PC_PROBE: the proxy's own "TOP n 2147483647", sent in place of a client's DELE of a message
 * not judged yet in this session; its answer never reaches the client (pop3_scan.c). */
enum pop3_qcmd { PC_OTHER, PC_RETR, PC_TOP, PC_CAPA, PC_QUIT, PC_DELE, PC_PROBE };

/* What the session knows about a message number (numbers are stable for a POP3 session:
 * RFC 1939 5, deleted messages keep theirs until UPDATE). */
enum pop3_verdict { PV_UNKNOWN, PV_CLEAN, PV_BLOCKED };
#define POP3_VERDICT_MAX (1u << 18) /* numbers remembered (2 bits each); above: probed again */

/* The line count the proxy sends for a client's TOP (and for a DELE probe): the whole message,
 * so that it is judged whole and the proxy cuts the client's k lines itself. RFC 1939 only asks
 * for a non-negative number; 2^31-1 fits a server's signed 32-bit int. */
#define POP3_TOP_ALL "2147483647"

struct pop3_qent {
    uint8_t kind;      /* enum pop3_qkind */
    uint8_t resp;      /* enum pop3_resp_kind */
    uint8_t cmd;       /* enum pop3_qcmd */
    uint32_t msgno;    /* RETR/TOP message number (for the scanner and the logs) */
    uint32_t lines;    /* TOP: body lines asked for (a replacement notice is cut to them) */
    bool top_all;      /* TOP sent as "TOP n 2147483647": the proxy cuts the answer to `lines` */
    bool ok;           /* PQ_LOCAL: the answer is "+OK <local>" (a withheld DELE), not -ERR */
    const char *local; /* PQ_LOCAL: static answer text, without "-ERR " and CRLF */
    uint8_t why;       /* PQ_LOCAL: enum sess_reason, for the refusal's event */
};

#define POP3_QUEUE_MAX 64 /* outstanding pipelined commands; past it the client is not read */

struct pop3_state {
    /* pre-auth */
    struct pop3_cmd_parser parser;
    char *store; /* parser store (pre-auth and relay), max_line + 1 bytes; wiped on free */
    size_t store_cap;
    unsigned bad;   /* bad commands and failed logins so far */
    bool sasl_wait; /* AUTH sent "+ ": the next line is the SASL response */
    bool have_user; /* USER given, PASS expected */
    double preauth_deadline;

    /* the login in progress */
    enum creds_mech mech; /* named by AUTH, for its SASL response */
    struct creds creds;   /* the login's credentials (wiped at login and on failure) */

    /* backend login script */
    enum pop3_bstate bstate;
    struct pop3_framer bf;
    size_t bscan;
    bool be_stls, be_user, be_sasl_plain, be_sasl_xoauth2, be_sasl_oauthbearer, be_xclient;
    bool be_capa_known;
    bool be_xclient_greeting; /* the greeting carried [XCLIENT] */
    bool auth_challenged;     /* XOAUTH2 error challenge answered */

    /* relay */
    struct pop3_framer downf;
    struct pop3_qent queue[POP3_QUEUE_MAX];
    unsigned qhead, qlen;
    struct pop3_qent cur; /* the command whose response is being framed */
    bool cur_valid;
    size_t up_held;        /* bytes after s->up.mark parsed but not yet released */
    size_t down_held;      /* bytes after s->down.mark framed but not yet released */
    bool down_status_hold; /* a RETR/TOP status line is held until complete (scanner) */
    bool relay_running;    /* re-entrance guard of the relay loop */
    bool down_part_out;    /* the client got part of the response being framed */
    bool down_stopped;     /* the session ends: nothing more is framed (pop3_relay_stop) */
    bool quit_done;        /* the backend's +OK to QUIT went to the client */
    bool capa_first;       /* CAPA being filtered: its status line is not decided yet */
    bool probe_wait;       /* a DELE probe is out: client commands after it wait for it */
    bool top_streaming;    /* a TOP over max_scan_size under `pass` streams, cut by topcut */
    struct pop3_topcut topcut;
    uint8_t *verdicts;      /* 2 bits per message number (enum pop3_verdict); grown on demand */
    uint32_t verdicts_n;    /* message numbers the array covers */
    struct pop3_scan *scan; /* owned (pop3_scan.c): a RETR/TOP response held for the scanner */
};

static inline struct pop3_state *pop3_st(struct session *s)
{
    return (struct pop3_state *)s->pstate;
}

/* pop3_preauth.c */
void pop3_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* auth_failure: the login was refused (`fail` says how; counted as a failed login) — else the
 * backend was unavailable. */
void pop3_preauth_login_failed(struct session *s, bool auth_failure, enum sess_login_fail fail,
                               const char *code, const char *why);
/* The backend refused the login with a code that is not about the password (login_refusal.h):
 * "-ERR [code] text" to the client, not counted toward the lock-out. */
void pop3_preauth_login_refused(struct session *s, const char *code, const char *text);
void pop3_preauth_login_ok(struct session *s, const char *text, size_t len);
void pop3_forget_login(struct pop3_state *st);

/* pop3_backend.c */
void pop3_backend_start(struct session *s);
void pop3_backend_event(struct session *s, int events);

/* pop3_relay.c */
void pop3_relay_init(struct session *s);
void pop3_relay_up(struct session *s);
void pop3_relay_down(struct session *s);
bool pop3_relay_idle(struct session *s);
/* Run the relay filters and push output (from callbacks outside the I/O path). */
void pop3_relay_kick(struct session *s);
/* The backend broke framing: -ERR to the client, end the session. */
void pop3_relay_fail(struct session *s, const char *why);
/* The session ends (protocol `stop`): drop a held response and what is not framed yet. */
void pop3_relay_stop(struct session *s);
/* protocol `holding`: bytes not framed yet, or a response held for its verdict / going out. */
bool pop3_relay_holding(struct session *s);
/* The client is between two responses (nothing of the current one was sent). */
bool pop3_relay_client_at_boundary(struct session *s);

/* pop3_scan.c — RETR/TOP content held for the scanner (docs/scanning.md, POP3).
 * begin: at the STATUS_LINE of a +OK RETR/TOP response (its status line is the down_held bytes
 * at s->down.mark); true when the response is taken over (then it is driven by step).
 * step: while pop3_scan_active(); 1 progress (call again), 0 waiting, -1 session closed.
 * When the held response has gone out, st->cur_valid is false (or, when the rest of an
 * over-size message streams, true with the framer mid-body and st->down_held pending). */
bool pop3_scan_begin(struct session *s);
bool pop3_scan_active(struct session *s);
/* A held response waits for budget or verdict, or is being put back. */
bool pop3_scan_holding(struct session *s);
int pop3_scan_step(struct session *s);
/* Drop a held response (backend protocol error, session end). */
void pop3_scan_abort(struct session *s);

void pop3_topcut_init(struct pop3_topcut *c, uint32_t lines);
/* How many of the n bytes belong to the answer (all of them until `done`). */
size_t pop3_topcut_feed(struct pop3_topcut *c, const char *p, size_t n);

/* pop3_relay.c — per-message verdicts of this session, and the end of a DELE probe. */
enum pop3_verdict pop3_verdict_get(struct session *s, uint32_t msgno);
void pop3_verdict_set(struct session *s, uint32_t msgno, enum pop3_verdict v);
/* The probe for the client's `DELE msgno` ended: `v` decides whether the DELE goes to the
 * backend (PV_CLEAN) or is answered "+OK Kept ..." (PV_BLOCKED); with `err` (a one-line
 * answer, CRLF included: the backend's -ERR to the probe, or ours) the client gets that. */
void pop3_probe_done(struct session *s, uint32_t msgno, enum pop3_verdict v, const char *err,
                     size_t err_len);

#endif
