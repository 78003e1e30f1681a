/*
 * imap_relay — the authenticated session: client commands go to the backend and responses
 * come back through two filters that look only at framing (imap_frame), never at payloads.
 *
 * Buffer discipline (see buf.h): a filter frames new bytes after `mark + held`; bytes it lets
 * through are released by moving `mark`, and conn_flush() sends [rpos, mark) straight from the
 * receive buffer. A command or response is held (not released) only while the filter still has
 * to decide about it — at most its first line:
 *   - client → backend: COMPRESS (the proxy must see plaintext) and STARTTLS are refused here
 *     with BAD and never reach the backend; everything else streams, except that the last 3
 *     bytes of an unfinished line stay held (they may be the "+}\r" of a literal header).
 *   - literals: after a line announcing a synchronising literal {n} the client's next bytes are
 *     held until the backend answers. "+" → they stream as the literal. The command's tagged
 *     NO/BAD instead → the client will not send the literal (RFC 3501 7.5), so the framer
 *     forgets it and the next bytes are a new command, for the proxy as for the server. A
 *     LITERAL+ {n+} goes to the backend as {n}: a server that rejects a line before reading
 *     its arguments (Dovecot, for an unknown command) would otherwise run the literal's bytes
 *     as a command the proxy never saw (a smuggled COMPRESS or STARTTLS). The client sends
 *     them anyway: they are held until the "+" (which is swallowed: the client did not ask for
 *     it), or dropped with the rest of the command when the backend refuses it. Cost: one
 *     proxy↔backend round trip per literal; a large APPEND still streams once "+" is in.
 *   - backend → client: CAPABILITY lists (untagged or in an OK response code) are rewritten
 *     without COMPRESS=*, STARTTLS and LOGINDISABLED; everything else streams. Literal contents
 *     are skipped by length.
 * Our own responses (BAD for a refused command, BYE) wait in `inject` for a response boundary
 * of the down stream and are then queued as a block on the client conn (conn_queue): the block
 * goes out after every byte released before it and before every byte released after it, so
 * the client never sees our bytes in the middle of a backend response, and the filter need not
 * wait for it. (The login answer is in ctl, which goes after all released bytes: the down
 * filter releases nothing at a boundary while ctl is not empty, and CONN_EV_DRAINED resumes
 * it.) `down_part_out` says whether the client is inside a response that was partly sent:
 * when the session ends (imap_relay_stop), a BYE is queued only if it is not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap.h"
#include "sess_event.h"
#include "sess_policy.h"

void imap_relay_inject(struct session *s, const char *text, size_t len)
{
    struct imap_state *st = imap_st(s);
    if (!buf_append(&st->inject, text, len)) {
        /* Refusals piling up inside one long response: the client is not in step. */
        sess_end(s, "client output overflow", "Too many commands refused.");
        return;
    }
    imap_relay_down(s);
}

/* The client is between two responses: what waits in inject goes out now (as a block, after
 * everything released so far). */
static void place_inject(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (buf_empty(&st->inject))
        return;
    bool ok = conn_queue_copy(&s->client, buf_rptr(&st->inject), buf_len(&st->inject));
    buf_clear(&st->inject);
    buf_release_if_empty(&st->inject);
    if (!ok) /* out of memory, or a client that does not read its answers (conn_queue_copy) */
        sess_close(s, "client output overflow");
}

void imap_relay_stop(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->down_stopped)
        return;
    st->down_stopped = true;
    buf_drop_held(&s->down); /* a response being held (or framed) is not delivered */
    st->down_held = 0;
    /* Refusals already due go out now, or never (the client is inside a response). */
    if (!st->down_part_out)
        place_inject(s);
    buf_clear(&st->inject);
}

bool imap_relay_holding(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->down_stopped)
        return false;
    return buf_held(&s->down) > st->down_held || imap_scan_holding(s);
}

/* ---- client → backend ---- */

enum cmd_verdict {
    CMD_PASS,
    CMD_HOLD,
    CMD_REFUSE_COMPRESS,
    CMD_REFUSE_STARTTLS,
    CMD_REFUSE_VOLUME
};

