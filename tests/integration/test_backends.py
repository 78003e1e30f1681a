"""Backend pools behind one Portcullis (issue 6): rendezvous affinity, weights, failover and
recovery through health checks, drain on reload, PROXY protocol in and out, and the real client
address reaching Dovecot's log. Three real Dovecot instances with separate maildirs; which
backend a session reached is read from the mailbox (every backend holds a marker message)."""

from __future__ import annotations

import os
import poplib
import re
import signal
import socket
import time

import pytest

import clients
import mailenv
from routing_env import backend_of, login

USERS = {f"user{i:02d}": f"pw-{i:02d}" for i in range(48)}
NB = 3


def marker(name: str, user: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: {user}@example.test\r\n"
            f"Subject: backend={name}\r\nMessage-ID: <{name}.{user}@portcullis.test>\r\n\r\n"
            f"This mailbox lives on {name}.\r\n").encode()


@pytest.fixture(scope="module")
def pool(env_tmp, certs):
    dvs = []
    for i in range(NB):
        dv = mailenv.Dovecot()
        dv.start(env_tmp / f"dovecot-pool-{i}", users=USERS, ssl=True, cert=certs.backend,
                 key=certs.backend_key)
        dv.label = f"dv{i}"
        for u in USERS:
            dv.deliver(u, [marker(dv.label, u)])
        dvs.append(dv)
    yield dvs
    for dv in dvs:
        dv.stop()


def backends_for(dvs, weights=None, drain=(), proto="both", **extra):
    out = []
    for i, dv in enumerate(dvs):
        for b in dv.backends(tls="none", name=dv.label):
            if proto != "both" and b["protocol"] != proto:
                continue
            b["weight"] = (weights or [1] * len(dvs))[i]
            b["server"] = dv.label  # IMAP and POP3 entries of one Dovecot are one server
            if dv.label in drain:
                b["drain"] = True
            b.update(extra)
            out.append(b)
    return out


FAST_HEALTH = {"interval": "200ms", "timeout": "500ms", "rise": 1, "fall": 1}


def which_backend(px, certs, user) -> str:
    m = login(px, certs, user, USERS[user])
    try:
        return backend_of(m)
    finally:
        try:
            m.logout()
        except Exception:
            pass


def test_same_user_same_backend_and_spread(proxy_factory, pool, certs):
    px = proxy_factory(backends=backends_for(pool), health={"enabled": False})
    first = {u: which_backend(px, certs, u) for u in USERS}
    assert set(first.values()) == {"dv0", "dv1", "dv2"}
    for u in list(USERS)[:12]:
        assert which_backend(px, certs, u) == first[u]
    # A second instance, with the pool listed in another order, agrees on every user.
    px2 = proxy_factory(backends=list(reversed(backends_for(pool))), health={"enabled": False})
    for u in list(USERS)[:16]:
        assert which_backend(px2, certs, u) == first[u]
    # POP3 follows the same mapping: its pool members name the same `server`.
    for u in list(USERS)[:4]:
        p = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"),
                            context=mailenv.ssl_context(certs.ca), timeout=15)
        p.user(u)
        p.pass_(USERS[u])
        body = b"\r\n".join(p.retr(1)[1])
        p.quit()
        assert f"backend={first[u]}".encode() in body


def test_weights(proxy_factory, pool, certs):
    px = proxy_factory(backends=backends_for(pool, weights=[1, 1, 6]), health={"enabled": False})
    counts = {"dv0": 0, "dv1": 0, "dv2": 0}
    for u in USERS:
        counts[which_backend(px, certs, u)] += 1
    # expected shares 1/8, 1/8, 6/8 of 48 users: 6, 6, 36
    assert counts["dv2"] > 2 * (counts["dv0"] + counts["dv1"]) / 2
    assert counts["dv2"] >= 28, counts


