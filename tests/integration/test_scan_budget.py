"""Scan budget accounting and fairness (issue 16), real Dovecot and libclamav.

One user's 13 sessions fetch a large message and do not read the answer; another user's small
fetch must still complete within 2 s (the per-user share), clients that close mid-fetch leave
no budget behind (/metrics `used` returns to 0), and a response not read for
scan.held_timeout ends its session (`reason=held_timeout`): an IMAP FETCH, a POP3 RETR. The
budget is scaled down (64 MiB, 5 MiB messages) so that 13 held responses would exceed it
without the shares.
"""

from __future__ import annotations

import socket
import ssl
import time

import mailenv
from test_scan_pop3 import PASSWORD, filler, new_user, scan_db, scan_proxy  # noqa: F401

HOST = "127.0.0.1"
BIG = 5 * 1024 * 1024 + 4096


class Deaf:
    """An IMAP client that logs in, sends a FETCH and then never reads (small receive
    buffer): the proxy holds the scanned response for it."""

    def __init__(self, port: int, certs, user: str):
        raw = socket.create_connection((HOST, port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.s = mailenv.ssl_context(certs.ca).wrap_socket(raw, server_hostname="localhost")
        self._until(b"* OK")
        self.s.sendall(b"a LOGIN %s %s\r\n" % (user.encode(), PASSWORD.encode()))
        self._until(b"a OK")

    def _until(self, marker: bytes) -> None:
        got = b""
        while marker not in got:
            d = self.s.recv(4096)
            assert d, got
            got += d

    def fetch_and_stall(self) -> None:
        self.s.sendall(b"s SELECT INBOX\r\n")
        self._until(b"s OK")
        self.s.sendall(b"f UID FETCH 1 (BODY.PEEK[])\r\n")

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass


def login(px, certs, user: str):
    import imaplib
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=30)
    m.login(user, PASSWORD)
    return m


def fair_proxy(proxy_factory, scan_db, env_tmp, **kw):  # noqa: F811
    cfg = dict(threads=2, memory_budget="64M", max_scan_size="6M", max_file_size="6M",
               held_timeout="60s")
    cfg.update(kw)
    return scan_proxy(proxy_factory, scan_db, env_tmp, **cfg)


def test_other_user_not_starved_by_13_held_responses(proxy_factory, dovecot, scan_db, env_tmp,
                                                     certs):  # noqa: F811
    greedy = new_user(dovecot, [("big", filler(1, BIG), False)])
    small_msg = filler(2, 550_000)
    other = new_user(dovecot, [("small", small_msg, False)])
    px = fair_proxy(proxy_factory, scan_db, env_tmp)
    deaf = [Deaf(px.port("imaps"), certs, greedy) for _ in range(13)]
    try:
        for d in deaf:
            d.fetch_and_stall()
        # the greedy user holds its share (a quarter of the budget); the rest of its sessions wait
        held = px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"},
                              predicate=lambda v: v >= 2.5 * BIG, timeout=30)
        time.sleep(1.0)
        assert held <= 16 * 1024 * 1024, held  # budget_per_user: 25% of 64M
        m = login(px, certs, other)
        m.select("INBOX")
        t = time.monotonic()
        typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
        took = time.monotonic() - t
        assert typ == "OK"
        assert data[0][1] == small_msg
        assert took < 2.0, f"another user's fetch took {took:.2f}s"
        m.logout()
    finally:
        for d in deaf:
            d.close()
    # closed mid-fetch, waiting or holding: the budget comes back whole
    px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"}, value=0, timeout=30)


def test_held_response_ended_after_timeout(proxy_factory, dovecot, scan_db, env_tmp,
                                           certs):  # noqa: F811
    user = new_user(dovecot, [("big", filler(3, BIG), False)])
    px = fair_proxy(proxy_factory, scan_db, env_tmp, held_timeout="2s")
    d = Deaf(px.port("imaps"), certs, user)
    try:
        d.fetch_and_stall()
        px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"},
                       predicate=lambda v: v > 0, timeout=30)
        px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"}, value=0, timeout=20)
        assert "reason=held_timeout" in px.log()
    finally:
        d.close()


class DeafPop3:
    """A POP3-over-TLS client that logs in, sends RETR and then never reads (small receive
    buffer): the proxy holds the scanned message for it."""

    def __init__(self, port: int, certs, user: str):
        raw = socket.create_connection((HOST, port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.s = mailenv.ssl_context(certs.ca).wrap_socket(raw, server_hostname="localhost")
        self.got = b""
        self._until(b"+OK")
        self.s.sendall(b"USER %s\r\n" % user.encode())
        self._until(b"+OK")
        self.s.sendall(b"PASS %s\r\n" % PASSWORD.encode())
        self._until(b"+OK")

    def _until(self, marker: bytes) -> None:
        """Read up to and including the next line holding `marker` (a line at a time: nothing
        after it is read)."""
        while True:
            while b"\r\n" not in self.got:
                d = self.s.recv(1)
                assert d, self.got
                self.got += d
            line, self.got = self.got.split(b"\r\n", 1)
            assert not line.startswith(b"-ERR"), line
            if marker in line:
                return

    def retr_and_stall(self, n: int) -> None:
        self.s.sendall(b"RETR %d\r\n" % n)

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass


def test_pop3_held_response_ended_after_timeout(proxy_factory, dovecot, scan_db, env_tmp,
                                                certs):  # noqa: F811
    user = new_user(dovecot, [("big", filler(4, BIG), False)])
    px = fair_proxy(proxy_factory, scan_db, env_tmp, held_timeout="2s")
    d = DeafPop3(px.port("pop3s"), certs, user)
    try:
        d.retr_and_stall(1)
        px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"},
                       predicate=lambda v: v > 0, timeout=30)
        px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"}, value=0, timeout=20)
        assert "event=refused reason=held_timeout" in px.log()
    finally:
        d.close()
