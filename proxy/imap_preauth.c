/*
 * imap_preauth — the IMAP dialogue before login, spoken by the proxy itself (RFC 3501 / 9051
 * not-authenticated state): CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), STARTTLS (RFC 2595),
 * LOGIN, AUTHENTICATE PLAIN (RFC 4616, with SASL-IR RFC 4959) and AUTHENTICATE
 * XOAUTH2/OAUTHBEARER, whose payloads are replayed to the backend untouched.
 *
 * One small function per command; imap_client_input() only tokenizes and dispatches. The
 * tokenizer is command-agnostic, so a literal sent with an unknown command is swallowed as an
 * argument and can never run as a command.
 *
 * STARTTLS: bytes the client pipelined behind STARTTLS are thrown away (and counted in the log),
 * never parsed after the handshake — the CVE-2011-0411 class of plaintext injection.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap.h"
#include "worker.h"
#include "sess_event.h"
#include "sess_policy.h"

#define ID_MAX_PAIRS 30 /* RFC 2971: at most 30 field-value pairs */
#define ID_FIELD_MAX 30 /* field names */
#define ID_VALUE_MAX 1024

static void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct session *s, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 3)
        n = (int)(sizeof line - 3);
    line[n++] = '\r';
    line[n++] = '\n';
    if (!conn_ctl_append(&s->client, line, (size_t)n))
        sess_close(s, "client output overflow");
}

static const char *tag_or_star(const char *tag)
{
    return tag && tag[0] ? tag : "*";
}

static bool plaintext_refused(struct session *s)
{
    return !s->client_tls && !s->cfg->allow_plaintext_auth;
}

const char *imap_preauth_caps(struct session *s, char *buf, size_t cap)
{
    bool starttls = s->listener->tls == CFG_TLS_STARTTLS && !s->client_tls;
    int n = snprintf(buf, cap, "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+%s%s",
                     starttls ? " STARTTLS" : "",
                     plaintext_refused(s) ? " LOGINDISABLED"
                                          : " AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER");
    /* issue 15: the same allow-list as every other list the client sees (imap_allow.c) */
    if (n > 0 && (size_t)n < cap)
        buf[imap_filter_caps(buf, (size_t)n, false)] = '\0';
    return buf;
}

static void imap_greet(struct session *s)
{
    char caps[256];
    reply(s, "* OK [CAPABILITY %s] %s ready.", imap_preauth_caps(s, caps, sizeof caps),
          s->cfg->greeting_name);
}

static int imap_init(struct session *s)
{
    struct imap_state *st = calloc(1, sizeof *st);
    if (!st)
        return 0;
    st->lg = calloc(1, sizeof *st->lg);
    if (!st->lg) {
        free(st);
        return 0;
    }
    buf_init(&st->inject, 4096);
    s->pstate = st;
    return 1;
}

static void forget_login(struct imap_state *st)
{
    creds_clear(&st->lg->creds);
}

static const char *mech_name(enum creds_mech m)
{
    return creds_mech_name(m, "login");
}

static void free_parser_store(struct imap_state *st)
{
    if (st->lg->store) {
        explicit_bzero(st->lg->store, st->lg->store_cap); /* as conn_flush() wipes */
        free(st->lg->store);
        st->lg->store = NULL;
    }
}

static void imap_stop(struct session *s)
{
    imap_scan_stop(s); /* issue 4: scans, keep-alive, budget waits */
    imap_relay_stop(s);
}

/* The relay starts (or the session ends): the login state goes, its secrets wiped, and with it
 * the session's borrowed pointer to the credentials (s->login_creds points into st->lg). */
static void free_login(struct session *s, struct imap_state *st)
{
    if (!st->lg)
        return;
    if (s->login_creds == &st->lg->creds)
        s->login_creds = NULL;
    forget_login(st);
    free_parser_store(st);
    free(st->lg->client_id);
    free(st->lg->post_caps);
    free(st->lg);
    st->lg = NULL;
}

static void imap_destroy(struct session *s)
{
    struct imap_state *st = imap_st(s);
    imap_scan_free(s); /* issue 4 */
    free_login(s, st);
    imap_sel_lit_free(&st->sel_lit);
    buf_free(&st->inject);
    free(st);
    s->pstate = NULL;
}

