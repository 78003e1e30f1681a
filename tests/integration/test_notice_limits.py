"""Issue 15, items 4 and 5 and the partial-slice bullet: limits by kind, notices that carry no
attacker bytes, and replacement slices no longer than the server's answer (real Dovecot, real
libclamav).

- Limits by kind: a ~2 KB message nested 20 levels deep (message/rfc822, multipart, zip in zip)
  hits libclamav's recursion limit. It is a structural limit: blocked by default
  (scan.limits_action: block), even with oversize_action: pass; delivered byte-identical with
  limits_action: pass. A message over max_scan_size still follows oversize_action.
- Notices: EICAR in the Subject (raw, RFC 2047 B and Q), in the From display name and in a very
  long To: the notice delivered (IMAP and POP3) holds no form of EICAR (raw, base64 of it, QP of
  it) and is a valid RFC 5322 message (CRLF, lines <= 78 in the header, encoded-words <= 75,
  only printable US-ASCII in the header).
- Slices: BODY.PEEK[1]<0.34>, BODY.PEEK[]<100.50>, BINARY.PEEK[1]<o.n> of a blocked message:
  the literal is never longer than direct Dovecot's for the same item.
"""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import io
import poplib
import quopri
import re
import ssl
import zipfile

import pytest

import clients
import malware

HOST = "127.0.0.1"
PASSWORD = "notice-pw-1"
EICAR = malware.EICAR


# ---------------------------------------------------------------------------- messages


def crlf(s: str | bytes) -> bytes:
    return malware.crlf(s)


def nested_rfc822(depth: int) -> bytes:
    m = "From: a@x\nSubject: level 0\n\nhello\n"
    for i in range(1, depth + 1):
        m = "From: a@x\nSubject: l%d\nContent-Type: message/rfc822\n\n" % i + m
    return crlf("Date: Mon, 06 Jan 2025 10:00:00 +0000\n" + m)


def nested_multipart(depth: int) -> bytes:
    body = "Content-Type: text/plain\n\nhello\n"
    for i in range(depth):
        b = "b%d" % i
        body = 'Content-Type: multipart/mixed; boundary="%s"\n\n--%s\n%s--%s--\n' % (b, b, body, b)
    return crlf("From: a@x\nSubject: deep multipart\nMIME-Version: 1.0\n" + body)


def nested_zip(depth: int) -> bytes:
    data = b"hello, nothing here\n"
    name = "x.txt"
    for i in range(depth):
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w", zipfile.ZIP_STORED) as z:
            z.writestr(name, data)
        data, name = bio.getvalue(), "z%d.zip" % i
    return malware.attachment(data, "deep zip", "deep.zip", "application/zip")


def b2047(raw: bytes, enc: str) -> str:
    if enc == "B":
        return "=?us-ascii?B?%s?=" % base64.b64encode(raw).decode()
    q = "".join(chr(c) if chr(c).isalnum() and c < 128 else "=%02X" % c for c in raw)
    return "=?us-ascii?Q?%s?=" % q


E = EICAR.decode()


def eicar_header_msgs() -> dict[str, bytes]:
    body = "MIME-Version: 1.0\nContent-Type: text/plain\n\n" + E + "\n"
    long_to = ", ".join('"%s %d" <u%d@example.com>' % (E, i, i) for i in range(40))
    return {
        "subject_raw": crlf("From: a@example.org\nTo: b@example.com\nSubject: %s\n" % E + body),
        "subject_b": crlf("From: a@example.org\nSubject: %s\n" % b2047(EICAR, "B") + body),
        "subject_q": crlf("From: a@example.org\nSubject: %s\n" % b2047(EICAR, "Q") + body),
        "from_name": crlf('From: "%s" <evil@example.org>\nSubject: hi\n' % E + body),
        "long_to": crlf("From: a@example.org\nTo: %s\nSubject: many\n" % long_to + body),
        "folded": crlf("From: a@example.org\nSubject: X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR\n"
                       " -STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\n" + body),
    }


def eicar_forms() -> list[bytes]:
    forms = [EICAR, quopri.encodestring(EICAR), quopri.encodestring(EICAR, header=True)]
    # base64 of EICAR at any of the 3 alignments inside a longer text
    for pad in range(3):
        enc = base64.b64encode(b"x" * pad + EICAR)
        skip = (pad * 4 + 2) // 3 + 1
        forms.append(enc[skip:skip + 80])
    forms.append(b"".join(b"=%02X" % c for c in EICAR))
    forms.append(E[:40].encode())  # a long piece of it is already too much
    return forms


def assert_no_eicar(got: bytes) -> None:
    flat = got.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")
    for f in eicar_forms():
        assert f not in got and f not in flat, (f, got[:1500])
    # and decoded: every encoded-word, and the body's text
    msg = email.message_from_bytes(got, policy=email.policy.default)
    for k, v in msg.items():
        assert E[:30] not in str(v), (k, str(v)[:300])
    assert E[:30] not in msg.get_content()


