"""Raw IMAP/POP3 helpers for the issue-14 regression and stress tests (test_regress_14.py,
test_stress_14.py): a byte-exact IMAP client that pipelines commands in one write and enforces
a deadline on every answer, a FETCH response parser, and the notice-slice rule.

Kept local to those two files on purpose (the shared helpers live in clients.py).

    c = RawImap.proxy(px, certs, user, password)        # implicit TLS to the proxy
    d = RawImap.direct(dovecot, user, password)         # plain TCP straight to Dovecot
    res = c.pipeline([b"UID FETCH 7 (UID BODY.PEEK[1])", b"FETCH 7 (BODY.PEEK[TEXT])"], 5)
    res[0].ok, res[0].untagged, res[0].elapsed
    fetch_items(resp) -> (seq, {"UID": b"7", "BODY[1]": b"...", ...})

Every read has a deadline: a missing answer raises Stall (never blocks past it), a closed
connection raises Closed with the bytes seen so far (so a bare close is told apart from a
`* BYE`).
"""

from __future__ import annotations

import re
import socket
import ssl
import time

HOST = "127.0.0.1"
REF = re.compile(rb"\d{8}-[0-9a-f]{12}")
_LIT = re.compile(rb"~?\{(\d+)\+?\}\r\n$")


class Stall(AssertionError):
    """No complete answer within the deadline."""


class Closed(AssertionError):
    """The peer closed the connection (`seen`: the bytes received since the last command was
    written, to tell a `* BYE` from a bare close)."""

    def __init__(self, msg: str, seen: bytes = b""):
        super().__init__(msg)
        self.seen = seen


class Result:
    """One command's answer: its tagged line, the untagged responses before it (after the
    previous command's tagged line), and seconds from the write to the tagged line.

    Dovecot runs pipelined FETCH commands in parallel: the untagged FETCH responses of a later
    command may come before an earlier command's tagged line. Match FETCH responses of a
    pipeline to its commands by UID and item (all_fetches), not by position."""

    def __init__(self, tag: bytes, cmd: bytes):
        self.tag, self.cmd = tag, cmd
        self.tagged = b""
        self.untagged: list[bytes] = []
        self.elapsed = 0.0

    @property
    def ok(self) -> bool:
        return self.tagged.split(b" ", 2)[1:2] == [b"OK"]

    @property
    def status(self) -> bytes:
        return self.tagged.split(b" ", 2)[1] if self.tagged else b""

    def fetches(self) -> list[bytes]:
        return [r for r in self.untagged if re.match(rb"\* \d+ FETCH ", r)]

    def __repr__(self) -> str:
        return f"<{self.cmd[:60]!r} -> {self.tagged[:80]!r} in {self.elapsed:.2f}s>"


