/*
 * pop3_backend — logging in to the backend POP3 server with the client's credentials.
 *
 * Script: connect → [implicit TLS] → greeting "+OK" (its APOP timestamp, if any, is ignored)
 * → CAPA → [STLS → handshake → CAPA again, RFC 2595 4] → [XCLIENT ADDR PORT SESSION, when
 * offered: Dovecot honours it from login_trusted_networks, so the backend logs and limits by the
 * real client] → USER/PASS, or AUTH PLAIN/XOAUTH2/OAUTHBEARER with an initial response
 * (RFC 5034) → +OK.
 *
 * Failures are classified as in imap_backend.c: anything before the credentials are answered is
 * "unavailable" (-ERR [SYS/TEMP]); a -ERR to the credentials is an authentication failure
 * (-ERR [AUTH], or the backend's own [IN-USE] / [LOGIN-DELAY] / [SYS/…] code, which tell the
 * client something true: the mailbox is locked, or come back later). Neither closes the client.
 */
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "login_refusal.h"
#include "pop3.h"

static void fail_code(struct session *s, bool auth, const char *code, const char *why)
{
    struct pop3_state *st = pop3_st(s);
    st->bstate = PB_NONE;
    s->backend.wipe_ctl = false;
    pop3_preauth_login_failed(s, auth, SLF_CREDENTIALS_REFUSED, code, why);
}

static void fail(struct session *s, bool auth, const char *why)
{
    fail_code(s, auth, NULL, why);
}

/* The client's SASL mechanism is not offered by the backend: answered (and counted) as a
 * refused login, logged as what it is. */
static void fail_mech(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    st->bstate = PB_NONE;
    s->backend.wipe_ctl = false;
    pop3_preauth_login_failed(s, true, SLF_MECHANISM_UNSUPPORTED, NULL,
                              "backend does not offer this SASL mechanism");
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
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        fail(s, false, "backend command too long");
        return false;
    }
    return send_be(s, tmp, (size_t)n);
}

/* Framing of our next command's answer: CAPA's is multi-line, every other one single. */
static void expect(struct pop3_state *st, enum pop3_resp_kind k)
{
    pop3_framer_expect(&st->bf, k);
}

void pop3_backend_start(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    pop3_framer_init(&st->bf, s->cfg->limits.max_line);
    st->bscan = 0;
    st->be_stls = st->be_user = st->be_sasl_plain = st->be_sasl_xoauth2 = false;
    st->be_sasl_oauthbearer = st->be_xclient = st->be_capa_known = false;
    st->auth_challenged = false;
    st->bstate = PB_CONNECT;
    sess_backend_connect(s); /* the outcome comes as SESS_EV_DIALED */
}

/* A CAPA body: one capability per line (RFC 2449 5). */
static void learn_capa(struct pop3_state *st, const char *body, size_t len)
{
    st->be_capa_known = true;
    st->be_stls = st->be_user = st->be_sasl_plain = st->be_sasl_xoauth2 = false;
    st->be_sasl_oauthbearer = st->be_xclient = false;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        size_t l = lf ? (size_t)(lf - p) : (size_t)(end - p);
        size_t ll = l && p[l - 1] == '\r' ? l - 1 : l;
        if (ll == 4 && strncasecmp(p, "STLS", 4) == 0)
            st->be_stls = true;
        else if (ll == 4 && strncasecmp(p, "USER", 4) == 0)
            st->be_user = true;
        else if (ll >= 7 && strncasecmp(p, "XCLIENT", 7) == 0 && (ll == 7 || p[7] == ' '))
            st->be_xclient = true;
        else if (ll > 5 && strncasecmp(p, "SASL ", 5) == 0) {
            st->be_sasl_plain = backend_cap_has(p + 5, ll - 5, "PLAIN");
            st->be_sasl_xoauth2 = backend_cap_has(p + 5, ll - 5, "XOAUTH2");
            st->be_sasl_oauthbearer = backend_cap_has(p + 5, ll - 5, "OAUTHBEARER");
        }
        p += l + (lf ? 1 : 0);
    }
}

static void send_capa(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    st->bstate = PB_CAPA;
    expect(st, POP3_RESP_MULTI);
    sendf_be(s, "CAPA\r\n");
}

static void send_credentials(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    struct creds *c = &st->creds;
    switch (c->mech) {
    case CREDS_LOGIN:
        /* USER/PASS unless the backend offers only SASL PLAIN. */
        if (st->be_user || !st->be_capa_known || !st->be_sasl_plain) {
            st->bstate = PB_USER;
            if (sendf_be(s, "USER ") && send_be(s, c->user, c->user_len))
                send_be(s, "\r\n", 2);
            return;
        }
        break;
    case CREDS_PLAIN:
        break;
    case CREDS_XOAUTH2:
    case CREDS_OAUTHBEARER:
        if (!(c->mech == CREDS_XOAUTH2 ? st->be_sasl_xoauth2 : st->be_sasl_oauthbearer)) {
            fail_mech(s);
            return;
        }
        break;
    }
    size_t bl;
    const char *b64 = creds_response(c, &bl);
    if (!b64) {
        fail(s, false, "out of memory");
        return;
    }
    st->bstate = PB_AUTH;
    if (sendf_be(s, "AUTH %s ", creds_sasl_name(c->mech)) && send_be(s, b64, bl))
        send_be(s, "\r\n", 2);
}

static void send_xclient_or_login(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (st->be_xclient || st->be_xclient_greeting) {
        st->bstate = PB_XCLIENT;
        sendf_be(s, "XCLIENT ADDR=%s PORT=%u SESSION=%s\r\n", s->client_ip, s->client_port, s->sid);
        return;
    }
    send_credentials(s);
}

static void after_capa(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    if (s->be->tls == CFG_TLS_STARTTLS && !s->backend.ssl) {
        if (!st->be_stls) {
            fail(s, false, "backend does not offer STLS");
            return;
        }
        st->bstate = PB_STLS;
        sendf_be(s, "STLS\r\n");
        return;
    }
    send_xclient_or_login(s);
}

/* The backend answered the user name or the credentials with -ERR: a wrong password is
 * counted; a code that is not about the password is passed on and not counted
 * (login_refusal.h). The answer is logged for the operator. */
static void refused(struct session *s, const char *line, size_t len)
{
    struct lr_refusal r;
    lr_pop3(line, len, &r);
    char q[300];
    sess_log(s, LOG_INFO, "event=backend_login_refused code=%s counted=%s answer=%s",
             r.code[0] ? r.code : "-", r.kind == LR_CREDENTIALS ? "yes" : "no",
             log_q(q, sizeof q, line, len));
    struct pop3_state *st = pop3_st(s);
    st->bstate = PB_NONE;
    s->backend.wipe_ctl = false;
    if (r.kind == LR_PASS_ON)
        pop3_preauth_login_refused(s, r.code, r.text);
    else
        pop3_preauth_login_failed(s, true, SLF_CREDENTIALS_REFUSED, NULL,
                                  "backend refused the credentials");
}

/* One whole response: its status line (without the line end) and, for CAPA, its body. */
static void handle_response(struct session *s, enum pop3_status status, const char *line,
                            size_t len, const char *body, size_t blen)
{
    struct pop3_state *st = pop3_st(s);
    bool ok = status == POP3_STATUS_OK;
    switch (st->bstate) {
    case PB_GREETING:
        if (!ok) {
            fail(s, false, "bad backend greeting");
            return;
        }
        /* Dovecot announces XCLIENT to trusted peers in the greeting's response code, not in
         * CAPA: "+OK [XCLIENT] Dovecot ready." */
        st->be_xclient_greeting = memmem(line, len, "[XCLIENT]", 9) != NULL;
        send_capa(s);
        return;
    case PB_CAPA:
        if (ok)
            learn_capa(st, body, blen);
        else
            st->be_capa_known = false;
        after_capa(s);
        return;
    case PB_STLS:
        if (!ok) {
            fail(s, false, "backend refused STLS");
            return;
        }
        if (!buf_empty(&s->down)) {
            /* Bytes after "+OK" arrived in plaintext: an injection attempt. */
            fail(s, false, "backend sent data after STLS");
            return;
        }
        st->bstate = PB_STLS_HS;
        sess_backend_start_tls(s);
        return;
    case PB_XCLIENT:
        /* A refused XCLIENT only costs the backend the client's address: log and go on. */
        if (!ok) {
            char q[200];
            sess_log(s, LOG_WARN, "event=backend_xclient_refused answer=%s",
                     log_q(q, sizeof q, line, len));
        }
        send_credentials(s);
        return;
    case PB_USER:
        if (!ok) {
            refused(s, line, len);
            return;
        }
        st->bstate = PB_PASS;
        if (sendf_be(s, "PASS ") && send_be(s, st->creds.pass, st->creds.pass_len))
            send_be(s, "\r\n", 2);
        return;
    case PB_PASS:
    case PB_AUTH:
        if (status == POP3_STATUS_CONT) {
            /* XOAUTH2's error challenge: an empty response gets the final -ERR. */
            if (st->bstate != PB_AUTH || st->auth_challenged) {
                fail(s, false, "unexpected continuation from backend");
                return;
            }
            st->auth_challenged = true;
            expect(st, POP3_RESP_SASL);
            send_be(s, "\r\n", 2);
            return;
        }
        if (!ok) {
            refused(s, line, len);
            return;
        }
        st->bstate = PB_NONE;
        s->backend.wipe_ctl = false;
        /* A backend that answered before all of our login was flushed (its answer pipelined
         * ahead): the rest is not sent. Cleansed in place, it went out as NUL bytes ahead of the
         * client's first command (found by fuzz_backend_login). */
        if (s->backend.ctl.data) {
            explicit_bzero(s->backend.ctl.data, s->backend.ctl.cap); /* as conn_flush() */
            buf_clear(&s->backend.ctl);
        }
        pop3_preauth_login_ok(s, line, len);
        return;
    default:
        return;
    }
}

