#!/usr/bin/env python3
"""make soak: mixed IMAP and POP3 traffic through a real Portcullis (scanning on: real Dovecot,
real redis-server, libclamav with the generated test signatures) for SOAK_SECONDS (default 1800),
with faults injected every SOAK_FAULT_EVERY seconds (default 30), in turn:

  tmpdir   every entry of the proxy's scan tmpdir removed (its private work directory included)
  redis    redis-server SIGKILLed by its PID, restarted on the same port
  backend  Dovecot stopped by its PID, restarted on the same ports (same maildirs)
  reload   SIGHUP to the proxy (configuration and signature reload)

Every SOAK_INTERVAL seconds (default 10) it samples the proxy's RSS, open fds (/proc/PID/fd) and
/metrics portcullis_scan_budget_bytes{state="used"}. At the end it asserts:

  - zero infected messages delivered: no download returned the original bytes of an infected
    message or the raw EICAR marker (a notice, a replacement or an error are all fine);
  - RSS and fds flat: after the warm-up (the first SOAK_WARMUP seconds, default 60), the median
    of the last third of the samples is within tolerance of the median of the first third
    (RSS: +10 % + 4 MB; fds: +8);
  - the scan budget used returns to 0 within 30 s once the clients stop;
  - the proxy is still running.

Client errors are counted, not fatal: faults make some sessions fail by design. Prints a summary
and writes build/soak/results.json. Not part of make test / CI.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "integration"))
import clients  # noqa: E402
import mailenv  # noqa: E402
import malware  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "1800"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "10"))
FAULT_EVERY = float(os.environ.get("SOAK_FAULT_EVERY", "30"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "60"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "6"))
BINARY = os.environ.get("SOAK_BINARY", str(REPO / "build" / "portcullis"))
RESULTS = Path(os.environ.get("SOAK_RESULTS", str(REPO / "build" / "soak" / "results.json")))
USERS = {f"soak{i}": f"soakpw{i}" for i in range(8)}
MARK = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
FAULTS = ("tmpdir", "redis", "backend", "reload")


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: list[str] = []
        self.infected_seen = 0       # downloads of a message stored infected
        self.infected_delivered: list[str] = []

    def done(self, err: str | None = None):
        with self.lock:
            if err:
                self.errors.append(err)
            else:
                self.ok += 1

    def judge(self, what: str, body: bytes, infected: set[bytes], stored_infected: bool):
        """One downloaded message: infected bytes reaching the client fail the soak."""
        with self.lock:
            if stored_infected:
                self.infected_seen += 1
            if body in infected or MARK in body:
                self.infected_delivered.append(what)


def imap_round(px, certs, rng, c: Counters, infected: set[bytes]):
    user = rng.choice(list(USERS))
    try:
        m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                              ssl_context=mailenv.ssl_context(certs.ca), timeout=30)
        m.login(user, USERS[user])
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1:*", "(UID BODY.PEEK[])")
        for d in data:
            if isinstance(d, tuple):
                c.judge(f"imap {user} {d[0][:40]!r}", d[1], infected, False)
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
            if rng.random() < 0.2:
                lines = p.top(i, 5)[1]
            else:
                lines = p.retr(i)[1]
            body = b"\r\n".join(lines) + b"\r\n"
            c.judge(f"pop3 {user} msg {i}", body, infected, False)
        p.quit()
        c.done()
    except Exception as e:  # noqa: BLE001
        c.done(f"pop3 {user}: {e!r}")


class Env:
    def __init__(self, work: Path):
        self.work = work
        self.certs = mailenv.make_certs(work / "certs")
        self.db = Path(malware.write_db(str(work / "db"))).parent
        self.scantmp = work / "scantmp"
        self.scantmp.mkdir()
        self.scantmp.chmod(0o1777)
        self.dv = mailenv.Dovecot()
        self.start_dovecot()
        self.redis = mailenv.Redis().start(work / "redis")
        for i, u in enumerate(USERS):
            msgs = mailenv.gen_messages(15, seed=900 + i)
            msgs += list(malware.MESSAGES[k].data for k in list(malware.MESSAGES)[i % 5::5])
            self.dv.deliver(u, msgs)
        cfg = mailenv.proxy_config(self.certs, self.dv, overrides={
            "log": {"level": "info"},
            "scan": {"enabled": True, "database_dir": str(self.db), "tmpdir": str(self.scantmp)},
            "redis": {"host": mailenv.LOCAL, "port": self.redis.port, "prefix": "soak:"},
        })
        self.px = mailenv.Proxy().start(work / "proxy", cfg, binary=BINARY)

    def start_dovecot(self, ports=None):
        self.dv.start(self.work / "dovecot", users=USERS, ssl=True, cert=self.certs.backend,
                      key=self.certs.backend_key, ports=ports)

    def fault(self, kind: str) -> str:
        if kind == "tmpdir":
            gone = 0
            for e in self.scantmp.iterdir():
                shutil.rmtree(e, ignore_errors=True) if e.is_dir() else e.unlink()
                gone += 1
            return f"removed {gone} entries of {self.scantmp}"
        if kind == "redis":
            port, pid = self.redis.port, self.redis.pid
            os.kill(pid, signal.SIGKILL)
            self.redis.proc.wait(timeout=10)
            self.redis.pid = None
            self.redis.start(self.work / "redis", port=port)
            return f"redis pid {pid} killed, restarted as {self.redis.pid}"
        if kind == "backend":
            ports, pid = dict(self.dv.ports), self.dv.pid
            self.dv.stop()
            self.start_dovecot(ports)
            return f"dovecot pid {pid} stopped, restarted as {self.dv.pid}"
        os.kill(self.px.pid, signal.SIGHUP)
        return f"SIGHUP to proxy pid {self.px.pid}"

    def budget_used(self) -> float | None:
        try:
            return self.px.metric("portcullis_scan_budget_bytes", {"state": "used"})
        except Exception:  # noqa: BLE001
            return None

    def stop(self):
        problems = self.px.check_log() if self.px.pid else []
        for s in (self.px, self.dv, self.redis):
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        return problems


def flat(series: list[float], rel: float, abs_: float) -> tuple[bool, float, float]:
    third = max(1, len(series) // 3)
    first = statistics.median(series[:third])
    last = statistics.median(series[-third:])
    return last <= first * (1 + rel) + abs_, first, last


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    work.chmod(0o755)
    env = Env(work)
    px = env.px
    infected = set(malware.INFECTED.values())
    stop = threading.Event()
    c = Counters()

    def client(seed: int):
        rng = random.Random(seed)
        while not stop.is_set():
            (imap_round if rng.random() < 0.6 else pop3_round)(px, env.certs, rng, c, infected)

    def feeder():
        # Fresh mail (unique bytes, so no cached verdict applies) keeps the engine scanning
        # through every fault: one infected (in turn plain, base64, zip, nested, QP) and one
        # clean message every 3 s.
        rng = random.Random(7)
        forms = (lambda s: malware.plain(malware.EICAR, s),
                 lambda s: malware.attachment(malware.EICAR, s),
                 lambda s: malware.attachment(malware.zipped(malware.EICAR), s, "e.zip",
                                              "application/zip"),
                 lambda s: malware.nested(malware.EICAR, s),
                 lambda s: malware.quoted_printable(malware.EICAR, s))
        n = 0
        while not stop.wait(3):
            n += 1
            bad = forms[n % len(forms)](f"soak fresh {n}")
            infected.add(bad)
            try:
                env.dv.deliver(rng.choice(list(USERS)), [bad, malware.clean(f"soak clean {n}")])
            except Exception as e:  # noqa: BLE001  (Dovecot restarting: the maildir is there)
                c.done(f"deliver: {e!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=feeder, daemon=True))
    for t in threads:
        t.start()
    samples: list[dict] = []
    faults: list[dict] = []
    t0 = time.monotonic()
    next_fault = t0 + FAULT_EVERY
    fi = 0
    alive = True
    try:
        while time.monotonic() - t0 < SECONDS:
            now = time.monotonic()
            if now >= next_fault:
                kind = FAULTS[fi % len(FAULTS)]
                fi += 1
                try:
                    what = env.fault(kind)
                except Exception as e:  # noqa: BLE001
                    what = f"fault failed: {e!r}"
                faults.append({"t": round(now - t0, 1), "fault": kind, "what": what})
                print(f"t={now - t0:6.1f}s fault {kind}: {what}", flush=True)
                next_fault = now + FAULT_EVERY
            time.sleep(min(INTERVAL, max(0.1, next_fault - time.monotonic())))
            if not mailenv.pid_alive(px.pid):
                alive = False
                print("the proxy is gone", flush=True)
                break
            if samples and time.monotonic() - t0 - samples[-1]["t"] < INTERVAL:
                continue
            rss, fds = clients.proc_stats(px.pid)
            with c.lock:
                row = {"t": round(time.monotonic() - t0, 1), "rss_kb": rss, "fds": fds,
                       "budget_used": env.budget_used(), "sessions_ok": c.ok,
                       "errors": len(c.errors), "infected_delivered": len(c.infected_delivered)}
            samples.append(row)
            print("t={t:6.1f}s rss={rss_kb:7d} kB fds={fds:4d} budget_used={budget_used} "
                  "ok={sessions_ok} errors={errors} infected_delivered={infected_delivered}"
                  .format(**row), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    # idle: the used budget must come back to 0
    budget_idle = None
    end = time.monotonic() + 30
    while alive and time.monotonic() < end:
        budget_idle = env.budget_used()
        if budget_idle == 0:
            break
        time.sleep(0.5)  # polling the metric while the proxy drains
    problems = env.stop() if alive else []
    if not alive:
        env.stop()

    checks: dict[str, dict] = {}
    checks["proxy_alive"] = {"ok": alive}
    checks["zero_infected_delivered"] = {"ok": not c.infected_delivered,
                                         "delivered": len(c.infected_delivered),
                                         "examples": c.infected_delivered[:5]}
    steady = [s for s in samples if s["t"] >= WARMUP]
    if len(steady) >= 6:
        ok, a, b = flat([s["rss_kb"] for s in steady], 0.10, 4096)
        checks["rss_flat"] = {"ok": ok, "first_third_median_kb": a, "last_third_median_kb": b}
        ok, a, b = flat([s["fds"] for s in steady], 0.0, 8)
        checks["fds_flat"] = {"ok": ok, "first_third_median": a, "last_third_median": b}
    else:
        checks["rss_flat"] = checks["fds_flat"] = {"ok": False, "why": "too few samples"}
    checks["budget_idle_zero"] = {"ok": budget_idle == 0, "budget_used_idle": budget_idle}
    failed = [k for k, v in checks.items() if not v["ok"]]
    result = {"seconds": SECONDS, "clients": CLIENTS, "sessions_ok": c.ok,
              "client_errors": len(c.errors), "error_examples": c.errors[:5],
              "log_problems": problems[:10], "faults": faults, "samples": samples,
              "checks": checks, "passed": not failed}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print("== soak summary")
    for k, v in checks.items():
        print(f"  {k}: {'ok' if v['ok'] else 'FAIL'} "
              f"{json.dumps({x: y for x, y in v.items() if x != 'ok'})}")
    print(f"  sessions ok {c.ok}, client errors {len(c.errors)} (faults cause some), "
          f"faults {len(faults)}, log problems {len(problems)}")
    print(f"soak: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)}; {RESULTS}")
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
