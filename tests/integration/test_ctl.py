"""portcullis-ctl as an administrator meets it (issue 18): arguments checked against Redis and the
configuration, the log's session ids, human times and --json, --help/--version on both binaries,
an unreadable default configuration, reload-signatures, and the man pages.

One proxy (with a private key prefix in the session Redis) per test; no test starts its own
server. The scanning test loads only the generated test signatures, so its engine loads in well
under a second.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import clients
import mailenv
import malware

LOCAL = mailenv.LOCAL
USERS = mailenv.TEST_USERS
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "/etc/portcullis/portcullis.yaml"


def redis_proxy(proxy_factory, redis, **extra):
    pfx = "c" + uuid.uuid4().hex[:8] + ":"
    o = {"redis": {"host": LOCAL, "port": redis.port, "prefix": pfx, "connect_timeout": "300ms",
                   "command_timeout": "300ms"},
         "policy": {"heartbeat": "300ms", "session_ttl": "1200ms"}}
    o.update(extra)
    px = proxy_factory(**o)
    px.wait_redis_ready()
    return px, pfx


def ctl(px, *args, **kw) -> subprocess.CompletedProcess:
    return clients.ctl(px, *args, check=False, **kw)


def imap_login(px, certs, user="alice") -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=10)
    m.login(user, USERS[user])
    return m


def test_ctl_refuses_unknown_targets(proxy_factory, redis):
    px, pfx = redis_proxy(proxy_factory, redis)
    backend = px.config["backends"][0]["name"]
    for args, word in ((["kick", "nobody"], "nobody"),
                       (["route", "alice", "nosuchbackend"], "nosuchbackend"),
                       (["drain", "nosuch"], "nosuch"),
                       (["undrain", "nosuch"], "nosuch")):
        r = ctl(px, *args)
        assert r.returncode == 1, (args, r)
        assert word in r.stderr and r.stdout == "", (args, r)
    assert "is not a backend of" in ctl(px, "drain", "nosuch").stderr
    # nothing was written: no route, nothing drained
    assert redis.command("EXISTS", pfx + "route:{alice}") == 0
    assert redis.command("SCARD", pfx + "drained") == 0
    # the real names still work, and the drained listing has a JSON form
    assert ctl(px, "route", "alice", backend).returncode == 0
    assert ctl(px, "route", "alice").stdout == f"route alice: {backend}\n"
    assert ctl(px, "route", "alice", "-").returncode == 0
    assert ctl(px, "route", "alice").stdout == "route alice: (none)\n"
    assert ctl(px, "drain", backend).returncode == 0
    assert json.loads(ctl(px, "--json", "drain").stdout) == [backend]
    assert ctl(px, "undrain", backend).returncode == 0
    assert json.loads(ctl(px, "--json", "drain").stdout) == []
    # usage errors are 2, with the command's own usage line
    r = ctl(px, "route")
    assert r.returncode == 2 and "portcullis-ctl route USER" in r.stderr, r
    r = ctl(px, "frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr, r
    # reload-signatures on an instance that does not scan: refused, exit 1, why
    r = ctl(px, "reload-signatures")
    assert r.returncode == 1 and "scanning is not enabled" in r.stderr, r


def test_ctl_session_ids_are_the_logs_and_times_are_human(proxy_factory, certs, redis):
    px, pfx = redis_proxy(proxy_factory, redis)
    m = imap_login(px, certs)
    clients.wait_for(lambda: redis.command("KEYS", pfx + "sess:{alice}:*"), what="registry")
    r = ctl(px, "sessions")
    assert r.returncode == 0, r
    head, row = r.stdout.splitlines()[:2]
    assert "STARTED" in head
    sid = row.split()[0]
    # the listing's id is the log's sess= of that session
    assert re.search(rf"sess={re.escape(sid)} .*event=login ", px.log()), (sid, px.log())
    # STARTED: ISO-8601 UTC and an age, not a raw epoch
    assert re.search(r" \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+s\) ", row), row
    js = json.loads(ctl(px, "--json", "sessions", "alice").stdout)
    assert len(js) == 1 and js[0]["id"] == sid and js[0]["user"] == "alice", js
    assert abs(js[0]["started"] - time.time()) < 60 and js[0]["started_iso"].endswith("Z")
    assert isinstance(js[0]["bytes"], int) and js[0]["age_seconds"] >= 0
    assert json.loads(ctl(px, "-j", "sessions", "nobody").stdout) == []
    # kick by that id ends exactly that session
    r = ctl(px, "kick", sid)
    assert r.returncode == 0 and "1 session(s)" in r.stdout, r
    m.socket().settimeout(5)
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        while True:
            m.noop()
    px.wait_log(re.compile(rf"sess={re.escape(sid)} .*event=kicked"))


def test_help_version_and_default_config(proxy_factory):
    px = proxy_factory()
    ctl_bin = clients.ctl_binary(px)
    v = subprocess.run([str(px.binary), "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and re.fullmatch(r"portcullis \d+\.\d+\.\d+\n", v.stdout), v
    cv = subprocess.run([str(ctl_bin), "--version"], capture_output=True, text=True)
    assert cv.returncode == 0 and cv.stdout == "portcullis-ctl " + v.stdout.split()[1] + "\n"
    h = subprocess.run([str(px.binary), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--config" in h.stdout and "--test" in h.stdout, h
    ch = subprocess.run([str(ctl_bin), "--help"], capture_output=True, text=True)
    assert ch.returncode == 0 and "reload-signatures" in ch.stdout and "--json" in ch.stdout
    bad = subprocess.run([str(px.binary), "--no-such-option"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr
    # Without -c: the default file, and when it cannot be read an error naming it (not a
    # silent fall-back to a Redis on localhost).
    if os.access(DEFAULT_CONFIG, os.R_OK):
        pytest.skip(f"{DEFAULT_CONFIG} exists on this machine")
    r = subprocess.run([str(ctl_bin), "sessions"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and DEFAULT_CONFIG in r.stderr, r


def test_reload_signatures(proxy_factory, dovecot, env_tmp, certs):
    db = env_tmp / "ctl-reload-db"
    malware.write_db(str(db))
    marker = b"PORTCULLIS-CTL-RELOAD-MARKER-19b2"
    tagged = malware.crlf(malware.headers("ctl reload target", "") + "\n") + marker + b"\r\n"
    user = f"ctlreload-{os.getpid()}"
    dovecot.add_user(user, "ctlpw")
    dovecot.deliver(user, [tagged])
    px = proxy_factory(scan={"enabled": True, "database_dir": str(db), "threads": 1,
                             "tmpdir": str(env_tmp)})

    def fetch() -> bytes:
        m = imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                              timeout=15)
        m.login(user, "ctlpw")
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        m.logout()
        assert typ == "OK"
        return data[0][1]

    assert fetch() == tagged
    with open(db / "portcullis-test.ndb", "a") as f:
        f.write("Portcullis.Test.CtlReload:0:*:%s\n" % marker.hex())
    # as freshclam's OnUpdateExecute runs it: --admin, no configuration file read
    r = subprocess.run([str(clients.ctl_binary(px)), "--admin", px.config["admin"]["bind"],
                        "reload-signatures"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("signatures reloaded: engine="), r
    got = fetch()
    assert marker not in got and b"Portcullis.Test.CtlReload.UNOFFICIAL" in got, got[:600]
    log = px.log()
    assert "event=scan_reload result=started source=admin" in log
    assert "event=reloaded" not in log  # the engine only: the configuration was not read
    # a database that does not load: exit 1 with libclamav's reason; the engine in service stays
    bad = db / "broken.ndb"
    bad.write_text("this is not a signature\n")
    r = ctl(px, "reload-signatures", timeout=60)
    bad.unlink()
    assert r.returncode == 1 and "signature reload failed" in r.stderr, r
    assert b"Portcullis.Test.CtlReload.UNOFFICIAL" in fetch()


def test_man_pages(tmp_path):
    """Each page is generated from its one source (docs/man/*.md) and renders without a groff
    warning; the ctl page documents every command the binary knows."""
    out = tmp_path / "man"
    subprocess.run(["make", "-s", "man", f"MANDIR={out}"], cwd=ROOT, check=True, timeout=60)
    pages = sorted(p.name for p in out.iterdir())
    assert pages == ["portcullis-ctl.8", "portcullis.8", "portcullis.yaml.5"], pages
    for p in pages:
        r = subprocess.run(["groff", "-man", "-ww", "-z", str(out / p)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and r.stderr == "", (p, r.stderr)
        r = subprocess.run(["man", "--warnings", "-l", str(out / p)], capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, MANWIDTH="80",
                                                           MAN_KEEP_STDERR="1"))
        assert r.returncode == 0 and r.stderr == "", (p, r.stderr)
        assert "NAME" in r.stdout and "SEE ALSO" in r.stdout, p
    text = (out / "portcullis-ctl.8").read_text()
    for cmd in ("sessions", "kick", "unlock", "route", "drain", "undrain", "reload",
                "reload-signatures", "--json", "--help", "--version"):
        assert cmd.replace("-", r"\-") in text, cmd
