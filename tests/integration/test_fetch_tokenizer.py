"""Issue 15, FETCH response tokenising (real Dovecot 2.3, real libclamav).

The proxy used to decide what a FETCH literal carries by counting "[" anywhere in the response,
so a keyword such as "foo[" (any client, or a Sieve filter, can set one) before BODY[] made it
stream the message unjudged. Here keywords with "[", "]" and "(" are stored directly at Dovecot
on an EICAR message and on a clean one (Dovecot 2.3 takes "foo[" and "[", and refuses "x]",
"y(" and "a[b]c": those are covered by tests/unit/test_imap_fetchitem.c), and then

- FETCH n (FLAGS BODY[]), (FLAGS BODY.PEEK[1]), (FLAGS BODY.PEEK[2]) through the proxy: no form
  of the signature (raw, base64, quoted-printable, IMAP-quoted) reaches the client, the whole
  message comes back as the notice;
- the same commands on the clean message: the answer is byte-identical to Dovecot's own;
- PREVIEW of the EICAR message (Dovecot returns body text as a quoted string): never the
  signature, whether the proxy refuses the item or replaces the string with NIL; mixed with a
  literal in the same response, the string becomes NIL or the session ends with a BYE.

On the code before issue 15, the BODY[] fetches and the PREVIEW fetch hand over EICAR.
"""

from __future__ import annotations

import base64
import imaplib
import re

import pytest

import clients
import mailenv
import malware

HOST = "127.0.0.1"
PASSWORD = "tok15-pw"
KEYWORDS = [b"foo[", b"x]", b"y(", b"[", b"a[b]c"]


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "tok15-db"
    malware.write_db(str(d))
    return d


def scan_proxy(proxy_factory, scan_db, env_tmp):
    return proxy_factory(scan={"enabled": True, "database_dir": str(scan_db), "threads": 2,
                               "tmpdir": str(env_tmp), "keepalive_interval": "1s"})


def eicar_forms() -> list[bytes]:
    e = malware.EICAR
    forms = [e, e.replace(b"\\", b"\\\\"), "".join("=%02X" % c for c in e[:16]).encode()]
    for k in range(3):  # base64 at each alignment: a run from its middle
        enc = base64.b64encode(b"\0" * k + e)
        forms.append(enc[4:44])
    return forms


def assert_clean_of_eicar(out: bytes, what: str) -> None:
    for f in eicar_forms():
        assert f not in out, (what, f, out[:600])


class Closed(Exception):
    """The connection closed before the tagged answer (`seen`: every byte read)."""

    def __init__(self, seen: bytes):
        super().__init__("connection closed: %r" % seen[-300:])
        self.seen = seen


def raw_cmd(m: imaplib.IMAP4, tag: bytes, cmd: bytes) -> bytes:
    """Send one command; return every byte up to and including its tagged line (literals
    read by length, so the bytes are exactly what the server - or the proxy - sent)."""
    m.send(tag + b" " + cmd + b"\r\n")
    out = b""
    while True:
        line = m.readline()
        if not line:
            raise Closed(out)
        out += line
        lit = re.search(rb"~?\{(\d+)\+?\}\r\n$", line)
        if lit:
            out += m.read(int(lit.group(1)))
            continue
        if line.startswith(tag + b" "):
            return out


def direct(dovecot, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, dovecot.ports["imap"], timeout=15)
    m.login(user, PASSWORD)
    return m


def proxied(px, certs, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=clients.tls_context(certs),
                          timeout=30)
    m.login(user, PASSWORD)
    return m


def setup_user(dovecot, user: str) -> list[bytes]:
    """INBOX: 1 EICAR attachment, 2 EICAR in the text, 3 clean; every keyword Dovecot takes
    stored on all three. Returns the keywords it took."""
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [malware.attachment(malware.EICAR, "kw attach"),
                           malware.plain(malware.EICAR, "kw plain"),
                           malware.clean("kw clean")])
    m = direct(dovecot, user)
    m.select("INBOX")
    took = []
    for i, kw in enumerate(KEYWORDS):
        out = raw_cmd(m, b"s%d" % i, b"STORE 1:3 +FLAGS.SILENT (" + kw + b")")
        if out.split(b"\r\n")[-2].startswith(b"s%d OK" % i):
            took.append(kw)
    m.logout()
    return took