/* FETCH or UID FETCH (issue 5: refused while the user is over the download volume). */
static bool is_fetch(const struct imap_framer *f)
{
    const char *tag, *rest;
    size_t tl, rl;
    if (!imap_split_tag(f->head, f->head_len, &tag, &tl, &rest, &rl))
        return false;
    if (rl >= 4 && strncasecmp(rest, "UID ", 4) == 0) {
        rest += 4;
        rl -= 4;
    }
    return rl >= 5 && strncasecmp(rest, "FETCH", 5) == 0 && (rl == 5 || rest[5] == ' ');
}

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
    /* The scanner reads the mailbox name from the head: a SELECT/EXAMINE is classified with
     * its whole line, not as soon as its name is complete (found by the relay harness). */
    bool sel = (nl == 6 && strncasecmp(rest, "SELECT", 6) == 0) ||
               (nl == 7 && strncasecmp(rest, "EXAMINE", 7) == 0);
    if (sel && !line_done && f->head_len < IMAP_HEAD_MAX)
        return CMD_HOLD;
    /* "UID FETCH" is told from "UID STORE" by its second word (issue 15: a FETCH line is held
     * whole; the download limit refuses FETCH): wait for it. */
    if (nl == 3 && strncasecmp(rest, "UID", 3) == 0 && !line_done && f->head_len < IMAP_HEAD_MAX) {
        size_t w = nl + 1;
        while (w < rl && rest[w] != ' ' && rest[w] != '\r' && rest[w] != '\n')
            w++;
        if (w >= rl)
            return CMD_HOLD;
    }
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
    if (v == CMD_REFUSE_VOLUME) {
        int k =
            snprintf(line, sizeof line,
                     "%.*s NO [LIMIT] Download limit reached; try again later.\r\n", (int)tl, tag);
        imap_relay_inject(s, line, (size_t)k);
        return;
    }
    int n = snprintf(line, sizeof line, "%.*s BAD %s\r\n", (int)tl, tag,
                     v == CMD_REFUSE_COMPRESS ? "COMPRESS is not available through this proxy."
                                              : "TLS is already active.");
    sess_event(s, &(struct sess_event){
                      .kind = SEV_REFUSED,
                      .reason = v == CMD_REFUSE_COMPRESS ? SR_COMPRESS : SR_STARTTLS_AFTER_LOGIN});
    imap_relay_inject(s, line, (size_t)n);
}

/* Let the first `up_held - keep` held bytes go to the backend. */
static void release_up(struct buf *b, struct imap_state *st, size_t keep)
{
    if (st->up_held > keep) {
        buf_release(b, st->up_held - keep);
        st->up_held = keep;
    }
}

/* The current client command is over (or refused whole). */
static void end_command(struct imap_state *st)
{
    st->up_hold_line = false;
    st->up_classified = false;
    st->up_cmd_open = false;
    st->up_cmd_answered = false;
    st->up_dropping = false;
}

/* The backend ended the command instead of asking for its literal. */
static void literal_refused(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->up_wait_was_plus) {
        /* Its bytes come anyway: drop them and the rest of the command. */
        st->up_dropping = true;
        return;
    }
    /* The client will not send it: what comes next is a new command. */
    if (!imap_framer_cancel_literal(&st->upf)) {
        sess_end(s, "internal error: literal not cancellable", "Internal error.");
        return;
    }
    st->up_in_literal = false;
    end_command(st);
}

/* A line announcing a literal has been framed and is still held whole at its end: send it on
 * (a {n+} rewritten as {n}) and hold what follows until the backend answers. Returns false if
 * the session was closed. */
static bool wait_for_continuation(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->up;
    if (!st->up_tag[0]) {
        /* No tag to recognise the backend's answer by: we could not tell whether the literal
         * will be read as one, so the session cannot go on in step. */
        sess_end(s, "client protocol error", "Literal on a command without a tag.");
        return false;
    }
    st->up_wait_was_plus = st->upf.literal_plus;
    if (st->upf.literal_plus) {
        /* The line ends "+}\r\n" or "+}\n", all of it held (release_up keeps 3 bytes back). */
        const char *h = b->data ? buf_mptr(b) : NULL;
        size_t k = h && st->up_held >= 2 && h[st->up_held - 2] == '\r' ? 4 : 3;
        if (st->up_held < k || !h || h[st->up_held - k] != '+') {
            sess_end(s, "internal error: literal header not held", "Internal error.");
            return false;
        }
        buf_cut_held(b, st->up_held - k, 1);
        st->up_held--;
    }
    release_up(b, st, 0);
    if (st->up_cmd_answered) {
        /* Refused before its line was complete: the server skips the line, then takes the
         * next bytes as a new command. */
        literal_refused(s);
        return !s->closing;
    }
    st->up_wait_cont = true;
    return true;
}

/* Remember the tag of the command that starts here. */
static void open_command(struct imap_state *st)
{
    const char *tag, *rest;
    size_t tl, rl;
    st->up_cmd_open = true;
    st->up_cmd_answered = false;
    st->up_tag[0] = '\0';
    if (imap_split_tag(st->upf.head, st->upf.head_len, &tag, &tl, &rest, &rl)) {
        memcpy(st->up_tag, tag, tl);
        st->up_tag[tl] = '\0';
    }
}

void imap_relay_release_held(struct session *s)
{
    struct imap_state *st = imap_st(s);
    release_up(&s->up, st, 0);
    end_command(st);
    st->up_resume = true;
}

