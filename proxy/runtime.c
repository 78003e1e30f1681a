/*
 * runtime — see runtime.h. The published pointer is guarded by a mutex: taking a reference must
 * not race with the swap that drops the last one.
 */
#include "runtime.h"

#include <string.h>

#include "backend.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rt *rt_published;

struct rt *rt_build(struct config *cfg, char **error_r)
{
    *error_r = NULL;
    struct rt *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    atomic_init(&rt->refs, 1);
    rt->cfg = cfg_ref(cfg);
    bool need_tls = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].tls != CFG_TLS_NONE)
            need_tls = true;
    if (need_tls) {
        rt->tls = tls_server_new(&cfg->tls, error_r);
        if (!rt->tls)
            goto fail;
    }
    rt->backend_ctx = calloc(cfg->nbackends ? cfg->nbackends : 1, sizeof *rt->backend_ctx);
    if (!rt->backend_ctx)
        goto fail;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        if (cfg->backends[i].tls == CFG_TLS_NONE)
            continue;
        rt->backend_ctx[i] = tls_client_ctx_new(&cfg->backends[i], error_r);
        if (!rt->backend_ctx[i])
            goto fail;
    }
    rt->listener_be_ctx =
        calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof *rt->listener_be_ctx);
    if (!rt->listener_be_ctx)
        goto fail;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct cfg_listener *l = &cfg->listeners[i];
        if (!l->transparent || l->transparent_backend_tls == CFG_TLS_NONE)
            continue;
        /* Transparent backends are only known by address: verify against the system CA
         * store, with the IP address as the name to match. */
        char empty[1] = "";
        struct cfg_backend tb = {.name = l->name,
                                 .host = empty,
                                 .tls = l->transparent_backend_tls,
                                 .tls_verify = l->transparent_backend_verify};
        rt->listener_be_ctx[i] = tls_client_ctx_new(&tb, error_r);
        if (!rt->listener_be_ctx[i])
            goto fail;
    }
    rt->be_state = calloc(cfg->nbackends ? cfg->nbackends : 1, sizeof *rt->be_state);
    if (!rt->be_state)
        goto fail;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        rt->be_state[i] = backend_state_get(cfg->backends[i].name);
        if (!rt->be_state[i]) {
            *error_r = strdup("too many distinct backend names over the process's life");
            goto fail;
        }
    }
    const struct cfg_dynamic_backend *db = &cfg->routing.dynamic_backend;
    if (cfg->routing.nlookups && db->tls != CFG_TLS_NONE) {
        char name[] = "routing.dynamic_backend";
        struct cfg_backend tb = {
            .name = name, .tls = db->tls, .tls_ca = db->tls_ca, .tls_verify = db->tls_verify};
        rt->dyn_ctx = tls_client_ctx_new(&tb, error_r);
        if (!rt->dyn_ctx)
            goto fail;
    }
    return rt;
fail:
    rt_unref(&rt);
    return NULL;
}

struct rt *rt_ref(struct rt *rt)
{
    atomic_fetch_add(&rt->refs, 1);
    return rt;
}

void rt_unref(struct rt **rtp)
{
    struct rt *rt = *rtp;
    *rtp = NULL;
    if (!rt || atomic_fetch_sub(&rt->refs, 1) != 1)
        return;
    if (rt->backend_ctx) {
        for (size_t i = 0; i < rt->cfg->nbackends; i++)
            SSL_CTX_free(rt->backend_ctx[i]);
        free(rt->backend_ctx);
    }
    free(rt->be_state);
    SSL_CTX_free(rt->dyn_ctx);
    if (rt->listener_be_ctx) {
        for (size_t i = 0; i < rt->cfg->nlisteners; i++)
            SSL_CTX_free(rt->listener_be_ctx[i]);
        free(rt->listener_be_ctx);
    }
    tls_server_free(&rt->tls);
    cfg_unref(&rt->cfg);
    free(rt);
}

void rt_publish(struct rt *rt)
{
    pthread_mutex_lock(&rt_lock);
    struct rt *old = rt_published;
    rt_published = rt;
    pthread_mutex_unlock(&rt_lock);
    rt_unref(&old);
}

struct rt *rt_current(void)
{
    pthread_mutex_lock(&rt_lock);
    struct rt *rt = rt_published ? rt_ref(rt_published) : NULL;
    pthread_mutex_unlock(&rt_lock);
    return rt;
}