def test_keywords_with_brackets_do_not_unscan(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "tok15-a"
    took = setup_user(dovecot, user)
    assert b"foo[" in took, took  # the keyword of the issue: without it the test proves nothing
    d = direct(dovecot, user)
    raw_cmd(d, b"e", b"EXAMINE INBOX")
    flags = raw_cmd(d, b"f", b"FETCH 1 (FLAGS)")
    for kw in took:
        assert kw in flags, (kw, flags)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    m = proxied(px, certs, user)
    raw_cmd(m, b"e", b"EXAMINE INBOX")
    for n in (1, 2):
        for i, what in enumerate((b"(FLAGS BODY[])", b"(BODY[] FLAGS)", b"(FLAGS RFC822)",
                                  b"(FLAGS BODY.PEEK[1])", b"(FLAGS BODY.PEEK[2])",
                                  b"(FLAGS BODY.PEEK[TEXT])", b"(FLAGS BINARY.PEEK[2])",
                                  b"(FLAGS BODY.PEEK[]<0.400>)")):
            tag = b"t%d%d" % (n, i)
            out = raw_cmd(m, tag, b"FETCH %d %s" % (n, what))
            assert out.split(b"\r\n")[-2].startswith(tag + b" "), out[-300:]
            assert_clean_of_eicar(out, (n, what))
            for kw in took:
                assert kw in out, (kw, what, out[:300])  # the FLAGS item went through as is
            if what in (b"(FLAGS BODY[])", b"(BODY[] FLAGS)", b"(FLAGS RFC822)"):
                assert b"X-Portcullis-Verdict: infected" in out, (n, what, out[:600])
    raw_cmd(m, b"z", b"LOGOUT")
    d.logout()
    assert re.search(r"event=scan_verdict proto=imap .*verdict=infected", px.log())


def test_keywords_with_brackets_clean_identical(proxy_factory, dovecot, certs, scan_db,
                                                 env_tmp):
    user = "tok15-b"
    took = setup_user(dovecot, user)
    assert b"foo[" in took, took
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    d = direct(dovecot, user)
    m = proxied(px, certs, user)
    raw_cmd(d, b"e", b"EXAMINE INBOX")
    raw_cmd(m, b"e", b"EXAMINE INBOX")
    for i, what in enumerate((b"(FLAGS BODY[])", b"(FLAGS BODY.PEEK[1])", b"(UID FLAGS RFC822)",
                              b"(FLAGS ENVELOPE BODYSTRUCTURE BODY.PEEK[TEXT])",
                              b"(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[])")):
        tag = b"c%d" % i
        want = raw_cmd(d, tag, b"FETCH 3 " + what)
        got = raw_cmd(m, tag, b"FETCH 3 " + what)
        assert got == want, (what, got[:400], want[:400])
    raw_cmd(m, b"z", b"LOGOUT")
    d.logout()


def test_preview_never_carries_the_signature(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user = "tok15-c"
    setup_user(dovecot, user)
    d = direct(dovecot, user)
    raw_cmd(d, b"e", b"EXAMINE INBOX")
    want = raw_cmd(d, b"p", b"FETCH 2 (PREVIEW)")
    if not want.split(b"\r\n")[-2].startswith(b"p OK"):
        pytest.skip("this Dovecot has no PREVIEW: %r" % want[-200:])
    # Dovecot sends the body text as a quoted string: the signature is in it
    assert malware.EICAR.replace(b"\\", b"\\\\")[:30] in want, want
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    m = proxied(px, certs, user)
    raw_cmd(m, b"e", b"EXAMINE INBOX")
    for i, what in enumerate((b"(PREVIEW)", b"(UID PREVIEW)", b"(FLAGS PREVIEW UID)")):
        tag = b"p%d" % i
        out = raw_cmd(m, tag, b"FETCH 2 " + what)
        assert_clean_of_eicar(out, what)
        refused = not out.split(b"\r\n")[-2].startswith(tag + b" OK")
        assert refused or b"PREVIEW NIL" in out, out
    # the clean message's preview: refused by the proxy, or byte-identical to Dovecot's
    want = raw_cmd(d, b"q", b"FETCH 3 (PREVIEW)")
    got = raw_cmd(m, b"q", b"FETCH 3 (PREVIEW)")
    if got.split(b"\r\n")[-2].startswith(b"q OK"):
        assert got == want, (got, want)
    raw_cmd(m, b"z", b"LOGOUT")
    d.logout()
    assert "event=refused" in px.log()


def test_preview_with_a_literal(proxy_factory, dovecot, certs, scan_db, env_tmp):
    """PREVIEW and a header literal in one response of the EICAR message: the string is
    replaced or the session ends with a BYE; the signature never arrives."""
    user = "tok15-d"
    setup_user(dovecot, user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    m = proxied(px, certs, user)
    raw_cmd(m, b"e", b"EXAMINE INBOX")
    for i, what in enumerate((b"(PREVIEW BODY.PEEK[HEADER])", b"(BODY.PEEK[HEADER] PREVIEW)",
                              b"(ENVELOPE PREVIEW BODY.PEEK[1])")):
        tag = b"m%d" % i
        try:
            out = raw_cmd(m, tag, b"FETCH 2 " + what)
        except Closed as e:  # the BYE must be there
            out = e.seen
            assert b"* BYE" in out, out
            assert_clean_of_eicar(out, what)
            m = proxied(px, certs, user)
            raw_cmd(m, b"e", b"EXAMINE INBOX")
            continue
        assert_clean_of_eicar(out, what)
    raw_cmd(m, b"z", b"LOGOUT")
