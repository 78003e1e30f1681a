/*
 * imap_backend — logging in to the backend IMAP server with the client's credentials.
 *
 * Script: connect → [implicit TLS] → greeting "* OK" → [pre-login CAPABILITY if the greeting
 * had none] → [STARTTLS → handshake → CAPABILITY again, RFC 3501 6.2.1] → ID (the client's
 * fields plus x-originating-ip/port and x-connected-ip/port, RFC 2971, honoured by Dovecot for
 * trusted networks) → LOGIN with literals (LITERAL+ when offered, else synchronising literals
 * waiting for each "+") or AUTHENTICATE (PLAIN with an authzid, XOAUTH2, OAUTHBEARER) → tagged
 * OK, with the post-login capabilities from its response code, an untagged CAPABILITY before
 * it, or a CAPABILITY command of our own.
 *
 * Our tags are single letters (C, S, I, L) — the client's tag is only used towards the client.
 * Failures are classified as in Dovecot's login proxy: anything before the login answer is
 * "unavailable" (the client may retry later), a NO/BAD to the login is an authentication
 * failure. Neither closes the client: it may try again on the same connection.
 */
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap.h"
#include "login_refusal.h"

static void fail(struct session *s, bool auth, const char *why)
{
    struct imap_state *st = imap_st(s);
    st->lg->bstate = IB_NONE;
    s->backend.wipe_ctl = false;
    imap_preauth_login_failed(s, auth ? IMAP_LF_AUTH : IMAP_LF_UNAVAILABLE, why);
}

/* The backend answered our login with NO or BAD: a wrong password is counted and answered as
 * AUTHENTICATIONFAILED; any other refusal (TLS required, account expired, server busy) is
 * passed on with the backend's own code and text and not counted (login_refusal.h). The
 * backend's answer is logged: it is what an operator needs to see (it never carries the
 * password: that went in literals the backend does not echo). */
static void refused(struct session *s, const char *status, size_t slen)
{
    struct imap_state *st = imap_st(s);
    struct lr_refusal r;
    lr_imap(status, slen, &r);
    char q[300];
    sess_log(s, LOG_INFO, "event=backend_login_refused code=%s counted=%s answer=%s",
             r.code[0] ? r.code : "-", r.kind == LR_CREDENTIALS ? "yes" : "no",
             log_q(q, sizeof q, status, slen));
    st->lg->bstate = IB_NONE;
    s->backend.wipe_ctl = false;
    if (r.kind == LR_PASS_ON)
        imap_preauth_login_refused(s, r.code, r.text);
    else if (r.kind == LR_CREDENTIALS)
        imap_preauth_login_failed(s, IMAP_LF_AUTH, "backend refused the credentials");
    else
        imap_preauth_login_failed(s, IMAP_LF_UNAVAILABLE, "backend answered the login with BAD");
}

/* The client chose a SASL mechanism this backend does not offer: not a credentials failure. */
static void fail_mech(struct session *s)
{
    struct imap_state *st = imap_st(s);
    st->lg->bstate = IB_NONE;
    s->backend.wipe_ctl = false;
    imap_preauth_login_failed(s, IMAP_LF_MECH, "backend does not offer this SASL mechanism");
}

static bool send_be(struct session *s, const void *p, size_t len)
{
    if (!conn_ctl_append(&s->backend, p, len)) {
        fail(s, false, "backend command too long");
        return false;
    }
    return true;
}

static bool sendf_be(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool sendf_be(struct session *s, const char *fmt, ...)
{
    /* Heap, not a fixed array: the ID with a client's maximal RFC 2971 list is ~32 KB. */
    char *line = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0) {
        fail(s, false, "out of memory");
        return false;
    }
    bool ok = send_be(s, line, (size_t)n);
    free(line);
    return ok;
}

void imap_backend_start(struct session *s)
{
    struct imap_state *st = imap_st(s);
    imap_framer_init(&st->lg->bf, s->cfg->limits.max_line);
    st->lg->bscan = 0;
    st->lg->be_caps_known = st->lg->be_literal_plus = st->lg->be_sasl_ir = st->lg->be_id = false;
    st->lg->be_starttls = st->lg->be_auth_plain = st->lg->be_auth_xoauth2 =
        st->lg->be_auth_oauthbearer = false;
    free(st->lg->post_caps);
    st->lg->post_caps = NULL;
    st->lg->bstate = IB_CONNECT;
    sess_backend_connect(s); /* the outcome comes as SESS_EV_DIALED */
}