def test_failover_and_recovery(proxy_factory, env_tmp, certs):
    dvs = []
    try:
        for i in range(2):
            dv = mailenv.Dovecot()
            dv.start(env_tmp / f"dovecot-fo-{i}", users=USERS, ssl=False)
            dv.label = f"dv{i}"
            for u in USERS:
                dv.deliver(u, [marker(dv.label, u)])
            dvs.append(dv)
        px = proxy_factory(backends=backends_for(dvs), health=FAST_HEALTH)
        home = {u: which_backend(px, certs, u) for u in list(USERS)[:16]}
        on0 = [u for u, b in home.items() if b == "dv0"]
        on1 = [u for u, b in home.items() if b == "dv1"]
        assert on0 and on1
        ports = dict(dvs[0].ports)
        dvs[0].stop()
        # Logins of dv0's users succeed at once on dv1 (connect failure → next in hash order).
        t0 = time.monotonic()
        assert which_backend(px, certs, on0[0]) == "dv1"
        assert time.monotonic() - t0 < 3
        px.wait_log("event=backend_down backend=dv0")  # health checks mark dv0 down
        for u in on0[:3]:
            assert which_backend(px, certs, u) == "dv1"
        for u in on1[:3]:  # nobody else moved
            assert which_backend(px, certs, u) == "dv1"
        # dv0 returns on the same ports with its maildirs: its users come back.
        mark = px.log_mark()
        dvs[0].start(env_tmp / "dovecot-fo-0", users=USERS, ssl=False, ports=ports)
        px.wait_log("event=backend_up backend=dv0", after=mark)
        # The first logins after a restart can still fail over (on a loaded CI machine a freshly
        # started Dovecot's first authentication outlasted the backend login timeout, and the
        # session went on to dv1, as it should): the users come back once dv0 really answers.
        deadline = time.monotonic() + 10
        while (got := which_backend(px, certs, on0[0])) != "dv0":
            assert time.monotonic() < deadline, (got, px.log()[mark:][-3000:])
            time.sleep(0.2)
        for u in on0[:3]:
            assert which_backend(px, certs, u) == "dv0", px.log()[mark:][-3000:]
    finally:
        for dv in dvs:
            dv.stop()


def reload(px, cfg) -> None:
    px.config_path.write_text(mailenv.to_yaml(cfg))
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded", after=mark)


def test_drain_keeps_live_sessions(proxy_factory, pool, certs):
    px = proxy_factory(backends=backends_for(pool), health={"enabled": False})
    user = next(u for u in USERS if which_backend(px, certs, u) == "dv1")
    live = login(px, certs, user, USERS[user])
    assert backend_of(live) == "dv1"
    cfg = dict(px.config)
    cfg["backends"] = backends_for(pool, drain=("dv1",))
    reload(px, cfg)
    # The live session goes on on dv1 ...
    assert live.noop()[0] == "OK"
    assert backend_of(live) == "dv1"
    # ... while new sessions of the same user go elsewhere.
    assert which_backend(px, certs, user) in ("dv0", "dv2")
    live.logout()
    # Undrained: back home.
    cfg["backends"] = backends_for(pool)
    reload(px, cfg)
    assert which_backend(px, certs, user) == "dv1"


# ------------------------------------------------------------------------------ PROXY protocol


def tls_after_header(port, header: bytes, certs) -> clients.LineClient:
    s = socket.create_connection((mailenv.LOCAL, port), timeout=15)
    s.sendall(header)
    return clients.LineClient(None, clients.tls_context(certs), sock=s, timeout=15)


def imap_login_raw(conn: clients.LineClient, user) -> bytes:
    conn.greeting()
    return conn.cmd(b"a", b'LOGIN %s "%s"' % (user.encode(), USERS[user].encode()))[-1]


def closed_by_peer(s) -> bool:
    """The proxy closed without a word (FIN, or RST because our bytes went unread)."""
    return clients.LineClient(None, sock=s, timeout=5).closed()


def wait_pool_log(pool, pattern, timeout=10.0) -> bool:
    """Wait until some Dovecot of the pool logs a line matching the regex `pattern` (its log
    lines arrive a little after the proxy's); fails the test on timeout."""
    return clients.wait_for(lambda: any(re.search(pattern, dv.log()) for dv in pool), timeout,
                            what=f"{pattern!r} in a pool Dovecot's log")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_from_trusted_balancer(proxy_factory, pool, certs, version):
    port = mailenv.free_port()
    px = proxy_factory(backends=backends_for(pool), health={"enabled": False},
                       trusted_proxies="127.0.0.0/8",
                       extra_listeners=[{"name": "lb", "bind": f"127.0.0.1:{port}",
                                         "protocol": "imap", "tls": "implicit",
                                         "proxy_protocol": True}])
    src = "192.0.2.%d" % (55 if version == "v1" else 56)
    if version == "v1":
        hdr = f"PROXY TCP4 {src} 127.0.0.1 40001 {port}\r\n".encode()
    else:
        hdr = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + socket.inet_aton(src)
               + socket.inet_aton("127.0.0.1") + (40001).to_bytes(2, "big")
               + port.to_bytes(2, "big"))
    conn = tls_after_header(port, hdr, certs)
    user = "user07"
    assert imap_login_raw(conn, user).startswith(b"a OK")
    conn.close()
    # The proxy logs and decides with the balancer's client, and Dovecot (which trusts the
    # proxy) logs it as the remote IP from the forwarded ID.
    assert f"client={src}:40001" in px.log()
    assert wait_pool_log(pool, re.escape(f"rip={src}"))


