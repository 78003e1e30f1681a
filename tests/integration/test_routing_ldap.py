"""Per-user routing from LDAP through the real daemon (issue 17, docs/routing.md "LDAP"): a real
slapd (slapd.py: 1 200 users, mailHost spread over three values) in front of three real Dovecots
(routing_env.py, shared with test_routing.py). Each user reaches their own Dovecot — by pool
entry name (dv0, dv1) or as a dynamic backend by IP:port or host name (dv2); unknown users follow
routing.unknown; user names that would widen an unescaped filter find nothing; a stopped slapd
answers NO [UNAVAILABLE] (or hashes with on_error: fallback), logged with source and reason and
never counted toward a lock-out; a warm worker cache answers without slapd."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

import clients
import mailenv
import routing_env
from routing_env import backend_of, pool_backends
from slapd import BASE, BIND_DN, READER_PW, Slapd

N_HOME = 12  # user0000..user0011: four per backend
USERS = {f"user{i:04d}": f"pw-{i}" for i in range(N_HOME)}
USERS.update({"stranger": "pw-stranger", "admin": "pw-admin", "named": "pw-named"})
# RFC 4515 injection attempts: unescaped, `*` / `)(uid=*` match every entry (more than one:
# an error) and `a*` matches uid=admin; escaped, none of them is anybody's uid.
INJECTIONS = ["*", ")(uid=*", "a*", "\\2a", "user000*", "*)(|(uid=*"]


@pytest.fixture(scope="module")
def pool(env_tmp, certs):
    with routing_env.dovecot_pool(env_tmp, USERS, tag="ldap") as dvs:
        yield dvs


@pytest.fixture(scope="module")
def directory(env_tmp, certs, pool):
    """slapd whose userNNNN live on dv0, dv1 (pool entry names) and dv2's IP:port; `named`
    on dv2 by host name (localhost:PORT)."""
    hosts = ("dv0", "dv1", routing_env.dynamic_target(pool))
    extra = {"named": named_target(pool)}
    s = Slapd(env_tmp / "slapd-routing", certs, hosts=hosts, extra=extra).start()
    pwfile = env_tmp / "slapd-routing" / "reader.pw"
    pwfile.write_text(READER_PW + "\n")
    s.pwfile = pwfile
    yield s
    s.stop()


def named_target(pool) -> str:
    return f"localhost:{pool[2].ports['imap']}"


def ldap_lookup(directory, certs, **kw) -> dict:
    lk = {"name": "directory", "type": "ldap", "uri": directory.uri, "starttls": True,
          "ca_file": str(certs.ca), "bind_dn": BIND_DN, "bind_password_file": str(directory.pwfile),
          "base": BASE, "scope": "sub", "filter": "(uid=%u)", "attribute": "mailHost",
          "connections": 1, "connect_timeout": "1s", "timeout": "500ms"}
    lk.update(kw)
    return lk


def make_proxy(proxy_factory, pool, directory, certs, redis=None, lookup=None, policy=None,
               **routing):
    r = {"lookups": [ldap_lookup(directory, certs, **(lookup or {}))]}
    r.update(routing)
    over = {"workers": 1,  # one worker: one cache, so the warm-cache test is deterministic
            "backends": pool_backends(pool), "health": {"enabled": False}, "routing": r}
    if policy:
        over["policy"] = policy
    if redis is not None:
        over["redis"] = {"host": mailenv.LOCAL, "port": redis.port,
                         "prefix": "rl" + uuid.uuid4().hex[:6] + ":",
                         "connect_timeout": "300ms", "command_timeout": "300ms"}
    px = proxy_factory(**over)
    if redis is not None:
        px.wait_redis_ready()
    return px


def which(px, certs, user) -> str:
    return routing_env.which_backend(px, certs, user, USERS[user])


def refused(px, certs, user, password=None) -> str:
    return routing_env.login_error(px, certs, user, password or USERS.get(user, "x"))


def test_ldap_routes_each_user_to_own_backend(proxy_factory, pool, directory, certs, redis):
    px = make_proxy(proxy_factory, pool, directory, certs, redis=redis)
    for i in range(N_HOME):
        assert which(px, certs, f"user{i:04d}") == f"dv{i % 3}", i
    log = px.log()
    assert "event=route_lookup source=directory rule=entry backend=dv0 cached=no" in log
    assert "event=route_lookup source=directory rule=entry backend=dv1 cached=no" in log
    dyn = routing_env.dynamic_target(pool)
    assert f"event=route_lookup source=directory rule=entry backend={dyn} cached=no" in log
    # The password came from bind_password_file; it never reaches the log.
    assert READER_PW not in log
    # portcullis-ctl route show asks the directory the same way.
    out = clients.ctl(px, "route", "show", "user0001").stdout
    assert "lookup directory (ldap ldap://" in out and "found mailHost=dv1 backend=dv1 (pool " \
        "entry)" in out, out
    assert "decision: backend dv1 (lookup directory" in out, out
    out = clients.ctl(px, "route", "show", "user0002").stdout
    assert f"backend={dyn} (dynamic backend" in out, out
    out = clients.ctl(px, "route", "show", "nobody").stdout
    assert "lookup directory (ldap ldap://" in out and ": not found" in out, out
    # A host name is resolved (blocking is fine in the tool); one that does not resolve is an
    # error naming it.
    out = clients.ctl(px, "route", "show", "named").stdout
    assert f"backend={named_target(pool)} (dynamic backend, routing.dynamic_backend; " \
        "resolved to " in out, out
    out = clients.ctl(px, "route", "show", "admin").stdout
    assert "error: cannot resolve admin-host.example.test: " in out, out


def test_ldap_host_name_resolved_off_the_loop(proxy_factory, pool, directory, certs):
    """mailHost `localhost:PORT` (a name, not a pool entry, not an IP address) is resolved by
    the worker's resolver threads, never on its loop: the user reaches dv2 as a dynamic backend
    named by host, and the cached answer (holding the address) serves the next login. A name
    that does not resolve is an error naming it (UNAVAILABLE with on_error: refuse), never
    cached."""
    if socket.getaddrinfo("localhost", None, 0, socket.SOCK_STREAM)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here (dv2 listens there)")
    px = make_proxy(proxy_factory, pool, directory, certs, on_error="refuse")
    named = named_target(pool)
    assert which(px, certs, "named") == "dv2"
    assert which(px, certs, "named") == "dv2"
    log = px.log()
    assert f"event=route_lookup source=directory rule=entry backend={named} cached=no" in log
    assert f"event=route_lookup source=directory rule=entry backend={named} cached=yes" in log
    for _ in range(2):
        assert "UNAVAILABLE" in refused(px, certs, "admin")
    failed = re.findall(r'event=route_lookup_failed source=directory reason="cannot resolve '
                        r'admin-host\.example\.test: [^"]+" action=refuse', px.log())
    assert len(failed) == 2, px.log()  # asked twice: an error is never cached


def test_ldap_unknown_users_and_injection(proxy_factory, pool, directory, certs):
    refusing = make_proxy(proxy_factory, pool, directory, certs, unknown="refuse")
    hashing = make_proxy(proxy_factory, pool, directory, certs, unknown="hash")
    assert "AUTHENTICATIONFAILED" in refused(refusing, certs, "stranger")
    assert "event=route_lookup result=not_found cached=no action=refuse" in refusing.log()
    assert which(hashing, certs, "stranger") in ("dv0", "dv1")
    assert "event=route_lookup result=not_found cached=no action=hash" in hashing.log()
    assert which(refusing, certs, "user0004") == "dv1"  # known users are unaffected
    # All of them where not found is refused; two where it is hashed (a backend login each).
    for px, action, names in ((refusing, "refuse", INJECTIONS), (hashing, "hash", INJECTIONS[:2])):
        mark = px.log_mark()
        for name in names:
            # imaplib sends the user name as written: quote it (RFC 3501 quoted string).
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            assert "AUTHENTICATIONFAILED" in refused(px, certs, quoted, "pw"), name
        tail = px.log()[mark:]
        # Each one was a clean "not found" (not an ambiguous match, not admin's host).
        assert tail.count(f"event=route_lookup result=not_found cached=no action={action}") \
            == len(names), tail
        assert "route_lookup_failed" not in tail, tail


def test_ldap_warm_cache_answers_without_slapd(proxy_factory, pool, directory, certs):
    px = make_proxy(proxy_factory, pool, directory, certs, cache_ttl="1m", on_error="refuse")
    assert which(px, certs, "user0005") == "dv2"
    directory.stop()
    try:
        # Within cache_ttl the worker does not ask slapd (it is down: asking would fail).
        assert which(px, certs, "user0005") == "dv2"
        assert re.search(r"event=route_lookup source=directory rule=entry backend=\S+ "
                         r"cached=yes", px.log())
    finally:
        directory.start()


def test_ldap_down_unavailable_not_counted(proxy_factory, pool, directory, certs, redis):
    lockout = {"user_fail_limit": 2, "user_addr_fail_limit": 2, "tarpit": "0s"}
    px = make_proxy(proxy_factory, pool, directory, certs, redis=redis, on_error="refuse",
                    policy=lockout)
    fallback = make_proxy(proxy_factory, pool, directory, certs, on_error="fallback")
    # Both have asked the directory before the outage (a worker connects at its first lookup).
    assert which(px, certs, "user0000") == "dv0"
    assert which(fallback, certs, "user0000") == "dv0"
    user = "user0007"  # lives on dv1
    directory.stop()
    try:
        for _ in range(6):
            assert "UNAVAILABLE" in refused(px, certs, user)
        line = px.wait_log(re.compile(r"event=route_lookup_failed source=directory .*")).group(0)
        assert re.search(r'reason="[^"]+" action=refuse', line), line
        assert which(fallback, certs, user) in ("dv0", "dv1")  # hashed over the pool
        assert re.search(r"event=route_lookup_failed source=directory reason=\"[^\"]+\" "
                         r"action=fallback", fallback.log())
    finally:
        mark = px.log_mark()
        directory.start()
    px.wait_log("event=ldap_conn_up", after=mark, timeout=15)
    # Six refusals while the directory was down counted nothing: the right password works.
    assert which(px, certs, user) == "dv1"
    pfx = px.config["redis"]["prefix"]
    assert redis.command("EXISTS", f"{pfx}fail:{{{user}}}",
                         f"{pfx}fail:{{{user}}}:ip:127.0.0.1/32") == 0


def test_ldap_config_checked_by_t(request, env_tmp, certs):
    """`portcullis -t` validates an ldap lookup without contacting the directory, and never
    prints the bind password."""
    from test_check_config import check
    b = Path(request.config.getoption("--proxy-binary"))
    binary = b if b.is_absolute() else mailenv.REPO / b
    pw = env_tmp / "t-ldap.pw"
    pw.write_text("t0p-secret\n")
    lk = {"name": "dir", "type": "ldap", "uri": "ldaps://127.0.0.1:1", "base": "dc=x",
          "bind_dn": "cn=r", "bind_password_file": str(pw), "ca_file": str(certs.ca)}
    r = check(binary, env_tmp, certs, "ldap-ok", routing={"lookups": [lk]})
    assert r.returncode == 0 and "is valid" in r.stdout, r
    bad = {**lk, "filter": "(uid=%u"}
    r = check(binary, env_tmp, certs, "ldap-filter", routing={"lookups": [bad]})
    assert r.returncode != 0 and "lookup dir: bad filter template" in r.stderr, r
    bad = {**lk, "uri": "http://127.0.0.1"}
    r = check(binary, env_tmp, certs, "ldap-uri", routing={"lookups": [bad]})
    assert r.returncode != 0 and "ldap://HOST[:PORT] or ldaps://HOST[:PORT]" in r.stderr, r
    bad = {**lk, "bind_password_file": str(env_tmp / "missing.pw")}
    r = check(binary, env_tmp, certs, "ldap-pwfile", routing={"lookups": [bad]})
    assert r.returncode != 0 and "missing.pw" in r.stderr, r
    bad = {**lk, "bind_password": "t0p-secret"}  # both: an error that must not show it
    r = check(binary, env_tmp, certs, "ldap-both", routing={"lookups": [bad]})
    assert r.returncode != 0 and "exclude each other" in r.stderr, r
    assert "t0p-secret" not in r.stdout + r.stderr


def test_ldap_reload_never_blocks_on_a_hung_directory(proxy_factory, pool, directory, certs):
    """A reload drops the worker's LDAP pool of the old configuration. With the directory hung
    (SIGSTOP: TCP accepted, StartTLS never answered) that pool's connect thread waits out
    connect_timeout; freeing it must not join that thread on the loop (route_ldap.c polls
    ldl_pool_idle), so the next login is answered on time."""
    px = make_proxy(proxy_factory, pool, directory, certs, on_error="refuse",
                    lookup={"connect_timeout": "6s", "timeout": "300ms"})
    directory.pause()
    try:
        assert "UNAVAILABLE" in refused(px, certs, "user0001")  # its pool is connecting
        mark = px.log_mark()
        os.kill(px.pid, signal.SIGHUP)
        px.wait_log("event=reloaded", after=mark)
        t0 = time.monotonic()
        assert "UNAVAILABLE" in refused(px, certs, "user0002")  # drops the old pool
        took = time.monotonic() - t0
        # Joining would take the rest of the 6 s connect_timeout.
        assert took < 3.0, took
    finally:
        directory.resume()
    assert which(px, certs, "user0002") == "dv2"
