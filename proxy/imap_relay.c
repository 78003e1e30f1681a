/*
 * imap_relay — the authenticated session: client commands go to the backend and responses
 * come back through two filters that look only at framing (imap_frame), never at payloads.
 *
 * Buffer discipline (see buf.h): a filter frames new bytes after `mark + held`; bytes it lets
 * through are released by moving `mark`, and conn_flush() sends [rpos, mark) straight from the
 * receive buffer. A command or response is held (not released) only while the filter still has
 * to decide about it — at most its first line:
 *   - client → backend: every command is judged by the allow-lists of imap_allow.c (issue 15:
 *     default deny) — on its name, or on its whole first line for FETCH (items), ENABLE and
 *     SELECT/EXAMINE (the mailbox name, handed to imap_scan.c whole); refused ones get BAD and
 *     never reach the backend; everything else streams, except that the last 3 bytes of an
 *     unfinished line stay held (they may be the "+}\r" of a literal header).
 *   - IDLE: after "tag IDLE" the client's bytes wait for the backend's "+"; then only DONE
 *     passes, any other line is answered BAD and the proxy sends DONE itself.
 *   - a "+" from the backend must match what is pending (a literal, an IDLE): else the
 *     session ends as a backend protocol error.
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
 *   - backend → client: CAPABILITY lists ("* CAPABILITY", and "[CAPABILITY" codes of tagged or
 *     untagged status responses) are held whole, whatever their length (bounded), and keep
 *     only the allow-listed capabilities; everything else streams. Literal contents are
 *     skipped by length.
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
#include "imap_allow.h"
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

/* IDLE (RFC 2177) as the relay models it. */
enum relay_idle {
    RI_NONE,
    RI_WAIT, /* "tag IDLE" went to the backend: the client's next bytes wait for "+" or the tag */
    RI_ON,   /* the backend said "+": the only valid client line is DONE */
    RI_DONE, /* DONE (the client's, or ours) went out: waiting for the tagged end */
};

enum cmd_verdict {
    CMD_PASS,
    CMD_HOLD,
    CMD_REFUSE,        /* BAD, reason and text in the imap_allow_cmd */
    CMD_REFUSE_VOLUME, /* NO [LIMIT] */
    CMD_IDLE_NOT_DONE, /* a line other than DONE during IDLE: our DONE goes to the backend */
};

/* Most bytes of a first line held whole to judge it (FETCH, ENABLE, SELECT/EXAMINE). */
static size_t line_hold_max(const struct session *s)
{
    size_t half = s->cfg->limits.relay_buffer / 2;
    return half < 64 * 1024 ? half : 64 * 1024;
}