def test_proxy_header_refused(proxy_factory, pool, certs):
    port = mailenv.free_port()
    px = proxy_factory(backends=backends_for(pool), health={"enabled": False},
                       trusted_proxies="10.0.0.0/8",
                       extra_listeners=[{"name": "lb", "bind": f"127.0.0.1:{port}",
                                         "protocol": "imap", "tls": "implicit",
                                         "proxy_protocol": True}])
    s = socket.create_connection((mailenv.LOCAL, port), timeout=5)
    s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n")
    assert closed_by_peer(s)
    s.close()
    # The log is written by its own thread (issue 16): the line may follow the close.
    px.wait_log("reason=proxy_header_from_untrusted", timeout=5)
    # A trusted sender that sends no header at all is refused too.
    port2 = mailenv.free_port()
    px3 = proxy_factory(backends=backends_for(pool), health={"enabled": False},
                        trusted_proxies="127.0.0.1",
                        extra_listeners=[{"name": "lb3", "bind": f"127.0.0.1:{port2}",
                                          "protocol": "imap", "tls": "none",
                                          "proxy_protocol": True}])
    s = socket.create_connection((mailenv.LOCAL, port2), timeout=5)
    s.sendall(b"a LOGIN user07 pw-07\r\n")
    assert closed_by_peer(s)
    s.close()
    px3.wait_log("reason=bad_proxy_header", timeout=5)


def test_proxy_v2_to_backend_and_xclient(proxy_factory, pool, certs):
    """Backends reached through Dovecot's haproxy listeners get a PROXY v2 header: Dovecot logs
    the client's address. POP3 forwards it with XCLIENT on the ordinary port as well."""
    port = mailenv.free_port()
    bes = []
    for dv in pool:
        for proto in ("imap", "pop3"):
            bes.append({"name": f"{dv.label}-{proto}-hp", "protocol": proto, "server": dv.label,
                        "host": mailenv.LOCAL, "port": dv.haproxy_ports[proto], "tls": "none",
                        "proxy_protocol": True})
    px = proxy_factory(backends=bes, health={"enabled": False}, trusted_proxies="127.0.0.1",
                       extra_listeners=[{"name": "lb", "bind": f"127.0.0.1:{port}",
                                         "protocol": "imap", "tls": "implicit",
                                         "proxy_protocol": True}])
    conn = tls_after_header(port, b"PROXY TCP4 198.51.100.77 127.0.0.1 41000 993\r\n", certs)
    assert imap_login_raw(conn, "user11").startswith(b"a OK")
    conn.close()
    assert wait_pool_log(pool, re.escape("rip=198.51.100.77"))
    # POP3 via the haproxy listener
    p = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                        timeout=15)
    p.user("user12")
    p.pass_(USERS["user12"])
    p.quit()
    assert "backend_error" not in px.log()


def pop3_session_after_header(port, header: bytes) -> None:
    """Plaintext POP3 after a PROXY header: greeting, USER/PASS as user13, QUIT, each +OK."""
    s = socket.create_connection((mailenv.LOCAL, port), timeout=15)
    s.sendall(header)
    c = clients.LineClient(None, sock=s, timeout=15)
    c.greeting(b"+OK")
    c.send(b"USER user13\r\nPASS pw-13\r\nQUIT\r\n")
    for _ in range(3):
        assert c.line().startswith(b"+OK")
    c.close()


def test_pop3_xclient_forwards_client(proxy_factory, pool, certs):
    port = mailenv.free_port()
    px = proxy_factory(backends=backends_for(pool), health={"enabled": False},
                       trusted_proxies="127.0.0.1",
                       extra_listeners=[{"name": "lbpop", "bind": f"127.0.0.1:{port}",
                                         "protocol": "pop3", "tls": "none",
                                         "proxy_protocol": True}],
                       allow_plaintext_auth=True)
    pop3_session_after_header(port, b"PROXY TCP4 203.0.113.9 127.0.0.1 42000 110\r\n")
    assert wait_pool_log(pool, re.escape("rip=203.0.113.9"))
    assert "client=203.0.113.9:42000" in px.log()


