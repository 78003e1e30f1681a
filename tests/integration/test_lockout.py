"""Lock-outs that protect the victim (issue 16 item 4; docs/redis.md "Lock-out model").

Real redis-server, real Dovecot, the real proxy with 2 workers. Clients pick their source
address on the loopback network (127.0.0.1 is the victim's known address, 127.0.0.2 the
attacker's), so the per-(user, network) records are exercised exactly as in production.

What reaches the backend is counted in Dovecot's own log (auth_verbose: one "Password
mismatch" line per wrong password it checked), not in the proxy's: a proxy that let too many
attempts through cannot hide them.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

import clients
import mailenv

LOCAL = mailenv.LOCAL
USERS = mailenv.TEST_USERS
WRONG = "wrong-Secret-7361"
VICTIM_NET = "127.0.0.1"
ATTACKER_NET = "127.0.0.2"
wait_for = clients.wait_for


def prefix() -> str:
    return "lk" + uuid.uuid4().hex[:8] + ":"


def config(redis_port: int, pfx: str, **policy) -> dict:
    r = {"host": LOCAL, "port": redis_port, "prefix": pfx, "connect_timeout": "300ms",
         "command_timeout": "300ms", "reconnect_min": "50ms", "reconnect_max": "300ms"}
    p = {"tarpit": "20ms", "user_login_burst": 0, "addr_login_burst": 0,
         "user_addr_fail_limit": 5, "user_fail_limit": 100, "addr_fail_limit": 0,
         "lockout": "1h", "lockout_max": "1h", "user_max_sessions": 0}
    p.update(policy)
    return {"workers": 2, "redis": r, "policy": p}


def login(px, certs, src: str, user: str, password: str) -> bytes:
    """One IMAP LOGIN over TLS from source address `src`; returns the tagged answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((src, 0))
    s.connect((LOCAL, px.port("imaps")))
    c = clients.LineClient(None, tls=mailenv.ssl_context(certs.ca), sock=s)
    try:
        c.greeting()
        out = c.cmd(b"a", b"LOGIN " + mailenv.imap_quote(user) + b" " +
                    mailenv.imap_quote(password))[-1]
        if out.startswith(b"a OK"):
            c.cmd(b"z", b"LOGOUT")
        return out
    finally:
        c.close()


def mismatches(dovecot, user: str, since: int) -> int:
    """Wrong passwords Dovecot itself checked for `user` after log offset `since`."""
    text = dovecot.log_path.read_bytes()[since:].decode(errors="replace")
    return sum(1 for line in text.splitlines()
               if "Password mismatch" in line and f"({user}," in line)


def log_size(dovecot) -> int:
    return dovecot.log_path.stat().st_size


def hgetall(redis, key: str) -> dict:
    v = redis.command("HGETALL", key) or []
    return dict(zip(v[::2], v[1::2]))


def redis_ms(redis) -> int:
    sec, usec = redis.command("TIME")
    return int(sec) * 1000 + int(usec) // 1000


def redis_ups(px) -> int:
    return px.log().count("event=redis_up conn=command")


def attack(px, certs, user: str, n: int, threads: int) -> list[bytes]:
    """`n` wrong-password logins from the attacker's address over `threads` threads."""
    answers: list[bytes] = []
    lock = threading.Lock()
    todo = iter(range(n))

    def run():
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            a = login(px, certs, ATTACKER_NET, user, WRONG)
            with lock:
                answers.append(a)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return answers


# ----------------------------------------------------------------------------------------------


def test_bruteforce_victim_logs_in_throughout(proxy_factory, certs, redis, dovecot):
    pfx = prefix()
    px = proxy_factory(**config(redis.port, pfx))
    wait_for(lambda: redis_ups(px) >= 2, what="both workers connected to redis")
    # the victim logs in once from home: 127.0.0.1/32 becomes a known network
    assert login(px, certs, VICTIM_NET, "alice", USERS["alice"]).startswith(b"a OK")
    wait_for(lambda: redis.command("ZSCORE", pfx + "known:{alice}", "ip:127.0.0.1/32"),
             what="known network")
    mark = log_size(dovecot)
    victim: list[bytes] = []
    done = threading.Event()

    def victim_loop():
        while not done.is_set():
            victim.append(login(px, certs, VICTIM_NET, "alice", USERS["alice"]))
            time.sleep(0.05)

    vt = threading.Thread(target=victim_loop)
    vt.start()
    try:
        answers = attack(px, certs, "alice", 200, 8)
    finally:
        done.set()
        vt.join(30)
    assert len(answers) == 200
    # every wrong attempt was refused; only the first 5 by the backend
    assert all(a.startswith(b"a NO") for a in answers), set(answers)
    assert sum(b"[AUTHENTICATIONFAILED]" in a for a in answers) <= 5
    assert sum(b"[UNAVAILABLE]" in a for a in answers) >= 195
    # the victim got in every time, throughout the attack
    assert len(victim) >= 5
    assert all(v.startswith(b"a OK") for v in victim), victim
    # the backend saw at most the configured number of wrong passwords
    wait_for(lambda: mismatches(dovecot, "alice", mark) >= 5, what="dovecot log")
    time.sleep(0.3)
    assert mismatches(dovecot, "alice", mark) == 5
    rec = hgetall(redis, pfx + "fail:{alice}:ip:127.0.0.2/32")
    assert int(rec["until"]) > redis_ms(redis) + 3_000_000 and rec["level"] == "1"
    assert hgetall(redis, pfx + "fail:{alice}").get("n") == "5"  # the ceiling: 5 of 100
    assert "reason=locked_out scope=user_network" in px.log()
    # the victim's home record is clean; a new address of the victim is not locked either
    assert hgetall(redis, pfx + "fail:{alice}:ip:127.0.0.1/32") == {}
    assert login(px, certs, "127.0.0.3", "alice", USERS["alice"]).startswith(b"a OK")
    # the attacker's address is locked for this user even with the right password
    assert b"[UNAVAILABLE]" in login(px, certs, ATTACKER_NET, "alice", USERS["alice"])


