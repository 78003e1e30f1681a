/*
 * addrcap — a process-wide cap on simultaneous connections per client address (IPv4 /32,
 * IPv6 /64), against slowloris-style floods that hold many pre-auth connections open from one
 * place. Counts live in a fixed table of atomic counters indexed by a hash of the address: no
 * allocation, no lock; two addresses that share a slot share its count, which can only make the
 * cap stricter for them (65536 slots make that rare).
 */
#ifndef PORTCULLIS_ADDRCAP_H
#define PORTCULLIS_ADDRCAP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Take a slot for `sa`; false (nothing taken) when `limit` connections already hold it.
 * *slot_r is what addrcap_release() needs. limit 0 = no cap (still counted). */
bool addrcap_acquire(const struct sockaddr *sa, unsigned limit, uint32_t *slot_r);
void addrcap_release(uint32_t slot);

#endif
