"""Backend connections and part fetches (issues 14 and 15).

Issue 14 moved the scan fetcher's second backend connection onto the session's dialer (PROXY v2
header, connect and TLS failures logged and counted). Issue 15 removed that connection: a part
fetch (BODY.PEEK[2]) of a message not judged yet is judged on the whole message the proxy
fetches on the client's own backend connection, between the client's commands. These tests keep
what the old ones guarded, for the one connection that is left: the PROXY v2 header carries the
client's address, and a backend that takes the login connection and refuses or fails every
later one (what broke the fetcher) no longer matters — the part is judged (infected: withheld,
never "could not be checked"), and no second connect is made, logged or counted.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import urllib.request

import pytest

import mailenv
import malware

PASSWORD = "dial-pw-1"
CLIENT = "198.51.100.88"  # the client's address, as a trusted balancer reports it


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "scan-db-dialer"
    malware.write_db(str(d))
    return d


def scan_cfg(scan_db, env_tmp) -> dict:
    return {"enabled": True, "database_dir": str(scan_db), "threads": 2, "tmpdir": str(env_tmp)}


def make_user(dovecot, user: str) -> None:
    """One infected multipart message (EICAR in a base64 attachment) as UID 1."""
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [malware.MESSAGES["base64"].data])


class Client:
    """A raw IMAP client: enough to log in, select and run a tagged command."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.f = sock.makefile("rb")

    def greeting(self) -> bytes:
        line = self.f.readline()
        assert line.startswith(b"* OK"), line
        return line

    def cmd(self, tag: str, text: str) -> tuple[bytes, bytes]:
        """Send `tag text`; return (everything before the tagged line, the tagged line)."""
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        body = b""
        while True:
            line = self.f.readline()
            assert line, body[-300:]
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                line += self.f.read(int(m.group(1)))
            if line.startswith(tag.encode() + b" "):
                return body, line
            body += line

    def close(self) -> None:
        self.sock.close()


def login_select(c: Client, user: str) -> None:
    _, st = c.cmd("a", f'LOGIN {user} "{PASSWORD}"')
    assert st.startswith(b"a OK"), st
    _, st = c.cmd("b", "SELECT INBOX")
    assert st.startswith(b"b OK"), st


def tls_session(px, certs, user: str) -> Client:
    """A client on the proxy's imaps port, logged in with INBOX selected."""
    ctx = mailenv.ssl_context(certs.ca)
    s = ctx.wrap_socket(socket.create_connection((mailenv.LOCAL, px.port("imaps")), timeout=30),
                        server_hostname="localhost")
    c = Client(s)
    c.greeting()
    login_select(c, user)
    return c


def fetch_part_judged(c: Client) -> None:
    """The part of the infected message is judged on the whole message (same connection):
    withheld as infected, not "could not be checked", and the command completes."""
    body, st = c.cmd("c", "UID FETCH 1 (UID BODY.PEEK[2])")
    assert st.startswith(b"c OK"), st
    assert b"withheld" in body and malware.SIGNATURE.encode() in body, body[:400]
    assert b"could not be checked" not in body, body[:400]


def dovecot_logins(dovecot, user: str, rip: str) -> int:
    return sum(1 for ln in dovecot.log().splitlines()
               if "Login: user=<%s>" % user in ln and "rip=%s," % rip in ln)


def wait_logins(dovecot, user: str, rip: str, want: int, timeout: float = 5.0) -> int:
    """Dovecot's log lines arrive a little after the answers: wait for `want` of them."""
    deadline = time.monotonic() + timeout
    n = dovecot_logins(dovecot, user, rip)
    while n < want and time.monotonic() < deadline:
        time.sleep(0.05)
        n = dovecot_logins(dovecot, user, rip)
    return n


