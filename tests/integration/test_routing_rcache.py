"""Issue 17 item 2: routing answers of a cacheable lookup (LDAP) shared through Redis by
instances (proxy/route_chain.c, route_shared.c, route_rcache.c; docs/redis.md `P rt:{U}:<digest>`).

Two Portcullis instances (one worker each, so "another worker" and "another instance" are the
same experiment) share one real redis-server and one real slapd (slapd.py). Redis counts what
reaches it: a MONITOR connection sees every top-level command, so the routing cache's GET and
SET are told apart from the policy scripts' own (EVALSHA). Expected per login:
cold (no cache anywhere) GET + SET; warm in the other instance GET only (and no LDAP search:
slapd is paused); warm in the same worker nothing. `portcullis-ctl route show` says where the
answer is and for how long; `route flush-cache` deletes it.

Needs the LDAP source in the daemon (branch i17-ldapwire)."""

from __future__ import annotations

import imaplib
import re
import socket
import threading
import time
import uuid

import pytest

import clients
import mailenv
from slapd import BASE, BIND_DN, READER_PW, Slapd

LOCAL = mailenv.LOCAL
# slapd.py gives userNNNN the mailHost BACKENDS[NNNN % 3]; index 2 is the pool entry "backend-c".
USERS = {u: f"pw-{u}" for u in ("user0002", "user0005", "user0008")}


@pytest.fixture(scope="module")
def ldap(env_tmp, certs):
    s = Slapd(env_tmp / "slapd-rcache", certs, n_users=12).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dv_c(env_tmp, certs):
    dv = mailenv.Dovecot()
    dv.start(env_tmp / "dovecot-rcache", users=USERS, ssl=False)
    yield dv
    dv.stop()


class Monitor:
    """Every top-level command Redis runs, from a MONITOR connection (a thread reads it)."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection((LOCAL, port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.lines: list[str] = []
        self.stop = False
        self.buf = b""
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        self.wait(lambda: any(l == "+OK" for l in self.lines))

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.buf += chunk
            *done, self.buf = self.buf.split(b"\r\n")
            self.lines += [d.decode(errors="replace") for d in done]

    def wait(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, self.lines[-20:]
            time.sleep(0.02)

    def mark(self) -> int:
        """A marker command, so the lines up to it are known complete."""
        tag = uuid.uuid4().hex
        c = socket.create_connection((LOCAL, self.port), timeout=5)
        c.sendall(f"ECHO {tag}\r\n".encode())
        c.recv(100)
        c.close()
        self.wait(lambda: any(tag in l for l in self.lines))
        return len(self.lines)

    def routing(self, start: int, pfx: str) -> list[str]:
        """The routing cache's commands since line `start`: 'GET' / 'SET' of P rt:{...}."""
        out = []
        for l in self.lines[start:]:
            if "lua]" in l:
                continue  # inside a script: not the routing cache
            m = re.search(r'"(\w+)" "' + re.escape(pfx) + r'rt:\{', l)
            if m:
                out.append(m.group(1).upper())
        return out

    def close(self):
        self.stop = True
        self.sock.close()


def instance(proxy_factory, certs, dv, ldap, redis, pfx, tmp, **routing):
    pwfile = tmp / "ldap.pw"
    pwfile.write_text(READER_PW + "\n")
    lookup = {"name": "directory", "type": "ldap", "uri": ldap.uri, "bind_dn": BIND_DN,
              "bind_password_file": str(pwfile), "base": BASE, "filter": "(uid=%u)",
              "attribute": "mailHost", "connections": 1, "timeout": "2s"}
    r = {"lookups": [lookup], "cache_ttl": "5m", "negative_ttl": "30s"}
    r.update(routing)
    px = proxy_factory(
        workers=1, backends=dv.backends(tls="none", name="backend-c"),
        redis={"host": LOCAL, "port": redis.port, "prefix": pfx, "connect_timeout": "300ms",
               "command_timeout": "300ms"},
        policy={"heartbeat": "60s", "session_ttl": "120s"}, routing=r)
    px.wait_redis_ready()
    return px


def login(px, certs, user):
    m = imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=10)
    m.login(user, USERS[user])
    m.logout()


