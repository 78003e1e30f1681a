/*
 * tls — see tls.h.
 *
 * Ticket key file format: one or more 80-byte records, each name(16) | hmac key(32) |
 * aes key(32), 1..8 of them and nothing else. The first record encrypts new tickets; every
 * record is accepted for decryption (and the ticket re-issued under the first), so rotation is:
 * append the new record everywhere, then move it first, then drop the old one a ticket lifetime
 * later (docs/tls.md).
 *
 * SSL object reuse (issue 19): SSL_new copies the context's certificate, cipher lists, verify
 * parameters and callbacks into a fresh object, and SSL_free takes it apart again, for every
 * connection. A closed connection's SSL is instead reset with SSL_clear and kept on a free
 * list of its worker (a thread: sessions never change worker, so no lock), at most
 * tls.ssl_cache of them. What SSL_clear keeps, and how it cannot reach the next client:
 *  - the context an SNI switch installed (and with it the certificate): put back to the
 *    default context before the SSL is kept, so a client without SNI gets the default
 *    certificate;
 *  - ex_data: ours is only the default context the SSL was made for (home_index), which is
 *    what the free list compares against;
 *  - the BIO (a stale fd number, never used: conn_start_tls installs a new one first);
 *  - the session, peer certificate, verify result, ALPN choice, servername and ticket state
 *    are freed or reset by SSL_clear itself, and the servername is re-read from each
 *    ClientHello (tests/integration/test_tls.py checks SNI, resumption and versions across
 *    reuse).
 * A list belongs to one tls_server (one config generation), identified by its default context,
 * on which the list holds a reference so that pointer cannot come back as a new context. A
 * reload's first connection on a worker empties the old list; SSLs of older sessions that end
 * later are freed, not kept.
 */
#include "tls.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>

#define TICKET_REC  80
#define TICKET_MAXK 8

struct ticket_key {
    unsigned char name[16];
    unsigned char hmac[32];
    unsigned char aes[32];
};

struct sni_entry {
    char *name; /* lower-case; may start with "*." */
    SSL_CTX *ctx;
};

struct tls_server {
    SSL_CTX **ctx;     /* ctx[0] default */
    unsigned pool_cap; /* tls.ssl_cache */
    size_t nctx;
    struct tls_cert_info *info; /* [i] for ctx[i], read at build time for /metrics */
    struct sni_entry *names;
    size_t nnames;
    struct ticket_key keys[TICKET_MAXK];
    size_t nkeys;
};

static int ts_index = -1;
static int home_index = -1; /* SSL ex_data: the default SSL_CTX the object was made on */
/* Ticket encryption cipher, fetched once: EVP_aes_256_cbc() in EVP_EncryptInit_ex makes
 * OpenSSL 3 fetch the implementation (a locked property lookup) on every ticket. */
static EVP_CIPHER *ticket_cipher;

/* This worker's free SSL objects (see the top of the file). */
struct ssl_pool {
    SSL_CTX *home; /* referenced; NULL before the first connection */
    unsigned cap, n;
    SSL **free;
};
static _Thread_local struct ssl_pool pool;

void tls_global_init(void)
{
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    ts_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    home_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

static char *ssl_error(const char *what, const char *path)
{
    char ebuf[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, ebuf, sizeof ebuf);
    ERR_clear_error();
    char *out = NULL;
    if (asprintf(&out, "%s%s%s: %s", what, path ? " " : "", path ? path : "",
                 ebuf[0] ? ebuf : "failed") < 0)
        out = NULL;
    return out;
}

static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(s);
    struct tls_server *ts = SSL_CTX_get_ex_data(ctx, ts_index);
    /* After an SNI switch SSL_get_SSL_CTX is the SNI context; ours is stored on all of them. */
    if (!ts || ts->nkeys == 0)
        return -1;
    const struct ticket_key *k = NULL;
    if (enc) {
        k = &ts->keys[0];
        memcpy(name, k->name, 16);
        if (RAND_bytes(iv, 16) != 1)
            return -1;
    } else {
        for (size_t i = 0; i < ts->nkeys; i++) {
            if (memcmp(name, ts->keys[i].name, 16) == 0) {
                k = &ts->keys[i];
                break;
            }
        }
        if (!k)
            return 0; /* unknown key: full handshake */
    }
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, 32),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, p) != 1)
        return -1;
    const EVP_CIPHER *aes = ticket_cipher ? ticket_cipher : EVP_aes_256_cbc();
    if (enc)
        return EVP_EncryptInit_ex(cctx, aes, NULL, k->aes, iv) == 1 ? 1 : -1;
    if (EVP_DecryptInit_ex(cctx, aes, NULL, k->aes, iv) != 1)
        return -1;
    /* 2: accept and issue a new ticket. Always for TLS 1.3: OpenSSL sends no ticket on a
     * resumed 1.3 handshake otherwise, and a client that uses each ticket once (RFC 8446
     * C.4) then falls back to a full handshake every other connection (measured with
     * pcbench --resume: 5 of 10 resumed, 9 of 10 with this). For TLS 1.2, only when the
     * ticket was made under an older key. */
    if (k != &ts->keys[0] || SSL_version(s) >= TLS1_3_VERSION)
        return 2;
    return 1;
}

