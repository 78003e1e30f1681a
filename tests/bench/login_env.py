"""What cpu_ab.py and login_profile.py share: a Portcullis in front of Dovecot for login
benchmarks (the bench's policy settings, IMAPS only, plain IMAP to the backend, its own
redis-server), pcbench login runs against it, and a process's CPU from /proc."""
import os
import re
import subprocess
from pathlib import Path

import mailenv

REPO = Path(__file__).resolve().parents[2]
PCBENCH = Path(os.environ.get("PCBENCH", REPO / "build" / "pcbench"))


def start_proxy(workdir: Path, certs, dv, rd, binary: Path, *, max_connections: int,
                timeout: float, workers: int | None = None) -> mailenv.Proxy:
    """The proxy (`binary`, or a wrapper script that execs it) with the bench's policy limits
    (high enough never to refuse a login), so that a login's cost is the whole check."""
    over = {"instance": "bench", "log": {"level": "warn"},
            "tls": {"certificates": [{"cert": str(certs.server), "key": str(certs.server_key)}]},
            "limits": {"max_connections": max_connections, "preauth_timeout": "60s"},
            "health": {"enabled": False}, "redis": {"host": mailenv.LOCAL, "port": rd.port},
            "policy": {"user_login_burst": 100000, "addr_login_burst": 100000,
                       "user_max_sessions": 100000, "addr_max_sessions": 1000000}}
    if workers is not None:
        over["workers"] = workers
    be = [{"name": "be", "server": "be", "protocol": "imap", "host": mailenv.LOCAL,
           "port": dv.ports["imap"], "tls": "none"}]
    cfg = mailenv.proxy_config(certs, backends=be, overrides=over)
    cfg["listeners"] = [l for l in cfg["listeners"] if l["protocol"] == "imap"]
    return mailenv.Proxy().start(workdir, cfg, binary=binary, timeout=timeout)


def run_logins(port: int, n: int, clients: int, users: int,
               timeout: float | None = None) -> tuple[str | None, str]:
    """n logins by pcbench at `clients` clients as bench0..bench{users-1}: (its RESULT JSON
    text, None if it printed none; its stderr)."""
    r = subprocess.run([str(PCBENCH), "run", "-m", "login", "-p", str(port), "-c", str(clients),
                        "-n", str(n), "-d", "600", "-u", "bench%d", "-w", "benchpw",
                        "-U", str(users), "-l", "x"],
                       capture_output=True, text=True, timeout=timeout)
    m = re.search(r"^RESULT (.*)$", r.stdout, re.M)
    return (m.group(1) if m else None), r.stderr


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User and system CPU of `pid` so far, in clock ticks (utime, stime of /proc/PID/stat)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])
