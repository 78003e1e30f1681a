"""The client's IMAP session as the proxy models it (issue 15: default deny), against a real
Dovecot and real libclamav.

Each user's INBOX holds the EICAR message of malware.py at UID 1 (and a clean one at UID 2).
Whatever the proxy cannot inspect must not reach the server, and no form of the signature may
reach the client:
  - content items and extensions outside the allow-list (PREVIEW, SNIPPET, URLFETCH,
    GENURLAUTH, COMPRESS, NOTIFY, ENABLE QRESYNC, ...) are refused with BAD;
  - no CAPABILITY list the client sees (greeting, pre-auth, the LOGIN OK code, post-login)
    names a stripped extension;
  - commands smuggled during IDLE or as literal data never run; the session stays in step
    (a later FETCH of the EICAR message is still replaced);
  - SELECT/EXAMINE names (spaces, quotes, literal, modified UTF-7, over 255 bytes) select and
    judge the right mailbox.
"""

from __future__ import annotations

import base64
import imaplib
import re

import pytest

import clients
import malware

HOST = "127.0.0.1"
PASSWORD = "model-pw-1"

EICAR_FORMS = [malware.EICAR, b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE",
               base64.b64encode(malware.EICAR)[:40]]

STRIPPED = ("PREVIEW", "SNIPPET", "URLAUTH", "URL-PARTIAL", "COMPRESS", "NOTIFY", "QRESYNC",
            "IMAP4REV2", "UNAUTHENTICATE", "XAPPLEPUSHSERVICE", "X-")

CLEAN = malware.clean("model clean")
INFECTED = malware.MESSAGES["plain"].data


def no_eicar(data: bytes) -> None:
    for form in EICAR_FORMS:
        assert form not in data, (form, data[:600])


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "model-scan-db"
    malware.write_db(str(d))
    return d


def scan_proxy(proxy_factory, scan_db, env_tmp, **kw):
    cfg = {"enabled": True, "database_dir": str(scan_db), "threads": 2, "tmpdir": str(env_tmp)}
    return proxy_factory(scan=cfg, **kw)


def make_user(dovecot, user: str) -> None:
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [INFECTED, CLEAN])


def session(px, certs, user: str) -> clients.LineClient:
    c = clients.connect(px.port("imaps"), certs)
    c.greeting()
    c.send(b"L LOGIN " + user.encode() + b" " + PASSWORD.encode() + b"\r\n")
    line, _ = c.tagged(b"L")
    assert line.startswith(b"L OK"), line
    return c


def run(c: clients.LineClient, tag: bytes, text: bytes) -> tuple[bytes, bytes]:
    """Send one command; return its tagged line and everything received with it."""
    c.send(tag + b" " + text + b"\r\n")
    line, items = c.tagged(tag)
    return line, b"".join(a + b for a, b in items) + line


def fetch_body(c: clients.LineClient, tag: bytes, what: bytes = b"1 BODY.PEEK[]") -> bytes:
    line, data = run(c, tag, b"FETCH " + what)
    assert line.startswith(tag + b" OK"), data[:400]
    return data


def assert_replaced(data: bytes) -> None:
    no_eicar(data)
    assert b"X-Portcullis-Verdict: infected" in data or malware.SIGNATURE.encode() in data, \
        data[:600]


def caps_of(text: bytes) -> list[str]:
    m = re.search(rb"CAPABILITY ([^\]\r\n]*)", text, re.I)
    assert m, text
    return m.group(1).decode().split()


def assert_caps_clean(caps: list[str]) -> None:
    bad = [c for c in caps if c.upper().startswith(STRIPPED)]
    assert not bad, (bad, caps)
    assert "IMAP4rev1" in caps and "IDLE" in caps, caps


# ---------------------------------------------------------------------------------------- tests


REFUSED = [
    (b"FETCH 1 (PREVIEW)", "fetch_item"),
    (b"FETCH 1 (PREVIEW (LAZY))", "fetch_item"),
    (b"FETCH 1 (SNIPPET (FUZZY))", "fetch_item"),
    (b"UID FETCH 1 PREVIEW", "fetch_item"),
    (b"FETCH 1 (FLAGS X-GM-MSGID)", "fetch_item"),
    (b"FETCH 1 (BODY[FOO])", "fetch_item"),
    (b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)", "fetch_item"),
    (b"URLFETCH imap://u@127.0.0.1/INBOX;UIDVALIDITY=1/;UID=1;urlauth=anonymous:internal:0",
     "urlauth"),
    (b"GENURLAUTH \"imap://u@127.0.0.1/INBOX/;UID=1;urlauth=anonymous\" INTERNAL", "urlauth"),
    (b"RESETKEY", "urlauth"),
    (b"COMPRESS DEFLATE", "compress"),
    (b"NOTIFY SET (selected MessageNew (uid body.peek[]))", "notify"),
    (b"ENABLE QRESYNC", "enable"),
    (b"ENABLE IMAP4rev2", "enable"),
    (b"UNAUTHENTICATE", "command_not_allowed"),
    (b"XYZZY", "command_not_allowed"),
]