def metric(px, name: str) -> float:
    """One Prometheus series (name with its labels) from the admin endpoint; 0 if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{px.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_part_fetch_one_login_proxy_v2_with_client_address(proxy_factory, dovecot, certs,
                                                           scan_db, env_tmp):
    """Backend PROXY v2 on: the session's login reaches Dovecot with the client's address, and
    a part fetch is judged without a second login (there used to be two)."""
    user = "dial-proxy"
    make_user(dovecot, user)
    port = mailenv.free_port()
    bes = [{"name": "dv-hp", "protocol": "imap", "host": mailenv.LOCAL,
            "port": dovecot.haproxy_ports["imap"], "tls": "none", "proxy_protocol": True}]
    bes += [b for b in dovecot.backends(tls="none") if b["protocol"] == "pop3"]
    px = proxy_factory(backends=bes, health={"enabled": False}, trusted_proxies="127.0.0.1",
                       allow_plaintext_auth=True, scan=scan_cfg(scan_db, env_tmp),
                       extra_listeners=[{"name": "lb", "bind": f"127.0.0.1:{port}",
                                         "protocol": "imap", "tls": "none",
                                         "proxy_protocol": True}])
    s = socket.create_connection((mailenv.LOCAL, port), timeout=30)
    s.sendall(f"PROXY TCP4 {CLIENT} 127.0.0.1 41000 143\r\n".encode())
    c = Client(s)
    c.greeting()
    login_select(c, user)
    assert wait_logins(dovecot, user, CLIENT, 1) == 1, dovecot.log()[-2000:]
    fetch_part_judged(c)
    c.cmd("d", "LOGOUT")
    c.close()
    time.sleep(0.5)  # a second login would show in Dovecot's log by now
    assert wait_logins(dovecot, user, CLIENT, 1) == 1, dovecot.log()[-3000:]
    assert "event=prefetch_failed" not in px.log()


class Relay:
    """Relays the first connection it accepts to `first`; every later one to `later`, or, with
    no `later`, it stops listening after the first: every later connect is refused."""

    def __init__(self, first: int, later: int | None = None) -> None:
        self.first, self.later = first, later
        self.lsock = socket.socket()
        self.lsock.bind((mailenv.LOCAL, 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self) -> None:
        target = self.first
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            if self.later is None:
                self.lsock.close()
            b = socket.create_connection((mailenv.LOCAL, target), timeout=30)
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a), daemon=True).start()
            if self.later is None:
                return
            target = self.later


def wrong_cert_server(certs) -> int:
    """A TLS server with the self-signed backend.test certificate (not from the test CA): it
    only shakes hands. Returns its port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.wrong_backend), str(certs.wrong_backend_key))
    lsock = socket.socket()
    lsock.bind((mailenv.LOCAL, 0))
    lsock.listen(8)

    def run() -> None:
        while True:
            a, _ = lsock.accept()
            try:
                ctx.wrap_socket(a, server_side=True).recv(1)
            except (OSError, ssl.SSLError):
                pass
            a.close()

    threading.Thread(target=run, daemon=True).start()
    return lsock.getsockname()[1]


def test_part_judged_when_backend_refuses_more_connections(proxy_factory, dovecot, certs,
                                                           scan_db, env_tmp):
    """The backend takes the login connection, then refuses every other: the part is still
    judged (on the login connection), nothing is dialled again, no failure logged or counted.
    (With the second connection: "could not be checked" and event=backend_connect_failed.)"""
    user = "dial-refused"
    make_user(dovecot, user)
    relay = Relay(dovecot.ports["imap"])
    bes = [{"name": "once", "protocol": "imap", "host": mailenv.LOCAL, "port": relay.port,
            "tls": "none"}]
    bes += [b for b in dovecot.backends(tls="none") if b["protocol"] == "pop3"]
    # No active health checks: they would take the relay's one connection.
    px = proxy_factory(backends=bes, health={"enabled": False},
                       scan=scan_cfg(scan_db, env_tmp))
    c = tls_session(px, certs, user)
    series = 'portcullis_backend_connect_failures_total{backend="once"}'
    assert metric(px, series) == 0
    fetch_part_judged(c)
    _, st = c.cmd("d", "NOOP")
    assert st.startswith(b"d OK"), st
    c.cmd("e", "LOGOUT")
    c.close()
    log = px.log()
    assert "event=backend_connect_failed" not in log, log[-3000:]
    assert "event=prefetch_failed" not in log
    assert metric(px, series) == 0


def test_part_judged_when_later_connections_fail_tls(proxy_factory, dovecot, certs, scan_db,
                                                     env_tmp):
    """Implicit TLS toward the backend: the login connection reaches Dovecot (a CA-signed
    certificate), any later one a server with a self-signed one. The part is judged on the
    login connection; no later connection is made, so no TLS failure is logged."""
    user = "dial-tls"
    make_user(dovecot, user)
    relay = Relay(dovecot.ports["imaps"], wrong_cert_server(certs))
    bes = [{"name": "tls-once", "protocol": "imap", "host": mailenv.LOCAL, "port": relay.port,
            "tls": "implicit", "tls_ca": str(certs.ca), "tls_sni": "backend.test"}]
    bes += [b for b in dovecot.backends(tls="none") if b["protocol"] == "pop3"]
    px = proxy_factory(backends=bes, health={"enabled": False},
                       scan=scan_cfg(scan_db, env_tmp))
    c = tls_session(px, certs, user)
    fetch_part_judged(c)
    c.cmd("e", "LOGOUT")
    c.close()
    log = px.log()
    assert "event=backend_tls_failed" not in log, log[-3000:]
    assert metric(px, 'portcullis_backend_connect_failures_total{backend="tls-once"}') == 0
