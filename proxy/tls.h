/*
 * tls — OpenSSL contexts built from a config snapshot.
 *
 * Server side: one SSL_CTX per configured certificate, the first being the default. Names for
 * SNI are read from each certificate (subjectAltName DNS entries, else the CN; "*.x" wildcards
 * match one label). The servername callback switches the SSL to the matching context. Session
 * tickets use keys from `tls.ticket_key_file` installed on the DEFAULT context only — OpenSSL
 * takes ticket keys from the initial context even after an SNI switch (libs-notes pitfall 12) —
 * so every instance and every restart that share the file accept each other's tickets.
 *
 * Client side (backends): one SSL_CTX per backend with TLS, verifying the peer against the
 * configured CA file (or the system store) and the expected name or IP.
 *
 * Contexts are built off the worker loops (at start and at reload) and are read-only afterwards;
 * OpenSSL's SSL_CTX is safe to share between threads once configured.
 */
#ifndef PORTCULLIS_TLS_H
#define PORTCULLIS_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct tls_server;

/* Build the server contexts. Returns NULL and a malloc'd *error_r on failure. */
struct tls_server *tls_server_new(const struct cfg_tls *cfg, char **error_r);
void tls_server_free(struct tls_server **ts);
/* One served certificate as loaded (for /metrics): its file (the config's string, valid while
 * the snapshot is), the leaf's subject (RFC 2253) and the earliest notAfter of the leaf and its
 * chain, in seconds since the epoch (0: unreadable). */
struct tls_cert_info {
    const char *file;
    char subject[256];
    int64_t not_after;
};
/* The certificates of `ts` in configuration order (0 and NULL for NULL). */
size_t tls_server_certs(const struct tls_server *ts, const struct tls_cert_info **info_r);

/* Server-side SSL object on the default context (SNI may switch it during the handshake):
 * from this thread's free list when it holds one for `ts`, else new. */
SSL *tls_server_ssl(struct tls_server *ts);
/* The end of an SSL object (any: client-side ones and NULL too): a server-side one from
 * tls_server_ssl() is reset and kept on this thread's free list while there is room
 * (tls.ssl_cache) and its tls_server is still the one the list serves; others are freed. */
void tls_ssl_release(SSL *ssl);
/* A worker thread ends: free its list. */
void tls_thread_done(void);

/* Client context for one backend (NULL and *error_r if it cannot be built). */
SSL_CTX *tls_client_ctx_new(const struct cfg_backend *b, char **error_r);
/* New client SSL for that backend with SNI and name/IP verification set. */
SSL *tls_client_ssl(SSL_CTX *ctx, const struct cfg_backend *b);

/* Describe the negotiated session in a log-friendly way: "TLSv1.3/TLS_AES_128_GCM_SHA256". */
const char *tls_describe(SSL *ssl, char *buf, size_t cap);

/* One-time library initialisation (main thread). */
void tls_global_init(void);

#endif