def assert_valid_notice(got: bytes) -> None:
    assert b"\r\n\r\n" in got
    head, body = got.split(b"\r\n\r\n", 1)
    assert b"\n" not in head.replace(b"\r\n", b"")
    for line in head.split(b"\r\n"):
        # X-Portcullis-Verdict holds only our own tokens (the signature name may be long)
        assert len(line) <= (998 if line.startswith(b"X-Portcullis-Verdict:") else 78), line
        assert all(0x20 <= c < 0x7F or c == 0x09 for c in line), line
        for w in re.findall(rb"=\?[^?]+\?[BQbq]\?[^?]*\?=", line):
            assert len(w) <= 75, w
    for line in body.split(b"\r\n"):
        assert len(line) <= 998
    assert not re.search(rb"(?<!\r)\n", got)
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert not msg.defects, msg.defects
    for k in ("From", "Date", "Subject", "X-Portcullis-Verdict"):
        assert msg[k] is not None, k


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "notice-db"
    malware.write_db(str(d))
    return d


def scan_proxy(proxy_factory, scan_db, env_tmp, **scan):
    cfg = {"enabled": True, "database_dir": str(scan_db), "threads": 2,
           "tmpdir": str(env_tmp), "keepalive_interval": "1s", "oversize_action": "pass"}
    cfg.update(scan)
    return proxy_factory(scan=cfg)


def ctx(certs) -> ssl.SSLContext:
    return clients.tls_context(certs)


def login(px, certs, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=ctx(certs), timeout=30)
    m.login(user, PASSWORD)
    return m


def direct(dovecot, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, dovecot.ports["imap"], timeout=15)
    m.login(user, PASSWORD)
    return m


def fetch_lit(m, num: int, what: str) -> bytes:
    typ, data = m.fetch(str(num), what)
    assert typ == "OK", data
    lits = [d[1] for d in data if isinstance(d, tuple)]
    assert len(lits) == 1, data
    return lits[0]


def pop3_retr(px, certs, user: str, num: int) -> bytes:
    p = poplib.POP3_SSL(HOST, px.port("pop3s"), context=ctx(certs), timeout=30)
    p.user(user)
    p.pass_(PASSWORD)
    _, lines, _ = p.retr(num)
    p.quit()
    return b"\r\n".join(lines) + b"\r\n"


def new_user(dovecot, name: str, msgs: list[bytes]) -> str:
    dovecot.add_user(name, PASSWORD)
    dovecot.deliver(name, msgs)
    return name


# ---------------------------------------------------------------------------- limits by kind

DEEP = {"rfc822": nested_rfc822(20), "multipart": nested_multipart(20), "zip": nested_zip(20)}


def test_deep_messages_are_small():
    assert len(DEEP["rfc822"]) < 2048
    assert len(DEEP["multipart"]) < 2048


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_deep_nesting_blocked_by_default(proxy_factory, dovecot, certs, scan_db, env_tmp, kind):
    user = new_user(dovecot, "deep-" + kind, [DEEP[kind]])
    px = scan_proxy(proxy_factory, scan_db, env_tmp)  # oversize_action: pass
    mark = px.log_mark()
    m = login(px, certs, user)
    m.select("INBOX", readonly=True)
    got = fetch_lit(m, 1, "(BODY.PEEK[])")
    m.logout()
    assert got != DEEP[kind]
    assert b"X-Portcullis-Verdict: blocked; reason=limit" in got, got[:600]
    px.wait_log(re.compile(r'event=scan_verdict .*verdict=limit signature="?Heuristics\.Limits'
                           r'\.Exceeded\.\w+"? action=block'), after=mark)
    assert px.metric("portcullis_scan_verdicts_total", {"verdict": "limit"}) >= 1
    assert_valid_notice(got)
    # POP3 RETR of the same message: the same verdict
    got3 = pop3_retr(px, certs, user, 1)
    assert b"reason=limit" in got3


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_deep_nesting_passed_with_limits_pass(proxy_factory, dovecot, certs, scan_db, env_tmp,
                                              kind):
    user = new_user(dovecot, "deeppass-" + kind, [DEEP[kind]])
    px = scan_proxy(proxy_factory, scan_db, env_tmp, limits_action="pass",
                    oversize_action="block")
    mark = px.log_mark()
    m = login(px, certs, user)
    m.select("INBOX", readonly=True)
    got = fetch_lit(m, 1, "(BODY.PEEK[])")
    m.logout()
    assert got == DEEP[kind]
    px.wait_log(re.compile(r"event=scan_verdict .*verdict=limit .*action=pass"), after=mark)


