"""POP3 side of the scanning guarantee (issue 15), real Dovecot and real libclamav.

- TOP n k is judged on the whole message: the proxy sends `TOP n 2147483647` and cuts the answer
  itself; clean answers must be byte-identical to Dovecot's own `TOP n k` (dot-stuffing, a last
  line without its line end, bare LF line ends, a message without a body, one that starts with
  an empty line), infected ones are the notice whatever k is — including a k that cuts an
  attachment's base64 one line short, which defeats a whole-file hash signature (.hdb) when only
  the truncated text is judged.
- What the notice says is what happens: with quarantine off (the default) a DELE of a message
  that was replaced by the notice, or that was never downloaded and turns out infected, is
  answered `+OK Kept on the mail server...` and never reaches Dovecot: after QUIT the original
  is still in the mailbox (checked in the maildir and directly through Dovecot). A clean
  message's DELE deletes it. With a quarantine the DELE goes through (the original is kept in
  the quarantine).
- After login only the commands the proxy models are passed on (refused: UTF8, LANG, XCLIENT,
  unknown ones, bad numbers), and CAPA lists only capabilities the proxy models.

Over POP3S and STLS, with poplib and a raw client that sees the exact bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import quopri
import random
import re
import ssl

import pytest

import clients
import mailenv
import malware

HOST = mailenv.LOCAL
PASSWORD = "pop-guarantee-pw"
KEPT = b"+OK Kept on the mail server: this message was withheld by the mail security gateway."
KS = (0, 1, 2, 5, 1000)

# A file that no body signature matches, caught only by the MD5 of the whole decoded file: the
# .hdb case. Cut one base64 line short, the decoded file is a prefix with another hash.
HDB_BLOB = random.Random(15).randbytes(600)
HDB_NAME = "Portcullis.Test.Blob-HDB"


def narrow_b64(data: bytes, width: int) -> str:
    enc = base64.b64encode(data).decode()
    return "\n".join(enc[i:i + width] for i in range(0, len(enc), width))


def attach(payload: bytes, subject: str, width: int) -> bytes:
    return malware.crlf(
        malware.headers(subject, 'MIME-Version: 1.0\nContent-Type: multipart/mixed; '
                        'boundary="g1"\n')
        + "\n--g1\nContent-Type: text/plain\n\nSee attachment.\n"
        + '--g1\nContent-Type: application/octet-stream; name="f.bin"\n'
        + "Content-Transfer-Encoding: base64\n"
        + 'Content-Disposition: attachment; filename="f.bin"\n\n'
        + narrow_b64(payload, width) + "\n--g1--\n")


CLEAN_MSGS = {
    "dotty_no_final_newline": (b"From: a@example.test\r\nSubject: dots\r\n\r\nl1\r\n.dot\r\n"
                               b"..two\r\nl4\r\n.\r\n. \r\nl7"),
    "bare_lf": b"From: a@example.test\nSubject: bare\n\nl1\n.dot\nl3\r\nl4\n.\nend\n",
    "no_body": b"From: a@example.test\r\nSubject: nobody\r\n",
    "empty_header": b"\r\nbody only\r\n.x\r\nthird\r\n",
    "clean_text": malware.MESSAGES["clean"].data,
    "near_base64": malware.MESSAGES["near_base64"].data,
}
INFECTED_MSGS = {
    "eicar_b64_narrow": attach(malware.EICAR, "eicar narrow", 16),
    "eicar_plain": malware.MESSAGES["plain"].data,
    "eicar_qp": malware.MESSAGES["quoted_printable"].data,
    "eicar_nested": malware.MESSAGES["nested_rfc822"].data,
    "hdb_blob": attach(HDB_BLOB, "hash only", 40),
}
LAYOUT = list(CLEAN_MSGS.items()) + list(INFECTED_MSGS.items())
NUM = {n: i + 1 for i, (n, _) in enumerate(LAYOUT)}


def eicar_forms() -> list[bytes]:
    """Every form of the signature that must never reach the client: raw, base64 (whole, and
    every line of the narrow attachment), quoted-printable."""
    forms = [malware.EICAR, base64.b64encode(malware.EICAR),
             quopri.encodestring(malware.EICAR, quotetabs=True).replace(b"=\n", b""),
             "".join("=%02X" % c for c in malware.EICAR).encode()]
    forms += [ln.encode() for ln in narrow_b64(malware.EICAR, 16).split("\n") if len(ln) == 16]
    return forms


def assert_no_eicar(got: bytes) -> None:
    flat = got.replace(b"\r\n", b"")
    for f in eicar_forms():
        assert f not in got and f not in flat, (f, got[:300])


@pytest.fixture(scope="module")
def db_dir(env_tmp):
    d = env_tmp / "pop-guarantee-db"
    malware.write_db(str(d))
    with open(d / "portcullis-test.hdb", "w") as f:
        f.write(f"{hashlib.md5(HDB_BLOB).hexdigest()}:{len(HDB_BLOB)}:{HDB_NAME}\n")
    return d


_users = iter(range(1000))


def new_user(dovecot) -> str:
    user = f"popg{next(_users)}-{os.getpid()}"
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [m for _, m in LAYOUT])
    return user


def scan_proxy(proxy_factory, db, env_tmp, **scan):
    cfg = {"enabled": True, "database_dir": str(db), "threads": 2, "tmpdir": str(env_tmp)}
    cfg.update(scan)
    return proxy_factory(scan=cfg)


class Raw(clients.LineClient):
    """POP3 over TLS (POP3S, or STLS on the plain port), logged in, exact bytes."""

    def __init__(self, px, certs, user: str, stls: bool = False):
        ctx = clients.tls_context(certs)
        if stls:
            super().__init__(px.port("pop3"), None, host=HOST, timeout=30)
            assert self.line().startswith(b"+OK")
            self.send(b"STLS\r\n")
            assert self.line().startswith(b"+OK")
            self.starttls(ctx)
        else:
            super().__init__(px.port("pop3s"), ctx, host=HOST, timeout=30)
            assert self.line().startswith(b"+OK")
        self.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert self.line().startswith(b"+OK")
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        return self.read_until(b"\r\n")

    def multi(self) -> bytes:
        return self.pop3_multiline()


class Direct(clients.LineClient):
    """The same, straight to Dovecot's plain port."""

    def __init__(self, dovecot, user: str):
        super().__init__(dovecot.ports["pop3"], None, host=HOST, timeout=30)
        assert self.line().startswith(b"+OK")
        self.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        self.line(), self.line()

    def line(self) -> bytes:
        return self.read_until(b"\r\n")

    def multi(self) -> bytes:
        return self.pop3_multiline()