def test_ipv6_client_forwarded_by_every_method(proxy_factory, pool, certs):
    """An IPv6 client behind a trusted balancer (PROXY v2 TCP6 / v1 TCP6 headers) reaches
    Dovecot's log by each forwarding method: IMAP ID, POP3 XCLIENT, and a PROXY v2 header toward
    the backend (TCP6, the IPv4 destination written v4-mapped). Portcullis logs it bracketed."""
    port, pport = mailenv.free_port(), mailenv.free_port()
    bes = backends_for(pool)
    for dv in pool:  # IMAP through Dovecot's haproxy listener as well, as its own server name
        bes.append({"name": f"{dv.label}-imap-hp", "protocol": "imap", "server": dv.label + "hp",
                    "host": mailenv.LOCAL, "port": dv.haproxy_ports["imap"], "tls": "none",
                    "proxy_protocol": True})
    lbs = [{"name": "lb", "bind": f"127.0.0.1:{port}", "protocol": "imap", "tls": "implicit",
            "proxy_protocol": True},
           {"name": "lbpop", "bind": f"127.0.0.1:{pport}", "protocol": "pop3", "tls": "none",
            "proxy_protocol": True}]
    px = proxy_factory(backends=bes, health={"enabled": False}, trusted_proxies="127.0.0.1",
                       extra_listeners=lbs, allow_plaintext_auth=True)

    def v2_tcp6(src: str, sport: int) -> bytes:
        return (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24"
                + socket.inet_pton(socket.AF_INET6, src)
                + socket.inet_pton(socket.AF_INET6, "2001:db8:ffff::1")
                + sport.to_bytes(2, "big") + (993).to_bytes(2, "big"))

    # IMAP: several users, so that both the ID path (plain Dovecot ports) and the PROXY v2 path
    # (haproxy ports) are taken by some of them; each user's source address is its own.
    srcs = {}
    for i, user in enumerate(sorted(USERS)[:12]):
        src = f"2001:db8:{i + 1:x}::55"
        srcs[user] = src
        conn = tls_after_header(port, v2_tcp6(src, 40000 + i), certs)
        assert imap_login_raw(conn, user).startswith(b"a OK")
        conn.close()
    log = px.log()
    for i, (user, src) in enumerate(srcs.items()):
        assert f'client=[{src}]:{40000 + i} user="{user}"' in log, log[-3000:]
        assert wait_pool_log(pool, rf"Login: user=<{user}>.* rip={re.escape(src)},"), user
    # Both paths were used (the backend names are in the login lines).
    assert re.search(r"event=login backend=dv\d-imap-hp ", log), log[-3000:]
    assert re.search(r"event=login backend=dv\d ", log), log[-3000:]

    # POP3: PROXY v1 TCP6 in, XCLIENT ADDR=<IPv6> to Dovecot.
    pop3_session_after_header(pport, b"PROXY TCP6 2001:db8:99::13 2001:db8:ffff::1 42000 110\r\n")
    assert wait_pool_log(pool, r"Login: user=<user13>.* rip=2001:db8:99::13,")
    assert "client=[2001:db8:99::13]:42000" in px.log()


# ------------------------------------------------------------------- Redis: routes and affinity


def redis_overrides(redis, pfx, **policy):
    p = {"heartbeat": "300ms", "session_ttl": "1200ms", "affinity_ttl": "3s"}
    p.update(policy)
    return {"redis": {"host": mailenv.LOCAL, "port": redis.port, "prefix": pfx,
                      "connect_timeout": "300ms", "command_timeout": "300ms"},
            "policy": p, "health": {"enabled": False}}


def ctl(px, *args):
    return clients.ctl(px, *args).stdout


def redis_ready(px):
    # The workers connect to Redis right after start: wait for every connection of every one.
    px.wait_redis_ready()


def sess_keys(redis, pfx, user):
    return redis.command("KEYS", f"{pfx}sess:{{{user}}}:*")


def affinity(redis, pfx, user):
    return redis.command("GET", f"{pfx}aff:{{{user}}}")


