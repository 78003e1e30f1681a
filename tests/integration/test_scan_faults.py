"""Failing closed (issue 16): faults of the scan work directory during traffic, with the real
libclamav, Dovecot and Redis.

Without the checks libclamav answers CL_CLEAN for infected mail when its work directory is
removed, read-only or on a full filesystem (measured: scanners/clamav.c), and the false clean
verdict was cached in the worker and in Redis. Here every infected message must still be replaced
(by the infected notice, or by the error notice: scan.error_action block), nothing may be cached
as clean, the canary alarm must show on /healthz and /metrics, and the proxy must recover when the
directory is fixed. The work directory's parent (scan.tmpdir) is a tmpfs the test mounts, so the
test controls it; read-only is a read-only bind mount (as root, chmod 0500 changes nothing).
"""
from __future__ import annotations

import hashlib
import imaplib
import os
import subprocess
import time
from pathlib import Path

import pytest

import clients
import mailenv
import malware

HOST = mailenv.LOCAL
PASSWORD = "scan-faults-pw"
INFECTED = ["plain", "base64", "zip_base64", "nested_rfc822", "quoted_printable",
            "qp_attachment", "unknown_first_header"]
CLEAN = ["clean", "near_plain"]
LAYOUT = INFECTED + CLEAN
UID = {n: i + 1 for i, n in enumerate(LAYOUT)}


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def scan_tmpfs(env_tmp, request):
    """A small tmpfs as scan.tmpdir, unmounted (with anything bound inside) afterwards."""
    d = env_tmp / f"scan-tmpfs-{request.node.name[:40]}"
    d.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(d))
    yield d
    for sub in sorted(d.glob("portcullis-scan.*")):
        subprocess.run(["umount", str(sub)], capture_output=True)
    subprocess.run(["umount", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    db = env_tmp / "scan-faults-db"
    malware.write_db(str(db))
    return db


_users = iter(range(1, 1000))


def new_user(dovecot) -> str:
    user = f"scanfault{os.getpid()}-{next(_users)}"
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [malware.MESSAGES[n].data for n in LAYOUT])
    return user


def start(proxy_factory, scan_db, tmpdir: Path, redis=None, prefix: str = "", **scan):
    over = {"scan": {"enabled": True, "database_dir": str(scan_db), "threads": 2,
                     "tmpdir": str(tmpdir), "tmpdir_min_free": "64k", **scan}}
    if redis is not None:
        over["redis"] = {"host": HOST, "port": redis.port, "prefix": prefix}
    px = proxy_factory(**over)
    if redis is not None:
        px.wait_redis_ready()
    return px


def work_dir(tmpdir: Path) -> Path:
    dirs = list(tmpdir.glob("portcullis-scan.*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def fetch_all(px, certs, user: str, names: list[str]) -> dict[str, bytes]:
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=30)
    try:
        m.login(user, PASSWORD)
        m.select("INBOX", readonly=True)
        out = {}
        for n in names:
            typ, data = m.uid("FETCH", str(UID[n]), "(BODY.PEEK[])")
            assert typ == "OK", (n, typ, data)
            out[n] = data[0][1]
        m.logout()
        return out
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def assert_never_delivered(got: dict[str, bytes], verdicts=(b"infected", b"blocked")) -> None:
    """Every infected message was replaced by a notice (never the original)."""
    for n, body in got.items():
        orig = malware.MESSAGES[n].data
        assert body != orig, f"{n}: the infected original was delivered"
        assert malware.EICAR not in body, n
        v = malware.header_text(body, "X-Portcullis-Verdict")
        assert v is not None and v.split(";")[0].encode() in verdicts, (n, v)


def healthz(px) -> tuple[int, str]:
    return px.http_get("/healthz")


def wait_health(px, code: int, timeout: float = 15.0) -> str:
    seen = []

    def ok():
        st, body = healthz(px)
        seen[:] = [(st, body)]
        return (True, body) if st == code else None
    return clients.wait_for(ok, timeout, interval=0.1,
                            what=lambda: f"/healthz {code} (last {seen})")[1]


def redis_clean_verdicts(redis, prefix: str, names: list[str]) -> list[str]:
    """Redis keys holding a clean verdict for any of `names`."""
    bad = []
    for key in redis.command("KEYS", prefix + "vc:*") or []:
        val = redis.command("GET", key)
        for n in names:
            sha = hashlib.sha256(malware.MESSAGES[n].data).hexdigest()
            if sha in key and isinstance(val, str) and val.startswith("v1 C"):
                bad.append(f"{n}: {key} = {val}")
    return bad


def ro_bind(d: Path) -> None:
    run("mount", "--bind", str(d), str(d))
    run("mount", "-o", "remount,ro,bind", str(d))


# ---- the faults --------------------------------------------------------------------------------

def test_work_dir_removed_during_traffic(proxy_factory, dovecot, scan_db, scan_tmpfs, certs,
                                         redis):
    """A /tmp cleaner removes the work directory before every download: it is made again
    (0700) and every infected message is still judged infected; the scanner stays healthy."""
    user = new_user(dovecot)
    pfx = f"sf-rm-{os.getpid()}:"
    px = start(proxy_factory, scan_db, scan_tmpfs, redis, pfx)
    got = {}
    for n in INFECTED:
        run("rm", "-rf", str(work_dir(scan_tmpfs)))
        got.update(fetch_all(px, certs, user, [n]))
        wd = work_dir(scan_tmpfs)
        assert wd.is_dir() and (wd.stat().st_mode & 0o777) == 0o700
    assert_never_delivered(got, verdicts=(b"infected",))
    assert "was missing: made again" in px.log()
    assert healthz(px)[0] == 200
    assert px.metric("portcullis_scan_canary_ok") == 1
    assert not redis_clean_verdicts(redis, pfx, INFECTED)


def test_read_only_work_dir_fails_closed_and_recovers(proxy_factory, dovecot, scan_db,
                                                      scan_tmpfs, certs, redis):
    user = new_user(dovecot)
    pfx = f"sf-ro-{os.getpid()}:"
    px = start(proxy_factory, scan_db, scan_tmpfs, redis, pfx)
    assert healthz(px)[0] == 200
    assert px.metric("portcullis_scan_canary_ok") == 1
    wd = work_dir(scan_tmpfs)
    mark = px.log_mark()
    ro_bind(wd)
    try:
        got = fetch_all(px, certs, user, INFECTED)
        assert_never_delivered(got)
        # Clean mail is not judged either (error_action: block): nothing passes unjudged.
        clean = fetch_all(px, certs, user, CLEAN)
        for n, body in clean.items():
            assert body != malware.MESSAGES[n].data, n
        px.wait_log("event=scan_canary_failed", after=mark, timeout=15)
        body = wait_health(px, 503)
        assert "canary" in body and "Read-only file system" in body, body
        assert px.metric("portcullis_scan_canary_ok") == 0
        assert px.metric("portcullis_scan_canary_failures_total") >= 1
        assert px.metric("portcullis_scan_faults_total", {"kind": "work_dir"}) >= 1
        assert not redis_clean_verdicts(redis, pfx, LAYOUT)
    finally:
        run("umount", str(wd))
    px.wait_log("event=scan_canary_ok", after=mark, timeout=15)
    wait_health(px, 200)
    assert px.metric("portcullis_scan_canary_ok") == 1
    # Fetched again after the repair: judged now, still replaced; clean mail passes again.
    got = fetch_all(px, certs, user, INFECTED)
    assert_never_delivered(got, verdicts=(b"infected",))
    clean = fetch_all(px, certs, user, CLEAN)
    for n, body in clean.items():
        assert body == malware.MESSAGES[n].data, n
    assert not redis_clean_verdicts(redis, pfx, INFECTED)


def test_full_tmpfs_fails_closed_and_recovers(proxy_factory, dovecot, scan_db, scan_tmpfs,
                                              certs, redis):
    user = new_user(dovecot)
    pfx = f"sf-full-{os.getpid()}:"
    px = start(proxy_factory, scan_db, scan_tmpfs, redis, pfx)
    mark = px.log_mark()
    fill = scan_tmpfs / "fill"
    subprocess.run(["dd", "if=/dev/zero", f"of={fill}", "bs=64k", "count=1000"],
                   capture_output=True)  # stops at ENOSPC: that is the point
    try:
        got = fetch_all(px, certs, user, INFECTED)
        assert_never_delivered(got)
        px.wait_log("event=scan_canary_failed", after=mark, timeout=15)
        body = wait_health(px, 503)
        assert "filesystem full" in body, body
        m = px.metrics()
        assert m[("portcullis_scan_canary_ok", frozenset())] == 0
        assert not redis_clean_verdicts(redis, pfx, INFECTED)
    finally:
        fill.unlink()
    px.wait_log("event=scan_canary_ok", after=mark, timeout=15)
    wait_health(px, 200)
    got = fetch_all(px, certs, user, INFECTED)
    assert_never_delivered(got, verdicts=(b"infected",))
    assert not redis_clean_verdicts(redis, pfx, INFECTED)


def test_clean_verdict_from_before_the_alarm_is_not_trusted(proxy_factory, dovecot, scan_db,
                                                            scan_tmpfs, certs, redis):
    """A silently failing engine said "clean" for an infected message and it was cached (here
    written into Redis by hand, dated after the last passing canary). Once the canary catches
    the fault, that cached verdict is no longer used — not from Redis, not from the worker's
    cache — even after the recovery: the message is judged again and replaced."""
    user = new_user(dovecot)
    pfx = f"sf-win-{os.getpid()}:"
    px = start(proxy_factory, scan_db, scan_tmpfs, redis, pfx)
    # The engine string of the cache key, from a real entry.
    fetch_all(px, certs, user, ["clean"])
    keys = redis.command("KEYS", pfx + "vc:*")
    assert len(keys) == 1, keys
    engine = keys[0].split("}:", 1)[1]
    victim = "base64"
    sha = hashlib.sha256(malware.MESSAGES[victim].data).hexdigest()
    poisoned = f"{pfx}vc:{{{sha}}}:{engine}"
    redis.command("SET", poisoned, f"v1 C {int(time.time())} - -", "PX", "600000")
    # What the fault did before it was caught: the false clean verdict is served (and now sits
    # in a worker's cache too).
    assert fetch_all(px, certs, user, [victim])[victim] == malware.MESSAGES[victim].data
    mark = px.log_mark()
    wd = work_dir(scan_tmpfs)
    ro_bind(wd)
    try:
        got = fetch_all(px, certs, user, ["zip_base64"])  # a scan meets the fault
        assert_never_delivered(got)
        px.wait_log("event=scan_canary_failed", after=mark, timeout=15)
    finally:
        run("umount", str(wd))
    px.wait_log("event=scan_canary_ok", after=mark, timeout=15)
    for _ in range(2):  # both workers' caches (the sessions may land on either)
        got = fetch_all(px, certs, user, [victim])
        assert_never_delivered(got, verdicts=(b"infected",))
    assert redis.command("GET", poisoned).startswith("v1 I"), "the rescan overwrote the entry"


def test_session_memo_clean_verdict_from_before_the_alarm_is_not_trusted(
        proxy_factory, dovecot, scan_db, scan_tmpfs, certs, redis):
    """The same false "clean" as above, but remembered by an open session (its memo of the
    selection's verdicts, which decides parts without a new scan). After the canary caught the
    fault, a part of that message fetched on the same connection is judged again: replaced."""
    user = new_user(dovecot)
    pfx = f"sf-memo-{os.getpid()}:"
    px = start(proxy_factory, scan_db, scan_tmpfs, redis, pfx)
    fetch_all(px, certs, user, ["clean"])
    keys = redis.command("KEYS", pfx + "vc:*")
    assert len(keys) == 1, keys
    engine = keys[0].split("}:", 1)[1]
    victim = "base64"
    orig = malware.MESSAGES[victim].data
    sha = hashlib.sha256(orig).hexdigest()
    redis.command("SET", f"{pfx}vc:{{{sha}}}:{engine}", f"v1 C {int(time.time())} - -",
                  "PX", "600000")
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=30)
    try:
        m.login(user, PASSWORD)
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", str(UID[victim]), "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == orig  # the fault's false clean, now in the memo
        mark = px.log_mark()
        wd = work_dir(scan_tmpfs)
        ro_bind(wd)
        try:
            assert_never_delivered(fetch_all(px, certs, user, ["zip_base64"]))
            px.wait_log("event=scan_canary_failed", after=mark, timeout=15)
        finally:
            run("umount", str(wd))
        px.wait_log("event=scan_canary_ok", after=mark, timeout=15)
        typ, data = m.uid("FETCH", str(UID[victim]), "(BODY.PEEK[TEXT])")
        assert typ == "OK", (typ, data)
        text = orig.split(b"\r\n\r\n", 1)[1]
        got = data[0][1]
        assert got != text, "a part was passed on the memo's untrusted clean verdict"
        assert b"withheld by the mail security gateway because it contains malware" in got, \
            got[:300]
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
