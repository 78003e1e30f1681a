"""Reload under load (issue 7): while clients loop over login/fetch/logout (scanning on), SIGHUP
with a changed certificate, a changed backend pool and a new signature file; no client operation
fails, sessions started after the reload see the new certificate, the new backend and the new
signature (a message that was clean before is replaced by the notice after)."""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import signal
import socket
import threading

import clients
import mailenv
import malware

# In message 2 of both backends: clean until the reload adds a signature for it.
RELOAD_MARKER = b"PORTCULLIS-RELOAD-UNDER-LOAD-5c1e"


def marker(name: str, user: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: {user}@example.test\r\nSubject: backend={name}\r\n"
            f"Message-ID: <{name}.{user}@portcullis.test>\r\n\r\nlives on {name}\r\n").encode()


def cert_sha256(port: int, ca) -> str:
    ctx = mailenv.ssl_context(ca)
    with socket.create_connection((mailenv.LOCAL, port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def marked(name: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: rita@example.test\r\nSubject: marked on {name}\r\n"
            f"Message-ID: <marked.{name}@portcullis.test>\r\n\r\n").encode() + RELOAD_MARKER + b"\r\n"


def session_backend(port: int, ca, msg: str = "1") -> str:
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, port, ssl_context=mailenv.ssl_context(ca), timeout=15)
    try:
        m.login("rita", "ritapw")
        m.select("INBOX", readonly=True)
        typ, data = m.fetch(msg, "(BODY.PEEK[])")
        assert typ == "OK"
        return re.search(rb"backend=(\w+)", data[0][1]).group(1).decode()
    finally:
        m.logout()


def fetch_marked(port: int, ca) -> bytes:
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, port, ssl_context=mailenv.ssl_context(ca), timeout=15)
    try:
        m.login("rita", "ritapw")
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("2", "(BODY.PEEK[])")
        assert typ == "OK"
        return data[0][1]
    finally:
        m.logout()


def test_reload_under_load(proxy_factory, dovecot_factory, certs, env_tmp):
    dvs = []
    for name in ("old", "new"):
        dv = dovecot_factory(users={"rita": "ritapw"}, ssl=False)
        dv.deliver("rita", [marker(name, "rita"), marked(name)])
        dv.label = name
        dvs.append(dv)
    db = env_tmp / "reload-under-load-db"
    malware.write_db(str(db))
    px = proxy_factory(dovecot=dvs[0], health={"enabled": False},
                       scan={"enabled": True, "database_dir": str(db), "threads": 2,
                             "tmpdir": str(env_tmp)})
    port = px.port("imaps")
    old_cert = cert_sha256(port, certs.ca)
    assert session_backend(port, certs.ca) == "old"
    assert fetch_marked(port, certs.ca) == marked("old")  # no signature for it yet

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
        clients.wait_for(lambda: results["ok"] >= 8 or results["errors"], 30,
                         what="the clients' loop under way")
        cfg = dict(px.config)
        cfg["tls"] = dict(cfg["tls"], certificates=[
            {"cert": str(certs.server_rsa), "key": str(certs.server_rsa_key)},
            {"cert": str(certs.sni), "key": str(certs.sni_key)}])
        cfg["backends"] = dvs[1].backends(tls="none", name="new")
        px.config_path.write_text(mailenv.to_yaml(cfg))
        (db / "reload-under-load.ndb").write_text(
            "Portcullis.Test.ReloadUnderLoad:0:*:%s\n" % RELOAD_MARKER.hex())
        mark = px.log_mark()
        os.kill(px.pid, signal.SIGHUP)
        px.wait_log("event=reloaded", 30, after=mark)
        px.wait_log("event=scan_reload result=ok", 30, after=mark)
        # the load goes on after the reload: more sessions complete under the new config
        at_reload = results["ok"]
        clients.wait_for(lambda: (results["ok"] >= at_reload + 8 and results["ok"] > 20)
                         or results["errors"], 30, what="sessions after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert results["errors"] == [], results["errors"][:5]
    assert results["ok"] > 20
    # After the reload: the new certificate and the new backend.
    assert cert_sha256(port, certs.ca) != old_cert
    assert session_backend(port, certs.ca) == "new"
    got = fetch_marked(port, certs.ca)
    assert b"X-Portcullis-Verdict: infected; signature=Portcullis.Test.ReloadUnderLoad" in got, \
        got[:400]
    assert malware.header_text(got, "Subject") == "marked on new"  # decoded: re-encoded by us


def test_reload_names_what_it_did_not_apply(proxy_factory, certs):
    """issue 18: a changed listener `bind` (restart-only) is not applied, and the log says so
    key by key (event=reload_partial), not just event=reloaded."""
    px = proxy_factory()
    cfg = mailenv.deep_merge(px.config, {})
    old_bind = cfg["listeners"][0]["bind"]
    new_bind = f"{mailenv.LOCAL}:{mailenv.free_port()}"
    cfg["listeners"][0]["bind"] = new_bind
    cfg["workers"] = 3
    px.config_path.write_text(mailenv.to_yaml(cfg))
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded source=sighup", after=mark)
    log = px.log()[mark:]
    assert (f'event=reload_partial key=listeners[imaps].bind running="{old_bind}" '
            f'file="{new_bind}"') in log, log
    assert 'event=reload_partial key=workers running="2" file="3"' in log, log
    # nothing else was restart-only and changed
    assert log.count("event=reload_partial") == 2, log
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),  # still the old address
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()


def test_reload_reopens_log_file(proxy_factory, certs):
    """issue 18: log.file takes effect on SIGHUP; SIGHUP after a rotation (logrotate's
    postrotate) writes to a new file of the same name."""
    px = proxy_factory()
    target = px.workdir / "moved.log"
    cfg = mailenv.deep_merge(px.config, {"log": {"file": str(target)}})
    px.config_path.write_text(mailenv.to_yaml(cfg))
    os.kill(px.pid, signal.SIGHUP)
    clients.wait_for(lambda: target.exists() and "event=reloaded" in target.read_text(), 10,
                     what="event=reloaded in the new log.file")
    stderr_size = len(px.log())
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()
    clients.wait_for(lambda: "event=close" in target.read_text(), 10, what="the session's lines")
    assert "reload_partial" not in target.read_text()  # log.file is not restart-only
    # Rotation: the file is renamed away, SIGHUP opens a new one under the configured name.
    target.rename(px.workdir / "moved.log.1")
    os.kill(px.pid, signal.SIGHUP)
    clients.wait_for(lambda: target.exists() and "event=reloaded" in target.read_text(), 10,
                     what="a new file after rotation")
    assert "event=reloaded" in (px.workdir / "moved.log.1").read_text()
    assert len(px.log()) == stderr_size  # nothing more went to the old destination
    # Back to stderr, for the fixture's log checks.
    px.config_path.write_text(mailenv.to_yaml(px.config))
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded", after=stderr_size)
