"""IMAP through Portcullis against a real Dovecot (issue 2).

Every test drives a real client (imaplib, or a raw socket when the exact bytes matter) through
the proxy and asserts on what arrives: message bytes identical to what Dovecot holds, the
maildir after APPEND/STORE/COPY/MOVE, tagged answers in order, refusals with the right response
codes, what the proxy and Dovecot logged, and the proxy's memory while a client misbehaves.

Tests that change mail log in as a user of their own (fresh_user), so they never disturb the
seeded users other test files rely on.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import os
import re
import socket
import ssl
import time

import pytest

import clients
import mailenv

LOCAL = mailenv.LOCAL
USERS = mailenv.TEST_USERS


# ------------------------------------------------------------------------------------ helpers


def ctx_for(certs) -> ssl.SSLContext:
    return mailenv.ssl_context(certs.ca)


# A raw IMAP client (plain or TLS) that sees the exact bytes: responses are returned whole,
# literals included, with their CRLFs.
Raw = clients.LineClient


def literal_plus(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return b"{%d+}\r\n%s" % (len(b), b)


def raw_login(r: Raw, user: str, password: str, tag: bytes = b"L") -> list[bytes]:
    out = r.cmd(tag, b"LOGIN " + literal_plus(user) + b" " + literal_plus(password))
    assert out[-1].startswith(tag + b" OK"), out
    return out


def tagged(resps: list[bytes], tag: bytes) -> bytes:
    return [r for r in resps if r.startswith(tag + b" ")][-1]


def imaps(px, certs, timeout: float = 15) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(LOCAL, px.port("imaps"), ssl_context=ctx_for(certs),
                             timeout=timeout)


def imap_starttls(px, certs, timeout: float = 15) -> imaplib.IMAP4:
    m = imaplib.IMAP4(LOCAL, px.port("imap"), timeout=timeout)
    m.starttls(ssl_context=ctx_for(certs))
    return m


wait_for = clients.wait_for
vm_rss_kb = clients.rss_kb


def maildir_flags(dovecot, user: str, folder: str = "INBOX") -> list[str]:
    """Maildir info flags of every message of the folder (unordered)."""
    d = dovecot.maildir(user, folder)
    out = []
    for sub in ("cur", "new"):
        for f in (d / sub).iterdir():
            out.append(f.name.split(":2,", 1)[1] if ":2," in f.name else "")
    return out


def lf(msg: bytes) -> bytes:
    """How Dovecot's maildir stores a message saved by APPEND (CRLF → LF)."""
    return msg.replace(b"\r\n", b"\n")


_user_seq = itertools.count(1)


@pytest.fixture
def fresh_user(dovecot):
    """fresh_user(n) → (user, password, messages): a new user of the session Dovecot with `n`
    generated messages in INBOX, for tests that change mail."""

    def make(n: int = 3, sizes="small"):
        i = next(_user_seq)
        user = f"imt{os.getpid()}u{i}"
        pw = f"pw-{i}-secret"
        dovecot.add_user(user, pw)
        msgs = mailenv.gen_messages(n, seed=7000 + i, sizes=sizes) if n else []
        if msgs:
            dovecot.deliver(user, msgs)
        return user, pw, msgs

    return make


@pytest.fixture
def px(proxy_factory):
    return proxy_factory()


# ------------------------------------------------------------------ full sessions with imaplib


@pytest.mark.parametrize("client_tls,backend_tls", [("implicit", "none"),
                                                    ("starttls", "starttls"),
                                                    ("implicit", "implicit")])