def test_refused_content_commands(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "model-refused"
    make_user(dovecot, user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = session(px, certs, user)
    run(c, b"S", b"SELECT INBOX")
    for i, (cmd, reason) in enumerate(REFUSED):
        tag = b"r%d" % i
        line, data = run(c, tag, cmd)
        assert line.startswith(tag + b" BAD "), (cmd, data)
        no_eicar(data)
    # still in step, still plaintext: the EICAR message comes replaced
    assert_replaced(fetch_body(c, b"f"))
    c.close()
    log = px.log()
    for _, reason in REFUSED:
        assert f"event=refused reason={reason}" in log, reason


def test_preview_direct_would_leak(dovecot, proxy_factory, certs, scan_db, env_tmp):
    """The reason for the refusal: straight from Dovecot, PREVIEW returns the body text."""
    user = "model-direct"
    make_user(dovecot, user)
    m = imaplib.IMAP4(HOST, dovecot.ports["imap"], timeout=15)
    m.login(user, PASSWORD)
    caps = m.capability()[1][0].decode()
    m.select("INBOX")
    if "PREVIEW" not in caps and "SNIPPET" not in caps:
        pytest.skip("this Dovecot has no PREVIEW/SNIPPET")
    item = "(PREVIEW)" if "PREVIEW" in caps else "(SNIPPET (FUZZY))"
    typ, data = m.fetch("1", item)
    m.logout()
    assert typ == "OK"
    assert b"EICAR-STANDARD" in b"".join(d if isinstance(d, bytes) else b"".join(d)
                                          for d in data)


def test_capabilities_stripped(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "model-caps"
    make_user(dovecot, user)
    # the backend does advertise stripped extensions (else this test could not fail)
    m = imaplib.IMAP4(HOST, dovecot.ports["imap"], timeout=15)
    m.login(user, PASSWORD)
    direct = m.capability()[1][0].decode().split()
    m.logout()
    assert any(c.upper().startswith(STRIPPED) for c in direct), direct

    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = clients.connect(px.port("imaps"), certs)
    assert_caps_clean(caps_of(c.greeting()))
    _, data = run(c, b"C", b"CAPABILITY")
    assert_caps_clean(caps_of(data))
    line, _ = run(c, b"L", b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
    assert line.startswith(b"L OK [CAPABILITY"), line
    assert_caps_clean(caps_of(line))
    _, data = run(c, b"C2", b"CAPABILITY")
    post = caps_of(data)
    assert_caps_clean(post)
    assert "AUTH=PLAIN" not in post and "SASL-IR" not in post, post
    c.close()


def test_idle_smuggled_select(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "model-idle"
    make_user(dovecot, user)
    dovecot.deliver(user, [CLEAN], folder="Other")
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = session(px, certs, user)
    run(c, b"S", b"SELECT INBOX")
    for smuggled in (b"a SELECT Other", b"x COMPRESS DEFLATE", b"y UID FETCH 1 (PREVIEW)"):
        c.send(b"i IDLE\r\n")
        assert c.line().startswith(b"+"), "no IDLE continuation"
        c.send(smuggled + b"\r\n")
        tag = smuggled.split(b" ", 1)[0]
        seen = {}
        while len(seen) < 2:
            line = c.line()
            for t in (tag, b"i"):
                if line.startswith(t + b" "):
                    seen[t] = line
        assert seen[tag] == tag + b" BAD Expected DONE.\r\n", seen
        assert seen[b"i"].startswith(b"i OK"), seen
        no_eicar(b"".join(seen.values()))
    # still INBOX, still plaintext: message 1 is the EICAR one, replaced
    assert_replaced(fetch_body(c, b"f"))
    assert_replaced(fetch_body(c, b"g", b"1 BODY.PEEK[1]"))
    c.close()
    assert "event=refused reason=idle_not_done" in px.log()


@pytest.mark.parametrize("pipelined", [False, True])
def test_idle_literal_framed_compress(proxy_factory, dovecot, certs, scan_db, env_tmp, pipelined):
    """The issue's repro: during IDLE (or pipelined behind it, before its "+") a line announcing
    a literal whose "data" is `COMPRESS DEFLATE`. Neither the line nor the COMPRESS may run."""
    user = "model-idle-lit-%d" % pipelined
    make_user(dovecot, user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = session(px, certs, user)
    run(c, b"S", b"SELECT INBOX")
    smuggle = b"b APPEND INBOX {20}\r\nc COMPRESS DEFLATE\r\n"
    if pipelined:
        c.send(b"i IDLE\r\n" + smuggle)
        assert c.line().startswith(b"+")
    else:
        c.send(b"i IDLE\r\n")
        assert c.line().startswith(b"+")
        c.send(smuggle)
    want = {b"b": b"b BAD Expected DONE.\r\n",
            b"c": b"c BAD COMPRESS is not available through this proxy.\r\n"}
    got = {}
    while len(got) < 3:
        line = c.line()
        t = line.split(b" ", 1)[0]
        if t in (b"b", b"c", b"i"):
            got[t] = line
    assert got[b"b"] == want[b"b"] and got[b"c"] == want[b"c"], got
    assert got[b"i"].startswith(b"i OK"), got
    line, _ = run(c, b"n", b"NOOP")
    assert line.startswith(b"n OK"), line
    assert_replaced(fetch_body(c, b"f"))
    c.close()


def test_idle_done_normal(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "model-idle-ok"
    make_user(dovecot, user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = session(px, certs, user)
    run(c, b"S", b"SELECT INBOX")
    c.send(b"i IDLE\r\n")
    assert c.line().startswith(b"+")
    dovecot.deliver(user, [CLEAN])
    c.send(b"DONE\r\n")
    line, _ = c.tagged(b"i")
    assert line.startswith(b"i OK"), line
    assert_replaced(fetch_body(c, b"f"))
    c.close()


@pytest.mark.parametrize("box", ["Drafts", "Missing"])
def test_literal_framed_smuggling(proxy_factory, dovecot, certs, scan_db, env_tmp, box):
    """The literal's bytes are sent before the "+": they are data if the server takes the
    literal, a new (refused) command if it does not — never an unseen COMPRESS."""
    user = "model-lit-" + box.lower()
    make_user(dovecot, user)
    if box == "Drafts":
        dovecot.deliver(user, [CLEAN], folder=box)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    c = session(px, certs, user)
    run(c, b"S", b"SELECT INBOX")
    payload = b"c COMPRESS DEFLATE\r\n"
    assert len(payload) == 20
    c.send(b"a APPEND " + box.encode() + b" {20}\r\n" + payload + b"\r\n")
    got = b""
    while True:
        line = c.line()
        got += line
        if line.startswith(b"a ") and not line.startswith(b"a OK") and box == "Missing":
            break
        if line.startswith(b"a OK"):
            break
    if box == "Missing":
        # the literal was refused: its bytes are a command here as at the server — refused
        line = c.line()
        assert line == b"c BAD COMPRESS is not available through this proxy.\r\n", (got, line)
    # plaintext, in step
    line, _ = run(c, b"n", b"NOOP")
    assert line.startswith(b"n OK"), line
    assert_replaced(fetch_body(c, b"f"))
    c.close()


NAMES = ["with space", 'quo"te', "&AOQ-bc", "a" * 200 + "/" + "b" * 100]


def test_mailbox_names(dovecot_factory, proxy_factory, certs, scan_db, env_tmp):
    """Each mailbox holds the EICAR message at UID 1, INBOX a clean one: a part fetch is judged
    on the selected mailbox's message (named to the scan fetcher exactly), so it is replaced."""
    user = "model-names"
    # LAYOUT=fs: each hierarchy level is a directory, so a name may be over 255 bytes
    # (the same workdir the factory picks)
    root = env_tmp / f"dovecot-extra-{len(list(env_tmp.glob('dovecot-extra-*')))}"
    dv = dovecot_factory(users={user: PASSWORD},
                         extra_conf=f"mail_location = maildir:{root}/mail/%u:LAYOUT=fs\n")
    m = imaplib.IMAP4(HOST, dv.ports["imap"], timeout=15)
    m.login(user, PASSWORD)
    assert m.append("INBOX", None, None, CLEAN)[0] == "OK"
    for name in NAMES:
        q = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        typ, data = m.create(q)
        assert typ == "OK", (name, data)
        typ, data = m.append(q, None, None, INFECTED)
        assert typ == "OK", (name, data)
    m.logout()
    px = scan_proxy(proxy_factory, scan_db, env_tmp, dovecot=dv)
    c = session(px, certs, user)
    for i, name in enumerate(NAMES):
        raw = name.encode()
        for form in ("quoted", "literal"):
            tag = b"s%d%s" % (i, form[0].encode())
            if form == "quoted":
                c.send(tag + b" SELECT \"" + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                       + b"\"\r\n")
            else:
                c.send(tag + b" SELECT {%d}\r\n" % len(raw))
                assert c.line().startswith(b"+")
                c.send(raw + b"\r\n")
            line, _ = c.tagged(tag)
            assert line.startswith(tag + b" OK"), (name, line)
            assert_replaced(fetch_body(c, tag + b"f", b"1 BODY.PEEK[1]"))
            assert_replaced(fetch_body(c, tag + b"g"))
    # a failed SELECT leaves nothing selected
    line, _ = run(c, b"x", b"SELECT \"no such box\"")
    assert line.startswith(b"x NO"), line
    line, _ = run(c, b"y", b"FETCH 1 BODY.PEEK[1]")
    assert line.startswith(b"y BAD") or line.startswith(b"y NO"), line
    # over 1 KiB: refused whole by the proxy
    line, _ = run(c, b"z", b"SELECT " + b"q" * 1100)
    assert line.startswith(b"z BAD"), line
    c.close()
    px.wait_log("event=refused reason=mailbox_name")