static void learn_caps(struct imap_state *st, const char *caps, size_t len)
{
    st->lg->be_caps_known = true;
    st->lg->be_literal_plus = backend_cap_has(caps, len, "LITERAL+");
    st->lg->be_sasl_ir = backend_cap_has(caps, len, "SASL-IR");
    st->lg->be_id = backend_cap_has(caps, len, "ID");
    st->lg->be_starttls = backend_cap_has(caps, len, "STARTTLS");
    st->lg->be_auth_plain = backend_cap_has(caps, len, "AUTH=PLAIN");
    st->lg->be_auth_xoauth2 = backend_cap_has(caps, len, "AUTH=XOAUTH2");
    st->lg->be_auth_oauthbearer = backend_cap_has(caps, len, "AUTH=OAUTHBEARER");
}

/* Find "CAPABILITY " at `p` (after "* " or inside "[") and return the list up to "]"/end. */
static bool caps_in(const char *p, size_t len, const char **caps_r, size_t *len_r)
{
    static const char key[] = "CAPABILITY ";
    if (len < sizeof key - 1 || strncasecmp(p, key, sizeof key - 1) != 0)
        return false;
    const char *c = p + sizeof key - 1;
    size_t cl = len - (sizeof key - 1);
    const char *rb = memchr(c, ']', cl);
    if (rb)
        cl = (size_t)(rb - c);
    *caps_r = c;
    *len_r = cl;
    return true;
}

static void store_post_caps(struct imap_state *st, const char *caps, size_t len)
{
    free(st->lg->post_caps);
    st->lg->post_caps = strndup(caps, len);
    if (st->lg->post_caps)
        st->lg->post_caps[imap_filter_caps(st->lg->post_caps, strlen(st->lg->post_caps), true)] =
            '\0';
}

static void send_id(struct session *s)
{
    struct imap_state *st = imap_st(s);
    char lip[INET6_ADDRSTRLEN] = "";
    unsigned lport = 0;
    if (s->pre->local_sa.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&s->pre->local_sa;
        inet_ntop(AF_INET, &in->sin_addr, lip, sizeof lip);
        lport = ntohs(in->sin_port);
    } else if (s->pre->local_sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&s->pre->local_sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, lip, sizeof lip);
        lport = ntohs(in6->sin6_port);
    }
    if (!sendf_be(s,
                  "I ID (%s%s\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
                  "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\" "
                  "\"x-session-ext-id\" \"%s\")\r\n",
                  st->lg->client_id ? st->lg->client_id : "", st->lg->client_id ? " " : "",
                  s->client_ip, s->client_port, lip, lport, s->sid))
        return;
    st->lg->id_pending = true;
}

static void send_login(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->lg->be_id)
        send_id(s);
    if (s->closing || st->lg->bstate == IB_NONE)
        return;
    st->lg->lit_step = 0;
    st->lg->bstate = IB_LOGIN;
    struct creds *c = &st->lg->creds;
    if (c->mech == CREDS_LOGIN) {
        size_t ul = c->user_len, pl = c->pass_len;
        if (st->lg->be_literal_plus) {
            if (sendf_be(s, "L LOGIN {%zu+}\r\n", ul) && send_be(s, c->user, ul) &&
                sendf_be(s, " {%zu+}\r\n", pl) && send_be(s, c->pass, pl))
                send_be(s, "\r\n", 2);
        } else {
            st->lg->lit_step = 1;
            st->lg->bstate = IB_LOGIN_LIT;
            sendf_be(s, "L LOGIN {%zu}\r\n", ul);
        }
        return;
    }
    if ((c->mech == CREDS_XOAUTH2 && !st->lg->be_auth_xoauth2) ||
        (c->mech == CREDS_OAUTHBEARER && !st->lg->be_auth_oauthbearer)) {
        fail_mech(s);
        return;
    }
    const char *mech = creds_sasl_name(c->mech);
    if (st->lg->be_sasl_ir) {
        size_t bl;
        const char *b64 = creds_response(c, &bl);
        if (!b64) {
            fail(s, false, "out of memory");
            return;
        }
        if (sendf_be(s, "L AUTHENTICATE %s ", mech) && send_be(s, b64, bl))
            send_be(s, "\r\n", 2);
        st->lg->lit_step = 10; /* a "+" now is a failure challenge: answer it empty */
    } else {
        sendf_be(s, "L AUTHENTICATE %s\r\n", mech);
        st->lg->lit_step = 20; /* first "+": send the payload */
    }
}