/* issue 15: a FETCH line is held whole, then imap_prefetch_line decides. Returns true when
 * the loop is to go on to the next step (held, or still growing). */
static bool hold_fetch_line(struct session *s, enum imap_frame_event ev)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->up;
    bool too_long = ev == IMAP_FRAME_MORE && st->up_held + 64 >= b->cap;
    if (ev == IMAP_FRAME_MORE && !too_long)
        return true;
    st->up_hold_line = false;
    enum pf_line r =
        imap_prefetch_line(s, buf_mptr(b), st->up_held, too_long || ev == IMAP_FRAME_LITERAL);
    if (r == PF_LINE_REFUSED)
        st->up_dropping = true;
    else if (r == PF_LINE_PASS)
        imap_prefetch_sent(s);
    return r == PF_LINE_HELD;
}

void imap_relay_up(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->up;
    st->in_relay_up = true;
    st->up_resume = false;
    while (!s->closing && s->state == SESS_RELAY && !st->up_wait_cont &&
           !imap_prefetch_up_blocked(s)) {
        size_t from = st->up_held;
        if (from >= buf_held(b) && !(st->up_in_literal && st->upf.literal_left == 0))
            break; /* (a {0} literal ends without bytes: one more call) */
        size_t used = 0;
        const char *p = b->data ? buf_mptr(b) + from : "";
        enum imap_frame_event ev = imap_frame(&st->upf, p, buf_held(b) - from, &used);
        st->up_held += used;
        if (ev == IMAP_FRAME_ERROR) {
            char e[96];
            sess_log(s, LOG_INFO, "event=bad_command error=%s", log_qs(e, sizeof e, st->upf.error));
            sess_end(s, "client protocol error", "Command line too long.");
            break;
        }
        if (ev == IMAP_FRAME_LITERAL)
            st->up_in_literal = true;
        else if (ev == IMAP_FRAME_LITERAL_END)
            st->up_in_literal = false;
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->up_classified) {
            enum cmd_verdict v = classify_command(&st->upf, line_done);
            if (v == CMD_PASS && is_fetch(&st->upf) && sess_policy_download_blocked(s))
                v = CMD_REFUSE_VOLUME;
            if (v == CMD_HOLD)
                continue;
            st->up_classified = true;
            open_command(st);
            imap_scan_command(s); /* issue 4: SELECT/EXAMINE tracking */
            if (v != CMD_PASS) {
                st->up_dropping = true;
                refuse(s, v);
                if (s->closing)
                    break;
            } else if (imap_prefetch_wants_line(s)) {
                st->up_hold_line = true; /* issue 15 */
            } else {
                imap_prefetch_sent(s);
            }
        }
        if (st->up_hold_line && hold_fetch_line(s, ev))
            continue;
        if (s->closing)
            break;
        if (st->up_dropping) {
            /* Cut as we go: a refused command's literal may be larger than the buffer. */
            buf_cut_held(b, 0, st->up_held);
            st->up_held = 0;
            /* We answered BAD, not "+": the client will not send a synchronising literal. */
            if (ev == IMAP_FRAME_LITERAL && !st->upf.literal_plus &&
                imap_framer_cancel_literal(&st->upf)) {
                st->up_in_literal = false;
                ev = IMAP_FRAME_END;
            }
            if (ev == IMAP_FRAME_END)
                end_command(st);
            continue;
        }
        if (ev == IMAP_FRAME_LITERAL) {
            if (!wait_for_continuation(s))
                break;
            continue;
        }
        release_up(b, st, ev == IMAP_FRAME_MORE && !st->up_in_literal ? 3 : 0);
        if (ev == IMAP_FRAME_END)
            end_command(st);
    }
    st->in_relay_up = false;
}

/* A backend response begins while a client command is open: is it about that command? Called
 * once per response, when its head is known (a "+" at once, a tagged status at the end of its
 * first line). */
static void note_response(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const struct imap_framer *f = &st->downf;
    if (f->head_len >= 1 && f->head[0] == '+') {
        if (st->up_wait_cont) {
            st->up_wait_cont = false;
            st->up_resume = true;
            st->down_dropping = st->up_wait_was_plus;
        }
        return;
    }
    const char *tag, *rest;
    size_t tl, rl;
    if (!st->up_tag[0] || !imap_split_tag(f->head, f->head_len, &tag, &tl, &rest, &rl) ||
        tl != strlen(st->up_tag) || memcmp(tag, st->up_tag, tl) != 0)
        return;
    if (!st->up_wait_cont) {
        st->up_cmd_answered = true;
        return;
    }
    /* The command ended without its literal: NO/BAD (or anything else tagged). */
    st->up_wait_cont = false;
    st->up_resume = true;
    literal_refused(s);
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
    if (f->head_len >= 3 && f->head[0] == '*' && f->head[1] == ' ' && f->head[2] != 'C' &&
        f->head[2] != 'c') {
        /* "* BYE" is recognised on its first 5 bytes (backend_bye): wait for them when the
         * response may be one (found by the relay harness, feeding bytes one at a time). */
        if ((f->head[2] == 'B' || f->head[2] == 'b') && f->head_len < 5 && !line_done)
            return -1;
        return 1;
    }
    if (line_done || f->head_len >= IMAP_HEAD_MAX)
        return 0; /* decide on the whole first line */
    return -1;    /* need more of the head */
}

