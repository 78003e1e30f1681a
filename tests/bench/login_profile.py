#!/usr/bin/python3
"""Where a login's CPU goes (issue 19): one Portcullis worker with its redis-server (the bench's
policy settings) in front of Dovecot, N logins by build/pcbench after 40 warm-up logins.

    python3 tests/bench/login_profile.py BINARY OUT [N] [MODE]

MODE callgrind (default): the proxy runs under valgrind --tool=callgrind, counters zeroed
    before the N logins (4 clients) and dumped after: OUT.1 is the dump
    (callgrind_annotate --inclusive=yes OUT.1); instructions per login = total / N.
MODE strace: strace -f -c over N sequential logins into OUT (FULL=1: -yy -tt, every call).
MODE perf: perf record -e cpu-clock over N logins at 16 clients into OUT.
MODE cpu: /proc user and system CPU per login of the proxy and its redis-server, N logins at
    16 clients, REPS times.
PRELOAD=/path/lib.so: the proxy alone runs with LD_PRELOAD (an allocator: jemalloc, tcmalloc),
    under callgrind too (valgrind's own preloads come first, the guest's ld.so adds this one).
Needs root (Dovecot), like bench.py."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/integration"))
import mailenv
import login_env
binary, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
N = int(sys.argv[3]) if len(sys.argv) > 3 else 500
mode = sys.argv[4] if len(sys.argv) > 4 else "callgrind"
work = Path(tempfile.mkdtemp(prefix="login-profile-"))
work.chmod(0o755)  # Dovecot drops privileges and must reach its files
certs = mailenv.make_certs(work / "certs")
users = {f"bench{i}": "benchpw" for i in range(8)}
dv = mailenv.Dovecot().start(work / "dv", users=users, ssl=False)
rd = mailenv.Redis().start(work / "redis")
wrapper = work / "wrap.sh"
pre = f"LD_PRELOAD={os.environ['PRELOAD']} " if os.environ.get("PRELOAD") else ""
if mode == "callgrind":
    wrapper.write_text(f"#!/bin/sh\n{pre}exec valgrind --tool=callgrind --callgrind-out-file={out} --dump-instr=no {binary} \"$@\"\n")
else:
    wrapper.write_text(f"#!/bin/sh\n{pre}exec {binary} \"$@\"\n")
wrapper.chmod(0o755)
px = login_env.start_proxy(work / "px", certs, dv, rd, wrapper, max_connections=1000, timeout=120,
                          workers=1)
port = px.port("imaps")
def run(n, c):
    res, err = login_env.run_logins(port, n, c, 8, timeout=900)
    if mode != "cpu" or not res:
        print(res or err, flush=True)
try:
    time.sleep(2)
    run(40, 4)
    time.sleep(1)
    if mode == "callgrind":
        subprocess.run(["callgrind_control", "-z", str(px.pid)], check=True, capture_output=True)
        run(N, 4)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-d", str(px.pid)], check=True, capture_output=True)
    elif mode == "strace":
        st = subprocess.Popen(["strace", "-f"] + (["-yy", "-tt"] if os.environ.get("FULL") else ["-c"]) + ["-o", str(out), "-p", str(px.pid)])
        time.sleep(1)
        run(N, 1)
        st.send_signal(2); st.wait()
    elif mode == "perf":
        st = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-o", str(out), "-p", str(px.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        run(N, 16)
        st.send_signal(2); st.wait()
    elif mode == "cpu":
        ut = login_env.cpu_ticks
        for rep in range(int(os.environ.get("REPS", "2"))):
            a, b = ut(px.pid), ut(rd.pid)
            run(N, 16)
            a2, b2 = ut(px.pid), ut(rd.pid)
            print(f"CPU {binary.name}: user {(a2[0]-a[0])*10/N:.3f} sys {(a2[1]-a[1])*10/N:.3f} ms/login; redis {(b2[0]+b2[1]-b[0]-b[1])*10/N:.3f}", flush=True)
    else:
        r0 = rd.command("INFO", "commandstats")
        run(N, 4)
        print(rd.command("INFO", "commandstats"))
finally:
    px.stop(20)
    rd.stop()
    dv.stop()