def test_imaplib_full_session(proxy_factory, dovecot, certs, fresh_user, client_tls,
                              backend_tls):
    px = proxy_factory(backend_tls=backend_tls)
    user, pw, msgs = fresh_user(4)
    m = imaps(px, certs) if client_tls == "implicit" else imap_starttls(px, certs)
    assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities
    typ, _ = m.login(user, pw)
    assert typ == "OK"
    assert "STARTTLS" not in m.capabilities

    typ, boxes = m.list()
    assert typ == "OK" and any(b'"INBOX"' in b or b.endswith(b" INBOX") for b in boxes), boxes

    typ, data = m.select("INBOX")
    assert typ == "OK" and int(data[0]) == len(msgs)
    typ, data = m.fetch("1:*", "(UID BODY.PEEK[])")
    got = [item[1] for item in data if isinstance(item, tuple)]
    assert got == msgs, "fetched bodies differ from what was delivered"
    assert got == dovecot.read_maildir(user)

    # APPEND (imaplib sends a synchronising literal) and read it back from the maildir
    new = mailenv.gen_messages(1, seed=4242, subject="appended through the proxy")[0]
    typ, data = m.append("INBOX", r"(\Flagged)", None, new)
    assert typ == "OK", data
    stored = dovecot.read_maildir(user)
    assert len(stored) == len(msgs) + 1 and stored[-1] == lf(new)

    # STORE flags: visible in FETCH and in the maildir file names (S = \Seen, F = \Flagged)
    typ, data = m.store("1:2", "+FLAGS", r"(\Seen)")
    assert typ == "OK"
    typ, data = m.fetch("1:*", "(FLAGS)")
    flags = [d.decode() for d in data]
    assert r"\Seen" in flags[0] and r"\Seen" in flags[1] and r"\Seen" not in flags[2]
    assert r"\Flagged" in flags[-1]
    assert sorted(maildir_flags(dovecot, user)) == sorted(["S", "S", "", "", "F"])

    # SEARCH
    typ, data = m.search(None, "SUBJECT", '"appended through the proxy"')
    assert typ == "OK" and data[0].split() == [str(len(msgs) + 1).encode()]
    typ, data = m.search(None, "SEEN")
    assert data[0].split() == [b"1", b"2"]

    # COPY and MOVE into a new folder
    assert m.create("Archive")[0] == "OK"
    assert m.copy("1", "Archive")[0] == "OK"
    assert dovecot.read_maildir(user, "Archive") == [msgs[0]]
    typ, data = m._simple_command("MOVE", "2", "Archive")
    assert typ == "OK", data
    assert dovecot.read_maildir(user, "Archive") == [msgs[0], msgs[1]]
    inbox = dovecot.read_maildir(user)
    assert msgs[1] not in inbox and len(inbox) == len(msgs)

    typ, data = m.logout()
    assert typ == "BYE"
    log = px.log()
    assert re.search(r"event=login backend=\S+ mech=login", log)
    assert pw not in log


def test_idle_sees_new_mail_and_done(px, certs, fresh_user, dovecot):
    user, pw, msgs = fresh_user(2)
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, user, pw)
    sel = r.cmd(b"s", b"SELECT INBOX")
    assert b"* %d EXISTS\r\n" % len(msgs) in sel
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")

    other = imaps(px, certs)
    other.login(user, pw)
    new = mailenv.gen_messages(1, seed=99, subject="while idling")[0]
    assert other.append("INBOX", None, None, new)[0] == "OK"
    other.logout()

    r.sock.settimeout(10)
    seen = []
    while True:
        line = r.line()
        seen.append(line)
        if line == b"* %d EXISTS\r\n" % (len(msgs) + 1):
            break
    r.send(b"DONE\r\n")
    rest = r.until_tag(b"i")
    assert rest[-1].startswith(b"i OK"), rest
    assert r.cmd(b"f", b"FETCH %d BODY.PEEK[]" % (len(msgs) + 1))[0].endswith(new + b")\r\n")
    out = r.cmd(b"z", b"LOGOUT")
    assert out[0].startswith(b"* BYE") and out[-1].startswith(b"z OK")
    r.close()


def test_large_append_sync_literal_streams(px, certs, fresh_user, dovecot):
    """A 6 MB APPEND with a synchronising literal goes through whole (the proxy holds the client
    only until the backend's "+", then streams) and is stored byte for byte."""
    user, pw, _ = fresh_user(0)
    big = mailenv.gen_messages(1, seed=5, sizes=[6 * 1024 * 1024])[0]
    m = imaps(px, certs, timeout=60)
    m.login(user, pw)
    t0 = time.monotonic()
    typ, data = m.append("INBOX", None, None, big)
    assert typ == "OK", data
    assert time.monotonic() - t0 < 20
    assert dovecot.read_maildir(user) == [lf(big)]
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == big
    m.logout()


# ------------------------------------------------------------------------------ login variants


@pytest.mark.parametrize("how", ["atom", "quoted_escapes", "sync_literal", "literal_plus",
                                 "utf8_literal", "imaplib_utf8_sync"])