static void imap_bye(struct session *s, const char *text)
{
    if (s->logged_in && imap_st(s)->backend_bye)
        return; /* the client already has the backend's BYE */
    char line[512];
    int n = snprintf(line, sizeof line, "* BYE %s\r\n", text);
    if (s->logged_in)
        imap_relay_inject(s, line, (size_t)n); /* at a response boundary (imap_relay.c) */
    else
        conn_ctl_append(&s->client, line, (size_t)n);
}

static bool count_bad(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (++st->lg->bad >= s->cfg->limits.max_bad_commands) {
        sess_event(s, &(struct sess_event){.kind = SEV_REFUSED,
                                           .reason = SR_TOO_MANY_BAD_COMMANDS,
                                           .n = st->lg->bad});
        reply(s, "* BYE Too many invalid commands.");
        sess_close_after_flush(s, "too many bad commands");
        return false;
    }
    return true;
}

/* ---- commands ---- */

static void cmd_capability(struct session *s, const char *tag)
{
    char caps[256];
    reply(s, "* CAPABILITY %s", imap_preauth_caps(s, caps, sizeof caps));
    reply(s, "%s OK Pre-login capabilities listed, post-login capabilities have more.", tag);
}

static void cmd_logout(struct session *s, const char *tag)
{
    reply(s, "* BYE Logging out");
    reply(s, "%s OK Logout completed.", tag);
    sess_close_after_flush(s, "logout");
}

static bool starttls_offered(struct session *s)
{
    return s->listener->tls == CFG_TLS_STARTTLS && !s->client_tls;
}

static void cmd_starttls(struct session *s, const char *tag)
{
    if (!starttls_offered(s)) {
        reply(s, "%s BAD %s", tag,
              s->client_tls ? "TLS is already active." : "STARTTLS is not available here.");
        count_bad(s);
        return;
    }
    size_t dropped = buf_len(&s->up);
    buf_clear(&s->up);
    if (dropped)
        sess_event(s, &(struct sess_event){.kind = SEV_STARTTLS_INJECTION, .n = dropped});
    reply(s, "%s OK Begin TLS negotiation now.", tag);
    s->client.reading = false;
    sess_set_state(s, SESS_STARTTLS);
    sess_pump(s);
    if (!s->closing && conn_pending_out(&s->client) == 0)
        sess_client_start_tls(s);
}

static void imap_starttls_done(struct session *s)
{
    /* RFC 3501 6.2.1: the client must discard cached capabilities; nothing to send. */
    (void)s;
}

/* The inside of a quoted string for `in`, at most `lim` octets as written (escapes counted, so
 * the backend sees no string over RFC 2971's 1024 octets), without CR, LF or NUL, and cut
 * before an incomplete UTF-8 sequence. Returns the octets written to `out`. */
static size_t id_quote_body(char *out, size_t lim, const char *in, size_t len)
{
    size_t o = 0, j = 0;
    for (; j < len; j++) {
        unsigned char c = (unsigned char)in[j];
        if (c == '\r' || c == '\n' || c == 0)
            continue;
        size_t w = c == '"' || c == '\\' ? 2 : 1;
        if (o + w > lim)
            break;
        if (w == 2)
            out[o++] = '\\';
        out[o++] = (char)c;
    }
    if (j < len) {
        /* Cut: drop a trailing multi-byte sequence that lost its continuation bytes. */
        size_t k = o, cont = 0;
        while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80 && cont < 3) {
            k--;
            cont++;
        }
        if (k > 0 && (unsigned char)out[k - 1] >= 0xC0) {
            unsigned char lead = (unsigned char)out[k - 1];
            size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
            if (cont < need)
                o = k - 1;
        }
    }
    return o;
}

