#!/usr/bin/python3
"""Memory of N idle TLS IMAP sessions through one Portcullis binary (issue 19), for breakdowns
the bench cannot give: the bench's proxy config (with its redis-server), a tiny stand-in backend
(pcbench serve), 200 warm-up logins, then N sessions of `pcbench run -m idle` (LOGIN + IDLE).

    python3 tests/bench/idle_mem.py BINARY N OUTDIR [--mode rss|massif|memcheck] [--trim]

  rss       (default) VmRSS of the proxy and of its redis-server before and after, per session;
            --trim: then malloc_trim(0) through gdb (timed) and VmRSS again
  massif    valgrind massif; detailed snapshots OUTDIR/massif.0 (before) and massif.1 (with the
            sessions up): compare them with ms_print or a diff of the two heap trees
  memcheck  valgrind memcheck; heap blocks and bytes before and after (allocations per session)

Needs root like the bench (RLIMIT_NOFILE raised to the hard limit for large N) and build/pcbench.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "integration"))
import bench  # noqa: E402
import mailenv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("n", type=int)
    ap.add_argument("outdir")
    ap.add_argument("--mode", choices=("rss", "massif", "memcheck"), default="rss")
    ap.add_argument("--trim", action="store_true")
    ap.add_argument("--pcbench", default=str(HERE.parents[1] / "build" / "pcbench"))
    a = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary, out, pcb = Path(a.binary).resolve(), Path(a.outdir).resolve(), Path(a.pcbench)
    out.mkdir(parents=True, exist_ok=True)
    certs = mailenv.make_certs(out / "certs")
    si = bench.StandIn().start(out / "standin", pcb)
    wrap = out / "run.sh"
    vg = {"rss": "",
          "massif": f"valgrind --tool=massif --depth=40 --threshold=0.2 "
                    f"--massif-out-file={out}/massif.out.end --vgdb=yes ",
          "memcheck": "valgrind --tool=memcheck --vgdb=yes "}[a.mode]
    wrap.write_text(f'#!/bin/sh\nexec {vg}{binary} "$@"\n')
    wrap.chmod(0o755)
    px = bench.Portcullis().start(out / "px", certs, certs.server, certs.server_key,
                                  si.ports["imap"], 0, wrap)
    pid = px.pid
    rpid = px.redis.pid if getattr(px, "redis", None) else None
    idle = None
    try:
        def rss() -> tuple[int, int]:
            return bench.proc_rss_kb([pid]), bench.proc_rss_kb([rpid]) if rpid else 0

        def vgdb(*cmd: str) -> str:
            r = subprocess.run(["vgdb", f"--pid={pid}", *cmd], capture_output=True, text=True)
            return r.stdout + r.stderr

        def snap(name: str):
            if a.mode == "rss":
                return rss()
            if a.mode == "massif":
                vgdb("detailed_snapshot", str(out / f"massif.{name}"))
                return None
            m = re.search(r"still reachable: ([\d,]+) bytes in ([\d,]+) blocks",
                          vgdb("leak_check", "summary", "reachable", "any"))
            return tuple(int(x.replace(",", "")) for x in m.groups()) if m else None

        subprocess.run([str(pcb), "run", "-m", "login", "-p", str(px.ports["imaps"]), "-c", "4",
                        "-n", "200", "-u", "bench%d", "-w", bench.PASSWORD, "-U", "50",
                        "-l", "warmup"], capture_output=True, check=False)
        time.sleep(1)
        s0 = snap("0")
        idle = subprocess.Popen([str(pcb), "run", "-m", "idle", "-p", str(px.ports["imaps"]),
                                 "-c", str(a.n), "-d", "600", "-r", "128", "-u", "bench%d",
                                 "-w", bench.PASSWORD, "-U", "50", "-l", "idle"],
                                stdout=subprocess.PIPE, text=True)
        line = idle.stdout.readline()
        held = int(line.split("=")[1]) if line.startswith("READY") else 0
        time.sleep(2)  # the last sessions settle (buffers released after the first flush)
        s1 = snap("1")
        print(f"held {held}")
        if a.mode == "rss":
            print(f"proxy RSS {s0[0]} -> {s1[0]} KB = {(s1[0] - s0[0]) / held:.2f} KB/session; "
                  f"redis-server {s0[1]} -> {s1[1]} KB = {(s1[1] - s0[1]) / held:.2f} KB/session")
            if a.trim:
                r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex",
                                    "call (long)clock()", "-ex", "call (int)malloc_trim(0)",
                                    "-ex", "call (long)clock()"], capture_output=True, text=True)
                ck = [int(x) for x in re.findall(r"^\$\d+ = (-?\d+)", r.stdout, re.M)]
                time.sleep(0.5)
                s2 = rss()
                cpu = f"{(ck[2] - ck[0]) / 1000:.2f} ms CPU" if len(ck) == 3 else "?"
                print(f"malloc_trim(0): {cpu}; proxy RSS {s1[0]} -> {s2[0]} KB = "
                      f"{(s1[0] - s2[0]) / held:.2f} KB/session less")
        elif a.mode == "memcheck" and s0 and s1:
            print(f"heap {s0[0]} -> {s1[0]} bytes in {s0[1]} -> {s1[1]} blocks: "
                  f"{(s1[0] - s0[0]) / held:.0f} bytes, {(s1[1] - s0[1]) / held:.1f} blocks "
                  f"per session")
        else:
            print(f"snapshots: {out}/massif.0 {out}/massif.1")
    finally:
        if idle:
            idle.send_signal(signal.SIGTERM)
            idle.wait()
        px.stop()
        si.stop()


if __name__ == "__main__":
    main()
