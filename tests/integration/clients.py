"""Shared client-side helpers for the integration tests (stdlib only).

- LineClient: a raw line client, plain or TLS, that sees the exact bytes: send, read a line,
  read exactly n bytes (an IMAP literal), read one IMAP response with its literals, read until
  a tagged response, read a POP3 multi-line answer, read until the peer closes. Every read has
  a timeout that raises ReadTimeout naming what was awaited and what had arrived.
- tls_context(certs): a client context trusting the test CA (mailenv.Certs), or verifying
  nothing.
- wait_for(predicate, timeout, interval, what=...): poll until the predicate returns something
  true and return it; raise WaitTimeout with `what` (and the last value) when time runs out.
  Tests wait for observable state with it instead of sleeping a fixed time.
- Process stats from /proc: rss_kb, fd_count, cpu_ticks, read_bytes, proc_stats.
- ctl(px, *args): run portcullis-ctl (next to the proxy binary) with the proxy's config.

mailenv.py imports wait_for from here (Proxy.wait_log / wait_metric are built on it), so this
module must not import mailenv at load time.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

LOCAL = "127.0.0.1"


class WaitTimeout(AssertionError):
    """wait_for ran out of time (an AssertionError: pytest reports it as a failed check)."""


class ReadTimeout(TimeoutError):
    """A LineClient read did not complete in time (a TimeoutError, i.e. socket.timeout)."""


# --------------------------------------------------------------------------------- waiting


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05,
             what: str | Callable[[], str] = "condition") -> Any:
    """Call `predicate` every `interval` s until it returns a true value, and return that
    value. After `timeout` s raise WaitTimeout naming `what` (a string, or a function called
    then for details such as a log tail). The predicate is evaluated once more at the deadline,
    so a slow machine never fails a check that has just become true."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            last = predicate()
            if last:
                return last
            desc = what() if callable(what) else what
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {desc} "
                              f"(last value: {last!r})")
        time.sleep(interval)


def wait_steady(read: Callable[[], Any], quiet: float = 0.3, timeout: float = 10.0,
                interval: float = 0.05, what: str = "a steady value") -> Any:
    """Wait until `read()` has returned the same value for `quiet` s (e.g. a process's read
    counter once it stopped reading, its RSS once it settled); return that value. Raises
    WaitTimeout if it keeps changing for `timeout` s."""
    last, since = read(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} "
                              f"(still changing, last {last!r})")
        time.sleep(interval)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


# ------------------------------------------------------------------------------------- TLS