static void read_responses(struct session *s)
{
    struct pop3_state *st = pop3_st(s);
    while (!s->closing && st->bstate != PB_NONE && st->bstate != PB_STLS_HS &&
           st->bstate != PB_CONNECT) {
        if (st->bstate == PB_AUTH && pop3_framer_at_boundary(&st->bf) && st->bscan == 0 &&
            !st->auth_challenged)
            expect(st, POP3_RESP_SASL); /* "+ " may come back */
        size_t avail = buf_len(&s->down) - st->bscan;
        if (avail == 0)
            return;
        size_t used = 0;
        enum pop3_frame_event ev =
            pop3_frame(&st->bf, buf_rptr(&s->down) + st->bscan, avail, &used);
        st->bscan += used;
        if (ev == POP3_FRAME_ERROR) {
            fail(s, false, "backend protocol error");
            return;
        }
        if (ev != POP3_FRAME_END) {
            if (buf_room(&s->down) == 0) {
                fail(s, false, "backend response too long");
                return;
            }
            if (used == 0)
                return;
            continue;
        }
        /* Take the response out of the buffer before acting on it: on success the relay takes
         * over s->down, and must not see our login's answer. */
        size_t total = st->bscan;
        char *copy = malloc(total + 1);
        if (!copy) {
            fail(s, false, "out of memory");
            return;
        }
        memcpy(copy, buf_rptr(&s->down), total);
        buf_consume(&s->down, total);
        st->bscan = 0;
        size_t sl = st->bf.status_len;
        const char *body = copy + sl;
        size_t blen = 0;
        /* Skip the status line's terminator; the body is what follows minus the "." line. */
        if ((size_t)(body - copy) < total && *body == '\r')
            body++;
        if ((size_t)(body - copy) < total && *body == '\n')
            body++;
        if (st->bf.kind == POP3_RESP_MULTI && st->bf.status == POP3_STATUS_OK)
            blen = (size_t)st->bf.body_len;
        handle_response(s, st->bf.status, copy, sl, body, blen);
        free(copy);
    }
}

void pop3_backend_event(struct session *s, int events)
{
    struct pop3_state *st = pop3_st(s);
    if (events & SESS_EV_TIMEOUT) {
        fail(s, false, "backend timeout");
        return;
    }
    struct conn *c = &s->backend;
    switch (st->bstate) {
    case PB_CONNECT:
    case PB_STLS_HS:
        /* The dialer: connected (TLS done if implicit), or the STLS handshake done. */
        if (!(events & SESS_EV_DIALED))
            return;
        if (s->pre->dial.result != BACKEND_DIAL_OK) {
            fail(s, s->pre->dial.result == BACKEND_DIAL_REFUSED, backend_dial_why(&s->pre->dial));
            return;
        }
        c->reading = true;
        if (st->bstate == PB_CONNECT) {
            s->backend.wipe_ctl = true;
            st->bstate = PB_GREETING;
        } else {
            /* RFC 2595 4: capabilities learned before TLS are void. */
            send_capa(s);
        }
        read_responses(s);
        return;
    case PB_NONE:
        return;
    default:
        break;
    }
    if (events & CONN_EV_READ)
        read_responses(s);
    if (!s->closing && st->bstate != PB_NONE && s->state == SESS_BACKEND && (c->eof || c->error))
        fail(s, false, c->eof ? "backend closed the connection" : "backend connection error");
}
