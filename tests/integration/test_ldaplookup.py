"""Issue 17: the LDAP lookup source (proxy/ldaplookup.c) against a real OpenLDAP slapd.

build/ldl_driver runs the module on a libev loop and answers lookups given on stdin (see its
header); slapd.py starts a session-scoped slapd with 1 200 users over three backends. These
tests exercise the module alone; the routing chain's tests drive it through the proxy.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mailenv

from slapd import BIND_DN, READER_PW, SUFFIX, Slapd, make_client_cert, user_host


@pytest.fixture(scope="session")
def slapd(env_tmp, certs):
    s = Slapd(env_tmp / "slapd", certs).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def driver_bin(request) -> Path:
    # relative to the repository, as the proxy binary itself (mailenv.Proxy.start)
    p = (mailenv.REPO / request.config.getoption("--proxy-binary")).parent / "ldl_driver"
    if not p.exists():
        pytest.fail(f"{p} missing: make {p}")
    return p


class Driver:
    def __init__(self, binary: Path, env: dict[str, str]):
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, **env})
        self.n = 0
        self.buf = b""

    def line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not r:
                raise AssertionError(f"ldl_driver: no answer within {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"ldl_driver exited: {self.proc.stderr.read().decode()}")
            self.buf += chunk
        l, self.buf = self.buf.split(b"\n", 1)
        return l.decode()

    def send(self, verb: str, user: bytes | str) -> str:
        self.n += 1
        u = user.encode() if isinstance(user, str) else user
        self.proc.stdin.write(f"{verb} {self.n} {u.hex()}\n".encode())
        self.proc.stdin.flush()
        return str(self.n)

    def lookup(self, user: bytes | str, timeout: float = 10.0) -> list[str]:
        i = self.send("lookup", user)
        parts = self.line(timeout).split(" ", 3)
        assert parts[0] == i, parts
        return parts[1:]

    def wait_ready(self, n: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.stdin.write(b"ready\n")
            self.proc.stdin.flush()
            if int(self.line().split()[1]) >= n:
                return
            time.sleep(0.02)
        raise AssertionError("ldl_driver: no LDAP connection became ready")

    def close(self) -> str:
        """EOF → the driver frees its pool; returns its stderr (the module's log)."""
        self.proc.stdin.close()
        rest = self.proc.stdout.read().decode()
        err = self.proc.stderr.read().decode()
        assert self.proc.wait(timeout=10) == 0, err
        assert "BUG" not in rest, rest
        return err


@pytest.fixture
def make_driver(driver_bin, slapd, certs):
    started = []

    def make(**kw) -> Driver:
        env = {"LDL_URI": slapd.uri, "LDL_BASE": SUFFIX, "LDL_BIND_DN": BIND_DN,
               "LDL_BIND_PW": READER_PW, "LDL_CA": str(certs.ca), "LDL_TIMEOUT": "2",
               "LDL_CONNECT_TIMEOUT": "2", "LDL_BACKOFF_MIN": "0.05", "LDL_BACKOFF_MAX": "0.4"}
        env.update({k: str(v) for k, v in kw.items()})
        d = Driver(driver_bin, env)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            logs = d.close()
            assert READER_PW not in logs, "the bind password reached the log"


def expect_host(ans: list[str], host: str) -> None:
    assert ans[0] == "FOUND", ans
    h, _, p = host.rpartition(":") if ":" in host else (host, "", "0")
    assert ans[1] == h and ans[2].split()[0] == p, (ans, host)


def test_ldap_users_on_three_backends(make_driver):
    d = make_driver()
    for i in (0, 1, 2, 3, 599, 1000, 1199):
        expect_host(d.lookup(f"user{i:04d}"), user_host(i))
    # 300 lookups in flight at once, answered in any order, each with the right host.
    ids = {d.send("lookup", f"user{i:04d}"): i for i in range(0, 1200, 4)}
    t0 = time.monotonic()
    for _ in ids:
        i, st, rest = d.line().split(" ", 2)
        assert st == "FOUND", rest
        h = user_host(ids[i])
        assert rest.split()[0] == h.split(":")[0], (ids[i], rest)
    print(f"300 concurrent lookups in {time.monotonic() - t0:.3f}s")


def test_ldap_not_found_and_ambiguous(make_driver):
    d = make_driver()
    assert d.lookup("nobody")[0] == "NOTFOUND"
    assert d.lookup("user1200")[0] == "NOTFOUND"
    ans = d.lookup("nohost")
    assert ans[0] == "NOTFOUND" and "no mailHost" in ans[2], ans
    ans = d.lookup("dup")
    assert ans[0] == "ERROR" and "more than one" in ans[2], ans


@pytest.mark.parametrize("filt", ["(uid=%u)", "(&(objectClass=inetOrgPerson)(uid=%u))",
                                  "(|(mail=%u)(uid=%n))"])
def test_ldap_filter_injection_finds_nothing(make_driver, filt):
    d = make_driver(LDL_FILTER=filt)
    expect_host(d.lookup("user0004"), user_host(4))  # the filter itself works
    for evil in ("*", ")(uid=*", "admin)(|(uid=*", "user0004)(uid=*", "user000*", "*)(|(uid=*",
                 "admin\x00", "\\2a", "admin)", "(uid=admin)", "user000*@example.test"):
        ans = d.lookup(evil)
        assert ans[0] == "NOTFOUND", (filt, evil, ans)


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_ldap_tls_verified(make_driver, slapd, certs, mode):
    uri = slapd.ldaps_uri if mode == "ldaps" else slapd.uri
    d = make_driver(LDL_URI=uri, LDL_STARTTLS=int(mode == "starttls"))
    expect_host(d.lookup("user0002"), user_host(2))
    bad = make_driver(LDL_URI=uri, LDL_STARTTLS=int(mode == "starttls"),
                      LDL_CA=str(certs.wrong_backend))
    ans = bad.lookup("user0002")
    assert ans[0] == "ERROR", ans
    logs = bad.close()
    assert "event=ldap_connect_failed" in logs, logs


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_ldap_sasl_external_client_cert(make_driver, slapd, certs, env_tmp, mode):
    cert, key = make_client_cert(env_tmp / "ldap-client", certs)
    uri = slapd.ldaps_uri if mode == "ldaps" else slapd.uri
    d = make_driver(LDL_URI=uri, LDL_STARTTLS=int(mode == "starttls"), LDL_SASL_EXTERNAL=1,
                    LDL_CERT=cert, LDL_KEY=key, LDL_BIND_DN="", LDL_BIND_PW="")
    expect_host(d.lookup("user0007"), user_host(7))
    # The same bind without the certificate has no identity: it can read nothing.
    anon = make_driver(LDL_URI=uri, LDL_STARTTLS=int(mode == "starttls"), LDL_BIND_DN="",
                       LDL_BIND_PW="")
    assert anon.lookup("user0007")[0] == "NOTFOUND"


def test_ldap_wrong_password_is_an_error(make_driver):
    d = make_driver(LDL_BIND_PW="not-the-password")
    ans = d.lookup("user0001")
    assert ans[0] == "ERROR" and "Invalid credentials" in ans[2], ans
    assert "not-the-password" not in d.close()


def test_ldap_cancel_never_calls_back(make_driver):
    d = make_driver()
    d.wait_ready()
    for i in range(50):
        i_ = d.send("cancel", f"user{i:04d}")
        assert d.line() == f"{i_} CANCELLED"
    expect_host(d.lookup("user0005"), user_host(5))  # answers for cancelled ones came and went
    d.close()  # asserts no "BUG callback after cancel"


def test_ldap_hung_server_times_out(make_driver, slapd):
    d = make_driver(LDL_TIMEOUT="0.5")
    d.wait_ready(2)
    slapd.pause()
    try:
        t0 = time.monotonic()
        ans = d.lookup("user0001", timeout=3)
        took = time.monotonic() - t0
    finally:
        slapd.resume()
    assert ans[0] == "ERROR" and "timed out" in ans[2], ans
    assert 0.4 < took < 1.5, took
    expect_host(d.lookup("user0001"), user_host(1))


def test_ldap_hung_server_many_pending_time_out_on_time(make_driver, slapd):
    """2 000 searches with 500-byte names of '*' (escaped: ~1.5 KB each, ~3 MB) to a stopped
    slapd: every one is answered ERROR at its deadline, none is lost, and the pool recovers.
    (Loopback buffers here absorb even 6 MB, so this does not prove that a full send buffer
    cannot block; the socket is O_NONBLOCK after the bind for that, see conn_ready().)"""
    n = 2000
    d = make_driver(LDL_TIMEOUT="1", LDL_MAX_CONNS=1, LDL_MAX_PENDING=n, LDL_MAX_USER_LEN=512)
    d.wait_ready(1)
    slapd.pause()
    try:
        t0 = time.monotonic()
        # Send from a thread: the driver's answers (a pipe) must be read meanwhile.
        sender = threading.Thread(
            target=lambda: [d.send("lookup", f"{i:04d}" + "*" * 496) for i in range(n)])
        sender.start()
        answers = [d.line(timeout=5).split(" ", 3) for _ in range(n)]
        sender.join()
        sent = time.monotonic() - t0
        took = time.monotonic() - t0
    finally:
        slapd.resume()
    assert all(a[1] == "ERROR" for a in answers), [a for a in answers if a[1] != "ERROR"][:3]
    assert took < 2.5, (sent, took)
    assert len({a[0] for a in answers}) == n
    d.wait_ready(1, timeout=5)
    deadline = time.monotonic() + 5
    while (ans := d.lookup("user0001"))[0] != "FOUND" and time.monotonic() < deadline:
        time.sleep(0.05)
    expect_host(ans, user_host(1))


def test_ldap_down_then_restarted_reconnects(make_driver, slapd):
    d = make_driver()
    d.wait_ready(2)
    slapd.stop()
    try:
        t0 = time.monotonic()
        ans = d.lookup("user0001", timeout=5)
        assert ans[0] == "ERROR", ans
        assert time.monotonic() - t0 < 2.5  # within LDL_TIMEOUT, not a hang
        # Down for a while: back-off keeps retrying (capped at 0.4 s), answers stay errors.
        for _ in range(3):
            assert d.lookup("user0001", timeout=5)[0] == "ERROR"
    finally:
        slapd.start()
    deadline = time.monotonic() + 5
    while True:
        ans = d.lookup("user0001")
        if ans[0] == "FOUND" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    expect_host(ans, user_host(1))
    logs = d.close()
    assert "event=ldap_conn_lost" in logs and "event=ldap_conn_up" in logs, logs