class RawImap:
    """A line/literal-exact IMAP client over a blocking socket."""

    def __init__(self, sock: socket.socket, name: str = "imap"):
        self.s = sock
        self.name = name
        self.buf = bytearray()
        self.n = 0
        self.transcript_tail = bytearray()   # the last bytes read, for failure messages
        self.since_write = bytearray()       # bytes read since the last command was written
        self.greeting = self.read_response(time.monotonic() + 10)

    # ---- connecting
    @classmethod
    def connect(cls, port: int, tls: ssl.SSLContext | None = None, name: str = "imap",
                host: str = HOST) -> "RawImap":
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        return cls(s, name)

    @classmethod
    def proxy(cls, px, certs, user: str, password: str, name: str = "proxy") -> "RawImap":
        c = cls.connect(px.port("imaps"), tls_context(certs), name)
        c.login(user, password)
        return c

    @classmethod
    def direct(cls, dovecot, user: str, password: str, name: str = "direct") -> "RawImap":
        c = cls.connect(dovecot.ports["imap"], None, name)
        c.login(user, password)
        return c

    def login(self, user: str, password: str, timeout: float = 10) -> None:
        r = self.pipeline([b"LOGIN " + quote(user) + b" " + quote(password)], timeout)[0]
        assert r.ok, (self.name, r.tagged)

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass

    # ---- reading
    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stall(f"{self.name}: no answer in time; last bytes: "
                        f"{bytes(self.transcript_tail[-300:])!r}")
        self.s.settimeout(left)
        try:
            d = self.s.recv(262144)
        except (socket.timeout, TimeoutError):
            raise Stall(f"{self.name}: no answer in time; last bytes: "
                        f"{bytes(self.transcript_tail[-300:])!r}") from None
        except (ConnectionError, ssl.SSLError, OSError) as e:
            raise Closed(f"{self.name}: connection error {e!r}",
                         bytes(self.since_write)) from None
        if not d:
            raise Closed(f"{self.name}: connection closed by peer; last bytes: "
                         f"{bytes(self.transcript_tail[-300:])!r}", bytes(self.since_write))
        self.buf += d
        self.since_write += d
        self.transcript_tail += d
        if len(self.transcript_tail) > 4096:
            del self.transcript_tail[:-4096]

    def read_line(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            self._fill(deadline)

    def read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, deadline: float) -> bytes:
        """One complete response (a line, plus every literal it announces), raw."""
        out = bytearray()
        while True:
            line = self.read_line(deadline)
            out += line
            m = _LIT.search(line)
            if not m:
                return bytes(out)
            out += self.read_exact(int(m.group(1)), deadline)

    # ---- commands
    def tag(self) -> bytes:
        self.n += 1
        return b"t%d" % self.n

    def pipeline(self, cmds: list[bytes], timeout: float = 5.0,
                 on_untagged=None) -> list[Result]:
        """Send every command in ONE write, then read until every tagged answer is in. Each
        tagged answer must arrive within `timeout` seconds of the write (Stall otherwise)."""
        results = [Result(self.tag(), c) for c in cmds]
        data = b"".join(r.tag + b" " + r.cmd + b"\r\n" for r in results)
        t0 = time.monotonic()
        self.s.settimeout(timeout)
        self.since_write = bytearray(self.buf)
        try:
            self.s.sendall(data)
        except (socket.timeout, TimeoutError):
            raise Stall(f"{self.name}: could not write the commands in {timeout}s") from None
        except (ConnectionError, ssl.SSLError, OSError) as e:
            raise Closed(f"{self.name}: write failed {e!r}") from None
        deadline = t0 + timeout
        waiting = {r.tag: r for r in results}
        while waiting:
            resp = self.read_response(deadline)
            tag = resp.split(b" ", 1)[0]
            if tag in waiting:           # a server may complete pipelined commands out of order
                r = waiting.pop(tag)
                r.tagged = resp
                r.elapsed = time.monotonic() - t0
                continue
            if resp.startswith(b"+"):
                raise AssertionError(f"{self.name}: unexpected continuation {resp[:100]!r}")
            if not resp.startswith(b"* "):
                raise AssertionError(f"{self.name}: unknown tag: {resp[:100]!r} "
                                     f"(waiting for {sorted(waiting)!r})")
            if on_untagged is not None:
                on_untagged(resp)
            next(r for r in results if r.tag in waiting).untagged.append(resp)
        return results

    def command(self, cmd: bytes, timeout: float = 5.0) -> Result:
        return self.pipeline([cmd], timeout)[0]

    def append(self, mailbox: bytes, msg: bytes, timeout: float = 5.0) -> Result:
        """APPEND with a synchronizing literal (waits for the continuation)."""
        r = Result(self.tag(), b"APPEND " + mailbox)
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.s.settimeout(timeout)
        self.s.sendall(r.tag + b" APPEND " + mailbox + b" {%d}\r\n" % len(msg))
        while True:
            resp = self.read_response(deadline)
            if resp.startswith(b"+"):
                break
            if resp.startswith(r.tag + b" "):
                r.tagged, r.elapsed = resp, time.monotonic() - t0
                return r
            r.untagged.append(resp)
        self.s.sendall(msg + b"\r\n")
        while True:
            resp = self.read_response(deadline)
            if resp.startswith(r.tag + b" "):
                r.tagged, r.elapsed = resp, time.monotonic() - t0
                return r
            r.untagged.append(resp)

    def logout(self, timeout: float = 5.0) -> None:
        try:
            self.command(b"LOGOUT", timeout)
        except AssertionError:   # Stall, Closed, or a late answer of a failed command
            pass
        self.close()


def all_fetches(results: list[Result]) -> list[bytes]:
    """The FETCH responses of a whole pipeline, in arrival order."""
    return [f for r in results for f in r.fetches()]


def tls_context(certs) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(certs.ca))
    c.check_hostname = False
    return c


