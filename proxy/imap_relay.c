/*
 * imap_relay — the authenticated session: client commands go to the backend and responses
 * come back through two filters that look only at framing (imap_frame), never at payloads.
 *
 * Buffer discipline (see buf.h): a filter frames new bytes after `mark + held`; bytes it lets
 * through are released by moving `mark`, and conn_flush() sends [rpos, mark) straight from the
 * receive buffer. A command or response is held (not released) only while the filter still has
 * to decide about it — at most its first line:
 *   - client → backend: COMPRESS (the proxy must see plaintext) and STARTTLS are refused here
 *     with BAD and never reach the backend; everything else streams.
 *   - backend → client: CAPABILITY lists (untagged or in an OK response code) are rewritten
 *     without COMPRESS=*, STARTTLS and LOGINDISABLED; everything else streams. Literal contents
 *     are skipped by length.
 * Our own responses (BAD for a refused command, BYE) are queued in `inject` and moved to the
 * client's ctl buffer only at a response boundary; while ctl is not empty the down filter does
 * not release more, so the client never sees our bytes in the middle of a backend response.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap.h"

/* Remove `len` bytes at absolute offset `off` of the buffer (they are after mark). */
static void cut(struct buf *b, size_t off, size_t len)
{
    memmove(b->data + off, b->data + off + len, b->wpos - (off + len));
    b->wpos -= (uint32_t)len;
}

void imap_relay_inject(struct session *s, const char *text, size_t len)
{
    struct imap_state *st = imap_st(s);
    if (!buf_append(&st->inject, text, len)) {
        sess_close(s, "client output overflow");
        return;
    }
    imap_relay_down(s);
}

/* ---- client → backend ---- */

enum cmd_verdict { CMD_PASS, CMD_HOLD, CMD_REFUSE_COMPRESS, CMD_REFUSE_STARTTLS };

/* Decide from the head of a command ("tag SP name ..."); HOLD if the name is not complete. */
static enum cmd_verdict classify_command(const struct imap_framer *f, bool line_done)
{
    const char *tag, *rest;
    size_t tl, rl;
    if (!imap_split_tag(f->head, f->head_len, &tag, &tl, &rest, &rl))
        return line_done || f->head_len >= IMAP_HEAD_MAX ? CMD_PASS : CMD_HOLD;
    size_t nl = 0;
    while (nl < rl && rest[nl] != ' ' && rest[nl] != '\r' && rest[nl] != '\n')
        nl++;
    if (nl == rl && !line_done && f->head_len < IMAP_HEAD_MAX)
        return CMD_HOLD;
    if (nl == 8 && strncasecmp(rest, "COMPRESS", 8) == 0)
        return CMD_REFUSE_COMPRESS;
    if (nl == 8 && strncasecmp(rest, "STARTTLS", 8) == 0)
        return CMD_REFUSE_STARTTLS;
    return CMD_PASS;
}

static void refuse(struct session *s, enum cmd_verdict v)
{
    struct imap_state *st = imap_st(s);
    const char *tag, *rest;
    size_t tl, rl;
    char line[IMAP_HEAD_MAX + 96];
    if (!imap_split_tag(st->upf.head, st->upf.head_len, &tag, &tl, &rest, &rl)) {
        tag = "*";
        tl = 1;
    }
    int n = snprintf(line, sizeof line, "%.*s BAD %s\r\n", (int)tl, tag,
                     v == CMD_REFUSE_COMPRESS ? "COMPRESS is not available through this proxy."
                                              : "TLS is already active.");
    sess_log(s, LOG_INFO, "event=refused reason=%s",
             v == CMD_REFUSE_COMPRESS ? "compress" : "starttls_after_login");
    imap_relay_inject(s, line, (size_t)n);
}

void imap_relay_up(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->up;
    while (!s->closing && s->state == SESS_RELAY) {
        size_t from = b->mark + st->up_held;
        if (from >= b->wpos)
            break;
        size_t used = 0;
        enum imap_frame_event ev = imap_frame(&st->upf, b->data + from, b->wpos - from, &used);
        st->up_held += used;
        if (ev == IMAP_FRAME_ERROR) {
            char e[96];
            sess_log(s, LOG_INFO, "event=bad_command error=%s", log_qs(e, sizeof e, st->upf.error));
            s->proto->bye(s, "Command line too long.");
            sess_close_after_flush(s, "client protocol error");
            return;
        }
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->up_classified) {
            enum cmd_verdict v = classify_command(&st->upf, line_done);
            if (v == CMD_HOLD)
                continue;
            st->up_classified = true;
            if (v != CMD_PASS) {
                st->up_dropping = true;
                refuse(s, v);
            }
        }
        if (st->up_dropping) {
            if (ev == IMAP_FRAME_END) {
                cut(b, b->mark, st->up_held);
                st->up_held = 0;
                st->up_dropping = false;
                st->up_classified = false;
            }
            continue;
        }
        b->mark += (uint32_t)st->up_held;
        st->up_held = 0;
        if (ev == IMAP_FRAME_END)
            st->up_classified = false;
    }
}

