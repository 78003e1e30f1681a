/*
 * libFuzzer harness for the shared routing cache's value (route_shared.c): a value read back
 * from Redis is data another instance (or anyone with access to Redis) wrote, so arbitrary
 * bytes → route_shared_decode must never crash or read out of bounds; what it accepts must
 * encode again and decode to the same entry (the format has one spelling per entry).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route_shared.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const struct route_shared_entry *a, const struct route_shared_entry *b)
{
    if (a->status != b->status || a->expires_ms != b->expires_ms ||
        strcmp(a->source, b->source) != 0 || strcmp(a->rule, b->rule) != 0)
        return false;
    if (a->status != ROUTE_FOUND)
        return true;
    return a->target.pool == b->target.pool && strcmp(a->text, b->text) == 0 &&
           (a->target.pool || (strcmp(a->host, b->host) == 0 && a->target.port == b->target.port &&
                               a->target.addrlen == b->target.addrlen &&
                               memcmp(&a->target.addr, &b->target.addr, a->target.addrlen) == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap copy, so that ASan sees any read past the value's end. */
    char *v = malloc(size ? size : 1);
    if (!v)
        return 0;
    memcpy(v, data, size);
    struct route_shared_entry e, back;
    if (route_shared_decode(v, size, &e)) {
        struct route_answer a;
        route_shared_answer(&e, &a);
        char out[ROUTE_SHARED_VAL_MAX];
        size_t n = route_shared_encode(&a, e.expires_ms, out, sizeof out);
        if (n == 0 || !route_shared_decode(out, n, &back) || !same(&e, &back))
            abort();
    }
    free(v);
    return 0;
}
