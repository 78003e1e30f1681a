"""Issue 17, HTTP lookup: Portcullis' auth_http client (proxy/authhttp.c) against a real HTTP
responder (authhttp_responder.py), and nginx's own mail proxy against the same responder.

The client runs inside build/tests/test_authhttp (its "live" cases, one per run, selected by
AH_LIVE_CASE): an ev loop doing real lookups. This file starts the responder, runs a case, and
checks what the responder saw (TCP connections, request headers).

The nginx test proves the responder speaks nginx's protocol: a login through nginx's mail proxy
reaches Dovecot with the credentials the responder handed out. Our client talks to the same
responder with the same headers (compared below), hence is compatible with the services admins
already run for nginx.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

import mailenv
from authhttp_responder import Answer, Responder

NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")


@pytest.fixture
def responder():
    r = Responder({
        "alice": Answer(server="127.0.0.1", port=1143, user="master*alice", password="masterpw"),
        "bob": Answer(status="Invalid login or password", wait=2),
        # no Auth-Wait: nginx answers NO at once and closes (with one it sleeps first)
        "mallory": Answer(status="Invalid login or password"),
    }).start()
    yield r
    r.stop()


@pytest.fixture
def live(request):
    binary = mailenv.REPO / Path(request.config.getoption("--proxy-binary")).parent \
        / "tests" / "test_authhttp"
    if not binary.exists():
        pytest.skip(f"{binary} not built (make {binary.relative_to(mailenv.REPO)})")

    def run(case: str, url: str, ca: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, AH_LIVE_URL=url, AH_LIVE_CASE=case)
        env.pop("AH_LIVE_CA", None)
        if ca:
            env["AH_LIVE_CA"] = str(ca)
        p = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=30)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and "PASSED" in out and "1 test(s) run" in out, out
        return p
    return run


def test_authhttp_keepalive(responder, live):
    """Five sequential lookups (OK with backend credentials, refusals) over one TCP connection;
    the request carries nginx's headers with nginx's escaping."""
    live("live_keepalive", f"http://127.0.0.1:{responder.port}")
    assert len(responder.requests) == 5
    assert responder.connections == 1, "keep-alive: one connection for all lookups"
    path, h = responder.requests[0]
    assert path == "/auth"
    assert h["Auth-Method"] == "plain" and h["Auth-Protocol"] == "imap"
    assert h["Auth-User"] == "alice" and h["Auth-Pass"] == "p%20a%25ss"  # nginx's escaping
    assert urllib.parse.unquote(h["Auth-Pass"]) == "p a%ss"
    assert h["Auth-Login-Attempt"] == "1" and h["Client-IP"] == "192.0.2.42"
    assert h["Auth-SSL"] == "on" and h["Server-Port"] == "993"
    assert h["X-Auth-Key"] == "secret_string"  # nginx's auth_http_header


def test_authhttp_concurrent(responder, live):
    live("live_concurrent", f"http://127.0.0.1:{responder.port}")
    assert len(responder.requests) == 4
    assert responder.connections <= 4


def test_authhttp_timeout(responder, live):
    """A service slower than the timeout: AH_ERROR "timeout" within 1.5 s (asserted in C)."""
    live("live_timeout", f"http://127.0.0.1:{responder.port}")


def test_authhttp_http500(responder, live):
    live("live_http500", f"http://127.0.0.1:{responder.port}")
    assert responder.requests and responder.requests[0][0] == "/status/500"


def test_authhttp_refused(live):
    live("live_transport_error", f"http://127.0.0.1:{mailenv.free_port()}")


def test_authhttp_https(certs, live):
    """https with verification: the lookups succeed (over one kept-alive TLS connection) with the
    test CA as ca_file, and fail as a transport error without it (system store)."""
    r = Responder({"alice": Answer(server="127.0.0.1", port=1143, user="master*alice",
                                   password="masterpw")},
                  tls=(str(certs.server), str(certs.server_key))).start()
    try:
        live("live_keepalive", f"https://127.0.0.1:{r.port}", ca=certs.ca)
        assert len(r.requests) == 5 and r.connections == 1
        r.reset()
        live("live_transport_error", f"https://127.0.0.1:{r.port}")
        assert r.requests == []
    finally:
        r.stop()


def test_authhttp_cancel(responder, live):
    live("live_cancel", f"http://127.0.0.1:{responder.port}")


def _start_nginx(w: Path, auth_port: int, imap_port: int) -> subprocess.Popen:
    w.mkdir(parents=True, exist_ok=True)
    (w / "tmp").mkdir(exist_ok=True)
    conf = f"""
daemon off;
master_process off;
pid {w}/nginx.pid;
error_log {w}/error.log info;
load_module {NGINX_MAIL_MODULE};
events {{ worker_connections 64; }}
mail {{
    auth_http 127.0.0.1:{auth_port}/auth;
    auth_http_header X-Auth-Key secret_string;
    auth_http_timeout 5s;
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{imap_port}; protocol imap; }}
}}
"""
    (w / "nginx.conf").write_text(conf)
    log = open(w / "nginx.stderr", "ab")
    proc = subprocess.Popen(["nginx", "-c", str(w / "nginx.conf"), "-p", str(w), "-e",
                             str(w / "error.log")], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, start_new_session=True)
    log.close()
    mailenv.wait_ports([imap_port], proc, 10, "nginx", w / "error.log")
    return proc


def test_authhttp_nginx_compat(env_tmp, dovecot, users, responder, live):
    """nginx's mail proxy + the responder + Dovecot: "alice" logs in to nginx with a front
    password the backend does not know; the responder answers OK with Dovecot's address and
    Auth-User/Auth-Pass, and nginx's login to Dovecot with those succeeds. "mallory" is refused
    with the responder's text. Then our client sends the same headers nginx sent."""
    if not shutil.which("nginx") or not NGINX_MAIL_MODULE.exists():
        pytest.skip("nginx + libnginx-mod-mail not installed (bash deploy/deps.sh)")
    responder.table["alice"] = Answer(server="127.0.0.1", port=dovecot.ports["imap"],
                                      user="alice", password=users["alice"])
    imap_port = mailenv.free_port()
    proc = _start_nginx(env_tmp / "nginx-authhttp", responder.port, imap_port)
    try:
        m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        typ, _ = m.login("alice", "front token%1")
        assert typ == "OK"
        typ, data = m.select("INBOX")
        assert typ == "OK" and int(data[0]) == len(dovecot.seeded["alice"])
        m.logout()
        m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match="Invalid login or password"):
            m.login("mallory", "whatever")
        m.shutdown()
    finally:
        mailenv.terminate_pid(proc.pid, 10, proc)
    nginx_reqs = [h for _, h in responder.requests]
    alice = next(h for h in nginx_reqs if h.get("Auth-User") == "alice")
    assert alice["Auth-Pass"] == "front%20token%251"  # nginx escapes as ah_escape does
    assert alice["Auth-Method"] == "plain" and alice["Auth-Protocol"] == "imap"

    # Our client against the same responder: every Auth-*/Client-* header nginx sent, we send.
    responder.table["alice"] = Answer(server="127.0.0.1", port=1143, user="master*alice",
                                      password="masterpw")
    responder.reset()
    live("live_keepalive", f"http://127.0.0.1:{responder.port}")
    ours = responder.requests[0][1]
    wanted = {k for k in alice if k.startswith(("Auth-", "Client-", "X-Auth-Key"))}
    assert wanted <= set(ours), f"nginx sent {sorted(wanted)}, we sent {sorted(ours)}"
