"""Real IMAP clients through Portcullis: curl (implicit TLS and STARTTLS) and mbsync (isync)
syncing a few hundred messages of 1 KB to 5 MB into a local Maildir. Every message that comes
out of the proxy is compared byte for byte with what Dovecot holds."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import mailenv

HOST = "127.0.0.1"


def curl(certs, url: str, user: str, password: str, *extra: str,
         timeout: float = 30) -> subprocess.CompletedProcess:
    """Run curl (binary output) and return the finished process; -sS keeps errors visible."""
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), "--cacert",
                           str(certs.ca), "-u", f"{user}:{password}", *extra, url],
                          capture_output=True, timeout=timeout + 5)


def assert_ok(r: subprocess.CompletedProcess) -> bytes:
    assert r.returncode == 0, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout


# ---------------------------------------------------------------------------------- curl


def test_curl_imaps_list_search_fetch(proxy_factory, dovecot, certs, users):
    px = proxy_factory()
    base = f"imaps://{HOST}:{px.port('imaps')}"
    seeded = dovecot.seeded["alice"]

    # /INBOX without UID: curl sends LIST "INBOX" * — the mailbox itself is listed
    out = assert_ok(curl(certs, f"{base}/INBOX", "alice", users["alice"]))
    assert re.search(rb'^\* LIST \([^)]*\) "[./]" "?INBOX"?\r?$', out, re.M), out

    # the account root lists every mailbox
    out = assert_ok(curl(certs, f"{base}/", "alice", users["alice"]))
    assert b"INBOX" in out and out.startswith(b"* LIST"), out

    out = assert_ok(curl(certs, f"{base}/INBOX?ALL", "alice", users["alice"]))
    want = " ".join(str(i) for i in range(1, len(seeded) + 1)).encode()
    assert out.strip() == b"* SEARCH " + want, out

    for uid, msg in enumerate(seeded, 1):
        out = assert_ok(curl(certs, f"{base}/INBOX;UID={uid}", "alice", users["alice"]))
        assert out == msg, f"UID {uid}: {len(out)} bytes, want {len(msg)}"


def test_curl_starttls_fetch(proxy_factory, dovecot, certs, users):
    px = proxy_factory()
    url = f"imap://{HOST}:{px.port('imap')}/INBOX;UID=2"
    out = assert_ok(curl(certs, url, "bob", users["bob"], "--ssl-reqd"))
    assert out == dovecot.seeded["bob"][1]
    # without TLS the proxy refuses LOGIN (LOGINDISABLED): curl must not get the message
    r = curl(certs, url, "bob", users["bob"])
    assert r.returncode != 0 and r.stdout == b"", r


def test_curl_wrong_password_then_right_one(proxy_factory, certs, users, dovecot):
    px = proxy_factory()
    url = f"imaps://{HOST}:{px.port('imaps')}/INBOX;UID=1"
    r = curl(certs, url, "alice", "not-the-password")
    assert r.returncode == 67, r           # CURLE_LOGIN_DENIED
    assert r.stdout == b""
    assert assert_ok(curl(certs, url, "alice", users["alice"])) == dovecot.seeded["alice"][0]


def test_curl_utf8_and_special_password(proxy_factory, certs, users, dovecot):
    """curl sends AUTHENTICATE PLAIN (SASL-IR) when the proxy advertises it: UTF-8 user and a
    password full of IMAP specials must reach Dovecot unchanged."""
    px = proxy_factory()
    for user in ("jürgen", "carol"):
        url = f"imaps://{HOST}:{px.port('imaps')}/INBOX;UID=3"
        out = assert_ok(curl(certs, url, user, users[user]))
        assert out == dovecot.seeded[user][2]


# ---------------------------------------------------------------------------------- mbsync

MBSYNC_COUNT = 300


def _mbsync_conf(path: Path, port: int, certs, password: str, local: Path) -> None:
    # Host must be a name in the proxy certificate (CN/SAN localhost): mbsync checks DNS names.
    path.write_text(f"""\