def test_login_syntax(px, certs, dovecot, how):
    user = {"atom": "alice", "quoted_escapes": "carol", "sync_literal": "carol",
            "literal_plus": "carol", "utf8_literal": "jürgen",
            "imaplib_utf8_sync": "jürgen"}[how]
    pw = USERS[user]
    if how == "imaplib_utf8_sync":
        m = imaps(px, certs)
        mailenv.imap_login_literal(m, user, pw)
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == len(dovecot.seeded[user])
        m.logout()
        return
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    if how == "atom":
        out = r.cmd(b"a1", b"LOGIN alice alicepw")
    elif how == "quoted_escapes":
        out = r.cmd(b"a1", b"LOGIN \"carol\" " + mailenv.imap_quote(pw))
        assert b'\\"' in mailenv.imap_quote(pw) and b"\\\\" in mailenv.imap_quote(pw)
    elif how == "sync_literal":
        u, p = user.encode(), pw.encode()
        r.send(b"a1 LOGIN {%d}\r\n" % len(u))
        assert r.line().startswith(b"+ "), "continuation for the user literal"
        r.send(u + b" {%d}\r\n" % len(p))
        assert r.line().startswith(b"+ "), "continuation for the password literal"
        r.send(p + b"\r\n")
        out = r.until_tag(b"a1")
    else:
        out = r.cmd(b"a1", b"LOGIN " + literal_plus(user) + b" " + literal_plus(pw))
        assert not any(x.startswith(b"+") for x in out), "LITERAL+ needs no continuation"
    assert out[-1].startswith(b"a1 OK"), out
    assert b"[CAPABILITY " in out[-1]
    sel = r.cmd(b"s", b"SELECT INBOX")
    assert b"* %d EXISTS\r\n" % len(dovecot.seeded[user]) in sel and sel[-1].startswith(b"s OK")
    r.cmd(b"z", b"LOGOUT")
    r.close()
    log = px.log()
    assert pw not in log and pw.replace("\\", "\\\\") not in log