def test_oversize_still_follows_oversize_action(proxy_factory, dovecot, certs, scan_db, env_tmp):
    big = malware.plain(b"x" * 3000, "big one")
    user = new_user(dovecot, "oversize-kind", [big])
    px = scan_proxy(proxy_factory, scan_db, env_tmp, max_scan_size="1k")  # pass
    m = login(px, certs, user)
    m.select("INBOX", readonly=True)
    assert fetch_lit(m, 1, "(BODY.PEEK[])") == big
    m.logout()
    px2 = scan_proxy(proxy_factory, scan_db, env_tmp, max_scan_size="1k",
                     oversize_action="block", limits_action="pass")
    m = login(px2, certs, user)
    m.select("INBOX", readonly=True)
    got = fetch_lit(m, 1, "(BODY.PEEK[])")
    m.logout()
    assert b"reason=oversize" in got


# ---------------------------------------------------------------------------- notices

HDR = eicar_header_msgs()


@pytest.fixture(scope="module")
def hdr_user(dovecot):
    name = "notice-hdr"
    new_user(dovecot, name, [HDR[k] for k in sorted(HDR)])
    return name


def test_eicar_in_headers_never_in_notice(proxy_factory, dovecot, certs, scan_db, env_tmp,
                                          hdr_user):
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    mark = px.log_mark()
    m = login(px, certs, hdr_user)
    m.select("INBOX", readonly=True)
    for i, name in enumerate(sorted(HDR), 1):
        got = fetch_lit(m, i, "(BODY.PEEK[])")
        assert b"X-Portcullis-Verdict: infected" in got, (name, got[:300])
        assert_no_eicar(got)
        assert_valid_notice(got)
        # POP3 shares the notice code
        got3 = pop3_retr(px, certs, hdr_user, i)
        assert b"X-Portcullis-Verdict: infected" in got3, name
        assert_no_eicar(got3)
        assert_valid_notice(got3)
    m.logout()
    # the notices that showed EICAR-bearing text were themselves caught: the minimal notice
    px.wait_log(re.compile(r"notice=minimal notice_match=\"?Portcullis\.Test\.EICAR"), after=mark)
    assert px.metric("portcullis_scan_notice_minimal_total") >= 5


def test_ordinary_notice_shows_decoded_fields(proxy_factory, dovecot, certs, scan_db, env_tmp):
    orig = crlf("From: =?iso-8859-1?Q?J=FCrgen?= <j@example.org>\nTo: bob@example.com\n"
                "Subject: =?utf-8?B?UmVjaG51bmcgw7xiZXIgNTAw4oKs?=\n"
                "Date: Mon, 06 Jan 2025 10:00:00 +0100\nMIME-Version: 1.0\n"
                "Content-Type: text/plain\n\n") + EICAR + b"\r\n"
    user = new_user(dovecot, "notice-ok", [orig])
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    m = login(px, certs, user)
    m.select("INBOX", readonly=True)
    got = fetch_lit(m, 1, "(BODY.PEEK[])")
    m.logout()
    assert_valid_notice(got)
    assert_no_eicar(got)
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert str(msg["Subject"]) == "Rechnung \u00fcber 500\u20ac"
    assert "J\u00fcrgen <j@example.org>" in str(msg["From"])
    assert str(msg["Date"]) == "Mon, 06 Jan 2025 10:00:00 +0100"
    body = msg.get_content()
    assert "Subject:    Rechnung \u00fcber 500\u20ac" in body
    # the original's encoding is not copied: Latin-1 Q became our UTF-8 B
    assert b"J=FCrgen" not in got and b"iso-8859-1" not in got


# ---------------------------------------------------------------------------- slices

SLICE_MSG = malware.attachment(EICAR, "slice me")


@pytest.mark.parametrize("item", ["BODY.PEEK[1]<0.34>", "BODY.PEEK[]<100.50>",
                                  "BODY.PEEK[2]<10.20>", "BINARY.PEEK[2]<0.30>",
                                  "BODY.PEEK[]<0.10>", "BODY.PEEK[]<5000.10>",
                                  "BODY.PEEK[1]<3000.5>", "BODY.PEEK[TEXT]<0.7>"])
def test_partial_slices_never_longer(proxy_factory, dovecot, certs, scan_db, env_tmp, item):
    user = "slice-" + re.sub(r"\W", "", item).lower()
    new_user(dovecot, user, [SLICE_MSG])
    d = direct(dovecot, user)
    d.select("INBOX", readonly=True)
    want = fetch_lit(d, 1, "(%s)" % item)
    d.logout()
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    m = login(px, certs, user)
    m.select("INBOX", readonly=True)
    got = fetch_lit(m, 1, "(%s)" % item)
    # and the same range of the whole notice / its text
    notice = fetch_lit(m, 1, "(BODY.PEEK[])")
    m.logout()
    assert len(got) <= len(want), (item, len(got), len(want))
    assert EICAR not in got
    mo = re.search(r"\[([^\]]*)\]<(\d+)\.(\d+)>", item)
    section, o, n = mo.group(1), int(mo.group(2)), int(mo.group(3))
    src = notice if section == "" else notice.split(b"\r\n\r\n", 1)[1]
    assert got == src[o:o + len(want)], (item, got, src[o:o + 40])
    if o >= len(src):
        assert got == b""
