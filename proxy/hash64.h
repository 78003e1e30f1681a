/*
 * hash64 — 64-bit FNV-1a for the in-process hash tables and scores (backend.c's rendezvous
 * scores, route_map.c's table, addrcap.c's address slots), and the splitmix64 finalizer that
 * spreads it: FNV alone clusters on keys that differ only in their last bytes (user1, user2, ...).
 * The rendezvous score must stay bit for bit what it is, or instances of different versions
 * would send a user to different backends. Header-only: called per byte.
 */
#ifndef PORTCULLIS_HASH64_H
#define PORTCULLIS_HASH64_H

#include <stdint.h>

#define FNV64_OFFSET 0xcbf29ce484222325ULL

static inline uint64_t fnv64_byte(uint64_t h, unsigned char c)
{
    return (h ^ c) * 0x100000001b3ULL;
}

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

#endif
