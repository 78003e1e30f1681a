/*
 * transparent — a listener in transparent mode takes its backend from the connection's
 * original destination, so clients keep their configuration and the proxy sits in the path:
 *   - iptables/nftables REDIRECT (or DNAT) to the listener: the original destination comes from
 *     conntrack through SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6);
 *   - TPROXY with IP_TRANSPARENT on the listener: the socket's local address already is the
 *     original destination (conntrack did no NAT, so SO_ORIGINAL_DST fails with ENOENT).
 * Optionally the backend connection leaves from the client's own address (IP_TRANSPARENT +
 * bind, done by the dialer in backend.c), so the backend sees the real client; the return
 * traffic must then be routed back through the proxy (docs/deployment-transparent.md).
 */
#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "session.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h, which clashes with libc */
#endif

static uint16_t port_of(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)a)->sin6_port
                                    : ((const struct sockaddr_in *)a)->sin_port;
}

/* Is `a` an address of this host? A plain bind() to it (port 0, no IP_TRANSPARENT) succeeds
 * only for local addresses. */
static bool is_local_address(const struct sockaddr_storage *a)
{
    struct sockaddr_storage probe = *a;
    socklen_t len = backend_addr_any_port(&probe);
    int fd = socket(probe.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return true; /* cannot tell: assume the worst (a loop) */
    bool local = bind(fd, (struct sockaddr *)&probe, len) == 0;
    close(fd);
    return local;
}

static bool original_destination(struct session *s, struct sockaddr_storage *dst, socklen_t *len_r)
{
    socklen_t len = sizeof *dst;
    memset(dst, 0, sizeof *dst);
    int rc = s->pre->local_sa.ss_family == AF_INET6
                 ? getsockopt(s->client.fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &len)
                 : getsockopt(s->client.fd, SOL_IP, SO_ORIGINAL_DST, dst, &len);
    if (rc == 0) {
        *len_r = len;
    } else {
        /* TPROXY: the local address is where the client wanted to go. */
        *dst = s->pre->local_sa;
        *len_r = s->pre->local_sa.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                        : sizeof(struct sockaddr_in);
    }
    /* A client that connected to the listener itself has no other destination: refusing it
     * avoids connecting to ourselves in a loop (each hop would accept and connect again). */
    return !(port_of(dst) == port_of(&s->listener->addr) && is_local_address(dst));
}

bool sess_transparent_target(struct session *s)
{
    const struct cfg_listener *l = s->listener;
    struct sockaddr_storage dst;
    socklen_t dlen;
    if (!original_destination(s, &dst, &dlen)) {
        sess_log(s, LOG_WARN,
                 "event=backend_error error=\"transparent listener reached "
                 "directly: no original destination\"");
        return false;
    }
    struct sess_be_own *o = sess_be_own(s);
    if (!o) {
        sess_log(s, LOG_ERROR, "event=backend_error error=\"out of memory\"");
        return false;
    }
    char *ip = o->host;
    unsigned port = 0;
    snprintf(ip, sizeof o->host, "?");
    if (dst.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)&dst;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof o->host);
        port = ntohs(in6->sin6_port);
    } else {
        const struct sockaddr_in *in = (const void *)&dst;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof o->host);
        port = ntohs(in->sin_port);
    }
    log_hostport(o->name, sizeof o->name, ip, port);
    struct cfg_backend *b = &o->be;
    memset(b, 0, sizeof *b);
    b->name = o->name;
    b->host = o->host;
    b->port = (uint16_t)port;
    b->addr = dst;
    b->addrlen = dlen;
    b->protocol = l->protocol;
    b->weight = 1;
    b->tls = l->transparent_backend_tls;
    b->tls_verify = l->transparent_backend_verify;
    s->be = b;
    s->be_index = -1;
    s->be_state = NULL;
    s->be_ctx = s->rt->listener_be_ctx ? s->rt->listener_be_ctx[l - s->cfg->listeners] : NULL;
    sess_log(s, LOG_DEBUG, "event=transparent_destination backend=%s", o->name);
    return true;
}
