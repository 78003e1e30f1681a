/*
 * libFuzzer harness for imap_cmdline (issue 15): arbitrary bytes as one client command line →
 * icl_parse_fetch, then icl_set_each over the parsed set. The tag and the set must lie inside
 * the input, a parsed FETCH has a non-empty set made of set characters only, and walking a set
 * never visits more than the bound it is given.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap_cmdline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool count(void *arg, uint64_t n)
{
    (void)n;
    (*(uint64_t *)arg)++;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    struct icl_fetch f;
    enum icl_rc rc = icl_parse_fetch(p, size, &f);
    if (rc != ICL_FETCH)
        return 0;
    if (f.tag < p || f.tag + f.tag_len > p + size || f.set < p || f.set + f.set_len > p + size ||
        f.set_len == 0 || f.tag_len == 0)
        abort();
    for (size_t i = 0; i < f.set_len; i++)
        if (!strchr("0123456789:,*$", f.set[i]))
            abort();
    uint64_t n = 0;
    if (icl_set_each(f.set, f.set_len, 1000, count, &n) && n > 1000)
        abort();
    if (n > 1000)
        abort();
    return 0;
}
