/*
 * words — the space-separated words of a line, for backend.c's capability lists
 * (backend_cap_has) and imap_allow.c's ENABLE arguments: one walk, so that both read a line
 * the same way. Header-only, like digits.h: a few lines for two callers.
 */
#ifndef PORTCULLIS_WORDS_H
#define PORTCULLIS_WORDS_H

#include <stdbool.h>
#include <stddef.h>

struct words {
    const char *p;
    size_t len, at;
};

static inline struct words words_of(const char *p, size_t len)
{
    return (struct words){.p = p, .len = len, .at = 0};
}

/* The next word at *w and its length in *wl; false when only spaces are left. Leading,
 * trailing and repeated spaces separate and are never a word: an empty one matches nothing. */
static inline bool words_next(struct words *it, const char **w, size_t *wl)
{
    while (it->at < it->len && it->p[it->at] == ' ')
        it->at++;
    if (it->at == it->len)
        return false;
    size_t j = it->at;
    while (j < it->len && it->p[j] != ' ')
        j++;
    *w = it->p + it->at;
    *wl = j - it->at;
    it->at = j;
    return true;
}

#endif
