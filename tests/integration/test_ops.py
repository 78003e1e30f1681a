"""Operations (issue 7): /metrics and /healthz, privilege drop, reload safety, the Debian package."""

from __future__ import annotations

import imaplib
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import clients
import mailenv
import malware


def scrape(px) -> dict[tuple, float]:
    status, body = px.http_get("/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body):  # raises on malformed exposition
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(m, name, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


LISTENERS = (("imaps", "imap"), ("imap", "imap"), ("pop3s", "pop3"), ("pop3", "pop3"))


def settled(px, probed: bool = False) -> dict:
    """Wait until no connection is open on any listener and every session close has been
    accounted for (and, with `probed`, every listener has counted the start-up port probe);
    return that scrape. A close is accounted for once its `event=close` line is in the log: the
    proxy writes it after the close's counters (active, closed, relayed bytes), so the log is
    read first and the scrape must show exactly as many closes."""
    def ok():
        logged = px.log().count("event=close reason=")
        m = scrape(px)
        if any(val(m, "portcullis_connections_active", listener=li, protocol=pr)
               for li, pr in LISTENERS):
            return None
        if logged != sum(val(m, "portcullis_sessions_closed_total", protocol=pr)
                         for pr in ("imap", "pop3")):
            return None
        if probed and not all(val(m, "portcullis_connections_accepted_total", listener=li,
                                  protocol=pr) for li, pr in LISTENERS):
            return None
        return m
    return clients.wait_for(ok, 10, what="every connection closed and counted")


def test_metrics_move_with_a_scripted_session(proxy_factory, dovecot, certs):
    px = proxy_factory()
    status, body = px.http_get("/healthz")
    assert (status, body) == (200, "ok\n")
    assert px.http_get("/nope")[0] == 404
    before = settled(px, probed=True)  # the start-up port probes accepted, counted and closed
    ctx = mailenv.ssl_context(certs.ca)
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=ctx, timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "wrong")
    m.login("alice", "alicepw")
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1:*", "(BODY.PEEK[])")
    fetched = sum(len(d[1]) for d in data if isinstance(d, tuple))
    mid = scrape(px)
    assert val(mid, "portcullis_connections_active", listener="imaps", protocol="imap") == \
        val(before, "portcullis_connections_active", listener="imaps", protocol="imap") + 1
    m.logout()
    plain = imaplib.IMAP4(mailenv.LOCAL, px.port("imap"), timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        plain.login("alice", "alicepw")  # refused before TLS
    plain.logout()
    after = settled(px)

    def d(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    assert d("portcullis_connections_accepted_total", listener="imaps", protocol="imap") == 1
    assert d("portcullis_connections_accepted_total", listener="imap", protocol="imap") == 1
    assert d("portcullis_logins_total", protocol="imap", result="ok") == 1
    assert d("portcullis_logins_total", protocol="imap", result="auth_failed") == 1
    assert d("portcullis_logins_total", protocol="imap", result="refused") == 1
    assert d("portcullis_refusals_total", reason="plaintext_login") == 1
    assert d("portcullis_relayed_bytes_total", protocol="imap", direction="to_client") >= fetched
    assert d("portcullis_sessions_closed_total", protocol="imap") == 2
    assert val(after, "portcullis_backend_up", backend="dovecot1") == 1
    assert val(after, "portcullis_connections_active", listener="imaps", protocol="imap") == 0


def test_metrics_scan_policy_and_redis(proxy_factory, dovecot, certs, env_tmp, redis):
    """Counters move for a clean fetch, an infected fetch (replaced by the notice), the policy
    decisions of the logins and the Redis commands behind them; histograms and the engine info
    are well-formed."""
    db = env_tmp / "ops-scan-db"
    malware.write_db(str(db))
    user = "ops-metrics"
    dovecot.add_user(user, "ops-pw-1")
    clean = malware.MESSAGES["near_plain"].data
    dovecot.deliver(user, [clean, malware.MESSAGES["plain"].data])
    px = proxy_factory(
        scan={"enabled": True, "database_dir": str(db), "threads": 2, "tmpdir": str(env_tmp)},
        redis={"host": mailenv.LOCAL, "port": redis.port, "prefix": "ops-metrics:"},
        policy={"user_fail_limit": 100, "addr_fail_limit": 1000})
    px.wait_metric("portcullis_redis_connections_ready", predicate=lambda v: v >= 1)
    before = scrape(px)
    ctx = mailenv.ssl_context(certs.ca)
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=ctx, timeout=15)
    m.login(user, "ops-pw-1")
    m.select("INBOX", readonly=True)
    got_clean = m.fetch("1", "(BODY.PEEK[])")[1][0][1]
    got_inf = m.fetch("2", "(BODY.PEEK[])")[1][0][1]
    m.logout()
    assert got_clean == clean
    assert b"X-Portcullis-Verdict: infected" in got_inf
    after = settled(px)

    def d(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    assert d("portcullis_scan_verdicts_total", verdict="clean") == 1
    assert d("portcullis_scan_verdicts_total", verdict="infected") == 1
    assert d("portcullis_scan_actions_total", action="pass") == 1
    assert d("portcullis_scan_actions_total", action="block") == 1
    assert d("portcullis_scan_scans_total") == 2
    assert d("portcullis_scan_duration_seconds_count") == 2
    assert d("portcullis_scan_duration_seconds_bucket", le="+Inf") == 2
    assert d("portcullis_scan_queue_depth_count") == 2
    assert d("portcullis_policy_decisions_total", decision="allow", scope="user") == 1
    assert d("portcullis_redis_commands_total") >= 3  # check ×2 + route, at the least
    assert d("portcullis_redis_errors_total", kind="reply") == 0
    assert val(after, "portcullis_redis_connections_ready") >= 1
    info = [k for k in after if k[0] == "portcullis_scan_engine_info"]
    assert len(info) == 1 and dict(info[0][1])["version"].startswith("clamav-"), info
    assert val(after, "portcullis_scan_signatures") >= 1


def test_reload_with_broken_config_keeps_serving(proxy_factory, certs):
    px = proxy_factory()
    good = px.config_path.read_text()
    px.config_path.write_text(good + "\nbogus_key: 1\n")
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reload_failed")
    assert "bogus_key" in px.log()
    # issue 18: the error's quotes are escaped: the line is logfmt, the value one field
    line = next(l for l in px.log().splitlines() if "event=reload_failed" in l)
    assert 'unknown key \\"bogus_key\\"' in line, line
    assert re.fullmatch(r'(?:[\w.]+=(?:"(?:[^"\\]|\\.)*"|[^\s"=]*)(?: |$))+', line), line
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()
    # portcullis-ctl reload: the same, with the result in its exit status and output.
    r = clients.ctl(px, "reload", check=False, timeout=60)
    assert r.returncode == 2, r  # ctl itself refuses to load the broken file
    assert "bogus_key" in r.stderr
    px.config_path.write_text(good)
    n = px.log().count("event=reloaded source=admin")
    r = clients.ctl(px, "reload", check=False, timeout=60)
    assert (r.returncode, r.stdout) == (0, "reloaded\n"), r
    assert px.log().count("event=reloaded source=admin") == n + 1
    # A file that parses but cannot be applied (a certificate that does not exist): the
    # instance refuses it and ctl reports why, exit 1; the old configuration keeps serving.
    cfg = dict(px.config)
    cfg["tls"] = dict(cfg["tls"], certificates=[{"cert": "/nonexistent/cert.pem",
                                                 "key": "/nonexistent/key.pem"}])
    bad = px.config_path.parent / "unapplicable.yaml"
    bad.write_text(mailenv.to_yaml(cfg))
    px.config_path.write_text(bad.read_text())
    r = clients.ctl(px, "reload", check=False, config=bad, timeout=60)
    px.config_path.write_text(good)
    assert r.returncode in (1, 2), r
    assert "/nonexistent/cert.pem" in r.stderr, r
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()
    # GET /reload does nothing (a crawler must not reload).
    assert px.http_get("/reload")[0] == 405


def test_second_instance_on_the_same_ports_refused(proxy_factory, certs):
    """SO_REUSEPORT would let a second process share the listening ports and take part of the
    connections: a second instance with the same configuration must refuse to start."""
    px = proxy_factory()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # exit(1) at start-up is expected
    r = subprocess.run([str(px.binary), "-c", str(px.config_path)], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode != 0
    assert "address already in use by another socket" in r.stderr, r.stderr
    # the first instance still gets every connection
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()


def test_privileges_dropped(proxy_factory, certs, env_tmp):
    """Started as root with `user:`, the process (every thread) runs as that user; started as
    root without it, it refuses to run."""
    px = proxy_factory(run_as_root=False, user=mailenv.MAIL_USER)
    pw = __import__("pwd").getpwnam(mailenv.MAIL_USER)
    # the listeners are bound (what the factory waits for) before the workers start
    deadline = time.monotonic() + 10
    while len(tids := os.listdir(f"/proc/{px.pid}/task")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(tids) >= 3  # main + 2 workers
    for tid in tids:
        status = Path(f"/proc/{px.pid}/task/{tid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(pw.pw_uid)] * 4, (tid, uid_line)
        cap = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(cap.split()[1], 16) == 0
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    m.login("alice", "alicepw")
    m.logout()
    cfg = dict(px.config)
    cfg.pop("user")
    cfg["run_as_root"] = False
    cfg["listeners"] = [dict(cfg["listeners"][0], bind=f"127.0.0.1:{mailenv.free_port()}")]
    cfg["admin"] = {"bind": f"127.0.0.1:{mailenv.free_port()}"}
    f = env_tmp / "root-refused.yaml"
    f.write_text(mailenv.to_yaml(cfg))
    r = subprocess.run([str(mailenv.REPO / mailenv.DEFAULT_BINARY), "-c", str(f)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "refusing to run as root" in r.stderr


def test_sd_notify_readiness(proxy_factory, tmp_path):
    """Type=notify: with $NOTIFY_SOCKET set (as systemd sets it) the daemon sends READY=1 once it
    listens, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP reload, and
    STOPPING=1 when SIGTERM starts the drain."""
    import socket
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        px = proxy_factory(env={"NOTIFY_SOCKET": path})

        def recv() -> dict:
            fields = sock.recv(4096).decode().splitlines()
            return dict(f.split("=", 1) for f in fields)

        assert recv().get("READY") == "1"
        os.kill(px.pid, signal.SIGHUP)
        msg = recv()
        assert msg.get("RELOADING") == "1"
        assert int(msg["MONOTONIC_USEC"]) > 0
        assert recv().get("READY") == "1"
        assert "event=reloaded" in px.log()
        os.kill(px.pid, signal.SIGTERM)
        assert recv().get("STOPPING") == "1"
        px.proc.wait(timeout=20)
        px.pid = None
    finally:
        sock.close()


def test_sigterm_drains(proxy_factory, dovecot_factory, certs):
    """SIGTERM: an idle IMAP session gets "* BYE", a FETCH of a large message in flight completes
    byte for byte, new connections are refused, and the process exits 0."""
    big = mailenv.gen_messages(1, seed=4242, sizes=[8_000_000])[0]
    dv = dovecot_factory(users={"alice": "alicepw"})
    dv.deliver("alice", [big])
    px = proxy_factory(dovecot=dv, limits={"drain_timeout": "20s"})
    ctx = mailenv.ssl_context(certs.ca)
    idle = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=ctx, timeout=15)
    idle.login("alice", "alicepw")
    idle.select("INBOX")
    # A raw client that fetches slowly, so the response is still in flight at SIGTERM.
    import socket
    raw = clients.LineClient(px.port("imaps"), ctx, timeout=15)
    raw.greeting()
    raw.send(b"a LOGIN alice alicepw\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n")
    line = raw.line()
    while not line.startswith(b"* 1 FETCH"):
        line = raw.line()
    n = int(line.rsplit(b"{", 1)[1].split(b"}")[0])
    got = raw.read_exact(100_000)
    os.kill(px.pid, signal.SIGTERM)
    # The workers stop listening, and the idle session is told and closed.
    clients.wait_for(lambda: not mailenv.port_open(px.port("imaps")), what="listeners closed")
    clients.wait_for(lambda: select.select([idle.sock], [], [], 0)[0], what="BYE to the idle one")
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        idle.noop()
        idle.noop()
    # New connections are refused.
    with pytest.raises(OSError):
        socket.create_connection((mailenv.LOCAL, px.port("imaps")), timeout=2).recv(1)
    # The FETCH in flight completes.
    got += raw.read_exact(n - len(got))
    assert got == big
    rest = raw.line() + raw.line()
    assert b"c OK" in rest
    px.proc.wait(timeout=20)
    assert px.proc.returncode == 0
    px.pid = None  # exited as it should: nothing left for the fixture to stop
    assert "event=stopping" in px.log() and "event=stopped" in px.log()
    raw.close()