/* During IDLE: is the held line DONE? 1 yes, 0 no, -1 still a prefix of it. */
static int is_done_line(const char *p, size_t len)
{
    static const char done[] = "DONE\r\n";
    size_t i = 0;
    for (; i < len && i < 6; i++) {
        char c = p[i];
        if (i < 4 && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (i == 4 && c == '\n')
            return len == 5 ? 1 : 0;
        if (c != done[i])
            return 0;
    }
    return i == 6 ? (len == 6 ? 1 : 0) : -1;
}

/* Decide from the held start of a command (the whole first line for the commands whose
 * arguments are judged); HOLD until that is possible. */
static enum cmd_verdict classify_command(struct session *s, bool line_done, bool literal,
                                         struct imap_allow_cmd *c)
{
    struct imap_state *st = imap_st(s);
    const char *p = s->up.data ? buf_mptr(&s->up) : "";
    memset(c, 0, sizeof *c);
    if (st->idle == RI_ON) {
        int d = is_done_line(p, st->up_held);
        if (d < 0 && !line_done)
            return CMD_HOLD;
        /* not DONE: wait for its tag (the BAD names it) */
        if (d == 0 && !line_done && !memchr(p, ' ', st->up_held) && st->up_held <= IMAP_TAG_MAX)
            return CMD_HOLD;
        return d > 0 ? CMD_PASS : CMD_IDLE_NOT_DONE;
    }
    enum imap_allow_verdict v = imap_allow_command(p, st->up_held, line_done, literal, c);
    if (v == IA_MORE) {
        if (st->up_held < line_hold_max(s))
            return CMD_HOLD;
        c->reason = SR_COMMAND_TOO_LONG;
        c->text = "Command line too long for this proxy.";
        return CMD_REFUSE;
    }
    const char *tag, *rest;
    size_t tl, rl;
    if (v == IA_PASS && c->kind != IA_NOTAG &&
        imap_split_tag(p, st->up_held, &tag, &tl, &rest, &rl) && tl > IMAP_TAG_MAX) {
        c->reason = SR_COMMAND_NOT_ALLOWED;
        c->text = "Tag too long for this proxy.";
        return CMD_REFUSE;
    }
    if (v == IA_REFUSE)
        return CMD_REFUSE;
    if (c->kind == IA_IDLE) {
        /* Judged whole: the client's next bytes wait from the end of this line. */
        if (!line_done && st->up_held < line_hold_max(s))
            return CMD_HOLD;
        if (!line_done) {
            c->reason = SR_COMMAND_TOO_LONG;
            c->text = "Command line too long for this proxy.";
            return CMD_REFUSE;
        }
        if (literal) {
            c->reason = SR_COMMAND_NOT_ALLOWED;
            c->text = "IDLE takes no arguments.";
            return CMD_REFUSE;
        }
    }
    if (c->kind == IA_FETCH && sess_policy_download_blocked(s))
        return CMD_REFUSE_VOLUME;
    return CMD_PASS;
}

static void refuse(struct session *s, enum cmd_verdict v, const struct imap_allow_cmd *c)
{
    struct imap_state *st = imap_st(s);
    const char *tag, *rest;
    size_t tl, rl;
    char line[IMAP_TAG_MAX + 128];
    const char *p = s->up.data ? buf_mptr(&s->up) : "";
    if (!imap_split_tag(p, st->up_held, &tag, &tl, &rest, &rl) || tl > IMAP_TAG_MAX) {
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
    enum sess_reason why = v == CMD_IDLE_NOT_DONE ? SR_IDLE_NOT_DONE : c->reason;
    const char *text = v == CMD_IDLE_NOT_DONE ? "Expected DONE." : c->text;
    int n = snprintf(line, sizeof line, "%.*s BAD %s\r\n", (int)tl, tag, text);
    sess_event(s, &(struct sess_event){.kind = SEV_REFUSED, .reason = why});
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
    /* a SELECT literal not collected (the backend refused it) names nothing later */
    imap_sel_lit_free(&st->sel_lit);
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

/* Remember the tag of the command that starts here (classify_command refused longer tags). */
static void open_command(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const char *tag, *rest;
    size_t tl, rl;
    st->up_cmd_open = true;
    st->up_cmd_answered = false;
    st->up_tag[0] = '\0';
    if (imap_split_tag(buf_mptr(&s->up), st->up_held, &tag, &tl, &rest, &rl) &&
        tl <= IMAP_TAG_MAX) {
        memcpy(st->up_tag, tag, tl);
        st->up_tag[tl] = '\0';
    }
}

/* The selected mailbox (imap_scan.c judges by it): a SELECT/EXAMINE deselects at once
 * (RFC 3501 6.3.1) and names its mailbox, which becomes current at the tagged OK. */
static bool note_select(struct session *s, const struct imap_allow_cmd *c)
{
    struct imap_state *st = imap_st(s);
    if (c->kind == IA_CLOSE) {
        imap_scan_unselect(s);
        return true;
    }
    if (c->kind != IA_SELECT)
        return true;
    if (c->mbox_literal) {
        /* The name comes as the literal's bytes: collected as they pass (relay_up). */
        imap_sel_lit_free(&st->sel_lit);
        struct imap_sel_lit *sl = calloc(1, sizeof *sl);
        if (sl)
            sl->name = malloc(c->mbox_litlen + 1);
        if (!sl || !sl->name) {
            free(sl);
            sess_end(s, "out of memory", "Internal error.");
            return false;
        }
        sl->want = (size_t)c->mbox_litlen;
        snprintf(sl->tag, sizeof sl->tag, "%s", st->up_tag);
        st->sel_lit = sl;
        imap_scan_unselect(s);
        return true;
    }
    char *name = malloc(c->mbox_len + 1);
    if (!name) {
        sess_end(s, "out of memory", "Internal error.");
        return false;
    }
    long n = imap_allow_mailbox(buf_mptr(&s->up) + c->mbox_off, c->mbox_len, name, c->mbox_len);
    if (n < 0) { /* imap_allow_command checked it: cannot happen */
        free(name);
        name = NULL;
    } else {
        name[n] = '\0';
    }
    imap_scan_select(s, st->up_tag, name);
    return true;
}

/* Literal bytes of a SELECT/EXAMINE name went by (`p`, `n` bytes); at its end, name it. */
static void collect_select_literal(struct session *s, const char *p, size_t n, bool end)
{
    struct imap_state *st = imap_st(s);
    struct imap_sel_lit *sl = st->sel_lit;
    if (!sl)
        return;
    size_t room = sl->want - sl->len;
    if (n > room)
        n = room;
    memcpy(sl->name + sl->len, p, n);
    sl->len += n;
    if (!end)
        return;
    st->sel_lit = NULL;
    char *name = sl->name;
    size_t len = sl->len;
    char tag[IMAP_TAG_MAX + 1];
    memcpy(tag, sl->tag, sizeof tag);
    free(sl);
    /* a NUL, CR or LF cannot be named on the scan fetcher's connection (a quoted string) */
    if (memchr(name, '\0', len) || memchr(name, '\r', len) || memchr(name, '\n', len)) {
        free(name);
        name = NULL;
    } else {
        name[len] = '\0';
        if (len == 5 && strncasecmp(name, "INBOX", 5) == 0)
            memcpy(name, "INBOX", 5);
    }
    imap_scan_select(s, tag, name);
}

/* A line other than DONE during IDLE: the backend gets our DONE (never that line) and the
 * client a BAD; the IDLE's tagged end follows from the backend. */
static void end_idle_ourselves(struct session *s)
{
    struct imap_state *st = imap_st(s);
    st->idle = RI_DONE;
    if (!conn_queue_copy(&s->backend, "DONE\r\n", 6))
        sess_end(s, "out of memory", "Internal error.");
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
    while (!s->closing && s->state == SESS_RELAY && !st->up_wait_cont && st->idle != RI_WAIT &&
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
        bool lit_bytes = st->up_in_literal;
        if (ev == IMAP_FRAME_LITERAL)
            st->up_in_literal = true;
        else if (ev == IMAP_FRAME_LITERAL_END)
            st->up_in_literal = false;
        if (lit_bytes && !st->up_dropping)
            collect_select_literal(s, p, used, ev == IMAP_FRAME_LITERAL_END);
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->up_classified) {
            struct imap_allow_cmd c;
            enum cmd_verdict v = classify_command(s, line_done, ev == IMAP_FRAME_LITERAL, &c);
            if (v == CMD_HOLD)
                continue;
            st->up_classified = true;
            open_command(s);
            if (v == CMD_PASS && st->idle == RI_ON) {
                st->idle = RI_DONE; /* the client's DONE */
            } else if (v == CMD_PASS) {
                if (c.kind == IA_IDLE) {
                    st->idle = RI_WAIT; /* from the end of this line */
                    snprintf(st->idle_tag, sizeof st->idle_tag, "%s", st->up_tag);
                }
                if (!note_select(s, &c))
                    break;
                if (imap_prefetch_wants_line(s))
                    st->up_hold_line = true; /* judged whole by imap_prefetch_line */
                else
                    imap_prefetch_sent(s);
            } else {
                st->up_dropping = true;
                if (v == CMD_IDLE_NOT_DONE)
                    end_idle_ourselves(s);
                refuse(s, v, &c);
                if (s->closing)
                    break;
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

static void backend_broken(struct session *s, const char *why);

/* A "+" from the backend: the go-ahead for what is pending — the literal whose line went out,
 * or the IDLE. Anything else is a protocol error: the proxy cannot tell what the backend would
 * read next. Returns false if the session ends. */
static bool note_continuation(struct session *s)
{
    struct imap_state *st = imap_st(s);
    if (st->up_wait_cont) {
        st->up_wait_cont = false;
        st->up_resume = true;
        st->down_dropping = st->up_wait_was_plus;
        return true;
    }
    if (st->idle == RI_WAIT) {
        st->idle = RI_ON;
        st->up_resume = true;
        return true;
    }
    if (st->idle == RI_ON)
        return true; /* a server may repeat its "+" during IDLE (nothing else is pending) */
    backend_broken(s, "continuation request with nothing pending");
    return false;
}

/* A tagged response: the end of the IDLE in progress? */
static void note_idle_end(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const struct imap_framer *f = &st->downf;
    const char *tag, *rest;
    size_t tl, rl;
    if (st->idle == RI_NONE || !imap_split_tag(f->head, f->head_len, &tag, &tl, &rest, &rl) ||
        tl != strlen(st->idle_tag) || memcmp(tag, st->idle_tag, tl) != 0)
        return;
    if (st->idle == RI_WAIT)
        st->up_resume = true; /* refused before its "+": what the client sent next is a command */
    st->idle = RI_NONE;
}

/* A backend response begins while a client command is open: is it about that command? Called
 * once per response, when its head is known (a "+" at once, a tagged status at the end of its
 * first line). */
static void note_response(struct session *s)
{
    struct imap_state *st = imap_st(s);
    const struct imap_framer *f = &st->downf;
    if (f->head_len >= 1 && f->head[0] == '+')
        return; /* note_continuation */
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
    return imap_allow_filter_caps(caps, len, !post_login);
}

enum resp_class {
    RC_TOO_LONG = -2, /* a capability line over line_hold_max */
    RC_MORE = -1,     /* need more of the head */
    RC_WHOLE = 0,     /* decide on the whole first line */
    RC_STREAM = 1,    /* may stream before its first line is complete */
    RC_CAPS = 2,      /* a whole capability line: filter it (imap_allow_caps_line) */
};

/* May this response stream before its first line is complete? */
static enum resp_class classify_response(struct session *s, bool line_done)
{
    struct imap_state *st = imap_st(s);
    const struct imap_framer *f = &st->downf;
    if (f->head_len >= 1 && f->head[0] == '+') {
        /* One with nothing pending ends the session: at the end of its line (bounded). */
        bool pending = st->up_wait_cont || st->idle == RI_WAIT || st->idle == RI_ON;
        if (!pending && !line_done && st->down_held < line_hold_max(s))
            return RC_MORE;
        return RC_STREAM;
    }
    /* issue 15: every capability list, whatever its length, is held whole and filtered */
    int caps = imap_allow_caps_response(buf_mptr(&s->down), st->down_held, line_done);
    if (caps > 0 && !line_done)
        return st->down_held < line_hold_max(s) ? RC_MORE : RC_TOO_LONG;
    if (caps > 0)
        return RC_CAPS;
    if (caps < 0)
        return RC_MORE;
    if (f->head_len >= 3 && f->head[0] == '*' && f->head[1] == ' ') {
        /* "* BYE" is recognised on its first 5 bytes (backend_bye): wait for them when the
         * response may be one (found by the relay harness, feeding bytes one at a time). */
        if ((f->head[2] == 'B' || f->head[2] == 'b') && f->head_len < 5 && !line_done)
            return RC_MORE;
        return RC_STREAM;
    }
    if (line_done || f->head_len >= IMAP_HEAD_MAX)
        return RC_WHOLE; /* decide on the whole first line */
    return RC_MORE;      /* need more of the head */
}

/* The backend broke framing: what was released still goes out, then our BYE — at once if the
 * client is between responses. Inside a response that was partly sent (issue 16) a BYE would be
 * spliced into the backend's line or literal: the session closes without one. */
static void backend_broken(struct session *s, const char *why)
{
    struct imap_state *st = imap_st(s);
    char e[96];
    sess_log(s, LOG_WARN, "event=backend_protocol_error error=%s", log_qs(e, sizeof e, why));
    s->proto->stop(s);
    buf_clear(&st->inject);
    static const char bye[] = "* BYE Backend protocol error.\r\n";
    if (!st->down_part_out && !conn_queue_copy(&s->client, bye, sizeof bye - 1)) {
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
            backend_broken(s, st->downf.error);
            return;
        }
        bool line_done = ev == IMAP_FRAME_LITERAL || ev == IMAP_FRAME_END;
        if (!st->down_classified) {
            enum resp_class c = classify_response(s, line_done);
            if (c == RC_TOO_LONG || (c == RC_CAPS && ev != IMAP_FRAME_END)) {
                backend_broken(s, c == RC_TOO_LONG ? "capability list too long"
                                                   : "literal in a capability list");
                return;
            }
            if (c == RC_MORE)
                continue;
            st->down_classified = true;
            /* The backend says goodbye itself (LOGOUT, its own shutdown): no second BYE. */
            if (st->downf.head_len >= 5 && strncasecmp(st->downf.head, "* BYE", 5) == 0) {
                st->backend_bye = true;
                /* Usually the answer to LOGOUT; the summary line should not read as a fault. */
                if (!s->close_reason)
                    s->close_reason = "backend said BYE (logout)";
            }
            if (st->downf.head_len >= 1 && st->downf.head[0] == '+') {
                if (!note_continuation(s))
                    return;
            } else {
                note_idle_end(s);
            }
            if (st->up_cmd_open) {
                note_response(s);
                if (s->closing)
                    return;
            }
            if (c == RC_CAPS) {
                size_t nl = imap_allow_caps_line(buf_mptr(b), st->down_held);
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