def test_wrong_password_then_retry_same_connection(px, certs):
    m = imaps(px, certs)
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        m.login("alice", "wrong-password")
    assert m.login("alice", "alicepw")[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    assert "wrong-password" not in px.log()


def test_authenticate_plain_sasl_ir_continuation_and_cancel(px, certs, dovecot):
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    # cancel: "*" after the continuation
    r.send(b"c1 AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ \r\n"
    r.send(b"*\r\n")
    assert r.line().startswith(b"c1 BAD"), "cancelled AUTHENTICATE answers BAD"
    # without SASL-IR: the payload after the "+" continuation
    pay = base64.b64encode("\0jürgen\0pässwörd".encode())
    r.send(b"c2 AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ \r\n"
    r.send(pay + b"\r\n")
    out = r.until_tag(b"c2")
    assert out[-1].startswith(b"c2 OK"), out
    sel = r.cmd(b"s", b"EXAMINE INBOX")
    assert b"* %d EXISTS\r\n" % len(dovecot.seeded["jürgen"]) in sel
    r.close()

    # with SASL-IR, and imaplib's authenticate (continuation)
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    out = r.cmd(b"c3", b"AUTHENTICATE PLAIN " + base64.b64encode(b"\0carol\0" +
                                                               USERS["carol"].encode()))
    assert out[-1].startswith(b"c3 OK"), out
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()
    m = imaps(px, certs)
    assert mailenv.imap_auth_plain(m, "bob", "bobpw") == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    log = px.log()
    assert pay.decode() not in log and "pässwörd" not in log


def test_authenticate_xoauth2_not_offered_by_backend(px, certs):
    token = "ya29.SECRET-TOKEN-" + os.urandom(8).hex()
    ir = base64.b64encode(f"user=alice\x01auth=Bearer {token}\x01\x01".encode())
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    t0 = time.monotonic()
    out = r.cmd(b"x1", b"AUTHENTICATE XOAUTH2 " + ir)
    assert time.monotonic() - t0 < 5
    # a clear answer: the mechanism is unavailable (not "bad credentials", which would make a
    # client throw its token away)
    assert out[-1].startswith(b"x1 NO [CANNOT] "), out
    assert not any(x.startswith(b"+") for x in out)
    # the session goes on: a normal login works
    out = r.cmd(b"x2", b"LOGIN alice alicepw")
    assert out[-1].startswith(b"x2 OK"), out
    r.close()
    log = px.log()
    assert token not in log and ir.decode() not in log
    assert "mech=xoauth2" in log  # the attempt itself is logged, without the token


# ------------------------------------------------------------------------------------ pre-auth


def test_preauth_capability_noop_id_logout_on_143(px, certs):
    r = Raw(px.port("imap"))
    g = r.greeting()
    assert b"STARTTLS" in g and b"LOGINDISABLED" in g
    out = r.cmd(b"a", b"CAPABILITY")
    caps = out[0].split()
    assert out[0].startswith(b"* CAPABILITY ") and b"STARTTLS" in caps
    assert b"LOGINDISABLED" in caps and b"AUTH=PLAIN" not in caps
    assert out[-1].startswith(b"a OK")
    assert r.cmd(b"b", b"NOOP") == [b"b OK NOOP completed.\r\n"]
    out = r.cmd(b"c", b"STARTTLS")
    assert out[-1].startswith(b"c OK")
    r.starttls(ctx_for(certs))
    out = r.cmd(b"d", b"CAPABILITY")
    caps = out[0].split()
    assert b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
    assert b"AUTH=PLAIN" in caps and b"IMAP4rev1" in caps
    out = r.cmd(b"e", b'ID ("name" "OfflineIMAP" "version" "8.0")')
    assert out[0].startswith(b"* ID (") and out[-1].startswith(b"e OK"), out
    assert r.cmd(b"f", b"ID NIL")[-1].startswith(b"f OK")
    out = r.cmd(b"g", b"LOGOUT")
    assert out[0].startswith(b"* BYE") and out[-1].startswith(b"g OK")
    assert r.rest_until_closed(5) == b""
    r.close()


def test_id_fields_forwarded_to_backend(px, certs, dovecot):
    name = "pc-client-" + os.urandom(4).hex()
    m = imaps(px, certs)
    # OfflineIMAP's order: ID before LOGIN (nginx answers BAD here and breaks it)
    typ, data = m.xatom("ID", f'("name" "{name}" "version" "1.2.3" "x-originating-ip" '
                               '"203.0.113.9")')
    assert typ == "OK"
    assert m.untagged_responses.get("ID"), "untagged * ID answer"
    m.login("bob", "bobpw")
    m.logout()
    pat = rf"ID sent: name={name}, version=1\.2\.3"
    assert wait_for(lambda: re.search(pat, dovecot.log())), "client ID fields reach Dovecot"
    # the forwarding fields are the proxy's: a client cannot forge its address
    login = [ln for ln in dovecot.log().splitlines() if "Login: user=<bob>" in ln]
    assert login and "203.0.113.9" not in login[-1] and "rip=127.0.0.1" in login[-1]


def test_login_before_tls_on_143_refused(px, certs):
    r = Raw(px.port("imap"))
    r.greeting()
    out = r.cmd(b"a", b"LOGIN alice alicepw")
    assert re.match(rb"a (NO \[PRIVACYREQUIRED\]|BAD) ", out[-1]), out
    out = r.cmd(b"b", b"AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice\0alicepw"))
    assert re.match(rb"b (NO \[PRIVACYREQUIRED\]|BAD) ", out[-1]), out
    assert r.cmd(b"c", b"SELECT INBOX")[-1].startswith(b"c BAD"), "still not logged in"
    assert r.cmd(b"d", b"STARTTLS")[-1].startswith(b"d OK")
    r.starttls(ctx_for(certs))
    raw_login(r, "alice", "alicepw")
    assert r.cmd(b"e", b"SELECT INBOX")[-1].startswith(b"e OK")
    r.close()
    assert "event=login_start" in px.log()
    assert px.log().count("event=login_start") == 1


def test_plaintext_login_allowed_by_config(proxy_factory, certs):
    px = proxy_factory(allow_plaintext_auth=True)
    r = Raw(px.port("imap"))
    g = r.greeting()
    assert b"LOGINDISABLED" not in g and b"STARTTLS" in g
    out = r.cmd(b"a", b"LOGIN alice alicepw")
    assert out[-1].startswith(b"a OK"), out
    assert r.cmd(b"b", b"SELECT INBOX")[-1].startswith(b"b OK")
    r.close()


def test_starttls_pipelined_plaintext_is_not_executed(px, certs):
    r = Raw(px.port("imap"))
    r.greeting()
    r.send(b"a STARTTLS\r\nb LOGIN alice alicepw\r\n")
    assert r.line().startswith(b"a OK")
    r.starttls(ctx_for(certs))
    out = r.cmd(b"c", b"NOOP")
    assert out == [b"c OK NOOP completed.\r\n"], out
    # b was not executed: still not authenticated, and no login was attempted
    out = r.cmd(b"d", b"SELECT INBOX")
    assert out[-1].startswith(b"d BAD"), out
    r.sock.settimeout(0.5)
    with pytest.raises((socket.timeout, TimeoutError)):
        r._fill()
    assert not r.buf.startswith(b"b "), r.buf
    r.close()
    log = px.log()
    assert "event=starttls_injection" in log
    assert "event=login_start" not in log


def test_starttls_plaintext_in_later_segment_not_executed(px, certs):
    """Plaintext sent after STARTTLS in a later segment (before the client's ClientHello) is
    not taken as a TLS record stream to execute: the handshake fails or the bytes are dropped,
    and no login happens."""
    r = Raw(px.port("imap"), timeout=5)
    r.greeting()
    r.send(b"a STARTTLS\r\n")
    assert r.line().startswith(b"a OK")  # the proxy now expects a ClientHello
    r.send(b"b LOGIN alice alicepw\r\n")
    try:
        data = r.until_closed(timeout=3)
    except TimeoutError:
        data = bytes(r.buf)
    r.close()
    assert b"b OK" not in data and b"b NO" not in data
    assert "event=login_start" not in px.log()


def test_backend_down_answers_unavailable_promptly(proxy_factory, certs, dovecot):
    dead = {"name": "dead", "protocol": "imap", "host": LOCAL, "port": mailenv.free_port(),
            "tls": "none"}
    pop = [b for b in dovecot.backends() if b["protocol"] == "pop3"]
    px = proxy_factory(backends=[dead] + pop)
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    for tag in (b"a", b"b"):
        t0 = time.monotonic()
        out = r.cmd(tag, b"LOGIN alice alicepw")
        assert time.monotonic() - t0 < 2
        assert out[-1].startswith(tag + b" NO [UNAVAILABLE]"), out
    assert r.cmd(b"c", b"NOOP")[-1].startswith(b"c OK"), "the client may retry"
    r.close()


def test_backend_never_greets_times_out(proxy_factory, certs, dovecot):
    lsock = socket.socket()
    lsock.bind((LOCAL, 0))
    lsock.listen(16)  # the kernel completes the handshake; nobody ever speaks
    try:
        silent = {"name": "silent", "protocol": "imap", "host": LOCAL,
                  "port": lsock.getsockname()[1], "tls": "none"}
        pop = [b for b in dovecot.backends() if b["protocol"] == "pop3"]
        px = proxy_factory(backends=[silent] + pop,
                           limits={"backend_connect_timeout": "1s",
                                   "backend_login_timeout": "1s"})
        r = Raw(px.port("imaps"), ctx_for(certs))
        r.greeting()
        t0 = time.monotonic()
        out = r.cmd(b"a", b"LOGIN alice alicepw")
        took = time.monotonic() - t0
        assert out[-1].startswith(b"a NO [UNAVAILABLE]"), out
        assert 0.8 < took < 3, took
        r.close()
    finally:
        lsock.close()


def _rss_while_sending(px, sock, chunk: bytes, total: int) -> tuple[int, int, int]:
    """Send up to `total` bytes (stops when the proxy closes); returns (rss before, max rss
    seen, bytes sent)."""
    before = vm_rss_kb(px.pid)
    peak, sent = before, 0
    sock.settimeout(5)
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
            if sent % (len(chunk) * 16) == 0:
                peak = max(peak, vm_rss_kb(px.pid))
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout, OSError):
        pass
    peak = max(peak, vm_rss_kb(px.pid))
    return before, peak, sent


def test_huge_literal_preauth_refused_memory_flat(px, certs):
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    t0 = time.monotonic()
    r.send(b"a LOGIN {104857600}\r\n")
    ans = r.line()
    assert time.monotonic() - t0 < 2
    assert re.match(rb"(a (BAD|NO)|\* BYE) ", ans), ans
    assert not ans.startswith(b"+"), "no continuation for a 100 MB literal"
    before, peak, sent = _rss_while_sending(px, r.sock, b"x" * 65536, 100 * 1024 * 1024)
    assert peak - before < 8 * 1024, f"RSS grew {peak - before} kB while the client sent {sent}"
    assert sent < 100 * 1024 * 1024, "the proxy hangs up instead of swallowing 100 MB"
    r.close()
    # and a literal+ of the same size is refused the same way
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    r.send(b"a LOGIN {104857600+}\r\n")
    ans = r.line()
    assert re.match(rb"(a (BAD|NO)|\* BYE) ", ans), ans
    before, peak, sent = _rss_while_sending(px, r.sock, b"y" * 65536, 64 * 1024 * 1024)
    assert peak - before < 8 * 1024, f"RSS grew {peak - before} kB while the client sent {sent}"
    r.close()
    assert "event=login_start" not in px.log()


def test_overlong_line_preauth_refused_memory_flat(px, certs):
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    r.send(b"a LOGIN " + b"z" * 9000)
    t0 = time.monotonic()
    ans = r.line()
    assert time.monotonic() - t0 < 2
    assert ans.startswith(b"* BYE") or ans.startswith(b"a BAD"), ans
    before, peak, sent = _rss_while_sending(px, r.sock, b"z" * 65536, 64 * 1024 * 1024)
    assert peak - before < 8 * 1024, f"RSS grew {peak - before} kB while the client sent {sent}"
    r.close()


def test_too_many_bad_commands_bye(proxy_factory, certs):
    px = proxy_factory(limits={"max_bad_commands": 3})
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    assert r.cmd(b"a", b"FROB")[-1].startswith(b"a BAD")
    assert r.cmd(b"b", b"SELECT INBOX")[-1].startswith(b"b BAD")
    r.send(b"c )(\r\n")
    assert r.line().startswith(b"c BAD")
    assert r.line().startswith(b"* BYE")
    assert r.rest_until_closed(5) == b""
    r.close()
    assert "too_many_bad_commands" in px.log()


def test_preauth_timeout_bye(proxy_factory, certs):
    px = proxy_factory(limits={"preauth_timeout": "1s"})
    r = Raw(px.port("imap"))
    r.greeting()
    r.sock.settimeout(5)
    t0 = time.monotonic()
    bye = r.line()
    assert bye.startswith(b"* BYE"), bye
    assert 0.7 < time.monotonic() - t0 < 3
    assert r.rest_until_closed(5) == b""
    r.close()


# ------------------------------------------------------------------------------- post-login relay


@pytest.fixture
def zdovecot(dovecot_factory):
    """A Dovecot that offers COMPRESS=DEFLATE (imap_zlib), so the proxy's refusal matters."""
    return dovecot_factory(pop3=False, extra_conf="mail_plugins = zlib imap_zlib\n")


def only_imap_listeners(px_overrides: dict) -> dict:
    return {**px_overrides, "listeners": [
        {"name": "imaps", "bind": f"{LOCAL}:{mailenv.free_port()}", "protocol": "imap",
         "tls": "implicit"},
        {"name": "imap", "bind": f"{LOCAL}:{mailenv.free_port()}", "protocol": "imap",
         "tls": "starttls"}]}


def test_postlogin_capability_filtered_compress_starttls_refused(proxy_factory, certs,
                                                                  zdovecot):
    direct = imaplib.IMAP4(LOCAL, zdovecot.ports["imap"])
    direct.login("alice", "alicepw")
    typ, data = direct.capability()
    assert b"COMPRESS=DEFLATE" in data[0], "the backend offers COMPRESS"
    direct.logout()

    px = proxy_factory(dovecot=zdovecot, **only_imap_listeners({}))
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    out = raw_login(r, "alice", "alicepw")
    for resp in out + r.cmd(b"c", b"CAPABILITY"):
        words = resp.upper().replace(b"]", b" ").split()
        assert not any(w.startswith(b"COMPRESS") for w in words), resp
        assert b"STARTTLS" not in words and b"LOGINDISABLED" not in words, resp
    assert any(resp.startswith(b"* CAPABILITY IMAP4rev1") for resp in out + r.cmd(b"d",
                                                                                  b"CAPABILITY"))
    out = r.cmd(b"z", b"COMPRESS DEFLATE")
    assert out == [b"z BAD COMPRESS is not available through this proxy.\r\n"], out
    out = r.cmd(b"t", b"STARTTLS")
    assert out == [b"t BAD TLS is already active.\r\n"], out
    # refused with a literal: a synchronising one is never sent (we answered BAD, not "+"),
    # a LITERAL+ one is swallowed with the command
    r.send(b"y COMPRESS {7}\r\n")
    assert r.line() == b"y BAD COMPRESS is not available through this proxy.\r\n"
    assert r.cmd(b"n1", b"NOOP")[-1].startswith(b"n1 OK")
    r.send(b"x COMPRESS {7+}\r\nDEFLATE\r\nn2 NOOP\r\n")
    out = r.until_tag(b"n2")
    assert out[0] == b"x BAD COMPRESS is not available through this proxy.\r\n", out
    assert out[-1].startswith(b"n2 OK"), out
    # a refused command's literal larger than the relay buffer (64k) is dropped as it comes
    blob = b"q" * 300_000
    r.send(b"w COMPRESS {%d+}\r\n%s\r\nn3 NOOP\r\n" % (len(blob), blob))
    out = r.until_tag(b"n3")
    assert out[0].startswith(b"w BAD") and out[-1].startswith(b"n3 OK"), out
    # the session still speaks plain IMAP
    sel = r.cmd(b"s", b"SELECT INBOX")
    assert sel[-1].startswith(b"s OK")
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()


def test_pipelined_commands_answered_in_order(px, certs, dovecot):
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, "bob", "bobpw")
    # Dovecot may finish independent commands out of order (CAPABILITY overtakes a FETCH), so
    # the burst is one it answers in order when spoken to directly; the proxy must not change it.
    tags = [b"p1", b"p2", b"p3", b"p4", b"p5", b"p6", b"p7"]
    r.send(b"p1 NOOP\r\np2 EXAMINE INBOX\r\np3 FETCH 1:* (UID RFC822.SIZE)\r\n"
           b"p4 EXAMINE INBOX\r\np5 FETCH 1 BODY.PEEK[]\r\np6 UNSELECT\r\np7 NOOP\r\n")
    seen = []
    fetched = None
    while len(seen) < len(tags):
        resp = r.response()
        if resp[:1] != b"*":
            seen.append(resp.split(b" ", 1)[0])
            assert resp.split(b" ")[1] == b"OK", resp
        elif b"BODY[] {" in resp:
            fetched = resp.split(b"}\r\n", 1)[1][:-3]
    assert seen == tags
    assert fetched == dovecot.seeded["bob"][0]
    r.close()