def pop_ssl(px, certs, user: str) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL(HOST, px.port("pop3s"), context=mailenv.ssl_context(certs.ca),
                        timeout=30)
    p.user(user)
    p.pass_(PASSWORD)
    return p


def pop_stls(px, certs, user: str) -> poplib.POP3:
    p = poplib.POP3(HOST, px.port("pop3"), timeout=30)
    p.stls(mailenv.ssl_context(certs.ca))
    p.user(user)
    p.pass_(PASSWORD)
    return p


def unstuff(resp: bytes) -> bytes:
    body = resp.split(b"\r\n", 1)[1]
    assert body.endswith(b".\r\n")
    return b"".join(ln[1:] if ln.startswith(b".") else ln
                    for ln in body[:-3].splitlines(keepends=True))


def is_notice(resp: bytes) -> bool:
    return resp.startswith(b"+OK") and b"X-Portcullis-Verdict: " in resp


def body_lines(msg: bytes) -> int:
    crlf = msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if b"\r\n\r\n" not in crlf:
        return 0
    body = crlf.split(b"\r\n\r\n", 1)[1]
    return body.count(b"\r\n") + (0 if body.endswith(b"\r\n") or not body else 1)


def direct_stat(dovecot, user: str) -> bytes:
    d = Direct(dovecot, user)
    d.send(b"STAT\r\n")
    st = d.line()
    d.send(b"QUIT\r\n")
    d.close()
    return st


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_top_clean_byte_identical_to_dovecot(proxy_factory, dovecot, db_dir, env_tmp, certs,
                                             stls):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    cmds = [b"TOP %d %d\r\n" % (NUM[n], k) for n in CLEAN_MSGS for k in KS]
    cmds += [b"TOP %d %d\r\n" % (NUM[n], body_lines(m)) for n, m in CLEAN_MSGS.items()]
    d = Direct(dovecot, user)
    d.send(b"".join(cmds))
    want = [d.multi() for _ in cmds]
    d.close()
    r = Raw(px, certs, user, stls=stls)
    r.send(b"".join(cmds))  # pipelined: one burst
    for c, w in zip(cmds, want):
        assert w.startswith(b"+OK"), (c, w)
        assert r.multi() == w, c
    r.send(b"NOOP\r\n")
    assert r.line().startswith(b"+OK")
    r.close()
    log = px.log()
    assert "TOP" in log and re.search(r"event=scan_verdict .*command=TOP lines=1000", log)