/* A "+" continuation from the backend during login. */
static void on_continuation(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct creds *c = &st->lg->creds;
    switch (st->lg->lit_step) {
    case 1:
        if (send_be(s, c->user, c->user_len))
            sendf_be(s, " {%zu}\r\n", c->pass_len);
        st->lg->lit_step = 2;
        break;
    case 2:
        if (send_be(s, c->pass, c->pass_len))
            send_be(s, "\r\n", 2);
        st->lg->lit_step = 3;
        st->lg->bstate = IB_LOGIN;
        break;
    case 20: {
        /* The initial response, sent after the backend's empty challenge (no SASL-IR). */
        st->lg->lit_step = 10;
        size_t bl;
        const char *b64 = creds_response(c, &bl);
        if (!b64) {
            fail(s, false, "out of memory");
            return;
        }
        if (send_be(s, b64, bl))
            send_be(s, "\r\n", 2);
        break;
    }
    case 10:
        /* XOAUTH2 error challenge (RFC-less, Google's): an empty response gets the NO. */
        send_be(s, "\r\n", 2);
        st->lg->lit_step = 11;
        break;
    default:
        fail(s, false, "unexpected continuation from backend");
        break;
    }
}

static bool tagged(const char *line, size_t len, char tag, const char **status_r, size_t *slen_r)
{
    if (len < 3 || line[0] != tag || line[1] != ' ')
        return false;
    *status_r = line + 2;
    *slen_r = len - 2;
    return true;
}

static bool status_is(const char *st, size_t len, const char *word)
{
    size_t wl = strlen(word);
    return len >= wl && strncasecmp(st, word, wl) == 0 && (len == wl || st[wl] == ' ');
}

static void login_done(struct session *s)
{
    struct imap_state *st = imap_st(s);
    st->lg->bstate = IB_NONE;
    s->backend.wipe_ctl = false;
    /* A backend that answered before all of our login was flushed (its answer pipelined
     * ahead): the rest is not sent. Cleansed in place, it went out as NUL bytes ahead of the
     * client's first command (found by fuzz_backend_login). */
    if (s->backend.ctl.data) {
        explicit_bzero(s->backend.ctl.data, s->backend.ctl.cap); /* as conn_flush() wipes */
        buf_clear(&s->backend.ctl);
    }
    imap_preauth_login_ok(s);
}

/* One whole response (without its CRLF). */
static void handle_response(struct session *s, const char *line, size_t len)
{
    struct imap_state *st = imap_st(s);
    const char *caps, *status;
    size_t clen, slen;
    bool untagged = len >= 2 && line[0] == '*' && line[1] == ' ';
    switch (st->lg->bstate) {
    case IB_GREETING:
        if (!untagged || !status_is(line + 2, len - 2, "OK")) {
            fail(s, false,
                 len >= 5 && !strncasecmp(line, "* BYE", 5) ? "backend said BYE"
                                                            : "bad backend greeting");
            return;
        }
        if (len > 6 && line[5] == '[' && caps_in(line + 6, len - 6, &caps, &clen))
            learn_caps(st, caps, clen);
        if (s->be->tls == CFG_TLS_STARTTLS) {
            if (st->lg->be_caps_known && !st->lg->be_starttls) {
                fail(s, false, "backend does not offer STARTTLS");
                return;
            }
            st->lg->bstate = IB_STARTTLS;
            sendf_be(s, "S STARTTLS\r\n");
        } else if (!st->lg->be_caps_known) {
            st->lg->bstate = IB_CAPA;
            sendf_be(s, "C CAPABILITY\r\n");
        } else {
            send_login(s);
        }
        return;
    case IB_CAPA:
        if (untagged && caps_in(line + 2, len - 2, &caps, &clen)) {
            learn_caps(st, caps, clen);
        } else if (tagged(line, len, 'C', &status, &slen)) {
            if (!status_is(status, slen, "OK"))
                fail(s, false, "backend refused CAPABILITY");
            else
                send_login(s);
        }
        return;
    case IB_STARTTLS:
        if (tagged(line, len, 'S', &status, &slen)) {
            if (!status_is(status, slen, "OK")) {
                fail(s, false, "backend refused STARTTLS");
                return;
            }
            if (!buf_empty(&s->down)) {
                /* Bytes after "S OK" arrived in plaintext: an injection attempt. */
                fail(s, false, "backend sent data after STARTTLS");
                return;
            }
            st->lg->bstate = IB_STARTTLS_HS;
            sess_backend_start_tls(s);
        }
        return;
    case IB_LOGIN:
    case IB_LOGIN_LIT:
    case IB_POSTCAPA:
        if (len >= 1 && line[0] == '+') {
            on_continuation(s);
            return;
        }
        if (untagged && caps_in(line + 2, len - 2, &caps, &clen)) {
            store_post_caps(st, caps, clen);
            return;
        }
        if (tagged(line, len, 'I', &status, &slen)) {
            st->lg->id_pending = false;
            return;
        }
        if (st->lg->bstate == IB_POSTCAPA && tagged(line, len, 'C', &status, &slen)) {
            login_done(s);
            return;
        }
        if (tagged(line, len, 'L', &status, &slen)) {
            if (!status_is(status, slen, "OK")) {
                refused(s, status, slen);
                return;
            }
            if (slen > 4 && status[3] == '[' && caps_in(status + 4, slen - 4, &caps, &clen))
                store_post_caps(st, caps, clen);
            if (!st->lg->post_caps) {
                st->lg->bstate = IB_POSTCAPA;
                sendf_be(s, "C CAPABILITY\r\n");
                return;
            }
            login_done(s);
        }
        return;
    default:
        return;
    }
}