/* ---- backend → client ---- */

size_t imap_filter_caps(char *caps, size_t len, bool post_login)
{
    (void)post_login;
    size_t o = 0, i = 0;
    while (i < len) {
        while (i < len && caps[i] == ' ')
            i++;
        size_t j = i;
        while (j < len && caps[j] != ' ')
            j++;
        size_t tl = j - i;
        bool drop = (tl >= 9 && strncasecmp(caps + i, "COMPRESS=", 9) == 0) ||
                    (tl == 8 && strncasecmp(caps + i, "STARTTLS", 8) == 0) ||
                    (tl == 13 && strncasecmp(caps + i, "LOGINDISABLED", 13) == 0);
        if (tl && !drop) {
            if (o)
                caps[o++] = ' ';
            memmove(caps + o, caps + i, tl);
            o += tl;
        }
        i = j;
    }
    return o;
}

/* Where the capability list of this response starts, if it is one: "* CAPABILITY …" or
 * "tag OK [CAPABILITY …]". Returns the offset of the list within the response, or 0. */
static size_t caps_offset(const char *r, size_t len)
{
    if (len > 13 && strncasecmp(r, "* CAPABILITY ", 13) == 0)
        return 13;
    const char *sp = memchr(r, ' ', len);
    if (!sp || r[0] == '*' || r[0] == '+')
        return 0;
    size_t at = (size_t)(sp - r) + 1;
    if (len > at + 16 && strncasecmp(r + at, "OK [CAPABILITY ", 15) == 0)
        return at + 15;
    return 0;
}

/* Rewrite a held CAPABILITY response in place; returns its new length. */
static size_t rewrite_caps(char *r, size_t len)
{
    size_t off = caps_offset(r, len);
    if (!off)
        return len;
    size_t end = off;
    while (end < len && r[end] != ']' && r[end] != '\r' && r[end] != '\n')
        end++;
    size_t nl = imap_filter_caps(r + off, end - off, true);
    if (nl == end - off)
        return len;
    memmove(r + off + nl, r + end, len - end);
    return len - (end - off - nl);
}

/* May this response stream before its first line is complete? */
static int classify_response(const struct imap_framer *f, bool line_done)
{
    if (f->head_len >= 1 && f->head[0] == '+')
        return 1;
    if (f->head_len >= 3 && f->head[0] == '*' && f->head[1] == ' ' &&
        f->head[2] != 'C' && f->head[2] != 'c')
        return 1;
    if (line_done || f->head_len >= IMAP_HEAD_MAX)
        return 0; /* decide on the whole first line */
    return -1;    /* need more of the head */
}

void imap_relay_down(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->down;
    while (!s->closing && (s->state == SESS_RELAY || s->state == SESS_CLOSING)) {
        if (imap_framer_at_boundary(&st->downf) && st->down_held == 0) {
            if (!buf_empty(&st->inject)) {
                if (!conn_ctl_append(&s->client, buf_rptr(&st->inject), buf_len(&st->inject))) {
                    sess_close(s, "client output overflow");
                    return;
                }
                buf_clear(&st->inject);
                buf_release_if_empty(&st->inject);
            }
            if (!buf_empty(&s->client.ctl))
                break; /* our own words go out first, at this boundary */
        }
        size_t from = b->mark + st->down_held;
        if (from >= b->wpos)
            break;
        size_t used = 0;
        enum imap_frame_event ev = imap_frame(&st->downf, b->data + from, b->wpos - from, &used);
        st->down_held += used;
        if (ev == IMAP_FRAME_ERROR) {
            char e[96];
            sess_log(s, LOG_WARN, "event=backend_protocol_error error=%s",
                     log_qs(e, sizeof e, st->downf.error));
            s->client.wbuf = &s->down; /* what was released still goes out */
            buf_clear(&st->inject);
            conn_ctl_printf(&s->client, "* BYE Backend protocol error.\r\n");
            sess_set_state(s, SESS_CLOSING);
            s->close_reason = "backend protocol error";
            b->wpos = b->mark; /* drop the unreleased rest */
            st->down_held = 0;
            conn_close(&s->backend);
            s->client.reading = false;
            sess_set_deadline(s, 10.0);
            return;
        }
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->down_classified) {
            int c = classify_response(&st->downf, line_done);
            if (c < 0)
                continue;
            st->down_classified = true;
            if (c == 0 && ev == IMAP_FRAME_END) {
                size_t nl = rewrite_caps(b->data + b->mark, st->down_held);
                if (nl < st->down_held) {
                    cut(b, b->mark + nl, st->down_held - nl);
                    st->down_held = nl;
                }
            }
        }
        b->mark += (uint32_t)st->down_held;
        st->down_held = 0;
        if (ev == IMAP_FRAME_END)
            st->down_classified = false;
    }
}