def test_top_infected_every_k_is_the_notice(proxy_factory, dovecot, db_dir, env_tmp, certs):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    r = Raw(px, certs, user)
    for name, msg in INFECTED_MSGS.items():
        n = body_lines(msg)
        for k in sorted(set(range(0, n + 2)) | {1000}):
            r.send(b"TOP %d %d\r\n" % (NUM[name], k))
            got = r.multi()
            assert is_notice(got), (name, k, got[:300])
            assert_no_eicar(got)
            notice = unstuff(got)
            body = notice.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in notice else b""
            assert body.count(b"\r\n") <= k, (name, k)
    r.close()


def test_top_one_line_short_of_hash_signature(proxy_factory, dovecot, db_dir, env_tmp, certs):
    """The .hdb case: every base64 line of the attachment but the last. Judged as the TOP text
    alone the decoded file is a prefix and matches nothing; judged whole it is the blob."""
    user = new_user(dovecot)
    msg = INFECTED_MSGS["hdb_blob"]
    lines = body_lines(msg)
    b64 = narrow_b64(HDB_BLOB, 40).split("\n")
    # The k that ends the answer right before the attachment's last base64 line.
    crlf_body = msg.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    k = crlf_body.index(b64[-1].encode())
    assert 0 < k < lines
    d = Direct(dovecot, user)
    d.send(b"TOP %d %d\r\n" % (NUM["hdb_blob"], k))
    direct_answer = d.multi()
    d.close()
    assert b64[-2].encode() in direct_answer and b64[-1].encode() not in direct_answer
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    r = Raw(px, certs, user)
    r.send(b"TOP %d %d\r\n" % (NUM["hdb_blob"], k))
    got = r.multi()
    assert is_notice(got), got[:300]
    assert HDB_NAME.encode() in got
    for ln in b64:
        assert ln.encode() not in got
    r.close()
    assert re.search(r"event=scan_verdict .*command=TOP lines=%d .*verdict=infected" % k,
                     px.log())


@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_retr_notice_dele_quit_keeps_original(proxy_factory, dovecot, db_dir, env_tmp, certs,
                                              stls):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    stat_before = direct_stat(dovecot, user)
    p = pop_stls(px, certs, user) if stls else pop_ssl(px, certs, user)
    n = NUM["eicar_b64_narrow"]
    _, lines, _ = p.retr(n)
    got = b"\r\n".join(lines)
    assert b"X-Portcullis-Verdict: infected" in got
    assert_no_eicar(got)
    assert p.dele(n) == KEPT
    p.quit()
    assert dovecot.read_maildir(user) == before  # nothing deleted
    assert direct_stat(dovecot, user) == stat_before
    px.wait_log(f"event=dele_withheld msg={n} judged=download")
    assert px.metric("portcullis_pop3_dele_withheld_total") == 1


def test_dele_without_download_is_probed(proxy_factory, dovecot, db_dir, env_tmp, certs):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    r = Raw(px, certs, user)
    infected = [NUM[n] for n in INFECTED_MSGS]
    # One burst: every infected message deleted without a download, then STAT and LIST.
    r.send(b"".join(b"DELE %d\r\n" % i for i in infected) + b"STAT\r\nLIST 1\r\n")
    for _ in infected:
        got = r.line()
        assert got == KEPT + b"\r\n"
    stat = r.line()
    assert stat == direct_stat(dovecot, user)  # nothing marked deleted at the backend
    assert r.line().startswith(b"+OK 1 ")
    # Nothing of the probes' answers reached the client.
    r.send(b"NOOP\r\n")
    assert r.line().startswith(b"+OK")
    r.send(b"QUIT\r\n")
    assert r.line().startswith(b"+OK")
    r.close()
    assert dovecot.read_maildir(user) == before
    log = px.log()
    for i in infected:
        assert f"event=dele_withheld msg={i} judged=probe" in log
        assert re.search(rf"event=scan_verdict .*msg={i} command=DELE .*verdict=infected", log)
    assert px.metric("portcullis_pop3_dele_withheld_total") == len(infected)