def test_route_override_and_affinity(proxy_factory, pool, certs, redis):
    import uuid
    pfx = "r" + uuid.uuid4().hex[:6] + ":"
    a = proxy_factory(backends=backends_for(pool), **redis_overrides(redis, pfx))
    redis_ready(a)
    user = "user05"
    home = which_backend(a, certs, user)
    other = next(b for b in ("dv0", "dv1", "dv2") if b != home)
    # 1. An override moves the user, on every instance, from the next login.
    ctl(a, "route", user, other)
    assert which_backend(a, certs, user) == other
    ctl(a, "route", user, "-")
    # the recent affinity to `other` (affinity_ttl) expires: back to the hash
    clients.wait_for(lambda: affinity(redis, pfx, user) is None, 10, what="affinity expiry")
    assert which_backend(a, certs, user) == home
    # 2. Active affinity: while a session of the user lives on `home`, a second instance whose
    #    pool lost `home`'s weight balance (here: a new, heavier backend list order and weights
    #    that send the user elsewhere by hash) still sends the user to `home`.
    live = login(a, certs, user, USERS[user])
    weights = [1000 if dv.label == other else 1 for dv in pool]
    b = proxy_factory(backends=backends_for(pool, weights=weights), **redis_overrides(redis, pfx))
    redis_ready(b)
    clients.wait_for(lambda: sess_keys(redis, pfx, user), what="the live session's registry")
    assert which_backend(b, certs, user) == home
    assert "event=route kind=live_session" in b.log()
    live.logout()
    # 3. Recent affinity: after the last session ends, still `home` for affinity_ttl ...
    clients.wait_for(lambda: not sess_keys(redis, pfx, user), what="every session unregistered")
    assert affinity(redis, pfx, user) == home
    assert which_backend(b, certs, user) == home
    # ... then the (changed) hash decides.
    clients.wait_for(lambda: affinity(redis, pfx, user) is None, 10, what="affinity expiry")
    assert which_backend(b, certs, user) == other


def test_ctl_drain(proxy_factory, pool, certs, redis):
    """`portcullis-ctl drain` takes a backend out for new sessions on every instance within the
    documented time (policy.drain_poll), also for a user whose recent affinity (aff:{user})
    points there."""
    import uuid
    pfx = "d" + uuid.uuid4().hex[:6] + ":"
    over = redis_overrides(redis, pfx, affinity_ttl="60s", drain_poll="500ms")
    px = proxy_factory(backends=backends_for(pool), **over)
    px2 = proxy_factory(backends=backends_for(pool), **over)
    redis_ready(px)
    redis_ready(px2)
    user = next(u for u in USERS if which_backend(px, certs, u) == "dv2")
    live = login(px, certs, user, USERS[user])
    marks = (px.log_mark(), px2.log_mark())
    t0 = time.monotonic()
    ctl(px, "drain", "dv2")
    ctl(px, "drain", "dv2-pop3")
    for p, mark in zip((px, px2), marks):
        p.wait_log("event=backend_drained backend=dv2 ", timeout=5, after=mark)
    assert time.monotonic() - t0 < 1.5  # within drain_poll (+ ctl and log latency), everywhere
    assert "dv2" in ctl(px, "drain")
    assert backend_of(live) == "dv2"  # the live session goes on
    live.logout()
    clients.wait_for(lambda: not sess_keys(redis, pfx, user), what="the session unregistered")
    assert affinity(redis, pfx, user) == "dv2"  # a recent affinity to the drained backend ...
    for p in (px, px2):  # ... is not followed, on either instance
        moved = which_backend(p, certs, user)
        assert moved in ("dv0", "dv1")
    assert "event=route_ignored kind=recent_session backend=dv2 reason=draining" in px.log()
    ctl(px, "undrain", "dv2")
    ctl(px, "undrain", "dv2-pop3")
    px.wait_log("event=backend_undrained backend=dv2 ")
    # the user now lives on `moved` (affinity follows the last session); without it, back home
    assert which_backend(px, certs, user) == moved
    # the logout's close script writes the affinity after the client saw BYE, and a short
    # session's registration may go to Redis with it (both up to 5 ms later, docs/redis.md), so
    # "no session key" alone proves nothing: the check's pending reservation (pend:{U}...) is
    # removed by the registration and the session key by the close, which follows it on the same
    # connection; when neither is left, the affinity is written: remove it
    clients.wait_for(lambda: not redis.command("KEYS", f"{pfx}pend:{{{user}}}*") and
                     not sess_keys(redis, pfx, user), what="the session's registration and close")
    redis.command("DEL", f"{pfx}aff:{{{user}}}")
    assert which_backend(px, certs, user) == "dv2"