static bool name_matches(const char *pattern, const char *host)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(host, '.');
        return dot && dot != host && strcasecmp(dot + 1, pattern + 2) == 0;
    }
    return strcasecmp(pattern, host) == 0;
}

static int sni_cb(SSL *s, int *alert, void *arg)
{
    (void)alert;
    struct tls_server *ts = arg;
    const char *host = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    if (!host)
        return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 0; i < ts->nnames; i++) {
        if (name_matches(ts->names[i].name, host)) {
            if (ts->names[i].ctx != SSL_get_SSL_CTX(s))
                SSL_set_SSL_CTX(s, ts->names[i].ctx);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

static bool add_name(struct tls_server *ts, const char *name, size_t len, SSL_CTX *ctx)
{
    struct sni_entry *n = realloc(ts->names, (ts->nnames + 1) * sizeof *n);
    if (!n)
        return false;
    ts->names = n;
    char *copy = strndup(name, len);
    if (!copy)
        return false;
    for (char *p = copy; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    ts->names[ts->nnames].name = copy;
    ts->names[ts->nnames].ctx = ctx;
    ts->nnames++;
    return true;
}

/* Collect DNS names of the context's certificate for SNI lookup. */
static bool collect_names(struct tls_server *ts, SSL_CTX *ctx)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (!x)
        return true;
    bool any = false;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
        int l = ASN1_STRING_length(g->d.dNSName);
        if (l > 0 && !add_name(ts, (const char *)d, (size_t)l, ctx)) {
            GENERAL_NAMES_free(gens);
            return false;
        }
        any = true;
    }
    GENERAL_NAMES_free(gens);
    if (!any) {
        char cn[256];
        int l = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
        if (l > 0 && !add_name(ts, cn, (size_t)l, ctx))
            return false;
    }
    return true;
}

/* The whole file must be 1..TICKET_MAXK records: a truncated or padded file is an operator's
 * mistake (a half-copied rotation), and silently using part of it would make instances
 * disagree about which tickets they accept. */
static bool load_ticket_keys(struct tls_server *ts, const char *path, char **error_r)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (asprintf(error_r, "tls.ticket_key_file %s: cannot open", path) < 0)
            *error_r = NULL;
        return false;
    }
    unsigned char data[TICKET_REC * TICKET_MAXK + 1];
    size_t n = fread(data, 1, sizeof data, f);
    bool rerr = ferror(f) != 0;
    fclose(f);
    const char *why = NULL;
    if (rerr)
        why = "read error";
    else if (n == 0)
        why = "empty: needs at least one 80-byte key";
    else if (n > TICKET_REC * TICKET_MAXK)
        why = "too large: at most 8 keys of 80 bytes";
    else if (n % TICKET_REC != 0)
        why = "size is not a multiple of 80 bytes (name16|hmac32|aes32 records)";
    if (why) {
        OPENSSL_cleanse(data, sizeof data);
        if (asprintf(error_r, "tls.ticket_key_file %s: %s", path, why) < 0)
            *error_r = NULL;
        return false;
    }
    for (size_t off = 0; off < n; off += TICKET_REC) {
        struct ticket_key *k = &ts->keys[ts->nkeys++];
        memcpy(k->name, data + off, 16);
        memcpy(k->hmac, data + off + 16, 32);
        memcpy(k->aes, data + off + 48, 32);
    }
    OPENSSL_cleanse(data, sizeof data);
    return true;
}

/* Expiry of what a client gets from this context: the earliest notAfter of the leaf and the
 * chain in its file (an intermediate that expires first breaks clients just the same). Read
 * here, once per load/reload, so a scrape costs nothing and shows the certificate in use, not
 * the file on disk. */
