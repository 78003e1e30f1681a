/*
 * ldaplookup — the LDAP source of the routing lookup chain (issue 17): user → backend host.
 *
 * One `struct ldl_pool` per worker loop holds up to `max_conns` connections to one directory
 * (ldap://, ldaps://, or ldap:// + StartTLS; certificates always verified against `ca_file`),
 * bound with a DN/password or SASL EXTERNAL (client certificate). A lookup expands the filter
 * template with the RFC 4515-escaped user name (ldapfilter.h), searches asynchronously and
 * answers found(host[:port]) / not found / error(reason).
 *
 * Threads: searches run on the loop (ldap_search_ext + ldap_result with a zero timeout, driven
 * by an ev_io on LDAP_OPT_DESC). Connect + StartTLS + bind run on a short-lived helper thread
 * per attempt, which hands the bound LDAP* to the loop through an ev_async: libldap has no
 * non-blocking StartTLS/TLS handshake (ldap_install_tls blocks) and its SASL bind is synchronous,
 * so LDAP_OPT_CONNECT_ASYNC alone would still block the loop in the TLS handshake. The handle
 * is used by exactly one thread at a time (the helper until the hand-off, then the loop).
 *
 * Not here: caching, the chain, deciding whether a portless host is a pool entry (the caller).
 */
#ifndef PORTCULLIS_LDAPLOOKUP_H
#define PORTCULLIS_LDAPLOOKUP_H

#include <stdbool.h>

#include <ev.h>

#include "ldapfilter.h"

enum ldl_scope { LDL_SCOPE_BASE, LDL_SCOPE_ONE, LDL_SCOPE_SUB };

/* Configuration; strings are borrowed (copied by ldl_pool_new). Defaults: ldl_config_init(). */
struct ldl_config {
    const char *uri;           /* "ldap://host:port" or "ldaps://host:port"; required */
    bool starttls;             /* ldap:// + StartTLS (required to succeed); default false */
    const char *ca_file;       /* CA bundle to verify the server; NULL = system default */
    const char *cert_file;     /* client certificate (SASL EXTERNAL / TLS client auth) */
    const char *key_file;      /* its key */
    bool sasl_external;        /* bind with SASL EXTERNAL instead of bind_dn/bind_password */
    const char *bind_dn;       /* simple bind DN; NULL = anonymous */
    const char *bind_password; /* never logged */
    const char *base;          /* search base; required */
    enum ldl_scope scope;      /* default LDL_SCOPE_SUB */
    const char *filter;        /* default "(uid=%u)" */
    const char *attr;          /* attribute holding the host; default "mailHost" */
    unsigned max_conns;        /* connections per worker; default 2 (1..16) */
    unsigned max_pending;      /* lookups queued or in flight per worker; default 1024 */
    unsigned max_user_len;     /* longer user names are answered "not found"; default 256 */
    double connect_timeout;    /* seconds for connect + TLS + bind; default 3 */
    double timeout;            /* seconds from ldl_lookup to the answer; default 2 */
    double backoff_min;        /* first reconnect delay; doubles per failure; default 0.1 */
    double backoff_max;        /* reconnect delay cap; default 10 */
};

enum ldl_status { LDL_FOUND, LDL_NOT_FOUND, LDL_ERROR };

/* An answer; valid only during the callback. */
struct ldl_answer {
    enum ldl_status status;
    const char *host;   /* LDL_FOUND: host or pool entry name, no brackets */
    unsigned port;      /* LDL_FOUND: 0 when the value had none */
    const char *reason; /* LDL_ERROR (and why NOT_FOUND when not obvious); never a secret */
};

typedef void ldl_cb(void *arg, const struct ldl_answer *a);

struct ldl_pool;
struct ldl_req;

void ldl_config_init(struct ldl_config *c);

/* Validates the config (filter template, uri scheme, limits) and starts connecting. Returns
 * NULL with a static message in *error_r. Call on the loop's thread. */
struct ldl_pool *ldl_pool_new(struct ev_loop *loop, const struct ldl_config *c,
                              const char **error_r) __attribute__((warn_unused_result));

/* Starts a lookup of user[0..ulen). Never calls back synchronously; the callback is called
 * exactly once, on the loop, unless ldl_cancel() or ldl_pool_free() comes first. Never NULL.
 * The handle is invalid once the callback has been entered. */
struct ldl_req *ldl_lookup(struct ldl_pool *p, const char *user, size_t ulen, ldl_cb *cb,
                           void *arg);

/* Cancels a pending lookup: its callback is never called. Sets *req to NULL. */
void ldl_cancel(struct ldl_req **req);

/* Pending lookups are dropped without a callback. Joins connect threads (bounded by
 * connect_timeout). Not from inside an ldl callback. */
void ldl_pool_free(struct ldl_pool **p);

/* Stops reconnecting for good and says whether ldl_pool_free() would return at once (true) or
 * wait for a connect thread (false; it ends within connect_timeout per step). An owner that
 * must not block — a worker loop dropping the pool of an old configuration — polls this before
 * freeing. Lookups still in flight are answered as usual. */
bool ldl_pool_idle(struct ldl_pool *p);

/* Connections currently bound (for tests and metrics). */
unsigned ldl_pool_ready(const struct ldl_pool *p);

#endif
