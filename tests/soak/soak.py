#!/usr/bin/env python3
"""make soak: mixed IMAP and POP3 traffic through Portcullis, with infected messages, for
SOAK_MINUTES (default 10), sampling the proxy's RSS, fd count and the clients' error counts every
SOAK_INTERVAL seconds. At the end it prints the series and fails if RSS or fds kept growing
(last quarter vs second quarter, beyond a tolerance) or any client operation failed.

Not part of make test / CI (it runs for minutes). Uses the integration environment: a real
Dovecot, real redis-server, the real libclamav engine with the generated EICAR signatures.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
import clients  # noqa: E402
import mailenv  # noqa: E402
import malware  # noqa: E402

MINUTES = float(os.environ.get("SOAK_MINUTES", "10"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "10"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "6"))
USERS = {f"soak{i}": f"soakpw{i}" for i in range(8)}


proc_stats = clients.proc_stats  # (RSS kB, open fds)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: list[str] = []

    def done(self, err: str | None = None):
        with self.lock:
            if err:
                self.errors.append(err)
            else:
                self.ok += 1


def imap_round(px, certs, rng, c: Counters, infected: set[bytes]):
    user = rng.choice(list(USERS))
    try:
        m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                              ssl_context=mailenv.ssl_context(certs.ca), timeout=30)
        m.login(user, USERS[user])
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1:*", "(UID BODY.PEEK[])")
        for d in data:
            if isinstance(d, tuple) and d[1] in infected:
                raise AssertionError("an infected message was delivered")
        if rng.random() < 0.3:
            m.noop()
        m.logout()
        c.done()
    except Exception as e:  # noqa: BLE001
        c.done(f"imap {user}: {e!r}")


def pop3_round(px, certs, rng, c: Counters, infected: set[bytes]):
    user = rng.choice(list(USERS))
    try:
        p = poplib.POP3_SSL(mailenv.LOCAL, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                            timeout=30)
        p.user(user)
        p.pass_(USERS[user])
        n, _ = p.stat()
        for i in range(1, n + 1):
            body = b"\r\n".join(p.retr(i)[1]) + b"\r\n"
            if body in infected:
                raise AssertionError("an infected message was delivered")
        p.quit()
        c.done()
    except Exception as e:  # noqa: BLE001
        c.done(f"pop3 {user}: {e!r}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    work.chmod(0o755)
    certs = mailenv.make_certs(work / "certs")
    db = Path(malware.write_db(str(work / "db"))).parent
    dv = mailenv.Dovecot().start(work / "dovecot", users=USERS, ssl=True, cert=certs.backend,
                                 key=certs.backend_key)
    redis = mailenv.Redis().start(work / "redis")
    infected = set(malware.INFECTED.values())
    for i, u in enumerate(USERS):
        msgs = mailenv.gen_messages(15, seed=900 + i)
        msgs += list(malware.MESSAGES[k].data for k in list(malware.MESSAGES)[i % 5::5])
        dv.deliver(u, msgs)
    cfg = mailenv.proxy_config(certs, dv, overrides={
        "log": {"level": "info"},
        "scan": {"enabled": True, "database_dir": str(db)},
        "redis": {"host": mailenv.LOCAL, "port": redis.port, "prefix": "soak:"},
    })
    px = mailenv.Proxy().start(work / "proxy", cfg)
    stop = threading.Event()
    c = Counters()

    def client(seed: int):
        rng = random.Random(seed)
        while not stop.is_set():
            (imap_round if rng.random() < 0.6 else pop3_round)(px, certs, rng, c, infected)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    samples = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < MINUTES * 60:
            time.sleep(INTERVAL)  # the sampling period of the soak's RSS/fd series
            rss, fds = proc_stats(px.pid)
            with c.lock:
                row = (round(time.monotonic() - t0), rss, fds, c.ok, len(c.errors))
            samples.append(row)
            print("t=%4ds rss=%7d kB fds=%4d sessions_ok=%6d errors=%d" % row, flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        problems = px.check_log()
        px.stop()
        dv.stop()
        redis.stop()
    failed = False
    if c.errors:
        print(f"FAIL: {len(c.errors)} client errors, e.g. {c.errors[:3]}")
        failed = True
    if problems:
        print(f"FAIL: proxy log problems: {problems[:3]}")
        failed = True
    if len(samples) >= 8:
        q = len(samples) // 4
        mid = samples[q:2 * q]
        last = samples[-q:]
        rss_mid = max(s[1] for s in mid)
        rss_last = max(s[1] for s in last)
        fds_mid = max(s[2] for s in mid)
        fds_last = max(s[2] for s in last)
        print(f"rss second quarter max {rss_mid} kB, last quarter max {rss_last} kB; "
              f"fds {fds_mid} → {fds_last}")
        if rss_last > rss_mid * 1.10 + 2048:
            print("FAIL: RSS keeps growing")
            failed = True
        if fds_last > fds_mid + 2 * CLIENTS:
            print("FAIL: fd count keeps growing")
            failed = True
    print(f"soak: {c.ok} sessions, {len(c.errors)} errors in {MINUTES} min: "
          f"{'FAILED' if failed else 'passed'}")
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