def test_twenty_concurrent_wrong_attempts(proxy_factory, certs, redis, dovecot):
    pfx = prefix()
    px = proxy_factory(**config(redis.port, pfx))
    wait_for(lambda: redis_ups(px) >= 2, what="both workers connected to redis")
    mark = log_size(dovecot)
    # 20 clients connected and greeted, then all send LOGIN at once
    conns = []
    for _ in range(20):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(15)
        s.bind((ATTACKER_NET, 0))
        s.connect((LOCAL, px.port("imaps")))
        c = clients.LineClient(None, tls=mailenv.ssl_context(certs.ca), sock=s)
        c.greeting()
        conns.append(c)
    go = threading.Barrier(20)
    answers: list[bytes] = []

    def one(c):
        go.wait()
        answers.append(c.cmd(b"a", b"LOGIN bob " + mailenv.imap_quote(WRONG))[-1])

    ts = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    for c in conns:
        c.close()
    assert len(answers) == 20 and all(a.startswith(b"a NO") for a in answers)
    assert sum(b"[AUTHENTICATIONFAILED]" in a for a in answers) == 5
    wait_for(lambda: mismatches(dovecot, "bob", mark) >= 5, what="dovecot log")
    time.sleep(0.3)
    assert mismatches(dovecot, "bob", mark) == 5
    # every reservation was turned into a failure or given back
    assert redis.command("ZCARD", pfx + "pend:{bob}:ip:127.0.0.2/32") == 0
    assert redis.command("ZCARD", pfx + "pend:{bob}") == 0


def test_redis_outage_process_wide_table_and_writeback(proxy_factory, certs, env_tmp, dovecot):
    rdir = env_tmp / f"redis-lockout-{uuid.uuid4().hex[:6]}"
    r = mailenv.Redis().start(rdir)
    port = r.port
    pfx = prefix()
    px = proxy_factory(**config(port, pfx))
    try:
        wait_for(lambda: redis_ups(px) >= 2, what="both workers connected to redis")
        assert login(px, certs, VICTIM_NET, "alice", USERS["alice"]).startswith(b"a OK")
        wait_for(lambda: r.command("ZSCORE", pfx + "known:{alice}", "ip:127.0.0.1/32"),
                 what="known network")
        # Redis goes away (killed by PID): fail open, on the process-wide table
        os.kill(r.pid, signal.SIGKILL)
        r.proc.wait(5)
        r.pid = None
        wait_for(lambda: px.log().count("event=redis_down") >= 2, what="both workers saw it")
        mark = log_size(dovecot)
        # 12 wrong attempts, one connection each: the kernel spreads them over both workers
        answers = [login(px, certs, ATTACKER_NET, "alice", WRONG) for _ in range(12)]
        assert sum(b"[AUTHENTICATIONFAILED]" in a for a in answers) == 5
        assert sum(b"[UNAVAILABLE]" in a for a in answers) == 7
        # locked: the right password from there is refused on every worker (was 4/4 in)
        for _ in range(4):
            assert b"[UNAVAILABLE]" in login(px, certs, ATTACKER_NET, "alice", USERS["alice"])
        # the victim's known address still works
        assert login(px, certs, VICTIM_NET, "alice", USERS["alice"]).startswith(b"a OK")
        time.sleep(0.3)
        assert mismatches(dovecot, "alice", mark) == 5
        log = px.log()
        assert "degraded=yes" in log
        # the outage table's lock-out is logged like Redis's, naming who (issue 18)
        assert re.search(r'event=lockout scope=user_network user="?alice"? '
                         r'network=127\.0\.0\.2/32 duration_ms=\d+ source=local', log), log[-3000:]
        # Redis is back (empty, no persistence): the outage's counts are written back
        r = mailenv.Redis().start(rdir, port=port)
        rec_key = pfx + "fail:{alice}:ip:127.0.0.2/32"
        wait_for(lambda: r.command("EXISTS", rec_key) == 1, timeout=10, what="write-back")
        wait_for(lambda: hgetall(r, pfx + "fail:{alice}").get("n") == "5", what="ceiling merged")
        rec = hgetall(r, rec_key)
        assert rec["level"] == "1" and int(rec["until"]) > redis_ms(r) + 3_000_000
        assert int(r.command("PTTL", rec_key)) > 3_000_000
        assert "event=policy_writeback" in px.log()
        # now Redis decides (not degraded) and keeps the lock-out: once both workers are back
        wait_for(lambda: redis_ups(px) >= 4, what="both workers reconnected")
        mark2 = px.log_mark()
        assert b"[UNAVAILABLE]" in login(px, certs, ATTACKER_NET, "alice", USERS["alice"])
        px.wait_log("reason=locked_out scope=user_network", after=mark2)
        assert "degraded=yes" not in px.log()[mark2:]
    finally:
        r.stop()


