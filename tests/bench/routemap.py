#!/usr/bin/env python3
"""Routing map load: time and memory for N entries (issue 17; docs/routing.md, "Sizing").

Writes a map of N users (default 1 000 000; user%07d@corpK.example over three pool entries and
one host:port) plus a config naming it, then runs `portcullis -t` (which loads every map
exactly as start-up does) twice: with the big map and with a one-line map. Prints the load time
the daemon logs, the wall time, and the peak RSS of both runs; the difference is the table's
cost. Not a test: nothing is asserted.

    tests/bench/routemap.py [--entries N] [--binary build/portcullis]
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """\
workers: 1
run_as_root: true
listeners:
  - {{ name: imap, bind: "127.0.0.1:1143", tls: none }}
backends:
  - {{ name: mail1, host: 127.0.0.1, port: 10143 }}
  - {{ name: mail2, host: 127.0.0.1, port: 10144 }}
  - {{ name: mail3, host: 127.0.0.1, port: 10145 }}
routing:
  map_max_entries: {max}
  lookups:
    - {{ name: users, type: map, file: {map} }}
"""


def write_map(path: Path, n: int) -> int:
    targets = ["mail1", "mail2", "mail3", "127.0.0.1:10146"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"user{i:07d}@corp{i % 50}.example {targets[i % 4]}\n")
        f.write("@corp0.example mail1\n* mail2\n")
    return path.stat().st_size


def run(binary: str, cfg: Path) -> tuple[float, int, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    p = subprocess.run([binary, "-t", "-c", str(cfg)], capture_output=True, text=True)
    wall = time.monotonic() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        sys.exit(f"portcullis -t failed: {p.stderr.strip()}")
    # ru_maxrss of children is the max over all of them: run the big map last.
    return wall, max(rss, before), p.stderr + p.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--binary", default="build/portcullis")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="routemap-") as d:
        d = Path(d)
        small, big = d / "small.map", d / "big.map"
        write_map(small, 1)
        size = write_map(big, a.entries)
        for name, m in (("small", small), ("big", big)):
            (d / f"{name}.yaml").write_text(CONFIG.format(max=a.entries + 10, map=m))
        w0, r0, _ = run(a.binary, d / "small.yaml")
        w1, r1, out = run(a.binary, d / "big.yaml")
        ms = re.search(r"event=route_map_loaded .*? ms=(\d+)", out)
        print(f"entries={a.entries} file={size / 1e6:.1f}MB "
              f"load_ms={ms.group(1) if ms else '?'} wall_s={w1:.2f} "
              f"rss_small_mb={r0 / 1024:.1f} rss_big_mb={r1 / 1024:.1f} "
              f"table_mb={(r1 - r0) / 1024:.1f} bytes_per_entry={(r1 - r0) * 1024 / a.entries:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
