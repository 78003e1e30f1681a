"""Relay core (issue 14, item 3): a session that ends while a response is held.

Real Dovecot, real libclamav, scanning on. The other issue-14 regressions (pipelined part and
chunk fetches, re-fetches, the 3 MB multi-item FETCH that closed without a BYE, the cached POP3
RETR) are in test_regress_14.py, compared byte for byte with direct Dovecot; the stress run is
test_stress_14.py.

- test_regress_14_fetch_then_logout_pipelined: FETCH and LOGOUT in one write. The backend
  answers both and hangs up while the FETCH response is still held for its verdict; the
  session used to close at once (only POP3 had `scan_hold`). The protocol's `holding` hook
  now keeps it until the response is out.
"""

from __future__ import annotations

import socket
import time

import clients
import mailenv
import malware

PASSWORD = "core-pw-1"


def multipart(i: int, size: int = 0) -> bytes:
    """A clean two-part message; part 1 grows to about `size` bytes when given."""
    line = "a line of the first part of message %d, plain and ordinary\n" % i
    body1 = line * max(20, size // len(line))
    return malware.crlf(
        malware.headers(f"core multipart {i}",
                        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b0\"\n")
        + "\nThis is a multi-part message.\n"
        + "--b0\nContent-Type: text/plain\n\n" + body1
        + "--b0\nContent-Type: text/plain\n\n" + ("second part %d\n" % i) * 40
        + "--b0--\n")


def scan_proxy(proxy_factory, env_tmp, **scan):
    d = env_tmp / "core-scan-db"
    if not d.exists():
        malware.write_db(str(d))
    cfg = {"enabled": True, "database_dir": str(d), "threads": 2, "tmpdir": str(env_tmp),
           "keepalive_interval": "1s"}
    cfg.update(scan)
    return proxy_factory(scan=cfg)


class Client:
    """A raw IMAP client over TLS that writes pipelined commands in one send()."""

    def __init__(self, px, certs, user):
        s = socket.create_connection((mailenv.LOCAL, px.port("imaps")), timeout=20)
        self.s = mailenv.ssl_context(certs.ca).wrap_socket(s, server_hostname="localhost")
        self.buf = b""
        self.read_tagged(b"* OK")
        self.cmd(b"l LOGIN " + user.encode() + b" " + PASSWORD.encode())
        self.cmd(b"s SELECT INBOX")

    def read_tagged(self, *tags: bytes, timeout: float = 20) -> bytes:
        """Read until a line starting with each tag has arrived (literals skipped by
        looking only at line starts after CRLF); returns everything read."""
        deadline = time.monotonic() + timeout
        out = b""
        want = [t + b" " if not t.endswith(b"OK") else t for t in tags]
        while True:
            data = self.buf + out
            if all(data.startswith(t) or b"\r\n" + t in data for t in want):
                self.buf = b""
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer for {tags} within {timeout}s; got "
                                     f"{len(data)} bytes ending {data[-300:]!r}")
            self.s.settimeout(left)
            try:
                d = self.s.recv(1 << 20)
            except socket.timeout:
                continue
            if not d:
                raise AssertionError(f"closed before {tags}; got {data[-300:]!r}")
            out += d

    def cmd(self, line: bytes) -> bytes:
        self.s.sendall(line + b"\r\n")
        tag = line.split(b" ", 1)[0]
        out = self.read_tagged(tag)
        assert b"\r\n" + tag + b" OK" in b"\r\n" + out, out[-300:]
        return out

    def pipeline(self, *lines: bytes, timeout: float = 20) -> bytes:
        self.s.sendall(b"".join(line + b"\r\n" for line in lines))
        tags = [line.split(b" ", 1)[0] for line in lines]
        return self.read_tagged(*tags, timeout=timeout)

    def close(self):
        self.s.close()


def setup_user(dovecot, user, messages):
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, messages)


def test_regress_14_fetch_then_logout_pipelined(proxy_factory, dovecot, certs, env_tmp):
    """FETCH and LOGOUT in one write: the backend answers both and hangs up while the FETCH
    response is still held for its verdict. The session used to close at once (only POP3 had
    `scan_hold`); the protocol's `holding` hook now keeps it until the response is out."""
    user = "core-logout"
    msgs = [multipart(i, 2 << 20) for i in range(2)] + [malware.MESSAGES[n].data for n in
                                                        list(malware.MESSAGES)[:2]]
    setup_user(dovecot, user, msgs)
    px = scan_proxy(proxy_factory, env_tmp)
    for n in range(1, len(msgs) + 1):
        c = Client(px, certs, user)
        out = c.pipeline(b"a FETCH %d (UID BODY.PEEK[])" % n, b"b LOGOUT", timeout=30)
        assert b"\r\na OK" in out and b"* BYE" in out, out[-300:]
        lit = out[out.index(b"{") + 1:]
        size = int(lit[:lit.index(b"}")])
        body = lit[lit.index(b"}\r\n") + 3:][:size]
        assert len(body) == size
        if n <= 2:
            assert body == msgs[n - 1]
        else:
            assert b"X-Portcullis-Verdict: infected" in body
        c.close()


def test_regress_14_refusals_unread_stay_bounded(proxy_factory, dovecot, certs, env_tmp):
    """The proxy's own answers after login (BAD for a refused COMPRESS/STARTTLS, -ERR for a
    refused POP3 command) go through the conn's block queue since the relay-core rework. A
    client that pipelines refused commands and never reads must not make that queue grow
    without bound: past the limit the session ends (log `client output overflow`), and the
    proxy's memory stays where it was."""
    user = "core-flood"
    setup_user(dovecot, user, [multipart(0)])
    px = proxy_factory()
    rss0 = clients.rss_kb(px.pid)
    c = Client(px, certs, user)
    c.s.settimeout(5)
    line = b"f COMPRESS DEFLATE\r\n"
    chunk = line * 4096  # 80 KB of refused commands per write, answers never read
    sent = 0
    try:
        while sent < (16 << 20):
            c.s.sendall(chunk)
            sent += len(chunk)
    except (socket.timeout, OSError):
        pass  # the proxy stopped reading or closed: either bounds it
    px.wait_log(r'user="core-flood" event=close reason="client output overflow"', timeout=20)
    grown = clients.rss_kb(px.pid) - rss0
    assert grown < 8 * 1024, f"proxy RSS grew by {grown} kB for {sent} bytes of refused commands"
    c.close()
