#!/usr/bin/python3
"""Scan throughput through Portcullis (POP3 RETR, pipelined) vs. relay without scanning.
Usage: tests/bench/scan/scan_pop3.py [N_MESSAGES] [N_SESSIONS]; prints MSGDIR/DB for scanloop.c."""
import os, sys, time, socket, ssl, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "integration"))
import mailenv, malware
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
tmp = mailenv.make_workdir(tempfile.mkdtemp(prefix="msbench-"))
os.chmod(tmp, 0o755)
certs = mailenv.make_certs(tmp / "certs")
dv = mailenv.Dovecot(); dv.start(tmp / "dv", users={"bench": "benchpw"}, ssl=False)
msgs = mailenv.gen_messages(N, seed=4242, sizes=(60_000, 140_000))
dv.deliver("bench", msgs)
(tmp / "msgs").mkdir()
for i, m in enumerate(msgs):
    (tmp / "msgs" / f"{i:04d}.eml").write_bytes(m)
db = malware.write_db(str(tmp / "db"))
import concurrent.futures
P = int(sys.argv[2]) if len(sys.argv) > 2 else 1
def one(px, lo, hi):
        s = socket.create_connection(("127.0.0.1", px.port("pop3s")))
        s = mailenv.ssl_context(certs.ca).wrap_socket(s, server_hostname="localhost")
        f = s.makefile("rb")
        f.readline(); s.sendall(b"USER bench\r\nPASS benchpw\r\n"); f.readline(); f.readline()
        s.sendall(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(lo, hi)))
        for i in range(lo, hi):
            f.readline()
            while (l := f.readline()) != b".\r\n":
                pass
        s.close()
def run(scan):
    cfg = mailenv.proxy_config(certs, dv, overrides={"log": {"level": "info"}, "scan": {
        "enabled": scan, "database_dir": db, "threads": 2, "tmpdir": "/dev/shm"}})
    px = mailenv.Proxy(); px.start(tmp / f"px-{scan}", cfg)
    try:
        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(P) as ex:
            list(ex.map(lambda k: one(px, k * N // P, (k + 1) * N // P), range(P)))
        el = time.monotonic() - t
        got = 0
    finally:
        px.stop()
    return el, got
tot = sum(len(m) for m in msgs)
for scan in (False, True, True):
    el, got = run(scan)
    print(f"sessions={P} scan={scan}: {N} msgs {tot/1e6:.1f} MB in {el:.2f}s = {N/el:.0f} msg/s {tot/1e6/el:.1f} MB/s")
print("MSGDIR", tmp / "msgs", "DB", db)
dv.stop()