def quote(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ------------------------------------------------------------------------ FETCH parsing


class _P:
    def __init__(self, data: bytes, pos: int):
        self.d, self.i = data, pos

    def peek(self) -> bytes:
        return self.d[self.i: self.i + 1]

    def skip_sp(self) -> None:
        while self.peek() == b" ":
            self.i += 1

    def name(self) -> str:
        """A FETCH item name: atom, optional [section] (may hold spaces and parens), <n>."""
        j = self.i
        while self.d[j: j + 1] not in (b" ", b"[", b")", b""):
            j += 1
        if self.d[j: j + 1] == b"[":
            j = self.d.index(b"]", j) + 1
            if self.d[j: j + 1] == b"<":
                j = self.d.index(b">", j) + 1
        out = self.d[self.i: j].decode("latin-1").upper()
        self.i = j
        return out

    def value(self):
        c = self.peek()
        if c == b"(":
            self.i += 1
            out = []
            while True:
                self.skip_sp()
                if self.peek() == b")":
                    self.i += 1
                    return out
                out.append(self.value())
        if c == b'"':
            j, out = self.i + 1, bytearray()
            while self.d[j: j + 1] != b'"':
                if self.d[j: j + 1] == b"\\":
                    j += 1
                out += self.d[j: j + 1]
                j += 1
            self.i = j + 1
            return bytes(out)
        m = re.compile(rb"~?\{(\d+)\}\r\n").match(self.d, self.i)
        if m:
            n = int(m.group(1))
            self.i = m.end() + n
            return self.d[m.end(): m.end() + n]
        j = self.i
        while self.d[j: j + 1] not in (b" ", b")", b"(", b"\r", b""):
            j += 1
        atom = self.d[self.i: j]
        self.i = j
        return None if atom.upper() == b"NIL" else atom


def fetch_items(resp: bytes) -> tuple[int, dict]:
    """`* n FETCH (...)` → (n, {ITEM NAME: value}); literals and quoted strings are bytes,
    NIL is None, lists are lists. Item names are upper-cased (`BODY[1]`, `BODY[]<4096>`)."""
    m = re.match(rb"\* (\d+) FETCH \(", resp)
    assert m, resp[:100]
    p = _P(resp, m.end())
    items = {}
    while True:
        p.skip_sp()
        if p.peek() in (b")", b""):
            break
        k = p.name()
        p.skip_sp()
        items[k] = p.value()
    return int(m.group(1)), items


def response_key(item: str) -> str:
    """The name a FETCH response gives the requested item: BODY.PEEK[1] → BODY[1],
    BODY.PEEK[]<4096.100> → BODY[]<4096>, BINARY.PEEK[1] → BINARY[1]."""
    k = item.upper().replace(".PEEK[", "[")
    m = re.match(r"(.*\])<(\d+)\.\d+>$", k)
    return f"{m.group(1)}<{m.group(2)}>" if m else k


# ------------------------------------------------------------------------ notices


def masked_equal(got: bytes, notice: bytes, start: int) -> bool:
    """got == notice[start:start+len(got)], except inside reference ids (each notice built
    for a new verdict carries its own ref)."""
    want = notice[start: start + len(got)]
    if len(want) != len(got):
        return False
    if got == want:
        return True
    holes = [(m.start() - start, m.end() - start) for m in REF.finditer(notice)]
    for a, b in holes:
        a, b = max(a, 0), min(b, len(got))
        if a < b:
            got = got[:a] + bytes(b - a) + got[b:]
            want = want[:a] + bytes(b - a) + want[b:]
    return got == want


def notice_slice_ok(got: bytes, notice: bytes, orig_len: int, origin: int, count: int) -> bool:
    """The chunk rule of docs/scanning.md (issue 15): a replaced chunk <origin.count> is exactly
    notice[origin:origin+len], len being what the server answered (the original's bytes in that
    range): never longer than the server's literal, empty past the notice's end."""
    server = max(0, min(count, orig_len - origin))
    start = min(origin, len(notice))
    want = len(notice[start: start + server])
    return len(got) == want and masked_equal(got, notice, start)


def notice_body(notice: bytes) -> bytes:
    return notice.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in notice else b""


def is_notice(msg: bytes) -> bool:
    head = msg.split(b"\r\n\r\n", 1)[0]
    return re.search(rb"(?mi)^X-Portcullis-Verdict: ", head) is not None