/* Re-serialise the client's ID list with our limits: quoted strings only, bounded, no CR/LF. */
static void cmd_id(struct session *s, const char *tag)
{
    struct imap_state *st = imap_st(s);
    const struct imap_cmd_parser *p = &st->lg->parser;
    free(st->lg->client_id);
    st->lg->client_id = NULL;
    if (p->nargs >= 2 && p->args[0].type == IMAP_ARG_LIST_OPEN) {
        /* Room for 30 pairs at their caps on the wire: RFC 2971's maximal ID is forwarded
         * whole (issue 15; it was dropped silently past ~4 KB). */
        size_t cap = ID_MAX_PAIRS * (ID_FIELD_MAX + ID_VALUE_MAX + 8) + 1;
        char *out = malloc(cap);
        size_t o = 0;
        unsigned pairs = 0;
        bool ok = out != NULL;
        for (unsigned i = 1; ok && i + 1 < p->nargs && p->args[i].type != IMAP_ARG_LIST_CLOSE;
             i += 2) {
            const struct imap_arg *k = &p->args[i], *v = &p->args[i + 1];
            if (k->type == IMAP_ARG_LIST_OPEN || v->type == IMAP_ARG_LIST_OPEN ||
                k->type == IMAP_ARG_LIST_CLOSE || v->type == IMAP_ARG_LIST_CLOSE ||
                ++pairs > ID_MAX_PAIRS) {
                ok = false;
                break;
            }
            /* The forwarding fields are ours to set; a client may not forge them. */
            const char *kp = imap_cmd_arg(p, i);
            if (k->len >= 2 && strncasecmp(kp, "x-", 2) == 0)
                continue;
            for (int part = 0; part < 2; part++) {
                const struct imap_arg *a = part ? v : k;
                const char *ap = imap_cmd_arg(p, part ? i + 1 : i);
                size_t lim = part ? ID_VALUE_MAX : ID_FIELD_MAX;
                bool nil = part && a->type == IMAP_ARG_ATOM && a->len == 3 &&
                           strncasecmp(ap, "NIL", 3) == 0;
                if (o + lim + 8 > cap) {
                    ok = false;
                    break;
                }
                if (o)
                    out[o++] = ' ';
                if (nil) {
                    memcpy(out + o, "NIL", 3);
                    o += 3;
                    continue;
                }
                out[o++] = '"';
                o += id_quote_body(out + o, lim, ap, a->len);
                out[o++] = '"';
            }
        }
        if (ok && out) {
            out[o] = '\0';
            st->lg->client_id = out;
        } else {
            free(out);
        }
    } else if (!(p->nargs == 1 && imap_cmd_arg_is(p, 0, "NIL"))) {
        reply(s, "%s BAD Invalid ID parameters.", tag);
        count_bad(s);
        return;
    }
    if (st->lg->client_id) {
        char q[300];
        sess_log(s, LOG_DEBUG, "event=client_id id=%s", log_qs(q, sizeof q, st->lg->client_id));
    }
    reply(s, "* ID (\"name\" \"Portcullis\")");
    reply(s, "%s OK ID completed.", tag);
}

/* s->user (for logs, policy and routing) from the login's credentials. */
static bool set_user(struct session *s, const struct creds *c)
{
    free(s->user);
    s->user = strndup(c->user, c->user_len);
    return s->user != NULL;
}

static void imap_client_input(struct session *s);

/* The login policy refused before the backend was contacted (sess_policy.c): answer, and back
 * to the pre-auth dialogue as after a failed login. */
static void login_refused(struct session *s, const char *answer)
{
    struct imap_state *st = imap_st(s);
    forget_login(st);
    reply(s, "%s %s", st->lg->tag, answer);
    sess_forget_user(s);
    if (!count_bad(s))
        return;
    s->client.reading = true;
    imap_client_input(s);
}

static void begin_login(struct session *s)
{
    struct imap_state *st = imap_st(s);
    s->client.reading = false; /* pipelined commands wait in s->up until the login is decided */
    st->lg->preauth_deadline = s->deadline_at;
    sess_log(s, LOG_DEBUG, "event=login_start mech=%s", mech_name(st->lg->creds.mech));
    s->login_creds = &st->lg->creds; /* for an auth_http lookup (sess_lookup.c) */
    s->login_attempts++;
    /* The login policy (issue 5) first; imap_backend_start() never calls back synchronously:
     * failures arrive as events. */
    sess_login_check(s, imap_backend_start, login_refused);
}

