"""Redis policy and session state (issue 5) against a real redis-server, real Dovecot and two
Portcullis instances sharing one Redis.

Every test uses its own key prefix in the session Redis (so tests never see each other's
counters), or its own redis-server when it kills or restarts it. Timeouts, windows, heartbeats
and TTLs come from the config and are short, so the file runs in well under two minutes.
What is asserted: protocol answers (response codes), Redis state (keys, hashes, set members,
TTLs), the admin tool's effect on a live session on the other instance, and the logs.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import socket
import ssl
import subprocess
import time
import uuid

import pytest

import clients
import mailenv

LOCAL = mailenv.LOCAL
USERS = mailenv.TEST_USERS
WRONG = "wrong-Secret-7361"  # a wrong password: must not reach Redis or the logs either


# ------------------------------------------------------------------------------------ helpers


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:8] + ":"


def overrides(redis_port: int, pfx: str, *, redis: dict | None = None, **policy) -> dict:
    r = {"host": LOCAL, "port": redis_port, "prefix": pfx, "connect_timeout": "300ms",
         "command_timeout": "300ms", "reconnect_min": "50ms", "reconnect_max": "300ms"}
    r.update(redis or {})
    p = {"tarpit": "100ms", "heartbeat": "300ms", "session_ttl": "1200ms",
         "user_login_burst": 100, "addr_login_burst": 1000, "user_fail_limit": 100,
         "addr_fail_limit": 1000, "user_max_sessions": 100}
    p.update(policy)
    return {"redis": r, "policy": p}


def ctx(certs) -> ssl.SSLContext:
    return mailenv.ssl_context(certs.ca)


def imap(px, certs, user="alice", password=None) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=ctx(certs), timeout=10)
    m._encoding = "utf-8"  # jürgen: imaplib sends the user as an atom, so quote it
    m.login(user if user.isascii() else f'"{user}"', USERS[user] if password is None else password)
    return m


def imap_refused(px, certs, user="alice", password=None) -> str:
    """Log in expecting a NO; returns its text (response code included)."""
    m = imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=ctx(certs), timeout=10)
    m._encoding = "utf-8"
    try:
        with pytest.raises(imaplib.IMAP4.error) as e:
            m.login(user if user.isascii() else f'"{user}"',
                    USERS[user] if password is None else password)
        return str(e.value)
    finally:
        try:
            m.logout()
        except Exception:
            pass


def pop3(px, certs, user="alice", password=None) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL(LOCAL, px.port("pop3s"), context=ctx(certs), timeout=10)
    p.user(user)
    p.pass_(USERS[user] if password is None else password)
    return p


def keys(redis, pattern: str) -> list[str]:
    out, cursor = [], "0"
    while True:
        cursor, batch = redis.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        out += batch
        if cursor == "0":
            return sorted(out)


def hgetall(redis, key: str) -> dict:
    v = redis.command("HGETALL", key) or []
    return dict(zip(v[::2], v[1::2]))


wait_for = clients.wait_for


def ctl(request, px, *args) -> subprocess.CompletedProcess:
    return clients.ctl(px, *args, check=False)


def redis_ms(redis) -> int:
    """Redis's clock in ms (the policy scripts' `now`)."""
    sec, usec = redis.command("TIME")
    return int(sec) * 1000 + int(usec) // 1000


def sigkill(px) -> None:
    os.kill(px.pid, signal.SIGKILL)
    px.proc.wait(5)
    px.pid = None  # gone on purpose: not a problem for the fixture's log check


def kill_redis(r) -> None:
    os.kill(r.pid, signal.SIGKILL)
    r.proc.wait(5)
    r.pid = None


def redis_ups(px) -> int:
    return px.log().count("event=redis_up conn=command")


# -------------------------------------------------------------------------------------- tests


def test_session_cap_and_registry_across_instances(proxy_factory, certs, redis):
    pfx = prefix()
    o = overrides(redis.port, pfx, user_max_sessions=2)
    a = proxy_factory(instance="A", **o)
    b = proxy_factory(instance="B", **o)
    wait_for(lambda: redis_ups(a) >= 1 and redis_ups(b) >= 1, what="redis connected")
    s1, s2 = imap(a, certs), imap(a, certs)
    # registration is sent after the login answer and not waited for (docs/redis.md)
    wait_for(lambda: len(keys(redis, pfx + "sess:{alice}:*")) == 2, what="registry")
    reg = keys(redis, pfx + "sess:{alice}:*")
    h = hgetall(redis, reg[0])
    assert h["user"] == "alice" and h["instance"] == "A" and h["protocol"] == "imap"
    assert h["backend"] == "dovecot1" and h["client"].startswith("127.0.0.1:")
    assert 0 < int(redis.command("PTTL", reg[0])) <= 1200
    assert redis.command("ZCARD", pfx + "conn:{alice}") == 2
    assert redis.command("ZCARD", pfx + "conn:{ip:127.0.0.1/32}") == 2

    t0 = time.monotonic()
    text = imap_refused(b, certs)
    assert "[LIMIT]" in text and time.monotonic() - t0 >= 0.1  # answered after the tarpit
    assert "reason=session_limit" in b.log()
    # another user is not affected
    imap(b, certs, "bob").logout()

    s1.logout()
    wait_for(lambda: len(keys(redis, pfx + "sess:{alice}:*")) == 1, what="unregistration")
    s3 = imap(b, certs)  # a slot is free again, on the other instance
    wait_for(lambda: len(keys(redis, pfx + "sess:{alice}:*")) == 2, what="registry")
    hs = [hgetall(redis, k) for k in keys(redis, pfx + "sess:{alice}:*")]
    assert sorted(x["instance"] for x in hs) == ["A", "B"]
    s2.logout()
    s3.logout()
    wait_for(lambda: not keys(redis, pfx + "sess:*"), what="registry empty after logout")
    assert redis.command("ZCARD", pfx + "conn:{alice}") == 0


def test_lockout_across_instances_and_reset(proxy_factory, certs, redis):
    """The (user, network) record: failures from one address lock that user out from that
    address, on every instance; a success there clears it. (No known networks here, so the
    right password is refused too while locked: test_lockout.py has the known-network rule.)"""
    pfx = prefix()
    o = overrides(redis.port, pfx, user_addr_fail_limit=3, known_addr_max=0, lockout="1500ms",
                  tarpit="200ms")
    a = proxy_factory(instance="A", **o)
    b = proxy_factory(instance="B", **o)
    wait_for(lambda: redis_ups(a) >= 1 and redis_ups(b) >= 1, what="redis connected")
    rec = pfx + "fail:{bob}:ip:127.0.0.1/32"
    # successes are not failures: webmail logging in per click never locks itself out
    for _ in range(4):
        imap(a, certs, "bob").logout()
    for _ in range(2):
        assert "[AUTHENTICATIONFAILED]" in imap_refused(a, certs, "bob", WRONG)
    wait_for(lambda: hgetall(redis, rec).get("n") == "2", what="2 failures")
    assert hgetall(redis, pfx + "fail:{bob}").get("n") == "2"  # the per-user ceiling counts too
    imap(b, certs, "bob").logout()  # a success resets the (user, network) counter
    wait_for(lambda: hgetall(redis, rec) == {}, what="reset")
    assert hgetall(redis, pfx + "fail:{bob}").get("n") == "2"  # not the ceiling's
    for _ in range(3):
        assert "[AUTHENTICATIONFAILED]" in imap_refused(a, certs, "bob", WRONG)
    f = wait_for(lambda: hgetall(redis, rec).get("until") and hgetall(redis, rec),
                 what="lock-out")
    assert f["level"] == "1" and int(f["until"]) > 0
    # locked out on the other instance, even with the right password, after the tarpit
    t0 = time.monotonic()
    assert "[UNAVAILABLE]" in imap_refused(b, certs, "bob")
    assert 0.2 <= time.monotonic() - t0 < 3
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        pop3(b, certs, "Bob", USERS["bob"])  # user names compare case-insensitively
    assert "reason=locked_out scope=user_network" in b.log()
    # issue 18: the logs say who. The lock-out names the user and the network ...
    a.wait_log('event=lockout scope=user_network user="bob" network=127.0.0.1/32 duration_ms=')
    # ... a failed login's reason is a token, the words are detail= ...
    assert ('event=login_failed reason=credentials_refused detail="backend refused the '
            'credentials"') in a.log()
    # ... and the close line of a session whose login failed (a) or was refused (b) names the
    # user who tried
    for px, ev in ((a, "login_failed"), (b, "login_refused")):
        log = px.log()
        sids = set(re.findall(rf"sess=(S-[0-9a-f]+-\d+) [^\n]*event={ev} ", log))
        assert sids, ev
        for sid in sids:
            close = re.search(rf"sess={sid} [^\n]*event=close [^\n]*", log)
            assert close and re.search(r'user="[bB]ob"', close.group(0)), \
                (ev, close and close.group(0))
    # instance: is named where docs/configuration.md says
    assert re.search(r"event=started [^\n]*instance=\"A\"", a.log())
    until = int(hgetall(redis, rec)["until"])
    wait_for(lambda: redis_ms(redis) > until, what="the lock-out's end")
    # the lock-out expired; three more failures: level 2, the lock doubles
    for _ in range(3):
        assert "[AUTHENTICATIONFAILED]" in imap_refused(a, certs, "bob", WRONG)
    wait_for(lambda: hgetall(redis, rec).get("level") == "2", what="level 2")
    f = hgetall(redis, rec)
    sec, usec = redis.command("TIME")
    assert 2500 < int(f["until"]) - (int(sec) * 1000 + int(usec) // 1000) <= 3000


def test_token_bucket_refills(proxy_factory, certs, redis):
    pfx = prefix()
    # The interval must exceed the time three logins take, under ASan on a busy machine too
    # (700 ms did not: a token came back before the third login).
    # no known networks: a known one has its own bucket (test_lockout.py)
    a = proxy_factory(**overrides(redis.port, pfx, user_login_burst=2,
                                  user_login_interval="3s", known_addr_max=0))
    # Redis connects asynchronously: logins before that use the local table (fail-open), which
    # would leave the Redis bucket full.
    wait_for(lambda: redis_ups(a) >= 1, what="redis connected")
    imap(a, certs, "carol").logout()
    imap(a, certs, "carol").logout()
    assert "[UNAVAILABLE]" in imap_refused(a, certs, "carol")
    assert "reason=login_rate scope=user" in a.log()
    assert float(hgetall(redis, pfx + "rl:{carol}:login")["tok"]) < 1

    def refilled():  # the bucket script's arithmetic, on Redis's clock
        b = hgetall(redis, pfx + "rl:{carol}:login")
        return float(b["tok"]) + (redis_ms(redis) - int(b["ts"])) / 3000 >= 1
    wait_for(refilled, 10, what="a token back in the bucket")
    imap(a, certs, "carol").logout()  # one token came back
    assert "[UNAVAILABLE]" in imap_refused(a, certs, "carol")


def test_kick_idle_session_on_other_instance(proxy_factory, certs, redis, request):
    pfx = prefix()
    o = overrides(redis.port, pfx)
    a = proxy_factory(instance="A", **o)
    b = proxy_factory(instance="B", **o)
    m = imap(a, certs, "alice")
    m.select("INBOX")
    sock = m.socket()
    sock.sendall(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+")
    p = pop3(a, certs, "bob")
    wait_for(lambda: len(keys(redis, pfx + "sess:*")) == 2, what="registry")

    # list through the admin tool (configured with B's file: any instance's config will do)
    out = ctl(request, b, "sessions")
    assert out.returncode == 0, out.stderr
    assert "alice" in out.stdout and "bob" in out.stdout and " A " in out.stdout
    r = ctl(request, b, "kick", "alice")
    assert r.returncode == 0, r.stderr
    data = b""
    sock.settimeout(5)
    while True:
        d = sock.recv(4096)
        if not d:
            break
        data += d
    assert b"* BYE" in data
    assert "event=kicked" in a.log()
    wait_for(lambda: len(keys(redis, pfx + "sess:{alice}:*")) == 0, what="alice unregistered")

    # by session id, POP3 gets an -ERR
    sid = hgetall(redis, keys(redis, pfx + "sess:{bob}:*")[0])["id"]
    assert ctl(request, b, "kick", sid).returncode == 0
    p.sock.settimeout(5)
    assert p.file.readline().startswith(b"-ERR")
    wait_for(lambda: not keys(redis, pfx + "sess:*"), what="bob unregistered")


def test_unlock_via_ctl(proxy_factory, certs, redis, request):
    pfx = prefix()
    a = proxy_factory(**overrides(redis.port, pfx, user_fail_limit=2, lockout="1h"))
    for _ in range(2):
        imap_refused(a, certs, "alice", WRONG)
    assert "[UNAVAILABLE]" in imap_refused(a, certs, "alice")
    r = ctl(request, a, "unlock", "alice")
    assert r.returncode == 0 and "key(s) removed" in r.stdout, r.stdout + r.stderr
    assert redis.command("EXISTS", pfx + "fail:{alice}") == 0
    imap(a, certs, "alice").logout()


def test_registry_expires_after_sigkill(proxy_factory, certs, redis):
    pfx = prefix()
    o = overrides(redis.port, pfx, user_max_sessions=1)
    a = proxy_factory(instance="A", **o)
    b = proxy_factory(instance="B", **o)
    m = imap(a, certs, "alice")
    k = wait_for(lambda: keys(redis, pfx + "sess:{alice}:*"), what="registered")
    # heartbeats keep it alive past the TTL: wait for one (it rewrites `heartbeat`)
    hb0 = redis.command("HGET", k[0], "heartbeat")
    wait_for(lambda: redis.command("HGET", k[0], "heartbeat") != hb0, what="a heartbeat")
    assert redis.command("EXISTS", k[0]) == 1
    assert "[LIMIT]" in imap_refused(b, certs)
    sigkill(a)
    m.shutdown() if hasattr(m, "shutdown") else None
    wait_for(lambda: not keys(redis, pfx + "sess:*"), timeout=3, what="entry expiry")
    imap(b, certs).logout()  # the dead instance's member no longer counts


def test_redis_killed_fail_open_then_restarted(proxy_factory, certs, env_tmp):
    rdir = env_tmp / f"redis-open-{uuid.uuid4().hex[:6]}"
    r = mailenv.Redis().start(rdir)
    port = r.port

    def acl(rr):
        rr.command("ACL", "SETUSER", "pcuser", "on", ">redis-Secret-91", "~*", "&*", "+@all")

    acl(r)
    pfx = prefix()
    px = proxy_factory(workers=1, **overrides(
        port, pfx, redis={"username": "pcuser", "password": "redis-Secret-91"},
        user_login_burst=3, user_login_interval="60s", known_addr_max=0))
    try:
        wait_for(lambda: redis_ups(px) >= 1, what="redis connected")
        live = imap(px, certs, "alice")  # token 1 (Redis and local)
        wait_for(lambda: keys(r, pfx + "sess:{alice}:*"), what="registered")
        kill_redis(r)
        # open mode: logins go on with the local limits, promptly
        t0 = time.monotonic()
        imap(px, certs, "alice").logout()  # token 2 (local)
        imap(px, certs, "alice").logout()  # token 3 (local)
        assert time.monotonic() - t0 < 3
        assert "[UNAVAILABLE]" in imap_refused(px, certs, "alice")  # local bucket empty
        assert "degraded=yes" in px.log()
        assert "event=redis_down" in px.log()
        live.noop()  # the existing session is untouched
        # restarted (empty: no persistence): reconnect, AUTH again, state used again
        ups = redis_ups(px)
        r = mailenv.Redis().start(rdir, port=port)
        acl(r)
        wait_for(lambda: redis_ups(px) > ups, timeout=5, what="reconnect")
        # the live session is back in the registry (resync on reconnect)
        wait_for(lambda: keys(r, pfx + "sess:{alice}:*"), what="registry resync")
        imap(px, certs, "bob").logout()
        assert keys(r, pfx + "rl:{bob}:login")
        live.logout()
        assert "redis-Secret-91" not in px.log()
    finally:
        r.stop()


def test_redis_killed_fail_closed(proxy_factory, certs, env_tmp):
    rdir = env_tmp / f"redis-closed-{uuid.uuid4().hex[:6]}"
    r = mailenv.Redis().start(rdir)
    port = r.port
    pfx = prefix()
    px = proxy_factory(**overrides(port, pfx, redis={"fail_mode": "closed"}))
    try:
        wait_for(lambda: redis_ups(px) >= 2, what="redis connected")
        live = pop3(px, certs, "alice")
        imap(px, certs, "bob").logout()
        kill_redis(r)
        t0 = time.monotonic()
        assert "[UNAVAILABLE]" in imap_refused(px, certs, "bob")
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
            pop3(px, certs, "bob")
        assert time.monotonic() - t0 < 3
        assert "reason=policy_unavailable" in px.log()
        assert live.stat()[0] >= 1  # existing sessions are never dropped
        ups = redis_ups(px)
        r = mailenv.Redis().start(rdir, port=port)
        wait_for(lambda: redis_ups(px) >= ups + 2, timeout=5, what="reconnect")
        imap(px, certs, "bob").logout()
        live.quit()
    finally:
        r.stop()


def test_download_volume_limit(proxy_factory, certs, redis):
    pfx = prefix()
    o = overrides(redis.port, pfx, download_limit="1k", download_window="1h")
    a = proxy_factory(instance="A", **o)
    b = proxy_factory(instance="B", **o)
    # A session registered or closed while its worker has no Redis link is not counted there:
    # both instances must be connected before their sessions start.
    a.wait_redis_ready()
    b.wait_redis_ready()
    p = pop3(a, certs, "jürgen")
    assert len(p.retr(1)[1]) > 5
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP.*Download limit"):
        p.retr(2)
    p.quit()
    # The total is final once A's session is unregistered (the close script drops it from
    # conn:{U} and adds its last bytes in one step); a heartbeat may have written part before.
    wait_for(lambda: redis.command("ZCARD", pfx + "conn:{jürgen}") == 0
             and not keys(redis, pfx + "sess:{jürgen}:*"), what="A's session unregistered")
    used = int(redis.command("GET", pfx + "rl:{jürgen}:bytes") or 0)
    assert used > 1024
    assert 0 < int(redis.command("PTTL", pfx + "rl:{jürgen}:bytes")) <= 3600 * 1000
    # the other instance knows: FETCH refused with NO [LIMIT] from the first command. B learns
    # the total from the answer to its session's registration (checks never wait for Redis),
    # so the FETCH goes out once that registration has run.
    m = imap(b, certs, "jürgen")
    wait_for(lambda: keys(redis, pfx + "sess:{jürgen}:*"), what="B's session registered")
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "NO" and b"[LIMIT]" in data[0]
    typ, _ = m.noop()
    assert typ == "OK"
    m.logout()


def test_allow_deny_and_exempt_networks(proxy_factory, certs, redis):
    pfx = prefix()
    d = proxy_factory(**overrides(redis.port, pfx, deny="10.0.0.0/8 127.0.0.1"))
    t0 = time.monotonic()
    assert "[AUTHENTICATIONFAILED]" in imap_refused(d, certs)
    assert time.monotonic() - t0 < 1 and "reason=address_denied" in d.log()
    al = proxy_factory(**overrides(redis.port, pfx, allow="192.0.2.0/24, 2001:db8::/32"))
    assert "[AUTHENTICATIONFAILED]" in imap_refused(al, certs)
    # exempt: no per-address keys at all, per-user limits still apply
    e = proxy_factory(**overrides(redis.port, pfx, exempt="127.0.0.0/8", addr_fail_limit=1,
                                  user_fail_limit=2, lockout="1h"))
    imap_refused(e, certs, "carol", WRONG)
    imap(e, certs, "bob").logout()  # the address is not locked after 1 failure
    assert not keys(redis, pfx + "*ip:*")
    imap_refused(e, certs, "carol", WRONG)
    assert "[UNAVAILABLE]" in imap_refused(e, certs, "carol")


class Monitor:
    """MONITOR on the session Redis: the commands clients send (not those scripts run)."""

    def __init__(self, redis):
        self.sock = socket.create_connection((LOCAL, redis.port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.buf = b""
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        assert self.buf.startswith(b"+OK")
        self.buf = self.buf[self.buf.index(b"\r\n") + 2:]

    def take(self, quiet: float = 0.5) -> list[bytes]:
        """The commands seen until none came for `quiet` s (no other state tells that every
        command of a step has been sent: a quiet period is what is asserted here)."""
        self.sock.settimeout(quiet)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    break
                self.buf += d
        except (socket.timeout, TimeoutError):
            pass
        lines, _, self.buf = self.buf.rpartition(b"\r\n")
        # not the worker's periodic drain poll (SMEMBERS P drained, every 5 s): not per login
        return [l for l in lines.split(b"\r\n") if l and b" lua]" not in l
                and not re.search(rb'"SMEMBERS" "[^"]*drained"', l)]

    def close(self):
        self.sock.close()


def command_names(lines: list[bytes]) -> list[str]:
    return sorted(re.search(rb'\] "(\w+)"', l).group(1).decode().lower() for l in lines)


def test_round_trips_per_login(proxy_factory, certs, redis, capsys):
    pfx = prefix()
    px = proxy_factory(workers=1, **overrides(redis.port, pfx, heartbeat="60s",
                                              session_ttl="120s"))
    imap(px, certs, "alice").logout()  # connection warm, scripts loaded
    # its unregistration is asynchronous: the last of it is the recent-affinity SET
    wait_for(lambda: not keys(redis, pfx + "sess:*") and
             redis.command("EXISTS", pfx + "aff:{alice}"), what="unregistration")
    mon = Monitor(redis)
    try:
        m = imap(px, certs, "alice")
        login = mon.take()
        m.logout()
        logout = mon.take()
    finally:
        mon.close()
    with capsys.disabled():
        print(f"\n[redis] per login: {command_names(login)}; per logout: "
              f"{command_names(logout)}")
    # issue 19 item 1: the login script (both scopes' limits and lock-outs, the reservation and
    # the route) before the backend login, then the session script (registration + the login's
    # result: reservations released, network known) after it, not waited for; one script at
    # logout (both session sets, the hash, the byte count, the recent affinity)
    assert command_names(login) == ["evalsha"] * 2
    assert command_names(logout) == ["evalsha"]
    for secret in USERS.values():
        assert secret.encode() not in b"".join(login + logout)


def commandstats(redis) -> dict[str, int]:
    text = redis.command("INFO", "commandstats")
    text = text.decode() if isinstance(text, bytes) else text
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", text)}


def reads_processed(redis) -> int:
    """Batches of commands redis-server has read, all clients (INFO stats)."""
    text = redis.command("INFO", "stats")
    text = text.decode() if isinstance(text, bytes) else text
    return int(re.search(r"total_reads_processed:(\d+)", text).group(1))


def test_redis_commands_per_login_and_logout(proxy_factory, certs, redis, capsys):
    """Issue 19 item 1, counted by Redis itself (INFO commandstats) over 10 logins and
    logouts, IMAP and POP3, from a non-exempt address: two EVALSHA per login (one waited for),
    one per logout, nothing else, at most 30 calls inside the scripts per login + logout, and
    fewer batches read by redis-server than commands."""
    pfx = prefix()
    px = proxy_factory(workers=1, **overrides(redis.port, pfx, heartbeat="60s",
                                              session_ttl="120s"))
    imap(px, certs, "alice").logout()  # connection warm, scripts loaded
    wait_for(lambda: not keys(redis, pfx + "sess:*"), what="unregistration")
    time.sleep(0.2)
    before = commandstats(redis)
    reads0 = reads_processed(redis)
    n = 10
    for i in range(n // 2):
        imap(px, certs, "alice").logout()
        pop3(px, certs, "bob").quit()
    wait_for(lambda: not keys(redis, pfx + "sess:*"), what="unregistration")
    time.sleep(0.2)
    reads = reads_processed(redis) - reads0
    after = commandstats(redis)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v}
    with capsys.disabled():
        print(f"\n[redis] commandstats over {n} logins + logouts: {delta}; reads {reads}")
    # top-level commands: EVALSHA only (INFO is this test's; SMEMBERS the 5 s drain poll)
    assert delta.pop("evalsha") == 3 * n
    scripted = {"zadd", "zrem", "zcard", "zscore", "zremrangebyscore", "zrangebyscore",
                "zremrangebyrank", "hmget", "hset", "hget", "pexpire", "pttl", "del", "get", "mget",
                "set", "time", "incrby", "info", "smembers", "exists", "scan"}
    assert set(delta) <= scripted, delta
    assert "eval" not in delta
    # the calls the scripts make (issue 19: each costs redis-server a Lua->command bridge):
    # 48.5 per login + logout before the call-count work, 29.1 after (login 17-18, sess at
    # login 7: no TIME, no conn set or known network rewritten, close 4); the bound leaves room
    # for a bucket's TTL refresh (one take in ~16) and live sessions read by the route
    calls = sum(v for k, v in delta.items() if k not in ("info", "scan", "smembers"))
    assert calls <= 30 * n, delta
    assert delta["time"] == n  # the check's only: the registration reuses its time
    # batches redis-server read (each a wake-up, a read() and a reply write(): issue 19 measured
    # them costing it more than the scripts): the registration and the unregistration wait for
    # the next command that is waited for, or 5 ms, so they mostly ride together or with the
    # next login's check: 3 per login + logout before, ~1.5 measured; minus this test's own
    # reads (the SCANs of wait_for and the last INFO). Under ASan a session may outlast the
    # 5 ms (21-23 of 30 measured): there, at least one must still have ridden along
    proxy_reads = reads - delta.get("scan", 0) - 1
    limit = 3 * n - 1 if clients.sanitized(px.pid) else 2.5 * n
    assert proxy_reads <= limit, (reads, delta)


def test_no_password_in_redis_or_logs(proxy_factory, certs, redis):
    """Runs last in this file: scans everything the tests above left in Redis."""
    pfx = prefix()
    px = proxy_factory(**overrides(redis.port, pfx))
    for u in USERS:
        if u != "mbsync":
            imap(px, certs, u).logout()
    imap_refused(px, certs, "alice", WRONG)
    secrets = [p.encode() for p in USERS.values()] + [WRONG.encode(), b"redis-Secret-91"]
    seen = b""
    for k in keys(redis, "*"):
        kb = k.encode() if isinstance(k, str) else k
        t = redis.command("TYPE", k)
        if t == "hash":
            vals = redis.command("HGETALL", k)
        elif t == "zset":
            vals = redis.command("ZRANGE", k, 0, -1)
        elif t == "string":
            vals = [redis.command("GET", k)]
        else:
            vals = []
        seen += kb + b"\n" + b"\n".join(v.encode() if isinstance(v, str) else v
                                        for v in vals if v is not None)
    assert b"alice" in seen  # the scan did see the registry
    log = px.log().encode()
    for s in secrets:
        assert s not in seen
        assert s not in log
