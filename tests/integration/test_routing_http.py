"""Per-user routing by an nginx-style auth_http service (issue 17, docs/routing.md "auth_http"):
the real daemon asks the responder of test_authhttp.py (authhttp_responder.py) at each login and
dials the Dovecot it names, out of the shared 3-Dovecot pool of test_routing.py
(routing_pool.py): a pool entry found by its address, or a dynamic backend by host:port. The
responder's Auth-User/Auth-Pass are what the backend login uses; a refusal (Auth-Status other
than OK) is AUTHENTICATIONFAILED, counted toward the lock-out, after Auth-Wait; a service that
is down or too slow answers UNAVAILABLE and is not counted. The responder records every request,
so the headers IMAP LOGIN, AUTHENTICATE PLAIN and POP3 USER/PASS send are checked as sent."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import threading
import time
import urllib.parse

import pytest

import mailenv
from authhttp_responder import Answer, Responder
# the shared 3-Dovecot pool; `pool` is a fixture (imported so pytest finds it)
from routing_pool import USERS, backend_of, pool, pool_backends  # noqa: F401

A, B, C = "u0000", "u0041", "u0082"  # users of the pool (each on every Dovecot)


@pytest.fixture
def responder():
    r = Responder({}).start()
    yield r
    r.stop()


def http_routing(url, **kw):
    r = {"lookups": [{"name": "authsvc", "type": "http", "url": url, "timeout": "1s",
                      "headers": ["X-Auth-Key: s3cret"]}]}
    r["lookups"][0].update(kw.pop("lookup", {}))
    r.update(kw)
    return r


def start_proxy(proxy_factory, pool, url, policy=None, workers=2, **kw):
    return proxy_factory(backends=pool_backends(pool), health={"enabled": False},
                         routing=http_routing(url, **kw), policy=policy or {}, workers=workers)


def imap(px, certs):
    return imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                             ssl_context=mailenv.ssl_context(certs.ca), timeout=15)


def requests_for(responder, user):
    return [h for _, h in responder.requests if urllib.parse.unquote(h.get("Auth-User", "")) == user]


def test_http_routes_and_sends_nginx_headers(proxy_factory, pool, certs, responder):
    """A -> dv0 named by its address (the pool entry: its log name is dv0), B -> dv2 as
    host:port (a dynamic backend). IMAP LOGIN, AUTHENTICATE PLAIN and POP3 USER/PASS each send
    nginx's headers, with the configured extra header."""
    dv0, dv2 = pool[0], pool[2]
    responder.table.update({
        A: Answer(server="127.0.0.1", port=dv0.ports["imap"]),
        B: Answer(server="127.0.0.1", port=dv2.ports["imap"]),
    })
    px = start_proxy(proxy_factory, pool, responder.url())
    m = imap(px, certs)
    m.login(A, USERS[A])
    assert backend_of(m) == "dv0"
    m.logout()
    m = imap(px, certs)
    m.authenticate("PLAIN", lambda _: f"\0{B}\0{USERS[B]}".encode())
    assert backend_of(m) == "dv2"
    m.logout()
    log = px.log()
    assert re.search(r"event=route_lookup source=authsvc rule=ok backend=dv0 ",
                     log), log
    assert f"backend=127.0.0.1:{dv2.ports['imap']} " in log
    assert USERS[A] not in log and USERS[B] not in log, "a password in the log"

    (ha,), (hb,) = requests_for(responder, A), requests_for(responder, B)
    for h, user in ((ha, A), (hb, B)):
        assert h["Auth-Method"] == "plain" and h["Auth-Protocol"] == "imap"
        assert h["Auth-Pass"] == USERS[user] and h["Auth-Login-Attempt"] == "1"
        assert h["Client-IP"] == "127.0.0.1" and h["Auth-SSL"] == "on"
        assert h["X-Auth-Key"] == "s3cret"

    # POP3: the answer names dv1's IMAP address; POP3 goes to the pool entry of the
    # listener's protocol with that address, so name dv1's POP3 port.
    responder.table[C] = Answer(server="127.0.0.1", port=pool[1].ports["pop3"])
    p = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                        timeout=15)
    p.user(C)
    p.pass_(USERS[C])
    assert b"backend=dv1" in b"\n".join(p.retr(1)[1])
    p.quit()
    (hc,) = requests_for(responder, C)
    assert hc["Auth-Protocol"] == "pop3" and hc["Auth-Method"] == "plain"
    assert hc["Auth-Pass"] == USERS[C]
    assert "backend=dv1-pop3 " in px.log()


