"""A scriptable IMAP backend for faults a real server will not produce on demand: garbage,
unterminated literals, literals longer or shorter than announced, stalls, resets.

It speaks just enough IMAP for the proxy's login script (greeting with capabilities, ID,
CAPABILITY, LOGIN with literals or quoted strings) and then hands every later command line to a
`behaviour(conn, tag, line)` callback supplied by the test. Listens on 127.0.0.1 on a free port;
stop() closes everything. Connections run in threads.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Callable

CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID IDLE AUTH=PLAIN"


class FakeConn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.logins: list[tuple[bytes, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return None
            if not d:
                return None
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def literal(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_command(self) -> tuple[bytes, bytes, list[bytes]] | None:
        """One command with its literals resolved: (tag, line-with-placeholders, literals)."""
        line = self.line()
        if line is None:
            return None
        lits = []
        full = line
        while True:
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            if not m:
                break
            if not m.group(2):
                self.send(b"+ go ahead\r\n")
            data = self.literal(int(m.group(1)))
            if data is None:
                return None
            lits.append(data)
            line = self.line()
            if line is None:
                return None
            full += b"<lit>" + line
        tag = full.split(b" ", 1)[0]
        return tag, full, lits


Behaviour = Callable[[FakeConn, bytes, bytes], bool]


class FakeImap:
    def __init__(self, behaviour: Behaviour, greeting: bytes | None = None):
        self.behaviour = behaviour
        self.greeting = greeting or b"* OK [CAPABILITY " + CAPS + b"] fake ready\r\n"
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.conns: list[FakeConn] = []
        self.logins: list[tuple[bytes, ...]] = []
        self.ids: list[bytes] = []  # the ID command lines received (literals as "<lit>")
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            c = FakeConn(s)
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: FakeConn) -> None:
        try:
            c.send(self.greeting)
            while True:
                cmd = c.read_command()
                if cmd is None:
                    return
                tag, line, lits = cmd
                word = line.split(b" ", 2)[1].upper() if b" " in line else b""
                if word == b"ID":
                    self.ids.append(line)
                    c.send(b'* ID ("name" "fake")\r\n' + tag + b" OK ID done\r\n")
                elif word == b"CAPABILITY":
                    c.send(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
                elif word == b"LOGIN":
                    self.logins.append(tuple(lits) if lits else (line,))
                    c.send(tag + b" OK [CAPABILITY " + CAPS + b"] logged in\r\n")
                elif word == b"LOGOUT":
                    c.send(b"* BYE bye\r\n" + tag + b" OK logout\r\n")
                    return
                elif not self.behaviour(c, tag, line):
                    return
        except OSError:
            pass
        finally:
            try:
                c.sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass
