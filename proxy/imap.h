/*
 * imap — state shared by the IMAP protocol's three parts: the pre-auth dialogue
 * (imap_preauth.c), the backend login script (imap_backend.c) and the relay filters
 * (imap_relay.c). Not a public API: only those files include it.
 */
#ifndef PORTCULLIS_IMAP_H
#define PORTCULLIS_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#include "buf.h"
#include "creds.h"
#include "imap_parse.h"
#include "session.h"

enum imap_bstate {
    IB_NONE,
    IB_CONNECT,     /* the dialer: TCP connect [+ implicit TLS] */
    IB_GREETING,    /* waiting for "* OK" */
    IB_CAPA,        /* waiting for our C CAPABILITY answer (pre-login) */
    IB_STARTTLS,    /* waiting for our S STARTTLS answer */
    IB_STARTTLS_HS, /* STARTTLS handshake to the backend */
    IB_LOGIN,       /* ID and LOGIN/AUTHENTICATE sent; waiting for tagged answers */
    IB_LOGIN_LIT,   /* sync literals: waiting for "+" before the next part */
    IB_POSTCAPA,    /* waiting for our C CAPABILITY answer (post-login) */
};

struct imap_scan;

/* Pre-auth dialogue and backend login: what only the way to SESS_RELAY needs. Allocated with
 * the session, freed by imap_preauth_login_ok() when the relay starts, so an idle relayed
 * session does not carry the parser and login fields (issue 19 item 4: ~1.5 KB). */
struct imap_login {
    /* pre-auth parser; the store is allocated on first use and freed at login */
    struct imap_cmd_parser parser;
    char *store;
    size_t store_cap;
    unsigned bad;   /* bad commands and failed logins so far */
    bool sasl_wait; /* AUTHENTICATE sent "+ ": the next line is the SASL response */

    /* the login in progress */
    char tag[IMAP_TAG_MAX + 1]; /* the client's tag of LOGIN/AUTHENTICATE */
    enum creds_mech mech;       /* named by AUTHENTICATE, for its SASL response */
    struct creds creds;         /* the login's credentials (wiped at login and on failure) */
    char *client_id;            /* the client's ID parameters, re-serialised, or NULL */
    double preauth_deadline;    /* absolute; restored after a failed backend login */

    /* backend login script */
    enum imap_bstate bstate;
    struct imap_framer bf; /* frames backend responses during login */
    bool be_literal_plus;  /* backend advertised LITERAL+ */
    bool be_sasl_ir;
    bool be_id;
    bool be_starttls;
    bool be_caps_known; /* pre-login capabilities seen */
    bool be_auth_xoauth2;
    bool be_auth_oauthbearer;
    bool be_auth_plain;
    int lit_step;    /* sync-literal LOGIN: which part goes next */
    bool id_pending; /* our ID command's tagged answer not yet seen */
    size_t bscan;    /* bytes of s->down framed so far during login */
    char *post_caps; /* backend's post-login capabilities, filtered (owned) */
};

/* A SELECT/EXAMINE whose mailbox name comes as a literal, while its bytes pass (imap_relay.c).
 * Allocated only then: an idle session does not carry it (issue 19). */
struct imap_sel_lit {
    char *name;                 /* the bytes so far (room for want + NUL) */
    size_t len;                 /* ... so far */
    size_t want;                /* ... announced (<= IMAP_ALLOW_MAILBOX_MAX) */
    char tag[IMAP_TAG_MAX + 1]; /* the command's tag */
};

struct imap_state {
    struct imap_login *lg; /* owned; NULL once the session relays */

    /* relay */
    struct imap_framer upf;
    struct imap_framer downf;
    size_t up_held; /* bytes after s->up.mark already framed but not released */
    size_t down_held;
    bool up_classified; /* the current client command has been looked at */
    bool down_classified;
    bool up_dropping;      /* the current client command is refused: drop it whole */
    bool up_hold_line;     /* a FETCH line is held whole for imap_prefetch_line (issue 15) */
    bool up_in_literal;    /* the up framer is inside a literal's bytes */
    bool up_cmd_open;      /* a client command is being relayed (classified, not yet ended) */
    bool up_cmd_answered;  /* ... and the backend already answered its tag (a server may
                              refuse an unknown command before its line is complete) */
    bool up_wait_cont;     /* a literal's line went to the backend: hold the client's next
                              bytes until the backend answers "+" or the tag (RFC 3501 7.5) */
    bool up_wait_was_plus; /* that literal was the client's {n+}, sent on as {n}: its bytes
                              come anyway, and the backend's "+" is not for the client */
    bool up_resume;        /* the wait ended in relay_down: relay_up has bytes to look at */
    bool in_relay_up;      /* reentrancy guard (inject → relay_down → relay_up) */
    char up_tag[IMAP_TAG_MAX + 1]; /* tag of the open command ("" if it has none) */
    bool down_dropping;            /* the current backend response is swallowed (that "+") */
    bool backend_bye;              /* the backend sent an untagged BYE */
    bool down_part_out;            /* the client got part of the response being framed */
    bool down_stopped;             /* the session ends: nothing more is framed (imap_relay_stop) */
    struct buf inject;             /* our own responses waiting for a response boundary */
    /* issue 15 session model (imap_allow.c) */
    int idle;                        /* enum relay_idle in imap_relay.c */
    char idle_tag[IMAP_TAG_MAX + 1]; /* tag of the IDLE command in progress */
    struct imap_sel_lit *sel_lit;    /* SELECT/EXAMINE whose name is a literal, or NULL */
    struct imap_scan *sc;            /* FETCH content scanning (imap_scan.c), NULL when off */
};

static inline void imap_sel_lit_free(struct imap_sel_lit **slp)
{
    if (*slp) {
        free((*slp)->name);
        free(*slp);
        *slp = NULL;
    }
}

static inline struct imap_state *imap_st(struct session *s)
{
    return (struct imap_state *)s->pstate;
}

/* imap_preauth.c */
enum imap_login_fail {
    IMAP_LF_UNAVAILABLE, /* no usable backend: NO [UNAVAILABLE] */
    IMAP_LF_AUTH,        /* the backend refused the credentials: NO [AUTHENTICATIONFAILED] */
    IMAP_LF_MECH,        /* the backend does not offer the client's SASL mechanism: NO [CANNOT] */
};
void imap_preauth_login_failed(struct session *s, enum imap_login_fail how, const char *why);
/* The backend refused the login with a code that is not about the password (login_refusal.h):
 * "<tag> NO [code] text" to the client, not counted toward the lock-out. */
void imap_preauth_login_refused(struct session *s, const char *code, const char *text);
void imap_preauth_login_ok(struct session *s);
const char *imap_preauth_caps(struct session *s, char *buf, size_t cap);

/* imap_backend.c */
void imap_backend_start(struct session *s);
void imap_backend_event(struct session *s, int events);

/* imap_relay.c */
void imap_relay_up(struct session *s);
void imap_relay_down(struct session *s);
/* The session ends: drop what the down filter holds; a pending BYE goes at once if the client
 * is between responses (protocol `stop`, with imap_scan_stop). */
void imap_relay_stop(struct session *s);
/* protocol `holding`: bytes not framed yet, or a response held for its verdict. */
bool imap_relay_holding(struct session *s);
/* imap_scan.c (issue 4): FETCH content scanning; all no-ops while st->sc is NULL.
 * login: set up scanning (st->sc) when this worker scans. False: out of memory. */
bool imap_scan_login(struct session *s);
/* Cancel the scan, keep-alive and budget waits; drop a held response. */
void imap_scan_stop(struct session *s);
void imap_scan_free(struct session *s);
/* A response is held for its verdict or budget (it will go out without new backend input). */
bool imap_scan_holding(struct session *s);
/* up filter: a SELECT/EXAMINE with tag `tag` names mailbox `name` (owned, NUL-terminated; NULL
 * if it could not be named): nothing is selected from now on; `name` becomes the selected
 * mailbox at the tagged OK (imap_scan_memo.c). */
void imap_scan_select(struct session *s, const char *tag, char *name);
/* up filter: CLOSE/UNSELECT: nothing is selected from now on. */
void imap_scan_unselect(struct session *s);
/* down filter: may it frame more? (false = paused: held response or our output in flight) */
bool imap_scan_down_paused(struct session *s);
/* down filter, after each imap_frame() step of `used` bytes: true = the scan filter holds or
 * moved these bytes (the relay must not release them) */
bool imap_scan_frame(struct session *s, enum imap_frame_event ev, size_t used);
/* nothing held or being sent for scanning */
bool imap_scan_idle(struct session *s);
/* imap_prefetch.c (issue 15): parts are judged on the whole message fetched first on this
 * connection. A client command was classified: must its whole line be held and parsed? */
bool imap_prefetch_wants_line(struct session *s);
enum pf_line {
    PF_LINE_PASS,    /* forward it */
    PF_LINE_HELD,    /* held: the proxy fetches first; the up filter stops until released */
    PF_LINE_REFUSED, /* answered BAD/NO (injected): drop the command */
};
/* The held line is complete (`bad`: it announced a literal or grew too long to hold). */
enum pf_line imap_prefetch_line(struct session *s, const char *line, size_t len, bool bad);
/* A client command went to the backend: outstanding until its tagged answer. */
void imap_prefetch_sent(struct session *s);
/* A client command is held: frame no more client bytes. */
bool imap_prefetch_up_blocked(struct session *s);
/* imap_relay.c: the held command goes to the backend now (called by imap_prefetch.c). */
void imap_relay_release_held(struct session *s);
/* imap_idle.c */
bool imap_relay_idle(struct session *s);
/* Queue a whole response line (with CRLF) for the client at the next response boundary. */
void imap_relay_inject(struct session *s, const char *text, size_t len);
/* Keep only the capabilities the proxy can inspect (imap_allow.c) in a list, in place; returns
 * the new length. Before login the proxy's own STARTTLS, LOGINDISABLED, AUTH=*, SASL-IR pass. */
size_t imap_filter_caps(char *caps, size_t len, bool post_login);

#endif