def test_shared_routing_cache_two_instances(proxy_factory, certs, dv_c, ldap, redis, tmp_path):
    pfx = "r" + uuid.uuid4().hex[:8] + ":"
    a = instance(proxy_factory, certs, dv_c, ldap, redis, pfx, tmp_path)
    b = instance(proxy_factory, certs, dv_c, ldap, redis, pfx, tmp_path)
    mon = Monitor(redis.port)
    try:
        # Cold: instance A's worker misses, Redis misses (GET), LDAP answers, SET with the TTL.
        n = mon.mark()
        login(a, certs, "user0002")
        mon.wait(lambda: mon.routing(n, pfx) == ["GET", "SET"])
        a.wait_log("source=directory rule=")
        assert re.search(r"event=route_lookup source=directory rule=\S+ backend=backend-c "
                         r"cached=no", a.log())
        keys = redis.command("KEYS", pfx + "rt:*")
        assert len(keys) == 1 and re.fullmatch(re.escape(pfx) + r"rt:\{user0002\}:[0-9a-f]{16}",
                                               keys[0]), keys
        ttl = int(redis.command("PTTL", keys[0]))
        assert 290_000 < ttl <= 300_000, ttl  # routing.cache_ttl
        assert a.metric("portcullis_route_shared_cache_total", {"result": "miss"}) == 1
        assert a.metric("portcullis_route_shared_cache_total", {"result": "stored"}) == 1
        val = redis.command("GET", keys[0])
        assert re.fullmatch(r"v1 F \d+ directory \S+ p backend-c", val), val
        assert READER_PW not in val

        # Warm in the same worker: no Redis command at all for routing.
        n = mon.mark()
        login(a, certs, "user0002")
        mon.mark()
        assert mon.routing(n, pfx) == []
        assert a.log().count("cached=yes") == 1

        # Warm in the other instance: one GET, a hit; LDAP is not asked (slapd paused: a search
        # would time out after 2 s and log route_lookup_failed).
        ldap.pause()
        try:
            n = mon.mark()
            login(b, certs, "user0002")
            mon.mark()
            assert mon.routing(n, pfx) == ["GET"]
            assert re.search(r"source=directory rule=\S+ backend=backend-c cached=shared", b.log())
            assert "route_lookup_failed" not in b.log()
            assert b.metric("portcullis_route_shared_cache_total", {"result": "hit"}) == 1
            assert b.metric("portcullis_route_shared_cache_total", {"result": "stored"}) == 0
            # ... and B's worker keeps it: nothing the second time.
            n = mon.mark()
            login(b, certs, "user0002")
            mon.mark()
            assert mon.routing(n, pfx) == []
        finally:
            ldap.resume()

        # route show: the entry, from where, and how long it has left.
        r = clients.ctl(a, "route", "show", "user0002")
        assert re.search(r"shared cache: found backend backend-c \(lookup directory, pool entry\), "
                         r"expires in \d+\.\ds \(key " + re.escape(keys[0]) + r"\)", r.stdout), \
            r.stdout
        r = clients.ctl(a, "route", "show", "user0005")
        assert "shared cache: - (key " in r.stdout, r.stdout

        # flush-cache USER, then everything.
        login(a, certs, "user0005")
        mon.wait(lambda: len(redis.command("KEYS", pfx + "rt:*")) == 2)
        r = clients.ctl(a, "route", "flush-cache", "user0002")
        assert "1 entry deleted" in r.stdout, r.stdout
        assert redis.command("KEYS", pfx + "rt:{user0002}*") == []
        r = clients.ctl(a, "route", "flush-cache")
        assert "1 entries deleted" in r.stdout, r.stdout
        assert redis.command("KEYS", pfx + "rt:*") == []
    finally:
        mon.close()


def test_shared_cache_off_and_config_digest(proxy_factory, certs, dv_c, ldap, redis, tmp_path):
    """routing.shared_cache: false sends nothing to Redis for routing; another lookup
    configuration (here: its timeout) stores under another key, never reading the first's."""
    pfx = "r" + uuid.uuid4().hex[:8] + ":"
    off = instance(proxy_factory, certs, dv_c, ldap, redis, pfx, tmp_path, shared_cache=False)
    mon = Monitor(redis.port)
    try:
        n = mon.mark()
        login(off, certs, "user0008")
        mon.mark()
        assert mon.routing(n, pfx) == []
        assert "shared cache: off" in clients.ctl(off, "route", "show", "user0008").stdout
        off.stop()
        a = instance(proxy_factory, certs, dv_c, ldap, redis, pfx, tmp_path)
        login(a, certs, "user0008")
        mon.wait(lambda: len(redis.command("KEYS", pfx + "rt:*")) == 1)
        other = dict(timeout="1500ms")
        c = instance(proxy_factory, certs, dv_c, ldap, redis, pfx, tmp_path,
                     lookups=[{**a.config["routing"]["lookups"][0], **other}])
        n = mon.mark()
        login(c, certs, "user0008")
        mon.wait(lambda: mon.routing(n, pfx) == ["GET", "SET"])  # a miss: its own key
        keys = redis.command("KEYS", pfx + "rt:*")
        assert len(keys) == 2 and len({k.rsplit(":", 1)[1] for k in keys}) == 2, keys
    finally:
        mon.close()