/* The login script runs: after login_done() the login state is gone (st->lg NULL). */
static bool logging_in(const struct imap_state *st)
{
    return st->lg && st->lg->bstate != IB_NONE;
}

static void read_responses(struct session *s)
{
    struct imap_state *st = imap_st(s);
    while (!s->closing && logging_in(st) && st->lg->bstate != IB_CONNECT &&
           st->lg->bstate != IB_STARTTLS_HS) {
        size_t avail = buf_len(&s->down) - st->lg->bscan;
        if (avail == 0)
            return;
        size_t used = 0;
        enum imap_frame_event ev =
            imap_frame(&st->lg->bf, buf_rptr(&s->down) + st->lg->bscan, avail, &used);
        st->lg->bscan += used;
        if (ev == IMAP_FRAME_ERROR) {
            fail(s, false, "backend protocol error");
            return;
        }
        if (ev != IMAP_FRAME_END) {
            if (ev == IMAP_FRAME_MORE && buf_room(&s->down) == 0) {
                fail(s, false, "backend response too long");
                return;
            }
            continue;
        }
        /* Take the response out of the buffer before acting on it: on success the relay takes
         * over s->down, and must not see our login's answer. */
        size_t len = st->lg->bscan;
        char *line = malloc(len + 1);
        if (!line) {
            fail(s, false, "out of memory");
            return;
        }
        memcpy(line, buf_rptr(&s->down), len);
        buf_consume(&s->down, len);
        st->lg->bscan = 0;
        size_t l = len;
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            l--;
        handle_response(s, line, l);
        free(line);
    }
}

void imap_backend_event(struct session *s, int events)
{
    struct imap_state *st = imap_st(s);
    if (!st->lg)
        return; /* logged in: the relay has the backend */
    if (events & SESS_EV_TIMEOUT) {
        fail(s, false, "backend timeout");
        return;
    }
    struct conn *c = &s->backend;
    switch (st->lg->bstate) {
    case IB_CONNECT:
    case IB_STARTTLS_HS:
        /* The dialer: connected (TLS done if implicit), or the STARTTLS handshake done. */
        if (!(events & SESS_EV_DIALED))
            return;
        if (s->pre->dial.result != BACKEND_DIAL_OK) {
            fail(s, s->pre->dial.result == BACKEND_DIAL_REFUSED, backend_dial_why(&s->pre->dial));
            return;
        }
        c->reading = true;
        if (st->lg->bstate == IB_CONNECT) {
            s->backend.wipe_ctl = true;
            st->lg->bstate = IB_GREETING;
        } else {
            /* RFC 3501 6.2.1: capabilities learned before TLS are void. */
            st->lg->be_caps_known = false;
            st->lg->bstate = IB_CAPA;
            sendf_be(s, "C CAPABILITY\r\n");
        }
        read_responses(s);
        return;
    case IB_NONE:
        return;
    default:
        break;
    }
    if (events & CONN_EV_READ)
        read_responses(s);
    if (!s->closing && logging_in(st) && s->state == SESS_BACKEND && (c->eof || c->error))
        fail(s, false, c->eof ? "backend closed the connection" : "backend connection error");
}