static void cmd_login(struct session *s, const char *tag)
{
    struct imap_state *st = imap_st(s);
    const struct imap_cmd_parser *p = &st->lg->parser;
    if (plaintext_refused(s)) {
        sess_event(s, &(struct sess_event){.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_LOGIN});
        reply(s,
              "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
              "connections; use STARTTLS.",
              tag);
        count_bad(s);
        return;
    }
    if (p->nargs != 2 || p->args[0].type >= IMAP_ARG_LIST_OPEN ||
        p->args[1].type >= IMAP_ARG_LIST_OPEN) {
        reply(s, "%s BAD LOGIN expects a user name and a password.", tag);
        count_bad(s);
        return;
    }
    enum creds_rc rc = creds_from_login(&st->lg->creds, imap_cmd_arg(p, 0), p->args[0].len,
                                        imap_cmd_arg(p, 1), p->args[1].len);
    if (rc == CREDS_MALFORMED) {
        reply(s, "%s NO [AUTHENTICATIONFAILED] Invalid user name or password.", tag);
        count_bad(s);
        return;
    }
    if (rc != CREDS_OK || !set_user(s, &st->lg->creds)) {
        sess_close(s, "out of memory");
        return;
    }
    snprintf(st->lg->tag, sizeof st->lg->tag, "%s", tag);
    begin_login(s);
}

/* Handle a decoded-or-raw SASL initial response for the chosen mechanism. */
static void sasl_response(struct session *s, const char *b64, size_t len)
{
    struct imap_state *st = imap_st(s);
    const char *tag = st->lg->tag;
    if (len == 1 && b64[0] == '*') {
        reply(s, "%s BAD Authentication cancelled.", tag);
        return;
    }
    switch (creds_from_sasl(&st->lg->creds, st->lg->mech, b64, len)) {
    case CREDS_OK:
        break;
    case CREDS_BAD_BASE64:
        reply(s, "%s BAD Invalid base64 data.", tag);
        count_bad(s);
        return;
    case CREDS_MALFORMED:
        reply(s, "%s NO [AUTHENTICATIONFAILED] Invalid SASL message.", tag);
        count_bad(s);
        return;
    case CREDS_NOMEM:
        sess_close(s, "out of memory");
        return;
    }
    if (!set_user(s, &st->lg->creds)) {
        sess_close(s, "out of memory");
        return;
    }
    begin_login(s);
}

static void cmd_authenticate(struct session *s, const char *tag)
{
    struct imap_state *st = imap_st(s);
    const struct imap_cmd_parser *p = &st->lg->parser;
    if (p->nargs < 1 || p->nargs > 2 || p->args[0].type != IMAP_ARG_ATOM) {
        reply(s, "%s BAD AUTHENTICATE expects a mechanism.", tag);
        count_bad(s);
        return;
    }
    if (plaintext_refused(s)) {
        sess_event(s,
                   &(struct sess_event){.kind = SEV_REFUSED, .reason = SR_PLAINTEXT_AUTHENTICATE});
        reply(s,
              "%s NO [PRIVACYREQUIRED] Authentication disallowed on non-secure connections; "
              "use STARTTLS.",
              tag);
        count_bad(s);
        return;
    }
    if (imap_cmd_arg_is(p, 0, "PLAIN"))
        st->lg->mech = CREDS_PLAIN;
    else if (imap_cmd_arg_is(p, 0, "XOAUTH2"))
        st->lg->mech = CREDS_XOAUTH2;
    else if (imap_cmd_arg_is(p, 0, "OAUTHBEARER"))
        st->lg->mech = CREDS_OAUTHBEARER;
    else {
        reply(s, "%s NO [CANNOT] Unsupported authentication mechanism.", tag);
        count_bad(s);
        return;
    }
    snprintf(st->lg->tag, sizeof st->lg->tag, "%s", tag);
    if (p->nargs == 2) {
        sasl_response(s, imap_cmd_arg(p, 1), p->args[1].len);
        return;
    }
    st->lg->sasl_wait = true;
    reply(s, "+ ");
}

/* Commands a client may legitimately send only after login get a clear answer, not "unknown". */
static bool is_known_command(const char *name)
{
    static const char *const known[] = {
        "SELECT",      "EXAMINE",      "CREATE",   "DELETE", "RENAME",    "SUBSCRIBE",
        "UNSUBSCRIBE", "LIST",         "LSUB",     "STATUS", "APPEND",    "CHECK",
        "CLOSE",       "EXPUNGE",      "SEARCH",   "FETCH",  "STORE",     "COPY",
        "MOVE",        "UID",          "IDLE",     "ENABLE", "NAMESPACE", "UNSELECT",
        "GETQUOTA",    "GETQUOTAROOT", "SETQUOTA", "GETACL", "SETACL",    "MYRIGHTS",
        "COMPRESS",    "NOTIFY",       NULL};
    for (int i = 0; known[i]; i++)
        if (strcmp(name, known[i]) == 0)
            return true;
    return false;
}

static void dispatch(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const struct imap_cmd_parser *p = &st->lg->parser;
    const char *tag = p->tag;
    const char *n = p->name;
    if (strcmp(n, "CAPABILITY") == 0)
        cmd_capability(s, tag);
    else if (strcmp(n, "NOOP") == 0)
        reply(s, "%s OK NOOP completed.", tag);
    else if (strcmp(n, "LOGOUT") == 0)
        cmd_logout(s, tag);
    else if (strcmp(n, "STARTTLS") == 0)
        cmd_starttls(s, tag);
    else if (strcmp(n, "ID") == 0)
        cmd_id(s, tag);
    else if (strcmp(n, "LOGIN") == 0)
        cmd_login(s, tag);
    else if (strcmp(n, "AUTHENTICATE") == 0)
        cmd_authenticate(s, tag);
    else if (is_known_command(n)) {
        reply(s, "%s BAD Command not allowed before authentication.", tag);
        count_bad(s);
    } else {
        reply(s, "%s BAD Unknown command.", tag);
        count_bad(s);
    }
}

/* The SASL response line after "+ ": one raw line, bounded by max_line. */
static bool take_sasl_line(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const char *p = buf_rptr(&s->up);
    size_t len = buf_len(&s->up);
    const char *lf = memchr(p, '\n', len);
    if (!lf) {
        if (len > s->cfg->limits.max_line) {
            reply(s, "* BYE Line too long.");
            sess_close_after_flush(s, "line too long");
        }
        return false;
    }
    size_t l = (size_t)(lf - p);
    size_t consumed = l + 1;
    if (l && p[l - 1] == '\r')
        l--;
    st->lg->sasl_wait = false;
    char *copy = strndup(p, l);
    OPENSSL_cleanse(buf_rptr(&s->up), consumed);
    buf_consume(&s->up, consumed);
    if (!copy) {
        sess_close(s, "out of memory");
        return false;
    }
    sasl_response(s, copy, l);
    OPENSSL_cleanse(copy, l);
    free(copy);
    return true;
}

static void imap_client_input(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const struct cfg_limits *lim = &s->cfg->limits;
    if (!st->lg->store) {
        st->lg->store_cap = lim->max_line + 2 * lim->max_preauth_literal;
        st->lg->store = malloc(st->lg->store_cap);
        if (!st->lg->store) {
            sess_close(s, "out of memory");
            return;
        }
        imap_cmd_parser_init(&st->lg->parser, st->lg->store, st->lg->store_cap, lim->max_line,
                             lim->max_preauth_literal);
    }
    while (!s->closing && s->state == SESS_PREAUTH && s->client.reading && !buf_empty(&s->up)) {
        if (st->lg->sasl_wait) {
            if (!take_sasl_line(s))
                break;
            continue;
        }
        size_t used = 0;
        enum imap_cmd_result r =
            imap_cmd_parse(&st->lg->parser, buf_rptr(&s->up), buf_len(&s->up), &used);
        /* Parsed bytes may hold a password: wipe them from the receive buffer. */
        OPENSSL_cleanse(buf_rptr(&s->up), used);
        buf_consume(&s->up, used);
        switch (r) {
        case IMAP_CMD_MORE:
            break;
        case IMAP_CMD_CONTINUE:
            reply(s, "+ OK");
            continue;
        case IMAP_CMD_DONE:
            dispatch(s);
            imap_cmd_parser_reset(&st->lg->parser);
            continue;
        case IMAP_CMD_BAD: {
            char e[128];
            sess_log(s, LOG_INFO, "event=bad_command error=%s fatal=%d",
                     log_qs(e, sizeof e, st->lg->parser.error), st->lg->parser.fatal);
            if (st->lg->parser.fatal) {
                reply(s, "* BYE %s",
                      st->lg->parser.error ? st->lg->parser.error : "Protocol error.");
                sess_close_after_flush(s, "protocol error");
                return;
            }
            reply(s, "%s BAD %s", tag_or_star(st->lg->parser.tag),
                  st->lg->parser.error ? st->lg->parser.error : "Invalid command.");
            imap_cmd_parser_reset(&st->lg->parser);
            if (!count_bad(s))
                return;
            continue;
        }
        }
        break;
    }
    if (buf_empty(&s->up))
        buf_release_if_empty(&s->up);
}

