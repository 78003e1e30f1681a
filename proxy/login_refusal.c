/*
 * login_refusal — see login_refusal.h.
 */
#include "login_refusal.h"

#include <string.h>
#include <strings.h>

/* IMAP codes (RFC 5530) under which the backend did not check the password, or found it right. */
static const char *const imap_pass_on[] = {
    "PRIVACYREQUIRED", "UNAVAILABLE", "AUTHORIZATIONFAILED", "EXPIRED", "CONTACTADMIN",
    "INUSE",           "LIMIT",       "SERVERBUG",           "CANNOT",  "NOPERM",
    "OVERQUOTA",       "CORRUPTION",
};

/* POP3 codes (RFC 3206, 2449) of the same kind. */
static const char *const pop3_pass_on[] = {"SYS/TEMP", "SYS/PERM", "IN-USE", "LOGIN-DELAY"};

static bool in_list(const char *code, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(code, list[i]) == 0)
            return true;
    return false;
}

/* The text goes back to the client inside a response line: printable ASCII only, bounded. */
static void safe_text(const char *p, size_t len, char *out)
{
    while (len && *p == ' ') {
        p++;
        len--;
    }
    size_t o = 0;
    for (size_t i = 0; i < len && o < LR_TEXT_MAX; i++) {
        unsigned char c = (unsigned char)p[i];
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    while (o && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
}

/* "[CODE args] text" at p: the code's name (upper-cased; arguments dropped) and where the text
 * starts. False when there is no well-formed code (the whole rest is text then). */
static bool bracket_code(const char *p, size_t len, char *code, size_t *text_at)
{
    if (len < 3 || p[0] != '[')
        return false;
    const char *rb = memchr(p, ']', len);
    if (!rb)
        return false;
    size_t n = 0, i = 1;
    for (; p + i < rb && p[i] != ' '; i++) {
        char c = p[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '/' || c == '.' || c == '_';
        if (!ok || n == LR_CODE_MAX) {
            code[0] = '\0';
            return false;
        }
        code[n++] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    }
    if (n == 0)
        return false;
    code[n] = '\0';
    *text_at = (size_t)(rb - p) + 1;
    return true;
}

/* After the status word: skip spaces, take a "[CODE]" if there is one (a code in `pass_on`
 * makes the refusal LR_PASS_ON), and keep the rest as the cleaned-up text. */
static void code_and_text(const char *p, size_t len, const char *const *pass_on, size_t n,
                          struct lr_refusal *out)
{
    size_t i = 0;
    while (i < len && p[i] == ' ')
        i++;
    size_t text_at = 0;
    if (bracket_code(p + i, len - i, out->code, &text_at)) {
        i += text_at;
        if (in_list(out->code, pass_on, n))
            out->kind = LR_PASS_ON;
    }
    safe_text(p + i, len - i, out->text);
}

void lr_imap(const char *status, size_t len, struct lr_refusal *out)
{
    memset(out, 0, sizeof *out);
    out->kind = LR_CREDENTIALS;
    size_t i = 0;
    while (i < len && status[i] != ' ')
        i++;
    if (i != 2 || strncasecmp(status, "NO", 2) != 0) {
        out->kind = LR_PROTOCOL; /* BAD (or nonsense) to our login */
        safe_text(status, len, out->text);
        return;
    }
    code_and_text(status + i, len - i, imap_pass_on, sizeof imap_pass_on / sizeof imap_pass_on[0],
                  out);
}

void lr_pop3(const char *line, size_t len, struct lr_refusal *out)
{
    memset(out, 0, sizeof *out);
    out->kind = LR_CREDENTIALS;
    size_t i = 0;
    while (i < len && line[i] != ' ')
        i++;
    code_and_text(line + i, len - i, pop3_pass_on, sizeof pop3_pass_on / sizeof pop3_pass_on[0],
                  out);
}