/* The backend broke framing: what was released still goes out, then our BYE — at once, even
 * inside a response (the stream cannot be followed any further). */
static void backend_broken(struct session *s)
{
    struct imap_state *st = imap_st(s);
    char e[96];
    sess_log(s, LOG_WARN, "event=backend_protocol_error error=%s",
             log_qs(e, sizeof e, st->downf.error));
    s->proto->stop(s);
    buf_clear(&st->inject);
    static const char bye[] = "* BYE Backend protocol error.\r\n";
    if (!conn_queue_copy(&s->client, bye, sizeof bye - 1)) {
        sess_close(s, "out of memory");
        return;
    }
    sess_backend_lost(s, "backend protocol error", NULL);
}

/* Let the held bytes of the response being framed go to the client. */
static void release_down(struct session *s, bool response_end)
{
    struct imap_state *st = imap_st(s);
    buf_release(&s->down, st->down_held);
    st->down_held = 0;
    st->down_part_out = !response_end;
}

static void relay_down_loop(struct session *s)
{
    struct imap_state *st = imap_st(s);
    struct buf *b = &s->down;
    if (st->down_stopped) {
        /* Nothing more is framed: our words go now if the client is between responses. */
        if (!st->down_part_out)
            place_inject(s);
        buf_clear(&st->inject);
        return;
    }
    while (!s->closing && (s->state == SESS_RELAY || s->state == SESS_CLOSING) &&
           !st->down_stopped) {
        /* issue 4 (imap_scan.c): a response held for its verdict, or our output going out */
        if (st->sc && imap_scan_down_paused(s))
            break;
        if (imap_framer_at_boundary(&st->downf) && st->down_held == 0) {
            place_inject(s);
            if (s->closing)
                return;
            if (!buf_empty(&s->client.ctl))
                break; /* the login answer goes out first (ctl follows every released byte) */
        }
        size_t from = st->down_held;
        if (from >= buf_held(b))
            break;
        size_t used = 0;
        enum imap_frame_event ev =
            imap_frame(&st->downf, buf_mptr(b) + from, buf_held(b) - from, &used);
        st->down_held += used;
        if (ev == IMAP_FRAME_ERROR) {
            backend_broken(s);
            return;
        }
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->down_classified) {
            int c = classify_response(&st->downf, line_done);
            if (c < 0)
                continue;
            st->down_classified = true;
            /* The backend says goodbye itself (LOGOUT, its own shutdown): no second BYE. */
            if (st->downf.head_len >= 5 && strncasecmp(st->downf.head, "* BYE", 5) == 0) {
                st->backend_bye = true;
                /* Usually the answer to LOGOUT; the summary line should not read as a fault. */
                if (!s->close_reason)
                    s->close_reason = "backend said BYE (logout)";
            }
            if (st->up_cmd_open) {
                note_response(s);
                if (s->closing)
                    return;
            }
            if (c == 0 && ev == IMAP_FRAME_END) {
                size_t nl = rewrite_caps(buf_mptr(b), st->down_held);
                if (nl < st->down_held) {
                    buf_cut_held(b, nl, st->down_held - nl);
                    st->down_held = nl;
                }
            }
        }
        if (st->sc && imap_scan_frame(s, ev, used)) {
            /* issue 4: the scan filter holds these bytes or has moved them out */
            if (ev == IMAP_FRAME_END)
                st->down_classified = false;
            continue;
        }
        if (st->down_dropping) {
            buf_cut_held(b, 0, st->down_held);
            st->down_held = 0;
            if (ev == IMAP_FRAME_END) {
                st->down_dropping = false;
                st->down_classified = false;
            }
            continue;
        }
        release_down(s, ev == IMAP_FRAME_END);
        if (ev == IMAP_FRAME_END)
            st->down_classified = false;
    }
}

void imap_relay_down(struct session *s)
{
    struct imap_state *st = imap_st(s);
    relay_down_loop(s);
    /* The backend answered a waiting literal: the client's held bytes go on (or are a new
     * command). Not from inside relay_up, whose loop looks again by itself. */
    if (st->up_resume && !st->in_relay_up && !s->closing && s->state == SESS_RELAY)
        imap_relay_up(s);
}