def test_sync_literal_refused_by_backend_is_not_forwarded(px, certs):
    """After `{n}` the proxy holds the client until the backend answers: the backend refuses
    the command (tagged NO/BAD instead of "+"), so what the client sends next is a new command —
    for the proxy as for Dovecot. Here it is STARTTLS, which the proxy must see and refuse itself
    (had it been forwarded as literal bytes, Dovecot would answer it)."""
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, "alice", "alicepw")
    for tag, line in ((b"a", b"a FROBNICATE {12}\r\n"),
                      (b"b", b"b APPEND NoSuchFolder {12}\r\n"),
                      (b"c", b"c SELECT {12}\r\n")):
        r.send(line)
        ans = r.response()
        if tag == b"c":
            assert ans.startswith(b"+ "), ans  # a legal literal: the backend asks for it
            r.send(b"NoSuchFolder\r\n")
            ans = r.until_tag(b"c")[-1]
            assert ans.startswith(b"c NO"), ans
            continue
        assert re.match(tag + rb" (NO|BAD) ", ans), ans
        out = r.cmd(b"t" + tag, b"STARTTLS")
        assert out == [b"t" + tag + b" BAD TLS is already active.\r\n"], out
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()


def test_bad_line_with_literal_plus_does_not_run_as_command(px, certs, fresh_user, dovecot):
    """`{n+}` on a line the backend rejects: its bytes still come (LITERAL+), and must never
    run as a command — Dovecot would execute them, the proxy must not let that happen."""
    user, pw, msgs = fresh_user(1)
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, user, pw)
    smuggled = b"x1 SELECT INBOX"
    r.send(b"a FROBNICATE {%d+}\r\n%s\r\nb NOOP\r\n" % (len(smuggled), smuggled))
    out = r.until_tag(b"b")
    assert out[0].startswith(b"a BAD"), out
    assert out[-1].startswith(b"b OK"), out
    assert not any(x.startswith((b"x1 ", b"+")) for x in out), out
    assert not any(b"EXISTS" in x for x in out), "the smuggled SELECT ran"
    # and a legal {n+} literal still works (no stray continuation reaches the client)
    out = r.cmd(b"c", b"EXAMINE {5+}\r\nINBOX")
    assert out[-1].startswith(b"c OK") and not any(x.startswith(b"+") for x in out), out
    # several literals in one command, LITERAL+ and synchronising mixed
    msg = b"Subject: two literals\r\n\r\nbody\r\n"
    r.send(b"d APPEND INBOX {%d+}\r\n%s {%d}\r\n" % (len(msg), msg, len(msg)))
    assert r.line().startswith(b"+ ")
    r.send(msg + b"\r\n")
    out = r.until_tag(b"d")
    assert out[-1].startswith(b"d OK"), out
    r.close()
    assert dovecot.read_maildir(user) == msgs + [lf(msg), lf(msg)]