/* ---- results of the backend login (from imap_backend.c) ---- */

static void login_failed_tail(struct session *s);

void imap_preauth_login_failed(struct session *s, enum imap_login_fail how, const char *why)
{
    struct imap_state *st = imap_st(s);
    sess_backend_drop(s);
    forget_login(st);
    if (how == IMAP_LF_AUTH) {
        sess_event(s, &(struct sess_event){
                          .kind = SEV_LOGIN_FAILED, .fail = SLF_CREDENTIALS_REFUSED, .text = why});
        reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", st->lg->tag);
    } else if (how == IMAP_LF_MECH) {
        /* Not "authentication failed": a client would take its token for bad and refresh it. */
        sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_FAILED,
                                           .fail = SLF_MECHANISM_UNSUPPORTED,
                                           .text = why});
        reply(s, "%s NO [CANNOT] Unsupported authentication mechanism.", st->lg->tag);
    } else {
        sess_event(s, &(struct sess_event){.kind = SEV_LOGIN_UNAVAILABLE, .text = why});
        reply(s, "%s NO [UNAVAILABLE] Backend server unavailable; try again later.", st->lg->tag);
    }
    sess_login_result(s, false, how == IMAP_LF_AUTH); /* issue 5: count the failure */
    login_failed_tail(s);
}

static void answer_refusal(struct session *s, const char *code, const char *text)
{
    reply(s, "%s NO [%s] %s", imap_st(s)->lg->tag, code, text);
}

void imap_preauth_login_refused(struct session *s, const char *code, const char *text)
{
    sess_backend_drop(s);
    forget_login(imap_st(s));
    sess_login_passed_on(s, code, text, answer_refusal);
    login_failed_tail(s);
}

static void login_failed_tail(struct session *s)
{
    struct imap_state *st = imap_st(s);
    sess_forget_user(s);
    sess_set_state(s, SESS_PREAUTH);
    double left = st->lg->preauth_deadline - ev_now(s->worker->loop);
    sess_set_deadline(s, left > 0.5 ? left : 0.5);
    if (!count_bad(s))
        return;
    s->client.reading = true;
    /* Commands pipelined behind the failed login are answered now. */
    imap_client_input(s);
}

void imap_preauth_login_ok(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const char *mech = mech_name(st->lg->creds.mech);
    if (!imap_scan_login(s)) {
        forget_login(st);
        sess_close(s, "out of memory");
        return;
    }
    /* Nothing needs the credentials after login (issue 15: parts are judged on this
     * connection; a backend is never re-dialled once logged in): wiped now. */
    forget_login(st);
    sess_login_result(s, true, false); /* issue 5: register the session */
    free_parser_store(st);
    sess_event(s, &(struct sess_event){.kind = SEV_LOGIN, .name = s->be->name, .mech = mech});
    if (st->lg->post_caps)
        reply(s, "%s OK [CAPABILITY %s] Logged in", st->lg->tag, st->lg->post_caps);
    else
        reply(s, "%s OK Logged in", st->lg->tag);
    /* After login no line is held whole (issue 15): commands and responses of any length
     * stream through the relay buffers; max_line is for what the proxy parses itself. */
    imap_framer_init(&st->upf, IMAP_LINE_UNLIMITED);
    imap_framer_init(&st->downf, IMAP_LINE_UNLIMITED);
    free_login(s, st);
    sess_start_relay(s);
}

const struct protocol imap_protocol = {
    .name = "imap",
    .init = imap_init,
    .greet = imap_greet,
    .client_input = imap_client_input,
    .starttls_done = imap_starttls_done,
    .backend_event = imap_backend_event,
    .relay_up = imap_relay_up,
    .relay_down = imap_relay_down,
    .bye = imap_bye,
    .idle = imap_relay_idle,
    .stop = imap_stop,
    .holding = imap_relay_holding,
    .destroy = imap_destroy,
};
