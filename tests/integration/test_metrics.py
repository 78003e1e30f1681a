"""The on-call series of issue 18: build info, process, config reload, certificate expiry, login
and session histograms; `promtool check metrics` and docs/metrics.md against what /metrics
exposes."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import clients
import mailenv
import malware

DOC = mailenv.REPO / "docs" / "metrics.md"
_TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
# A table row of the Series section: | `name` | type | labels | meaning |
_ROW_RE = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(\w+)\s*\|", re.M)


def scrape(px) -> tuple[str, dict]:
    status, body = px.http_get("/metrics")
    assert status == 200
    return body, mailenv.parse_metrics(body)


def val(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def exposed_families(body: str) -> dict[str, str]:
    fams: dict[str, str] = {}
    for name, typ in _TYPE_RE.findall(body):
        assert name not in fams, f"# TYPE {name} twice in /metrics"
        fams[name] = typ
    return fams


def documented_families() -> dict[str, str]:
    rows = _ROW_RE.findall(DOC.read_text())
    fams: dict[str, str] = {}
    dup = sorted({n for n, _ in rows if [r[0] for r in rows].count(n) > 1})
    assert not dup, f"docs/metrics.md has more than one row for {dup}"
    for name, typ in rows:
        fams[name] = typ
    return fams


def cert_not_after(path: Path) -> float:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(path)],
                         capture_output=True, text=True, check=True).stdout
    when = out.strip().split("=", 1)[1]  # "Mar  8 12:00:00 2029 GMT"
    return datetime.strptime(when, "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=timezone.utc).timestamp()


def self_signed(dir: Path, name: str, days: int) -> tuple[Path, Path]:
    cert, key = dir / f"{name}.pem", dir / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", str(days), "-subj",
                    f"/CN={name}.test", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    return cert, key


def test_promtool_clean_and_docs_list_exactly_the_exposed_series(proxy_factory, env_tmp,
                                                                  redis):
    """With every optional part on (scanning, Redis, TLS), /metrics passes `promtool check
    metrics` and its metric families (name and type) are exactly the rows of docs/metrics.md."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run deploy/deps.sh (package prometheus)"
    db = env_tmp / "metrics-doc-db"
    malware.write_db(str(db))
    px = proxy_factory(
        scan={"enabled": True, "database_dir": str(db), "threads": 1, "tmpdir": str(env_tmp)},
        redis={"host": mailenv.LOCAL, "port": redis.port, "prefix": "metrics-doc:"})
    px.wait_metric("portcullis_scan_canary_ok", value=1)
    body, _ = scrape(px)
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stdout + r.stderr
    exposed = exposed_families(body)
    documented = documented_families()
    missing_in_doc = {n: t for n, t in exposed.items() if n not in documented}
    not_exposed = {n: t for n, t in documented.items() if n not in exposed}
    wrong_type = {n: (documented[n], t) for n, t in exposed.items()
                  if n in documented and documented[n] != t}
    assert (missing_in_doc, not_exposed, wrong_type) == ({}, {}, {}), \
        "docs/metrics.md and /metrics differ: (undocumented, documented but not exposed, " \
        "type doc≠exposed)"