def test_http_backend_credentials_from_service(proxy_factory, pool, certs, responder):
    """The client logs in as a front identity with a token Dovecot does not know; the service
    answers another user's login (Auth-User/Auth-Pass): the backend session is that user's
    mailbox. The second LOGIN of the session says Auth-Login-Attempt: 2."""
    responder.table.update({
        "front@corp.test": Answer(server="127.0.0.1", port=pool[1].ports["imap"], user=C,
                                  password=USERS[C]),
        "typo@corp.test": Answer(status="Invalid login or password"),
    })
    px = start_proxy(proxy_factory, pool, responder.url())
    m = imap(px, certs)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("typo@corp.test", "x")
    m.login("front@corp.test", "one-time-token")
    assert backend_of(m) == "dv1"
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (TO)])")
    assert f"To: {C}".encode() in data[0][1], data  # C's mailbox: the backend login was C's
    m.logout()
    (h,) = requests_for(responder, "front@corp.test")
    assert h["Auth-Login-Attempt"] == "2" and h["Auth-Pass"] == "one-time-token"
    log = px.log()
    assert f"event=route_lookup_credentials source=authsvc backend_user=\"{C}\"" in log
    assert USERS[C] not in log and "one-time-token" not in log
    assert f"user=<{C}>" in pool[1].log()  # Dovecot saw C's login


def test_http_refusal_counted_after_auth_wait(proxy_factory, pool, certs, responder):
    """Auth-Status other than OK -> NO [AUTHENTICATIONFAILED] (the status text not echoed),
    after Auth-Wait; counted: with a limit of 2 failures the third login is locked out."""
    responder.table["mallory"] = Answer(status="Invalid login, go away", wait=1)
    px = start_proxy(proxy_factory, pool, responder.url(),
                     policy={"user_addr_fail_limit": 2, "user_fail_limit": 2, "tarpit": "0s"})
    m = imap(px, certs)
    t0 = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED") as e:
        m.login("mallory", "guess1")
    assert time.monotonic() - t0 >= 1.0, "Auth-Wait not honoured"
    assert "go away" not in str(e.value)
    responder.table["mallory"] = Answer(status="Invalid login, go away")  # no wait: fast
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("mallory", "guess2")
    n = len(responder.requests)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        m.login("mallory", "guess3")  # locked out by the policy, before any lookup
    assert len(responder.requests) == n
    m.logout()
    assert re.search(r"event=route_lookup result=reject source=authsvc "
                     r"status=\"Invalid login, go away\" wait_ms=1000", px.log())
    # POP3: the same refusal is -ERR [AUTH] (unknown users get "Invalid login" from the responder)
    p = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                        timeout=15)
    p.user("eve")
    responder.table["eve"] = Answer(status="Invalid login")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        p.pass_("guess")
    p.quit()


def test_http_down_or_slow_unavailable_not_counted(proxy_factory, pool, certs, responder):
    """A service that answers too late (timeout 300 ms) or not at all: NO [UNAVAILABLE] with
    on_error: refuse, never counted (3 errors, limit 2, and the user still logs in)."""
    responder.table[A] = Answer(server="127.0.0.1", port=pool[0].ports["imap"], delay=0.6)
    policy = {"user_addr_fail_limit": 2, "user_fail_limit": 2, "tarpit": "0s"}
    px = start_proxy(proxy_factory, pool, responder.url(), policy=policy, on_error="refuse",
                     lookup={"timeout": "300ms"})
    m = imap(px, certs)
    for _ in range(3):
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            m.login(A, USERS[A])
    responder.table[A] = Answer(server="127.0.0.1", port=pool[0].ports["imap"])
    m.login(A, USERS[A])  # not locked out
    assert backend_of(m) == "dv0"
    m.logout()
    assert re.search(r"event=route_lookup_failed source=authsvc reason=\"?timeout\"? "
                     r"action=refuse", px.log())

    down = f"http://127.0.0.1:{mailenv.free_port()}/auth"  # nothing listens there
    px2 = start_proxy(proxy_factory, pool, down, policy=policy, on_error="refuse")
    m = imap(px2, certs)
    for _ in range(3):
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            m.login(B, USERS[B])
    m.logout()
    assert "event=route_lookup_failed source=authsvc" in px2.log()


def test_http_answer_after_reload_frees_old_client_later(proxy_factory, pool, certs, responder):
    """A reload while a lookup is in flight: a login of the new configuration replaces the
    worker's chain, so the old chain (and its auth_http client) goes when the in-flight answer
    has been handled -- that is, from inside the client's own callback. Freeing the client there
    would be a use after free (ASan); it is deferred to the next loop turn. One worker, so both
    logins share the chain."""
    responder.table.update({
        A: Answer(server="127.0.0.1", port=pool[0].ports["imap"], delay=0.6),
        B: Answer(server="127.0.0.1", port=pool[1].ports["imap"]),
    })
    px = start_proxy(proxy_factory, pool, responder.url(), workers=1)
    slow = imap(px, certs)
    got = {}
    t = threading.Thread(target=lambda: got.update(r=slow.login(A, USERS[A])))
    t.start()
    deadline = time.monotonic() + 5
    while not requests_for(responder, A) and time.monotonic() < deadline:
        time.sleep(0.02)
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded", after=mark)
    m = imap(px, certs)
    m.login(B, USERS[B])  # the new configuration's chain replaces the old one
    assert backend_of(m) == "dv1"
    m.logout()
    t.join(10)
    assert got["r"][0] == "OK"
    assert backend_of(slow) == "dv0"
    slow.logout()
    m = imap(px, certs)  # the worker is alive and well after the deferred free
    m.login(B, USERS[B])
    m.logout()
