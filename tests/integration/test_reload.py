"""Reload under load (issue 7): while clients loop over login/fetch/logout, SIGHUP with a
changed certificate and a changed backend pool; no client operation fails, sessions started
after the reload see the new certificate and the new backend."""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import signal
import socket
import threading
import time

import mailenv


def marker(name: str, user: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: {user}@example.test\r\nSubject: backend={name}\r\n"
            f"Message-ID: <{name}.{user}@portcullis.test>\r\n\r\nlives on {name}\r\n").encode()


def cert_sha256(port: int, ca) -> str:
    ctx = mailenv.ssl_context(ca)
    with socket.create_connection((mailenv.LOCAL, port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def session_backend(port: int, ca) -> str:
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, port, ssl_context=mailenv.ssl_context(ca), timeout=15)
    try:
        m.login("rita", "ritapw")
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        return re.search(rb"backend=(\w+)", data[0][1]).group(1).decode()
    finally:
        m.logout()


def test_reload_under_load(proxy_factory, dovecot_factory, certs):
    dvs = []
    for name in ("old", "new"):
        dv = dovecot_factory(users={"rita": "ritapw"}, ssl=False)
        dv.deliver("rita", [marker(name, "rita")])
        dv.label = name
        dvs.append(dv)
    px = proxy_factory(dovecot=dvs[0], health={"enabled": False})
    port = px.port("imaps")
    old_cert = cert_sha256(port, certs.ca)
    assert session_backend(port, certs.ca) == "old"

    stop = threading.Event()
    results = {"ok": 0, "errors": []}

    def loop():
        while not stop.is_set():
            try:
                session_backend(port, certs.ca)
                results["ok"] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                results["errors"].append(repr(e))

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        cfg = dict(px.config)
        cfg["tls"] = dict(cfg["tls"], certificates=[
            {"cert": str(certs.server_rsa), "key": str(certs.server_rsa_key)},
            {"cert": str(certs.sni), "key": str(certs.sni_key)}])
        cfg["backends"] = dvs[1].backends(tls="none", name="new")
        px.config_path.write_text(mailenv.to_yaml(cfg))
        n = px.log().count("event=reloaded")
        os.kill(px.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while px.log().count("event=reloaded") == n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert px.log().count("event=reloaded") > n
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert results["errors"] == [], results["errors"][:5]
    assert results["ok"] > 20
    # After the reload: the new certificate and the new backend.
    assert cert_sha256(port, certs.ca) != old_cert
    assert session_backend(port, certs.ca) == "new"