IMAPAccount proxy
Host localhost
Port {port}
User mbsync
Pass {password}
SSLType IMAPS
CertificateFile {certs.ca}
PipelineDepth 50

IMAPStore proxy-remote
Account proxy

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel inbox
Far :proxy-remote:INBOX
Near :local:INBOX
Sync Pull
Create Near
Expunge None
SyncState *
""")


def _maildir_messages(d: Path) -> list[bytes]:
    """Messages of an mbsync Maildir in UID order (mbsync puts ,U=<uid> in the file name)."""
    found = []
    for sub in ("cur", "new"):
        for f in (d / sub).iterdir():
            m = re.search(r",U=(\d+)", f.name)
            assert m, f"no UID in {f.name}"
            found.append((int(m.group(1)), f.read_bytes()))
    return [_mask_tuid(b) for _, b in sorted(found)]


_TUID = re.compile(rb"\nX-TUID: [A-Za-z0-9+/]{12}\n\n")


def _as_mbsync_stores(held: bytes) -> bytes:
    """What mbsync writes for a message it fetched: its Maildir store uses LF line ends (the
    IMAP side is CRLF; the test messages hold no bare CR or LF), and it appends its tracking
    header `X-TUID: <12 chars>` as the last header line. Nothing else may differ."""
    lf = held.replace(b"\r\n", b"\n")
    head, sep, body = lf.partition(b"\n\n")
    assert sep, "message without a header/body separator"
    return head + b"\nX-TUID: " + b"?" * 12 + b"\n\n" + body


def _mask_tuid(stored: bytes) -> bytes:
    m = _TUID.search(stored)
    assert m and m.start() == stored.index(b"\n\n") - len(b"\nX-TUID: ") - 12, \
        "X-TUID is not the last header line"
    return stored[:m.start()] + b"\nX-TUID: " + b"?" * 12 + b"\n\n" + stored[m.end():]


def test_mbsync_full_sync_byte_identical(proxy_factory, dovecot_factory, certs, env_tmp):
    user, password = "mbsync", mailenv.TEST_USERS["mbsync"]
    dv = dovecot_factory(users={user: password})
    msgs = mailenv.gen_messages(MBSYNC_COUNT, seed=1, sizes="mbsync")
    sizes = [len(m) for m in msgs]
    assert min(sizes) < 2048 and max(sizes) > 4 * 1024 * 1024, "size profile changed"
    assert sum(sizes) < 150 * 1024 * 1024
    dv.deliver(user, msgs)
    px = proxy_factory(dovecot=dv)

    work = env_tmp / "mbsync" / f"run-{time.monotonic_ns()}"
    local = work / "mail"
    local.mkdir(parents=True)
    conf = work / "mbsyncrc"
    _mbsync_conf(conf, px.port("imaps"), certs, password, local)

    t0 = time.monotonic()
    r = subprocess.run(["mbsync", "-c", str(conf), "-V", "inbox"], capture_output=True,
                       timeout=120, cwd=work)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-3000:]

    held = dv.read_maildir(user)
    assert len(held) == MBSYNC_COUNT
    got = _maildir_messages(local / "INBOX")
    assert len(got) == MBSYNC_COUNT
    bad = [i for i, (a, b) in enumerate(zip(held, got)) if _as_mbsync_stores(a) != b]
    assert not bad, f"{len(bad)} messages differ, first at index {bad[0]}"
    # a second run finds nothing new and changes nothing
    r = subprocess.run(["mbsync", "-c", str(conf), "inbox"], capture_output=True, timeout=60,
                       cwd=work)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-2000:]
    assert _maildir_messages(local / "INBOX") == got
    logins = re.findall(r'user="mbsync" event=login backend=', px.log())
    assert len(logins) == 2, px.log()[-2000:]
    print(f"mbsync: {MBSYNC_COUNT} messages, {sum(sizes) / 1e6:.1f} MB in {took:.1f}s")