def test_idle_timeout_after_login_bye(proxy_factory, certs):
    px = proxy_factory(limits={"imap_idle_timeout": "1s"})
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, "alice", "alicepw")
    r.sock.settimeout(6)
    t0 = time.monotonic()
    rest = r.rest_until_closed(6)
    assert b"* BYE" in rest, rest
    assert 0.7 < time.monotonic() - t0 < 4
    r.close()


def test_literals_split_into_single_bytes(px, certs, fresh_user, dovecot):
    """Literal headers arriving one byte per TLS record: the proxy still recognises them (and
    rewrites {n+} although its "+" came in an earlier read)."""
    user, pw, msgs = fresh_user(1)
    r = Raw(px.port("imaps"), ctx_for(certs))
    r.greeting()
    raw_login(r, user, pw)
    r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def trickle(data: bytes) -> None:
        for i in range(len(data)):
            r.send(data[i:i + 1])
            time.sleep(0.002)  # behaviour under test: one byte per TLS record and TCP read

    trickle(b"a EXAMINE {5}\r\n")
    assert r.line().startswith(b"+ ")
    trickle(b"INBOX\r\n")
    assert r.until_tag(b"a")[-1].startswith(b"a OK")
    msg = b"Subject: trickled\r\n\r\nhello\r\n"
    trickle(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
    out = r.until_tag(b"b")
    assert out[-1].startswith(b"b OK") and not any(x.startswith(b"+") for x in out), out
    # Dovecot refuses an unknown command as soon as it has its name, before the literal header
    # arrives: the proxy must notice that answer went by and not wait for another.
    trickle(b"c FROB {3+}\r\nz z\r\n")
    out = r.until_tag(b"c")
    assert out[-1].startswith(b"c BAD") and len(out) == 1, out
    assert r.cmd(b"d", b"NOOP")[-1].startswith(b"d OK")
    trickle(b"e FROB {3}\r\n")
    out = r.until_tag(b"e")
    assert out[-1].startswith(b"e BAD") and len(out) == 1, out
    assert r.cmd(b"f", b"STARTTLS") == [b"f BAD TLS is already active.\r\n"]
    r.close()
    assert dovecot.read_maildir(user) == msgs + [lf(msg)]


def test_large_append_literal_plus_streams(proxy_factory, certs, fresh_user, dovecot):
    """A 4 MB LITERAL+ APPEND: the proxy holds it (bounded by its buffer) until the backend's
    "+", which the client never sees, then streams it — without its memory growing."""
    # Under ASan freed TLS record buffers sit in the quarantine and look like growth.
    asan = os.environ.get("ASAN_OPTIONS", "")
    px = proxy_factory(env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                            "quarantine_size_mb=1"})
    user, pw, _ = fresh_user(0)
    big = mailenv.gen_messages(1, seed=6, sizes=[4 * 1024 * 1024])[0]
    r = Raw(px.port("imaps"), ctx_for(certs), timeout=30)
    r.greeting()
    raw_login(r, user, pw)
    t0 = time.monotonic()
    rss0 = vm_rss_kb(px.pid)
    r.send(b"a APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\nb NOOP\r\n")
    out = r.until_tag(b"b")
    assert time.monotonic() - t0 < 20
    grown = vm_rss_kb(px.pid) - rss0
    assert grown < 2 * 1024, f"RSS grew {grown} kB during a 4 MB APPEND"
    assert not any(x.startswith(b"+") for x in out), out
    assert out[0].startswith(b"a OK") and out[-1].startswith(b"b OK"), out
    r.close()
    assert dovecot.read_maildir(user) == [lf(big)]
