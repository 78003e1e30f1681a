"""The login-lookup scenario of make bench (issue 17): what a routing lookup costs per login.

Run by bench.py (`--only login-lookup`); `run()` gets bench.py's module as `bm` for its peers and
parameters. Targets, all in front of the same Dovecot, TLS logins (ECDSA), LOGIN_CONC clients:

  hash       Portcullis, no lookups: rendezvous hashing over the pool (the reference)
  map        Portcullis, a map file naming every user (type: map)
  ldap-cold  Portcullis, type: ldap, worker cache off (routing.cache_entries 0) and every login a
             user not seen before in this repetition (its redis-server is flushed first, so a
             shared cache cannot answer either): one search per login
  ldap-warm  Portcullis, type: ldap with the default cache, after a warm-up pass: the hot users'
             answers are all cached in every worker
  http       Portcullis, type: http (nginx's auth_http protocol) against the responder below
  nginx      nginx's mail proxy against the same responder

Every Portcullis target has a redis-server of its own (policy, session registry, the shared
lookup cache): a deployment with lookups has one. The LDAP directory is Debian's slapd with the
tree of tests/integration/slapd.py (users bench0..benchN, mailHost = the pool entry "be"); the
auth_http responder is a separate nginx (one worker, `http {}` only, keep-alive), so its CPU is
not mixed with nginx's mail proxy's. CPU is reported apart for the proxy, its redis-server and
the lookup service. `unknown` and `on_error` are `refuse`: a lookup that fails shows up as failed
sessions (and a failed bench), never as a silently hashed login.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import mailenv
import slapd
from slapd import BASE, BIND_DN, READER_PW, Slapd

# Distinct users for the cold runs: more than the logins of one cold run, so that no login
# finds an answer cached by an earlier one of the same run.
LOOKUP_USERS = 3000
TARGETS = ["hash", "map", "ldap-cold", "ldap-warm", "http", "nginx"]
# Repetitions: more than the other scenarios' 3, because the result is a ratio of two CPU
# figures of ~1 ms that the shared machine moves by ±20 % from one minute to the next; the
# ratio is taken per repetition (runs seconds apart), then the median.
REPS_FULL = 5


class AuthResponder:
    """nginx answering auth_http for both proxies: OK, 127.0.0.1, Dovecot's port by protocol."""

    name = "authhttp"

    def start(self, bm, workdir: Path, imap_be: int, pop3_be: int) -> "AuthResponder":
        self.srv = bm.Server()
        self.srv.name = self.name
        w = mailenv.make_workdir(workdir)
        self.port = mailenv.free_port()
        (w / "tmp").mkdir(exist_ok=True)
        tmp = "".join(f"    {k}_temp_path {w}/tmp;\n"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # Status 200 (Portcullis requires it; nginx ignores the status). keepalive_requests:
        # nginx's default 1000 would close Portcullis' kept-alive connections every 1000 logins.
        (w / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{tmp}    keepalive_requests 1000000;
    keepalive_timeout 300s;
    map $http_auth_protocol $be_port {{ default {imap_be}; pop3 {pop3_be}; }}
    server {{
        listen 127.0.0.1:{self.port};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port $be_port;
            return 200;
        }}
    }}
}}
""")
        self.srv._spawn(["nginx", "-c", str(w / "nginx.conf"), "-p", str(w), "-e",
                         str(w / "error.log")], w, [self.port])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def pids(self) -> list[int]:
        return self.srv.pids()

    def stop(self) -> None:
        self.srv.stop()


class ProxyOnly:
    """The CPU of a Portcullis target without its redis-server (reported apart)."""

    def __init__(self, px) -> None:
        self.px = px

    def pids(self) -> list[int]:
        return self.px.proxy_pids()

    def proxy_pids(self) -> list[int]:
        return self.px.proxy_pids()


def start_directory(workdir: Path, certs) -> Slapd:
    """The test fixture's slapd (same slapd.conf, base tree and reader account) holding the
    bench's users bench0..benchN with mailHost "be" (the pool entry). The fixture names its own
    users userNNNN, which pcbench's -u cannot produce, so the tree is loaded here: slapd.py's
    start() skips slapadd when the configuration already exists."""
    s = Slapd(workdir, certs, n_users=0)
    s.dir.mkdir(parents=True, exist_ok=True)
    s._write_conf()
    people = "".join(
        f"\ndn: uid=bench{i},{BASE}\nobjectClass: inetOrgPerson\n"
        f"objectClass: inetLocalMailRecipient\nuid: bench{i}\ncn: bench{i}\nsn: bench{i}\n"
        "mailHost: be\n" for i in range(LOOKUP_USERS))
    ldif = s.dir / "tree.ldif"
    ldif.write_text(slapd._ldif(0) + people)
    r = subprocess.run(["slapadd", "-q", "-f", str(s.conf), "-l", str(ldif)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"slapadd failed: {r.stderr}")
    return s.start()


def routing_for(target: str, mapfile: Path, ldap: Slapd, pwfile: Path, auth_url: str) -> dict:
    # refuse/refuse: a broken lookup must fail logins, not fall back to hashing unnoticed
    strict = {"unknown": "refuse", "on_error": "refuse"}
    ldap_src = {"name": "directory", "type": "ldap", "uri": ldap.uri, "bind_dn": BIND_DN,
                "bind_password_file": str(pwfile), "base": BASE, "scope": "sub",
                "filter": "(uid=%u)", "attribute": "mailHost", "connections": 2,
                "timeout": "2s", "connect_timeout": "3s"}
    if target == "map":
        return {**strict, "lookups": [{"name": "users", "type": "map", "file": str(mapfile)}]}
    if target == "ldap-cold":
        return {**strict, "lookups": [ldap_src], "cache_entries": 0}
    if target == "ldap-warm":
        return {**strict, "lookups": [ldap_src], "cache_ttl": "1h"}
    if target == "http":
        return {**strict, "lookups": [{"name": "authsvc", "type": "http", "url": auth_url,
                                       "connections": 8, "connect_timeout": "2s",
                                       "timeout": "2s"}]}
    return {}


def run(bm, b, certs: mailenv.Certs, dv) -> None:
    """Start the targets, run P["reps"] alternating repetitions, stop everything. A target
    that does not start (a binary without type: ldap / type: http) is logged and skipped."""
    P, log = bm.P, bm.log
    reps = 1 if bm.QUICK else REPS_FULL
    work = b.work / "lookup"
    work.mkdir(parents=True, exist_ok=True)
    imap_be, pop3_be = dv.ports["imap"], dv.ports["pop3"]
    hot = P["users"]
    log(f"scenario login-lookup: {bm.LOGIN_CONC} clients, {reps} repetitions; cold runs "
        f"over {LOOKUP_USERS} distinct users, the others over {hot}")
    # Every user's first login creates its mail directory in Dovecot: do it once, directly, so
    # that the cold runs (new users) do not pay for it.
    b.run("direct", "login", dv.ports["imaps"], bm.LOGIN_CONC, sessions=LOOKUP_USERS,
          extra=["-U", str(LOOKUP_USERS)], scenario="warmup")
    mapfile = work / "users.map"
    mapfile.write_text("".join(f"bench{i} be\n" for i in range(LOOKUP_USERS)))
    pwfile = work / "ldap.pw"
    pwfile.write_text(READER_PW + "\n")
    pwfile.chmod(0o600)
    ldap = start_directory(work / "slapd", certs)
    auth = AuthResponder().start(bm, work / "authhttp", imap_be, pop3_be)
    servers: dict = {}
    try:
        for t in TARGETS:
            try:
                if t == "nginx":
                    servers[t] = bm.Nginx().start(work / "nginx", certs.server,
                                                  certs.server_key, imap_be, pop3_be,
                                                  auth_url=auth.url)
                else:
                    servers[t] = bm.Portcullis().start(
                        work / f"portcullis-{t}", certs, certs.server, certs.server_key,
                        imap_be, 0, b.binary, routing=routing_for(t, mapfile, ldap, pwfile,
                                                                  auth.url), redis=True)
            except Exception as e:  # noqa: BLE001 - reported, the other targets still run
                log(f"  login-lookup: target {t} did not start, skipped: {e}")
                # the last line is the daemon's own error (e.g. an unknown lookup type)
                last = [x for x in str(e).splitlines() if x.strip()][-1:] or ["?"]
                why = re.sub(r"^(portcullis: )?\S+:\d+:\d+: ", "", last[0])  # the file path
                b.results.setdefault("skipped", {})[t] = why[:160]
        lookup_pids = {"ldap-cold": lambda: [ldap.proc.pid], "ldap-warm": lambda: [ldap.proc.pid],
                       "http": auth.pids, "nginx": auth.pids}
        for t, srv in servers.items():  # TLS code paths, Dovecot processes; fills the warm cache
            n = hot * 20 if t == "ldap-warm" else hot * 2
            b.run(t, "login", srv.ports["imaps"], 4, sessions=n, extra=["-U", str(hot)],
                  scenario="warmup")
        for rep in range(reps):
            for t in bm.rotate([t for t in TARGETS if t in servers], rep):
                srv = servers[t]
                users = LOOKUP_USERS if t == "ldap-cold" else hot
                extra = {}  # CPU reported apart from the proxy's: its redis-server, the service
                if t != "nginx":
                    extra["redis"] = [srv.redis.pid]
                    if t == "ldap-cold":
                        srv.redis.command("FLUSHALL")
                if t in lookup_pids:
                    extra["lookup"] = lookup_pids[t]()
                e0 = {k: bm.proc_cpu(v) for k, v in extra.items()}
                res = b.run(t, "login", srv.ports["imaps"], bm.LOGIN_CONC,
                            secs=P["login_secs"], extra=["-U", str(users)],
                            scenario="login-lookup",
                            cpu_of=srv if t == "nginx" else ProxyOnly(srv))
                res["rep"] = rep
                res["cpu_extra_s"] = {k: bm.proc_cpu(v) - e0[k] for k, v in extra.items()}
                if res["sessions"]:
                    res["cpu_ms_per_session_extra"] = {
                        k: v * 1e3 / res["sessions"] for k, v in res["cpu_extra_s"].items()}
                log("    " + ", ".join(f"{k} {v:.2f}s" for k, v in res["cpu_extra_s"].items()))
    finally:
        for srv in servers.values():
            srv.stop()
        auth.stop()
        ldap.stop()


def total_ms(r: dict) -> float:
    """CPU per login of the proxy plus its redis-server plus the lookup service."""
    return (r.get("cpu_ms_per_session") or 0) + sum(
        r.get("cpu_ms_per_session_extra", {}).values())


def summary(bm, runs: list[dict]) -> dict:
    """Medians per target: logins/s and CPU ms per login of the proxy, redis, the lookup; and
    vs hashing, the median of the per-repetition ratios (total CPU and login rate)."""
    out: dict = {}
    mine = [r for r in runs if r.get("scenario") == "login-lookup"]
    by_rep = {(r["target"], r.get("rep")): r for r in mine}
    for t in TARGETS:
        rs = [r for r in mine if r.get("target") == t]
        if not rs:
            continue
        ex = [r.get("cpu_ms_per_session_extra", {}) for r in rs]
        pairs = [(r, by_rep.get(("hash", r.get("rep")))) for r in rs]
        pairs = [(r, h) for r, h in pairs if h and total_ms(h) and h["sessions_per_s"]]
        out[t] = {
            "cpu_vs_hash": bm.median([total_ms(r) / total_ms(h) - 1 for r, h in pairs]),
            "cpu_vs_hash_all": [round(total_ms(r) / total_ms(h) - 1, 3) for r, h in pairs],
            "rate_vs_hash": bm.median([r["sessions_per_s"] / h["sessions_per_s"] - 1
                                       for r, h in pairs]),
            "logins_per_s": bm.median([r["sessions_per_s"] for r in rs]),
            "proxy_ms": bm.median([r.get("cpu_ms_per_session") for r in rs]),
            "redis_ms": bm.median([e.get("redis") for e in ex]),
            "lookup_ms": bm.median([e.get("lookup") for e in ex]),
            "total_ms": bm.median([total_ms(r) for r in rs]),
            "errors": sum(r.get("errors", 0) or 0 for r in rs),
            "runs": len(rs),
        }
    return out


def table(bm, s: dict, skipped: dict | None = None) -> str:
    """The markdown table of docs/benchmarks.md ("Login with routing lookups")."""
    if not s:
        return ""
    f = bm.fmt
    names = {"hash": "Portcullis, hashing (no lookup)", "map": "Portcullis, map file",
             "ldap-cold": "Portcullis, LDAP, cache cold", "ldap-warm": "Portcullis, LDAP, cache warm",
             "http": "Portcullis, auth_http", "nginx": "nginx mail proxy, auth_http"}
    lines = ["| target | logins/s | proxy CPU ms/login | redis-server ms/login | lookup service "
             "ms/login | total ms/login | total CPU vs hashing | login rate vs hashing |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in TARGETS:
        d = s.get(t)
        if not d:
            if skipped and t in skipped:
                why = skipped[t].replace("|", "/")
                lines.append(f"| {names[t]} | not run: {why} | | | | | | |")
            continue
        cv, rv = d.get("cpu_vs_hash"), d.get("rate_vs_hash")
        vs = "—" if t == "hash" else f(cv * 100 if cv is not None else None, "+.0f", "%")
        rvs = "—" if t == "hash" else f(rv * 100 if rv is not None else None, "+.0f", "%")
        lines.append(f"| {names[t]} | {f(d['logins_per_s'], '.0f')} | {f(d['proxy_ms'], '.3f')} "
                     f"| {f(d['redis_ms'], '.3f')} | {f(d['lookup_ms'], '.3f')} "
                     f"| {f(d['total_ms'], '.3f')} | {vs} | {rvs} |")
    w = s.get("ldap-warm", {})
    if w.get("cpu_vs_hash") is not None:
        over = w["cpu_vs_hash"] * 100
        each = ", ".join(f"{x * 100:+.0f}%" for x in w["cpu_vs_hash_all"])
        lines.append("")
        lines.append(f"Warm-cache LDAP overhead over plain hashing (median of the per-repetition "
                     f"ratios {each}): {over:+.1f}% CPU per login, proxy + redis-server + slapd "
                     f"(target ≤ 10%: {'met' if over <= 10 else '**missed**'}).")
    return "\n".join(lines) + "\n"

