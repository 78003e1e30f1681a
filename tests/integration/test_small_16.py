"""Issue 16, the smaller items: the admin listener under a flood of idle connections, the log
writer thread, start-up failures that exit without leaks."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

import mailenv
import malware


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "scan-db-small16"
    malware.write_db(str(d))
    return d


def test_admin_healthz_under_idle_flood(proxy_factory):
    """64 idle TCP connections to the admin port (the old limit was 32, refused beyond): /healthz
    still answers at once, and the idle ones are closed after admin.idle_timeout."""
    px = proxy_factory(admin={"idle_timeout": "2s", "max_connections": 16})
    assert px.http_get("/healthz") == (200, "ok\n")
    idle = []
    try:
        for _ in range(64):
            s = socket.create_connection((mailenv.LOCAL, px.admin_port), timeout=5)
            idle.append(s)
        t0 = time.monotonic()
        for _ in range(5):
            assert px.http_get("/healthz", timeout=2) == (200, "ok\n")
        assert time.monotonic() - t0 < 2.0
        # Every idle connection is closed by the proxy: evicted or timed out (2 s).
        deadline = time.monotonic() + 6
        for s in idle:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in idle:
            s.close()
    assert px.http_get("/healthz") == (200, "ok\n")


def test_admin_slow_request_keeps_its_slot_until_timeout(proxy_factory):
    """A connection that sends part of a request is closed after the idle timeout, not kept."""
    px = proxy_factory(admin={"idle_timeout": "1s"})
    s = socket.create_connection((mailenv.LOCAL, px.admin_port), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert 0.5 < time.monotonic() - t0 < 4
    finally:
        s.close()


def _start_fails(proxy_factory, **kw):
    """Start the proxy with a config that fails at start-up; it must exit 1 with no sanitizer
    report (under make SANITIZE=1, LeakSanitizer checks every allocation at exit)."""
    px = proxy_factory(wait=False, **kw)
    rc = px.proc.wait(timeout=30)
    px.pid = None  # exited on purpose: not a stop() problem
    problems = [p for p in px.check_log()]
    assert rc == 1, px.log()[-2000:]
    assert not problems, "\n".join(problems) + "\n" + px.log()[-4000:]
    return px


def test_startup_failure_listener_port_in_use(proxy_factory):
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind((mailenv.LOCAL, 0))
    busy.listen(1)
    try:
        px = _start_fails(proxy_factory, ports={"pop3": busy.getsockname()[1]})
        assert "bind" in px.log()
    finally:
        busy.close()


def test_startup_failure_admin_port_in_use(proxy_factory):
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind((mailenv.LOCAL, 0))
    busy.listen(1)
    try:
        _start_fails(proxy_factory, admin={"bind": f"{mailenv.LOCAL}:{busy.getsockname()[1]}"})
    finally:
        busy.close()


def test_startup_failure_bad_certificate(proxy_factory, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    _start_fails(proxy_factory, tls={"certificates": [{"cert": str(bad), "key": str(bad)}]})


def test_startup_failure_bad_signatures_dir(proxy_factory, tmp_path):
    empty = tmp_path / "no-signatures"
    empty.mkdir()
    _start_fails(proxy_factory, scan={"enabled": True, "database_dir": str(empty)})


def test_failed_engine_reload_reports_the_limits_in_effect(proxy_factory, scan_db, env_tmp,
                                                            tmp_path):
    """A reload whose engine cannot load: the old engine keeps serving with its old limits, and
    the log says so explicitly (part=scanner, the limits in effect), not the configuration's."""
    import signal
    px = proxy_factory(scan={"enabled": True, "database_dir": str(scan_db), "threads": 1,
                             "tmpdir": str(env_tmp), "max_scan_size": "10M"})
    px.wait_log("event=scanner_ready")
    empty = tmp_path / "empty-db"
    empty.mkdir()
    cfg = mailenv.deep_merge(px.config, {"scan": {"database_dir": str(empty),
                                                  "max_scan_size": "2M"}})
    px.config_path.write_text(mailenv.to_yaml(cfg))
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    m = px.wait_log(re.compile(r"event=reload_failed part=scanner .*max_scan_size=(\d+)"),
                    after=mark, timeout=60)
    assert int(m.group(1)) == 10 * 1024 * 1024
    assert px.http_get("/healthz")[0] in (200, 503)
