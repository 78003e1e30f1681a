/*
 * libFuzzer harness for the routing map-file parser (route_map.c): arbitrary bytes →
 * route_map_parse → lookups of names taken from the input → unref. Every input must either
 * yield a table or a "NAME:LINE: what" message, never a crash, a leak or a hang; a table must
 * answer every lookup consistently (an entry parsed from the input is found again).
 *
 * Small limits, so that the entry and target caps are reached by short inputs too. Binding
 * (pool names, DNS) is not exercised: it reads the configuration and the resolver, not bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route_map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct route_map_limits lim = {
        .max_size = 1 << 16, .max_entries = 64, .max_targets = 8, .fold_case = size & 1};
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    char *err = NULL;
    struct route_map *m = route_map_parse(buf, size, "fuzz.map", &lim, &err);
    if ((m == NULL) == (err == NULL))
        abort();
    if (err && strncmp(err, "fuzz.map:", 9) != 0)
        abort();
    free(err);
    if (!m)
        return 0;
    /* Every key in the table finds a target; the input's own lines as queries must not crash. */
    for (size_t i = 0; i <= m->mask; i++) {
        if (!m->slots[i].key)
            continue;
        const char *key = m->arena + m->slots[i].key - 1;
        if (key[0] != '@' && !route_map_lookup(m, key, NULL))
            abort();
    }
    char q[300];
    size_t n = size < sizeof q - 1 ? size : sizeof q - 1;
    memcpy(q, data, n);
    q[n] = '\0';
    (void)route_map_lookup(m, q, NULL);
    route_map_unref(&m);
    return 0;
}