def tls_context(certs=None, verify: bool = True) -> ssl.SSLContext:
    """A client context that trusts the test CA (`certs`: a mailenv.Certs, or the CA file's
    path). verify=False: no certificate or host name check at all."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ca = getattr(certs, "ca", certs)
    return ssl.create_default_context(cafile=str(ca) if ca else None)


# ------------------------------------------------------------------------------ line client


_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class LineClient:
    """A raw client (plain, or TLS when `tls` is a context) that reads only when told to.

    `buf` holds what arrived and was not consumed yet. Reads raise EOFError when the peer
    closes, and ReadTimeout after `timeout` s of silence."""

    def __init__(self, port: int | None, tls: ssl.SSLContext | None = None, host: str = LOCAL,
                 timeout: float = 10, server_hostname: str | None = "localhost",
                 rcvbuf: int | None = None, sock: socket.socket | None = None):
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except OSError:
                sock.close()
                raise
        else:  # an existing socket (port unused)
            sock.settimeout(timeout)
            try:
                host, port = sock.getpeername()[:2]
            except OSError:
                pass
        self.peer = f"{host}:{port}"
        self.sock = tls.wrap_socket(sock, server_hostname=server_hostname) if tls else sock
        self.buf = bytearray()

    # ---- raw
    def starttls(self, ctx: ssl.SSLContext, server_hostname: str | None = "localhost") -> None:
        assert not self.buf, f"bytes left before TLS: {bytes(self.buf)!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def _fill(self, awaiting: str = "data") -> None:
        """One recv into buf. EOFError when the peer closed, ReadTimeout on silence."""
        try:
            d = self.sock.recv(256 * 1024)
        except (socket.timeout, TimeoutError):
            raise ReadTimeout(f"{self.peer}: no {awaiting} within {self.sock.gettimeout()}s; "
                              f"pending {bytes(self.buf[-300:])!r}") from None
        if not d:
            raise EOFError(f"{self.peer}: closed while awaiting {awaiting}; "
                           f"pending {bytes(self.buf[-300:])!r}")
        self.buf += d

    # ---- lines and counted bytes
    def line(self) -> bytes:
        """The next line, CRLF included."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            self._fill("a line")

    def read_exact(self, n: int) -> bytes:
        """Exactly n bytes (e.g. the body of an IMAP literal {n})."""
        while len(self.buf) < n:
            self._fill(f"{n} bytes (have {len(self.buf)})")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, needle: bytes) -> bytes:
        """Everything up to and including `needle`."""
        while True:
            i = self.buf.find(needle)
            if i >= 0:
                out = bytes(self.buf[:i + len(needle)])
                del self.buf[:i + len(needle)]
                return out
            self._fill(repr(needle))

    def until_closed(self, timeout: float | None = 10) -> bytes:
        """Everything until the peer closes (a reset or TLS error counts as closed); raises
        ReadTimeout if it does not close within `timeout`."""
        self.sock.settimeout(timeout)
        while True:
            try:
                self._fill("the connection to close")
            except EOFError:
                break
            except (ConnectionResetError, ssl.SSLError):
                break
        out = bytes(self.buf)
        self.buf.clear()
        return out

    rest_until_closed = until_closed

    def closed(self, timeout: float = 5) -> bool:
        """Does the peer close (FIN, or RST because our bytes went unread) within `timeout`
        without sending anything? Bytes that arrive instead are kept in buf."""
        self.sock.settimeout(timeout)
        try:
            self._fill("the connection to close")
        except (EOFError, ConnectionResetError, ssl.SSLError):
            return True
        return False

    # ---- IMAP
    def greeting(self, expect: bytes = b"* OK") -> bytes:
        """Read the greeting line and check that it starts with `expect` (POP3: b"+OK")."""
        g = self.line()
        assert g.startswith(expect), g
        return g

    def response(self) -> bytes:
        """One IMAP response, literals included with their CRLFs (a "+" continuation request
        is a response of its own)."""
        out = b""
        while True:
            line = self.line()
            out += line
            m = _LITERAL.search(line)
            if not m or line.startswith(b"+"):
                return out
            out += self.read_exact(int(m.group(1)))

    def until_tag(self, tag: bytes) -> list[bytes]:
        """Responses up to and including the one tagged `tag`."""
        out = []
        while True:
            r = self.response()
            out.append(r)
            if r.startswith(tag + b" "):
                return out

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tag(tag)

    def tagged(self, tag: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """Read until the response tagged `tag`; returns its line and [(line, literal)] of the
        untagged responses before it (a response's text after its literal is appended to its
        line; literal is b"" when there was none)."""
        items = []
        while True:
            line = self.line()
            lit = b""
            m = _LITERAL.search(line)
            if m and not line.startswith(b"+"):
                lit = self.read_exact(int(m.group(1)))
                line += self.line()
            if line.startswith(tag + b" "):
                return line, items
            items.append((line, lit))

    # ---- POP3
    def pop3_body(self) -> bytes:
        """The raw body of a POP3 multi-line answer after its status line, up to and including
        the terminating ".\\r\\n" (dot-stuffing kept)."""
        while True:
            data = b"\r\n" + self.buf
            i = data.find(b"\r\n.\r\n")
            if i >= 0:
                del self.buf[:i + 3]
                return bytes(data[2:i + 5])
            self._fill("the end of a multi-line answer")

    def pop3_multiline(self) -> bytes:
        """A whole POP3 answer: the status line, and when it is +OK the multi-line body up to
        the terminator, raw (dot-stuffing kept)."""
        first = self.line()
        if not first.startswith(b"+OK"):
            return first
        return first + self.pop3_body()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(port: int, certs=None, tls: bool = True, **kw) -> LineClient:
    """A LineClient to 127.0.0.1:port, over TLS verified with the test CA when `tls`."""
    return LineClient(port, tls_context(certs) if tls else None, **kw)


# ---------------------------------------------------------------------------- process stats


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in kB."""
    return _status_kb(pid, "VmRSS")


def fd_count(pid: int) -> int:
    """Open file descriptors."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_ticks(pid: int) -> int:
    """utime + stime in clock ticks (os.sysconf("SC_CLK_TCK") per second)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def read_bytes(pid: int) -> int:
    """Bytes the process has read with read(2)-like calls (rchar; recv(2) on sockets is not
    counted, OpenSSL's reads are)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in kB, open fds)."""
    return rss_kb(pid), fd_count(pid)


def sanitized(pid: int) -> bool:
    """Is the process running with AddressSanitizer (libasan mapped)?"""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


# -------------------------------------------------------------------------------------- ctl


def ctl_binary(px) -> Path:
    """portcullis-ctl from the same build directory as the proxy's binary."""
    return Path(px.binary).parent / "portcullis-ctl"


def ctl(px, *args: str, check: bool = True, config: Path | str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `portcullis-ctl -c <the proxy's config> ARGS`. With `check`, a non-zero exit fails
    the test with its output."""
    r = subprocess.run([str(ctl_binary(px)), "-c", str(config or px.config_path), *args],
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (f"portcullis-ctl {' '.join(args)}: exit {r.returncode}\n"
                                   f"{r.stdout}{r.stderr}")
    return r


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the kernel receive queue of `sock` (FIONREAD; for a TLS socket, the
    raw TLS bytes not yet read)."""
    import array
    import fcntl
    import termios
    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, n)
    return n[0]