static void cert_info(SSL_CTX *ctx, const char *file, struct tls_cert_info *out)
{
    out->file = file;
    out->subject[0] = '\0';
    out->not_after = 0;
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (!leaf)
        return;
    BIO *b = BIO_new(BIO_s_mem());
    if (b) {
        if (X509_NAME_print_ex(b, X509_get_subject_name(leaf), 0, XN_FLAG_RFC2253) >= 0) {
            int n = BIO_read(b, out->subject, (int)sizeof out->subject - 1);
            out->subject[n > 0 ? n : 0] = '\0';
        }
        BIO_free(b);
    }
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(ctx, &chain);
    int nchain = chain ? sk_X509_num(chain) : 0; /* sk_X509_num(NULL) is -1 */
    for (int i = -1; i < nchain; i++) {
        const ASN1_TIME *t = X509_get0_notAfter(i < 0 ? leaf : sk_X509_value(chain, i));
        struct tm tm;
        if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
            continue;
        int64_t when = (int64_t)timegm(&tm);
        if (out->not_after == 0 || when < out->not_after)
            out->not_after = when;
    }
}

static SSL_CTX *server_ctx(const struct cfg_tls *cfg, const struct cfg_cert *cert, char **error_r)
{
    SSL_CTX *x = SSL_CTX_new(TLS_server_method());
    if (!x) {
        *error_r = ssl_error("SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(x, cfg->min_version);
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(x, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (cfg->ciphers && SSL_CTX_set_cipher_list(x, cfg->ciphers) != 1) {
        *error_r = ssl_error("tls.ciphers", cfg->ciphers);
        goto fail;
    }
    if (cfg->ciphersuites && SSL_CTX_set_ciphersuites(x, cfg->ciphersuites) != 1) {
        *error_r = ssl_error("tls.ciphersuites", cfg->ciphersuites);
        goto fail;
    }
    if (cfg->groups && SSL_CTX_set1_groups_list(x, cfg->groups) != 1) {
        *error_r = ssl_error("tls.groups", cfg->groups);
        goto fail;
    }
    /* OpenSSL sends 2 TLS 1.3 tickets per full handshake: each is a record write, an
     * encryption and an HMAC. Resumed handshakes get a fresh one (ticket_cb), so a client that
     * reconnects needs one; a client opening parallel connections gets one per connection. */
    SSL_CTX_set_num_tickets(x, cfg->session_tickets);
    /* Read whole socket buffers, not a 5-byte header and then the record: half the read()s
     * per handshake and per command (conn.c asks SSL_has_pending for what is buffered). */
    SSL_CTX_set_read_ahead(x, 1);
    if (SSL_CTX_use_certificate_chain_file(x, cert->cert) != 1) {
        *error_r = ssl_error("certificate", cert->cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(x, cert->key, SSL_FILETYPE_PEM) != 1) {
        *error_r = ssl_error("private key", cert->key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(x) != 1) {
        *error_r = ssl_error("key does not match certificate", cert->cert);
        goto fail;
    }
    SSL_CTX_set_session_id_context(x, (const unsigned char *)"portcullis", 10);
    return x;
fail:
    SSL_CTX_free(x);
    return NULL;
}

struct tls_server *tls_server_new(const struct cfg_tls *cfg, char **error_r)
{
    *error_r = NULL;
    struct tls_server *ts = calloc(1, sizeof *ts);
    if (!ts || cfg->ncerts == 0) {
        free(ts);
        *error_r = strdup("tls: no certificates configured");
        return NULL;
    }
    ts->pool_cap = cfg->ssl_cache;
    ts->ctx = calloc(cfg->ncerts, sizeof *ts->ctx);
    ts->info = calloc(cfg->ncerts, sizeof *ts->info);
    if (!ts->ctx || !ts->info)
        goto fail;
    for (size_t i = 0; i < cfg->ncerts; i++) {
        ts->ctx[i] = server_ctx(cfg, &cfg->certs[i], error_r);
        if (!ts->ctx[i])
            goto fail;
        cert_info(ts->ctx[i], cfg->certs[i].cert, &ts->info[i]);
        ts->nctx++;
        SSL_CTX_set_ex_data(ts->ctx[i], ts_index, ts);
        if (!collect_names(ts, ts->ctx[i]))
            goto fail;
    }
    if (cfg->ticket_key_file) {
        if (!load_ticket_keys(ts, cfg->ticket_key_file, error_r))
            goto fail;
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ts->ctx[0], ticket_cb);
    }
    SSL_CTX_set_tlsext_servername_callback(ts->ctx[0], sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ts->ctx[0], ts);
    return ts;
fail:
    if (!*error_r)
        *error_r = strdup("tls: out of memory");
    tls_server_free(&ts);
    return NULL;
}

void tls_server_free(struct tls_server **tsp)
{
    struct tls_server *ts = *tsp;
    if (!ts)
        return;
    for (size_t i = 0; i < ts->nctx; i++)
        SSL_CTX_free(ts->ctx[i]);
    free(ts->ctx);
    free(ts->info);
    for (size_t i = 0; i < ts->nnames; i++)
        free(ts->names[i].name);
    free(ts->names);
    OPENSSL_cleanse(ts->keys, sizeof ts->keys);
    free(ts);
    *tsp = NULL;
}

size_t tls_server_certs(const struct tls_server *ts, const struct tls_cert_info **info_r)
{
    *info_r = ts ? ts->info : NULL;
    return ts ? ts->nctx : 0;
}

/* Empty this thread's list and make it one for `home` (NULL: none) with room for `cap`. */
static void pool_reset(SSL_CTX *home, unsigned cap)
{
    while (pool.n)
        SSL_free(pool.free[--pool.n]);
    free(pool.free);
    pool.free = NULL;
    pool.cap = 0;
    SSL_CTX_free(pool.home); /* NULL-safe */
    pool.home = NULL;
    if (!home)
        return;
    SSL_CTX_up_ref(home);
    pool.home = home;
    pool.free = cap ? calloc(cap, sizeof *pool.free) : NULL;
    pool.cap = pool.free ? cap : 0;
}

SSL *tls_server_ssl(struct tls_server *ts)
{
    SSL_CTX *home = ts->ctx[0];
    if (pool.home != home)
        pool_reset(home, ts->pool_cap);
    if (pool.n)
        return pool.free[--pool.n];
    SSL *s = SSL_new(home);
    if (s && SSL_set_ex_data(s, home_index, home) != 1) {
        SSL_free(s);
        return NULL;
    }
    return s;
}

void tls_ssl_release(SSL *s)
{
    if (!s)
        return;
    SSL_CTX *home = SSL_get_ex_data(s, home_index);
    if (!home || home != pool.home || pool.n >= pool.cap) {
        SSL_free(s);
        return;
    }
    /* After an SNI switch the object carries that certificate's context: back to the default
     * one (SSL_set_SSL_CTX copies its certificate and session id context in again). */
    if (SSL_get_SSL_CTX(s) != home && SSL_set_SSL_CTX(s, home) != home) {
        SSL_free(s);
        return;
    }
    ERR_clear_error();
    if (SSL_clear(s) != 1) {
        ERR_clear_error();
        SSL_free(s);
        return;
    }
    pool.free[pool.n++] = s;
}

void tls_thread_done(void)
{
    pool_reset(NULL, 0);
}

SSL_CTX *tls_client_ctx_new(const struct cfg_backend *b, char **error_r)
{
    *error_r = NULL;
    SSL_CTX *x = SSL_CTX_new(TLS_client_method());
    if (!x) {
        *error_r = ssl_error("SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
    SSL_CTX_set_mode(x, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(x, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (b->tls_verify) {
        SSL_CTX_set_verify(x, SSL_VERIFY_PEER, NULL);
        int ok = b->tls_ca ? SSL_CTX_load_verify_locations(x, b->tls_ca, NULL)
                           : SSL_CTX_set_default_verify_paths(x);
        if (ok != 1) {
            *error_r = ssl_error("backend tls_ca", b->tls_ca);
            SSL_CTX_free(x);
            return NULL;
        }
    }
    return x;
}

static bool is_ip(const char *s)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

SSL *tls_client_ssl(SSL_CTX *ctx, const struct cfg_backend *b)
{
    SSL *s = SSL_new(ctx);
    if (!s)
        return NULL;
    const char *name = b->tls_sni ? b->tls_sni : b->host;
    if (!is_ip(name))
        SSL_set_tlsext_host_name(s, name);
    if (b->tls_verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(s);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = is_ip(name) ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
                             : X509_VERIFY_PARAM_set1_host(vp, name, 0);
        if (ok != 1) {
            SSL_free(s);
            return NULL;
        }
    }
    return s;
}

const char *tls_describe(SSL *ssl, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s%s", SSL_get_version(ssl), SSL_get_cipher_name(ssl),
             SSL_session_reused(ssl) ? "/resumed" : "");
    return buf;
}
