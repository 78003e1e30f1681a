/*
 * addrcap — per-address connection counting (see addrcap.h).
 */
#include "addrcap.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <string.h>

#include "hash64.h"

#define SLOTS 65536u

static atomic_uint counts[SLOTS];
/* Per-process random-free salt: a fixed odd multiplier; the hash only spreads addresses, it is
 * no security boundary (an attacker controls its own address, not others'). */
static uint32_t slot_of(const struct sockaddr *sa)
{
    unsigned char key[8] = {0};
    size_t n = 0;
    if (sa->sa_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        n = 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(key, a->s6_addr + 12, 4);
            n = 4;
        } else {
            memcpy(key, a->s6_addr, 8); /* the /64 */
            n = 8;
        }
    }
    uint64_t h = FNV64_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = fnv64_byte(h, key[i]);
    h ^= h >> 29;
    return (uint32_t)(h % SLOTS);
}

bool addrcap_acquire(const struct sockaddr *sa, unsigned limit, uint32_t *slot_r)
{
    uint32_t slot = slot_of(sa);
    unsigned now = atomic_fetch_add(&counts[slot], 1) + 1;
    if (limit && now > limit) {
        atomic_fetch_sub(&counts[slot], 1);
        return false;
    }
    *slot_r = slot;
    return true;
}

void addrcap_release(uint32_t slot)
{
    atomic_fetch_sub(&counts[slot % SLOTS], 1);
}