def test_build_process_and_certificate_series(proxy_factory, certs, env_tmp):
    """build_info carries the version `portcullis -V` prints; the process_* series agree with
    /proc; a certificate's expiry comes from the file as loaded, and changes on reload only."""
    d = env_tmp / "metrics-expiry"
    d.mkdir(exist_ok=True)
    cert, key = self_signed(d, "expiry", days=3)
    px = proxy_factory(tls={"certificates": [
        {"cert": str(certs.server), "key": str(certs.server_key)},
        {"cert": str(cert), "key": str(key)}]})
    _, m = scrape(px)
    version = subprocess.run([str(px.binary), "-V"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    info = [k for k in m if k[0] == "portcullis_build_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == version, info
    assert m[info[0]] == 1
    assert re.match(r"\d+\.\d+", dict(info[0][1])["openssl"]), info
    fds = len(os.listdir(f"/proc/{px.pid}/fd"))
    assert abs(val(m, "process_open_fds") - fds) <= 4, (val(m, "process_open_fds"), fds)
    assert val(m, "process_max_fds") >= fds
    rss = clients.rss_kb(px.pid) * 1024
    assert 0.5 * rss < val(m, "process_resident_memory_bytes") < 2 * rss
    assert val(m, "process_virtual_memory_bytes") >= val(m, "process_resident_memory_bytes")
    assert val(m, "process_cpu_seconds_total") > 0
    started = os.stat(f"/proc/{px.pid}").st_mtime  # /proc/PID appears when the process does
    assert abs(val(m, "process_start_time_seconds") - started) < 5
    assert time.time() - 60 < val(m, "process_start_time_seconds") <= time.time()

    def expiry(path: Path, m=None) -> float:
        m = m if m is not None else scrape(px)[1]
        got = [v for k, v in m.items()
               if k[0] == "portcullis_tls_certificate_expiry_timestamp_seconds"
               and dict(k[1]).get("file") == str(path)]
        assert len(got) == 1, [k for k in m if "certificate" in k[0]]
        return got[0]

    assert expiry(certs.server, m) == cert_not_after(certs.server)
    old = cert_not_after(cert)
    assert expiry(cert, m) == old
    subj = [dict(k[1])["subject"] for k in m
            if k[0] == "portcullis_tls_certificate_expiry_timestamp_seconds"]
    assert sorted(subj) == ["CN=expiry.test", "CN=localhost"], subj
    # Renewed on disk: the series still shows the certificate in use until the reload.
    self_signed(d, "expiry", days=30)
    assert expiry(cert) == old
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded", after=mark)
    assert expiry(cert) == cert_not_after(cert) > old + 20 * 86400


def test_reload_success_gauge_flips_on_a_bad_reload(proxy_factory):
    px = proxy_factory()
    _, m = scrape(px)
    assert val(m, "portcullis_config_last_reload_successful") == 1
    t0 = val(m, "portcullis_config_last_reload_success_timestamp_seconds")
    assert time.time() - 60 < t0 <= time.time()
    good = px.config_path.read_text()
    px.config_path.write_text(good + "\nbogus_key: 1\n")
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reload_failed", after=mark)
    _, m = scrape(px)
    assert val(m, "portcullis_config_last_reload_successful") == 0
    assert val(m, "portcullis_config_last_reload_success_timestamp_seconds") == t0
    px.config_path.write_text(good)
    mark = px.log_mark()
    os.kill(px.pid, signal.SIGHUP)
    px.wait_log("event=reloaded", after=mark)
    _, m = scrape(px)
    assert val(m, "portcullis_config_last_reload_successful") == 1
    assert val(m, "portcullis_config_last_reload_success_timestamp_seconds") > t0


def test_login_and_session_histograms_move(proxy_factory, certs):
    """One IMAP login that fails and one that succeeds, one POP3 login: the login histogram
    counts each answered login by protocol, the session histogram each closed session."""
    px = proxy_factory()

    def settled():
        def ok():
            _, m = scrape(px)
            closes = px.log().count("event=close reason=")
            if closes != sum(val(m, "portcullis_sessions_closed_total", protocol=p)
                             for p in ("imap", "pop3")):
                return None
            return m
        return clients.wait_for(ok, 10, what="every close counted")

    before = settled()
    ctx = mailenv.ssl_context(certs.ca)
    t = time.monotonic()
    imap = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=ctx, timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice", "wrong")
    imap.login("alice", "alicepw")
    imap.logout()
    pop = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"), context=ctx, timeout=15)
    pop.user("bob")
    pop.pass_("bobpw")
    pop.quit()
    elapsed = time.monotonic() - t
    after = settled()

    def d(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    assert d("portcullis_login_duration_seconds_count", protocol="imap") == 2
    assert d("portcullis_login_duration_seconds_bucket", protocol="imap", le="+Inf") == 2
    assert d("portcullis_login_duration_seconds_count", protocol="pop3") == 1
    assert 0 < d("portcullis_login_duration_seconds_sum", protocol="imap") < elapsed
    for p in ("imap", "pop3"):
        assert d("portcullis_session_duration_seconds_count", protocol=p) == \
            d("portcullis_sessions_closed_total", protocol=p) >= 1
    assert 0 < d("portcullis_session_duration_seconds_sum", protocol="imap") < elapsed + 1
