#!/usr/bin/python3
"""Interleaved A/B of CPU per login (issue 19): two Portcullis binaries side by side in front of
one Dovecot, 2 workers and a redis-server each (the bench's policy settings), REPS alternating
pairs of N logins at 16 clients; /proc user + system CPU of each proxy and its redis-server.
Prints every pair, the medians and the median of the per-pair ratios B/A (a ratio taken
seconds apart is steadier than either figure on a shared machine).

    python3 tests/bench/cpu_ab.py A_BINARY B_BINARY [N] [REPS]     (root, like bench.py)"""
import json
import statistics
import sys
import tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/integration"))
import mailenv
import login_env
A, B = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
N = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
REPS = int(sys.argv[4]) if len(sys.argv) > 4 else 10
work = Path(tempfile.mkdtemp(prefix="cpu-ab-"))
work.chmod(0o755)  # Dovecot drops privileges and must reach its files
certs = mailenv.make_certs(work / "certs")
users = {f"bench{i}": "benchpw" for i in range(16)}
dv = mailenv.Dovecot().start(work / "dv", users=users, ssl=False,
     extra_conf="service imap-login {\n  process_min_avail = 2\n}\n")
procs = {}
for name, binp in (("A", A), ("B", B)):
    rd = mailenv.Redis().start(work / f"redis{name}")
    px = login_env.start_proxy(work / f"px{name}", certs, dv, rd, binp, max_connections=2000,
                               timeout=20)
    procs[name] = (px, rd)
ut = login_env.cpu_ticks
def run(port, n):
    res, err = login_env.run_logins(port, n, 16, 16)
    assert res, err
    j = json.loads(res); assert j["errors"] == 0, j
    return j["sessions"]
res = {"A": [], "B": []}
try:
    for name in "AB":
        run(procs[name][0].port("imaps"), 200)
    for rep in range(REPS):
        for name in ("AB" if rep % 2 == 0 else "BA"):
            px, rd = procs[name]
            a, b = ut(px.pid), ut(rd.pid)
            n = run(px.port("imaps"), N)
            a2, b2 = ut(px.pid), ut(rd.pid)
            u, s, r = (a2[0]-a[0])*10/n, (a2[1]-a[1])*10/n, (b2[0]+b2[1]-b[0]-b[1])*10/n
            res[name].append((u, s, r))
            print(f"rep {rep} {name}: user {u:.3f} sys {s:.3f} own {u+s:.3f} redis {r:.3f} total {u+s+r:.3f} ms/login", flush=True)
    for name in "AB":
        own = [u+s for u,s,r in res[name]]; tot = [u+s+r for u,s,r in res[name]]
        print(f"{name} median: user {statistics.median([x[0] for x in res[name]]):.3f} sys {statistics.median([x[1] for x in res[name]]):.3f} own {statistics.median(own):.3f} redis {statistics.median([x[2] for x in res[name]]):.3f} total {statistics.median(tot):.3f}")
    ratios = [ (res['B'][i][0]+res['B'][i][1])/(res['A'][i][0]+res['A'][i][1]) for i in range(REPS)]
    print("B/A own per rep:", " ".join(f"{x:.3f}" for x in ratios), "median", f"{statistics.median(ratios):.3f}")
    ratios = [ sum(res['B'][i])/sum(res['A'][i]) for i in range(REPS)]
    print("B/A total per rep:", " ".join(f"{x:.3f}" for x in ratios), "median", f"{statistics.median(ratios):.3f}")
finally:
    for px, rd in procs.values():
        px.stop(20); rd.stop()
    dv.stop()