def assert_passed_on_not_counted(px, redis, pfx: str, code: str, n: int) -> str:
    """alice's `n` logins from 127.0.0.1, each refused by the backend with `code`, were passed on
    and never counted: no failure record (user, pair, address), the reservations released, each
    logged as not counted, no lock-out. Returns the proxy's log."""
    assert redis.command("EXISTS", pfx + "fail:{alice}", pfx + "fail:{alice}:ip:127.0.0.1/32",
                         pfx + "fail:{ip:127.0.0.1/32}") == 0
    wait_for(lambda: not redis.command("ZCARD", pfx + "pend:{alice}:ip:127.0.0.1/32"),
             what="reservations released")
    log = px.log()
    assert log.count(f"event=backend_login_refused code={code} counted=no") == n
    assert "event=lockout" not in log
    return log


def test_backend_privacy_required_is_passed_on_and_never_counted(proxy_factory, dovecot_factory,
                                                                 certs, redis):
    """Issue 17 item 5: a real Dovecot with `ssl = required`, reached in plaintext, refuses even
    the right password with NO [PRIVACYREQUIRED]. Six such logins must each get the backend's
    own code (not AUTHENTICATIONFAILED) and leave the lock-out records untouched: before the
    fix the fifth locked the user out."""
    # The proxy connects from 127.0.0.1 to 127.0.0.3: not the same address and not a trusted
    # network, so Dovecot does not count the connection as secured.
    dv = dovecot_factory(extra_conf="ssl = required\nlogin_trusted_networks =\n",
                         listen="127.0.0.1, 127.0.0.3")
    backends = dv.backends(tls="none")
    for b in backends:
        b["host"] = "127.0.0.3"
    pfx = prefix()
    px = proxy_factory(dovecot=dv, backends=backends, **config(redis.port, pfx))
    wait_for(lambda: redis_ups(px) >= 2, what="both workers connected to redis")
    for _ in range(6):
        out = login(px, certs, VICTIM_NET, "alice", USERS["alice"])
        assert out.startswith(b"a NO [PRIVACYREQUIRED] "), out
        assert b"Plaintext authentication disallowed" in out, out
    log = assert_passed_on_not_counted(px, redis, pfx, "PRIVACYREQUIRED", 6)
    assert "Plaintext authentication disallowed" in log  # the backend's text, for the operator


def test_pop3_backend_temp_failure_is_passed_on_and_never_counted(proxy_factory, dovecot_factory,
                                                                  certs, redis):
    """Issue 17 item 5 for POP3: a real Dovecot whose auth cannot read the user's password
    entry answers even the right password with -ERR [SYS/TEMP]. It reaches the client with
    that code and the backend's text, and six of them leave the lock-out records untouched
    (counted, the fifth would lock the user out)."""
    dv = dovecot_factory()
    entry = Path(dv.workdir) / "passwd.d" / "alice"
    assert entry.exists()
    pfx = prefix()
    px = proxy_factory(dovecot=dv, **config(redis.port, pfx))
    wait_for(lambda: redis_ups(px) >= 2, what="both workers connected to redis")
    mode = entry.stat().st_mode
    entry.chmod(0)  # Dovecot's auth process (not root) can no longer read it: a temporary failure
    try:
        for _ in range(6):
            p = poplib.POP3_SSL(LOCAL, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                                timeout=10)
            p.user("alice")
            with pytest.raises(poplib.error_proto) as e:
                p.pass_(USERS["alice"])
            assert e.value.args[0].startswith(b"-ERR [SYS/TEMP] Temporary authentication"), \
                e.value.args
            p.quit()
    finally:
        entry.chmod(mode)
    assert_passed_on_not_counted(px, redis, pfx, "SYS/TEMP", 6)