def test_clean_dele_removes(proxy_factory, dovecot, db_dir, env_tmp, certs):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    p = pop_ssl(px, certs, user)
    a, b = NUM["clean_text"], NUM["near_base64"]
    p.retr(a)
    resp = p.dele(a)
    assert resp.startswith(b"+OK") and resp != KEPT
    resp = p.dele(b)  # not downloaded: probed, clean, passed on
    assert resp.startswith(b"+OK") and resp != KEPT
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.dele(b)  # the backend's own answer to a second DELE
    p.quit()
    after = dovecot.read_maildir(user)
    assert len(after) == len(before) - 2
    assert CLEAN_MSGS["clean_text"] not in after and CLEAN_MSGS["near_base64"] not in after
    assert px.metric("portcullis_pop3_dele_withheld_total") == 0


def test_dele_with_quarantine_passes(proxy_factory, dovecot, db_dir, env_tmp, certs):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    qdir = env_tmp / f"quarantine-{user}"
    qdir.mkdir()
    px = scan_proxy(proxy_factory, db_dir, env_tmp, quarantine_dir=str(qdir))
    p = pop_ssl(px, certs, user)
    n = NUM["eicar_plain"]
    p.retr(n)
    assert p.dele(n) != KEPT
    p.quit()
    after = dovecot.read_maildir(user)
    assert len(after) == len(before) - 1 and INFECTED_MSGS["eicar_plain"] not in after
    kept = [f.read_bytes() for f in qdir.iterdir() if f.suffix == ".eml"]
    assert INFECTED_MSGS["eicar_plain"] in kept


@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_command_allow_list(proxy_factory, dovecot, db_dir, env_tmp, certs, stls):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    r = Raw(px, certs, user, stls=stls)
    refused = {b"UTF8": b"-ERR Command not allowed.", b"LANG": b"-ERR Command not allowed.",
               b"XCLIENT ADDR=10.0.0.1": b"-ERR Command not allowed.",
               b"LAST": b"-ERR Command not allowed.", b"XTND XMIT": b"-ERR Command not allowed.",
               b"STLS": b"-ERR TLS is already active.", b"USER x": b"-ERR Already logged in.",
               b"AUTH PLAIN": b"-ERR Already logged in.",
               b"RETR 1x": b"-ERR Invalid message number.",
               b"RETR -1": b"-ERR Invalid message number.",
               b"RETR 99999999999": b"-ERR Invalid message number.",
               b"RETR 1 2": b"-ERR Wrong number of arguments.",
               b"DELE 0": b"-ERR Invalid message number.",
               b"TOP 1 -1": b"-ERR Invalid number of lines.",
               b"TOP 1": b"-ERR Wrong number of arguments.",
               b"STAT 1": b"-ERR Wrong number of arguments."}
    r.send(b"".join(c + b"\r\n" for c in refused) + b"STAT\r\n")
    for c, want in refused.items():
        assert r.line() == want + b"\r\n", c
    assert r.line() == direct_stat(dovecot, user)  # none of them reached the backend
    r.close()
    log = px.log()
    for kw in ("UTF8", "LANG", "XCLIENT", "LAST", "XTND"):
        assert f"event=refused reason=command_not_allowed command={kw}" in log
    assert px.metric("portcullis_refusals_total", {"reason": "command_not_allowed"}) == 5


@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_capa_after_login_allow_list(proxy_factory, dovecot, db_dir, env_tmp, certs, stls):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, db_dir, env_tmp)
    d = Direct(dovecot, user)
    d.send(b"CAPA\r\n")
    direct_capa = d.multi().split(b"\r\n")[1:-2]
    d.close()
    p = pop_stls(px, certs, user) if stls else pop_ssl(px, certs, user)
    capa = p.capa()
    p.quit()
    allowed = {"CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "EXPIRE", "LOGIN-DELAY",
               "IMPLEMENTATION"}
    assert set(capa) <= allowed, capa
    assert {"TOP", "UIDL", "PIPELINING"} <= set(capa)
    # What Dovecot announces and the proxy does not model is gone; the rest is kept.
    direct_names = {c.split(b" ")[0].decode().upper() for c in direct_capa}
    assert "AUTH-RESP-CODE" in direct_names and "AUTH-RESP-CODE" not in capa
    assert set(capa) == direct_names & allowed
