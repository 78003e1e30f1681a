#!/usr/bin/env python3
"""Test and demo environment for Portcullis: certificates, messages, Dovecot, Redis, the proxy.

Stdlib only (PyYAML from Debian's python3-yaml is used when present; otherwise the proxy config is
written as JSON, which is valid YAML). No pytest dependency: conftest.py builds fixtures on this,
and deploy/demo.sh drives the CLI at the bottom:

    python3 tests/integration/mailenv.py demo-start DIR [--no-proxy]
    python3 tests/integration/mailenv.py demo-stop DIR

Every server binds 127.0.0.1 on a free port, lives in its own work directory and is stopped by
the PID it was started with. Dovecot needs root (it drops privileges itself) and the system user
`portcullis-mail` (created by deploy/deps.sh, or here when running as root).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import clients  # noqa: E402  (the directory of this file; stdlib only, no cycle)
from clients import wait_for  # noqa: E402,F401  (re-exported)

try:  # Debian python3-yaml (listed in deploy/deps.sh)
    import yaml  # type: ignore
except ImportError:  # pragma: no cover
    yaml = None

REPO = Path(__file__).resolve().parents[2]
MAIL_USER = "portcullis-mail"
DEFAULT_BINARY = "build/portcullis"
LOCAL = "127.0.0.1"


# The users of the session Dovecot in conftest.py (tests import them from here).
TEST_USERS = {
    "alice": "alicepw",
    "bob": "bobpw",
    "jürgen": "pässwörd",           # UTF-8 user name and password
    "carol": 'p a"s\\s{x}',          # space, double quote, backslash, braces: p a"s\s{x}
    "mbsync": "mbsyncpw",           # for the big mbsync test (deliver its messages there)
}
SEED_COUNT = 3                      # messages conftest seeds into every user's INBOX


class EnvError(RuntimeError):
    """A server of the test environment could not be started or stopped."""


# --------------------------------------------------------------------------------------------
# Small helpers


_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0, read it, close), never one this
    process handed out before: a server started later in the same fixture must not get the
    port another one is about to bind (the proxy's SO_REUSEPORT listeners would even share it)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOCAL, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise EnvError("no fresh free port")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOCAL, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = LOCAL, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | str, lines: int = 30) -> str:
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(data[-lines:])


def wait_ports(ports: Iterable[int], proc: subprocess.Popen | None, timeout: float,
               what: str, log: Path | str | None = None) -> None:
    """Wait until every port accepts TCP connections; fail early if `proc` exits."""
    pending = list(ports)
    deadline = time.monotonic() + timeout
    while pending:
        if proc is not None and proc.poll() is not None:
            raise EnvError(f"{what} exited with status {proc.returncode} before listening"
                           + (f"; log tail:\n{log_tail(log)}" if log else ""))
        pending = [p for p in pending if not port_open(p)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise EnvError(f"{what}: ports {pending} not accepting after {timeout:.0f}s"
                           + (f"; log tail:\n{log_tail(log)}" if log else ""))
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    st = _stat_fields(pid)
    return bool(st) and st[0] not in ("Z", "X")


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat_fields(d)
            if st and st[2] == str(pgid) and st[0] not in ("Z", "X"):
                out.append(int(d))
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def terminate_pid(pid: int, timeout: float = 10.0, proc: subprocess.Popen | None = None,
                  group: bool = True) -> str:
    """SIGTERM `pid`, wait up to `timeout` for it, then SIGKILL. Returns "term", "kill" or
    "gone". Every server here is started in its own session (process group = its PID): with
    `group`, whatever is left of that group once the main process is gone (Dovecot's log/auth/
    login processes linger while clients are still connected) gets SIGTERM, then SIGKILL 1 s
    later. Nothing outside the group is touched."""
    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        _reap(pid)
        return not pid_alive(pid)

    how = "term"
    if gone():
        how = "gone"
    else:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while not gone():
            if time.monotonic() > deadline:
                how = "kill"
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                end = time.monotonic() + 5
                while not gone() and time.monotonic() < end:
                    time.sleep(0.02)
                break
            time.sleep(0.02)
    if group:
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
            if not group_members(pid):
                break
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            end = time.monotonic() + wait
            while group_members(pid) and time.monotonic() < end:
                time.sleep(0.02)
    return how


def mail_ids(create: bool = True) -> tuple[int, int]:
    """uid/gid of the system user owning the test maildirs (deploy/deps.sh creates it)."""
    try:
        pw = pwd.getpwnam(MAIL_USER)
    except KeyError:
        if not create or os.geteuid() != 0:
            raise EnvError(f"system user {MAIL_USER} is missing: run `bash deploy/deps.sh`")
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", MAIL_USER],
                       check=True)
        pw = pwd.getpwnam(MAIL_USER)
    return pw.pw_uid, pw.pw_gid


def make_workdir(path: Path | str) -> Path:
    """Create a work directory that Dovecot's unprivileged processes can traverse (0755)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    p.chmod(0o755)
    return p


def ssl_context(ca: Path | str | None = None, verify: bool = True) -> ssl.SSLContext:
    """Client context trusting the test CA (or verifying nothing with verify=False)."""
    return clients.tls_context(ca, verify=verify)


# --------------------------------------------------------------------------------------------
# Certificates


@dataclasses.dataclass
class Certs:
    dir: Path
    ca: Path                 # test CA certificate (ECDSA P-256); clients verify with this
    ca_key: Path
    server: Path             # proxy: CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    server_key: Path
    sni: Path                # proxy, second cert for SNI: CN/SAN mail.example.test
    sni_key: Path
    server_rsa: Path         # proxy, RSA-2048 variant of `server` (benchmarks)
    server_rsa_key: Path
    backend: Path            # Dovecot: CN=backend.test, SAN DNS:backend.test, IP:127.0.0.1
    #                          and the transparent tests' backend addresses (test_transparent)
    backend_key: Path
    wrong_backend: Path      # self-signed backend.test, NOT signed by the CA
    wrong_backend_key: Path
    ticket_key: Path         # 80 random bytes for tls.ticket_key_file

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


_LEAF_CNF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = {cn}
[ext]
subjectAltName = {san}
basicConstraints = critical,CA:FALSE
keyUsage = critical,{ku}
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_CA_CNF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = Portcullis Test CA
O = Portcullis tests
[ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise EnvError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def make_certs(dir: Path | str) -> Certs:
    """Generate the test PKI into `dir` with the openssl CLI (~0.2 s). Keys are 0644 so that
    every test process (and Dovecot) can read them: test material only."""
    d = make_workdir(dir)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    rsa = ["-newkey", "rsa:2048"]

    (d / "ca.cnf").write_text(_CA_CNF)
    _openssl("req", "-x509", "-new", *ec, "-nodes", "-config", "ca.cnf", "-days", "3650",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)

    def leaf(name: str, cn: str, san: str, key: list[str], signed: bool = True) -> None:
        ku = "digitalSignature,keyEncipherment" if key is rsa else "digitalSignature"
        (d / f"{name}.cnf").write_text(_LEAF_CNF.format(cn=cn, san=san, ku=ku))
        ca = ["-CA", "ca.pem", "-CAkey", "ca.key"] if signed else []
        _openssl("req", "-x509", "-new", *key, "-nodes", "-config", f"{name}.cnf", *ca,
                 "-days", "825", "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                 "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)

    leaf("server", "localhost", "DNS:localhost,IP:127.0.0.1", ec)
    leaf("sni", "mail.example.test", "DNS:mail.example.test", ec)
    leaf("server-rsa", "localhost", "DNS:localhost,IP:127.0.0.1", rsa)
    leaf("backend", "backend.test",
         "DNS:backend.test,IP:127.0.0.1,IP:198.51.100.2,IP:2001:db8:b:0:0:0:0:2", ec)
    leaf("wrong-backend", "backend.test", "DNS:backend.test,IP:127.0.0.1", ec, signed=False)
    (d / "ticket.key").write_bytes(os.urandom(80))
    for f in d.iterdir():
        if f.suffix == ".cnf":
            f.unlink()
        else:
            f.chmod(0o644)
    return Certs(dir=d, ca=d / "ca.pem", ca_key=d / "ca.key",
                 server=d / "server.pem", server_key=d / "server.key",
                 sni=d / "sni.pem", sni_key=d / "sni.key",
                 server_rsa=d / "server-rsa.pem", server_rsa_key=d / "server-rsa.key",
                 backend=d / "backend.pem", backend_key=d / "backend.key",
                 wrong_backend=d / "wrong-backend.pem", wrong_backend_key=d / "wrong-backend.key",
                 ticket_key=d / "ticket.key")


# --------------------------------------------------------------------------------------------
# Messages

_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua proxy mail message backend portcullis "
          "gate tower keep moat bridge archer banner herald courier letter parcel").split()

# Presets for gen_messages(sizes=...): lists of (weight, min, max) in bytes.
SIZE_PRESETS: dict[str, list[tuple[float, int, int]]] = {
    "small": [(1.0, 1024, 8 * 1024)],
    # mbsync test: a few hundred messages from 1 KB to 5 MB. 300 messages: ~28 MB expected;
    # seed=1 gives 41 MB (9 of them over 1 MB), ~1 s to generate.
    "mbsync": [(0.90, 1024, 20 * 1024), (0.08, 100 * 1024, 500 * 1024),
               (0.02, 1024 * 1024, 5 * 1024 * 1024)],
}


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def make_message(rng: random.Random, i: int, size: int, seed: int = 0,
                 sender: str = "sender@example.test", to: str = "rcpt@example.test",
                 subject: str | None = None, body: str | None = None) -> bytes:
    """One RFC 5322 message of about `size` bytes, CRLF line ends, 7-bit only."""
    date = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=seed % 100000 + i)
    subj = subject if subject is not None else f"Test message {i} (seed {seed})"
    hdr = (f"From: Test Sender <{sender}>\r\n"
           f"To: <{to}>\r\n"
           f"Date: {format_datetime(date)}\r\n"
           f"Subject: {subj}\r\n"
           f"Message-ID: <{seed}.{i}.{rng.getrandbits(32):08x}@portcullis.test>\r\n"
           "MIME-Version: 1.0\r\n")
    if body is not None:
        return (hdr + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body).encode()
    if size < 6 * 1024:
        text = _text(rng, max(size - len(hdr) - 50, 40))
        return (hdr + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode()
    boundary = f"=_portcullis_{seed}_{i}_{rng.getrandbits(40):010x}"
    text = _text(rng, rng.randint(200, 1500))
    # base64 grows 4/3 plus CRLF every 76 chars
    raw_len = max(int((size - len(hdr) - len(text) - 500) * 57 / 78), 16)
    blob = base64.encodebytes(rng.randbytes(raw_len)).replace(b"\n", b"\r\n").decode()
    return (hdr +
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
            "\r\n"
            "This is a multi-part message in MIME format.\r\n"
            f"--{boundary}\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n"
            f"{text}"
            f"--{boundary}\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="data-{seed}-{i}.bin"\r\n'
            "\r\n"
            f"{blob}"
            f"--{boundary}--\r\n").encode()


def gen_messages(n: int, seed: int = 1,
                 sizes: str | tuple[int, int] | Sequence[int] | Callable[[random.Random], int]
                 = "small", **kw) -> list[bytes]:
    """`n` deterministic messages (same n/seed/sizes → same bytes).

    sizes: a preset name from SIZE_PRESETS ("small": 1–8 KB, "mbsync": 90 % 1–20 KB,
    8 % 100–500 KB, 2 % 1–5 MB), a (min, max) tuple, a list of n target sizes, or a function
    rng → size. Sizes are approximate (within a few %). Messages under 6 KB are text/plain,
    larger ones multipart/mixed with a base64 attachment of random bytes. Extra keyword
    arguments go to make_message (sender, to, subject)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if callable(sizes):
            size = sizes(rng)
        elif isinstance(sizes, str):
            preset = SIZE_PRESETS[sizes]
            r, acc = rng.random(), 0.0
            lo, hi = preset[-1][1:]
            for w, a, b in preset:
                acc += w
                if r < acc:
                    lo, hi = a, b
                    break
            size = rng.randint(lo, hi)
        elif isinstance(sizes, tuple) and len(sizes) == 2:
            size = rng.randint(*sizes)
        else:
            size = sizes[i]
        out.append(make_message(rng, i, size, seed=seed, **kw))
    return out


# --------------------------------------------------------------------------------------------
# IMAP client helpers (for imaplib)


def imap_quote(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_login_literal(m, user: str, password: str, nonsync: bool = False) -> str:
    """LOGIN with the password as an IMAP literal (imaplib.login() only sends quoted strings,
    which may not carry 8-bit data). nonsync=False: the password is a synchronizing literal
    (waits for "+"), the user a quoted string if ASCII else a LITERAL+ literal.
    nonsync=True: both are LITERAL+ literals. Raises imaplib.IMAP4.error on NO/BAD."""
    ub, pb = user.encode(), password.encode()
    if nonsync:
        arg = b"{%d+}\r\n%s {%d+}\r\n%s" % (len(ub), ub, len(pb), pb)
        typ, dat = m._simple_command("LOGIN", arg)
    else:
        uarg = imap_quote(ub) if ub.isascii() and b"\r" not in ub and b"\n" not in ub \
            else b"{%d+}\r\n%s" % (len(ub), ub)
        m.literal = pb
        typ, dat = m._simple_command("LOGIN", uarg)
    if typ != "OK":
        raise m.error(dat[-1] if dat else typ)
    m.state = "AUTH"
    return typ


def imap_auth_plain(m, user: str, password: str, authzid: str = "") -> str:
    """AUTHENTICATE PLAIN (UTF-8 user and password)."""
    typ, _ = m.authenticate("PLAIN",
                            lambda _: f"{authzid}\0{user}\0{password}".encode())
    return typ


def imap_fetch_all(m, mailbox: str = "INBOX") -> list[bytes]:
    """Every message of `mailbox` (BODY.PEEK[]) in UID order."""
    typ, _ = m.select(mailbox, readonly=True)
    if typ != "OK":
        raise m.error(f"SELECT {mailbox}: {typ}")
    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    out = []
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            out.append((uid, item[1]))
    return [b for _, b in sorted(out)]


# --------------------------------------------------------------------------------------------
# Dovecot

_DOVECOT_CONF = """\
# Written by tests/integration/mailenv.py; private instance, no system paths.
base_dir = {w}/run
state_dir = {w}/state
log_path = {w}/dovecot.log
info_log_path = {w}/dovecot.log
debug_log_path = {w}/dovecot.log
instance_name = {instance}
protocols = {protocols}
listen = 127.0.0.1
shutdown_clients = yes
# no stats process connections: with it, stopping Dovecot while a client is logged in takes 6 s
# (the imap process waits 5 s for a stats-writer handshake that never comes)
stats_writer_socket_path =

ssl = {ssl}
{ssl_files}
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_chars =
auth_verbose = yes
auth_cache_size = 0
# Tests fail logins on purpose: no 2 s delay per failure, and no anvil auth penalty (without
# this, every auth from 127.0.0.1 is delayed up to 15 s after a few failures, good logins too).
auth_failure_delay = {failure_delay}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
login_trusted_networks = 127.0.0.0/8
# the default already has rip=%r; the mail processes get it too
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{{session}}>
mail_log_prefix = "%s(%u)<%{{pid}}><%{{session}}> rip=%r: "
imap_id_log = *
mail_max_userip_connections = 1000

first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_location = maildir:{w}/mail/%u
# LIST scans the maildir, so folders created by deliver() show up at once
mailbox_list_index = no
passdb {{
  driver = passwd-file
  # one file per user: Dovecot re-stats a passwd-file at most once per second, so a user added
  # to a shared file right after a lookup stays "unknown" for up to 1 s; a new file is read at once
  args = scheme=PLAIN {w}/passwd.d/%u
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={w}/mail/%u
}}

default_process_limit = 500
default_client_limit = 2000
service auth {{
  # every login process may hold a connection to auth: avoid the "lower than required" warning
  client_limit = 8000
}}

service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
}}
service imap {{
  service_count = 1000
  process_min_avail = {min_avail}
}}
service pop3 {{
  service_count = 1000
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
  pop3_uidl_format = %08Xu%08Xv
}}
"""


_NS_PROBE = """
import socket, ssl, sys, time
host, port, tls, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", time.time() + float(sys.argv[4])
while time.time() < deadline:
    try:
        s = socket.create_connection((host, port), timeout=2)
        if tls:
            c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
            s = c.wrap_socket(s)
        if s.recv(100).startswith((b"* OK", b"+OK")):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(1)
"""


def netns_wait_greeting(netns: str, host: str, port: int, tls: bool, timeout: float) -> None:
    """Wait for a server greeting on host:port as seen from inside network namespace `netns`."""
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _NS_PROBE, host,
                        str(port), "1" if tls else "0", str(timeout)], timeout=timeout + 5)
    if r.returncode != 0:
        raise EnvError(f"no greeting on {host}:{port} in netns {netns}")


class Dovecot:
    """A private Dovecot 2.3 (IMAP + POP3) on free 127.0.0.1 ports.

    ports: {"imap", "imaps", "pop3", "pop3s"} (0 when not enabled). Mail of user U is the
    maildir WORKDIR/mail/U, owned by portcullis-mail; passwords in WORKDIR/passwd.d/U."""

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.ports: dict[str, int] = {}
        self.users: dict[str, str] = {}
        self.ssl = False
        self.uid, self.gid = 0, 0
        self._seq = 0

    # ---- lifecycle
    def start(self, workdir: Path | str, users: dict[str, str], imap: bool = True,
              pop3: bool = True, ssl: bool = True, cert: Path | str | None = None,
              key: Path | str | None = None, ports: dict[str, int] | None = None,
              timeout: float = 10.0, failure_delay: str = "0",
              extra_conf: str = "", netns: str | None = None,
              listen: str = LOCAL, max_userip_connections: int = 1000) -> "Dovecot":
        """Write WORKDIR/dovecot.conf and run `dovecot -F -c` (foreground, so the Popen PID is
        the master). ssl=True needs cert/key (e.g. Certs.backend / backend_key) and enables
        STARTTLS on the plain ports plus imaps/pop3s. `ports` may fix some ports.
        failure_delay: auth_failure_delay (Dovecot's default is "2 secs"; tests use 0).
        extra_conf: text appended to dovecot.conf (e.g. "mail_plugins = zlib imap_zlib").
        max_userip_connections: IMAP's mail_max_userip_connections (per user and address)."""
        if os.geteuid() != 0:
            raise EnvError("Dovecot needs root (it drops to portcullis-mail/dovenull itself)")
        if not (imap or pop3):
            raise ValueError("enable imap and/or pop3")
        self.workdir = w = make_workdir(workdir)
        self.uid, self.gid = mail_ids()
        self.ssl = ssl
        for sub in ("state", "mail"):
            make_workdir(w / sub)
        os.chown(w / "mail", self.uid, self.gid)
        p = dict(ports or {})
        want = {"imap": imap, "imaps": imap and ssl, "pop3": pop3, "pop3s": pop3 and ssl}
        self.ports = {k: (p.get(k) or free_port()) if on else 0 for k, on in want.items()}
        self.set_users(users)
        ssl_files = ""
        if ssl:
            if not cert or not key:
                raise ValueError("ssl=True needs cert= and key=")
            ssl_files = f"ssl_cert = <{cert}\nssl_key = <{key}"
        conf = _DOVECOT_CONF.format(
            w=w, instance=f"pc-{w.name}"[:30], ssl="yes" if ssl else "no", ssl_files=ssl_files,
            protocols=" ".join(x for x, on in (("imap", imap), ("pop3", pop3)) if on),
            uid=self.uid, gid=self.gid, min_avail=2 if imap else 0, failure_delay=failure_delay,
            **{k: v for k, v in self.ports.items()})
        conf = conf.replace("protocol imap {\n  mail_max_userip_connections = 1000\n",
                            "protocol imap {\n  mail_max_userip_connections = %d\n"
                            % max_userip_connections, 1)
        if not ssl:
            conf = re.sub(r"  inet_listener (imaps|pop3s) \{\n.*?\n  \}\n", "", conf, flags=re.S)
        if not imap:
            conf = re.sub(r"service imap-login \{.*?\n\}\n", "", conf, flags=re.S)
        if not pop3:
            conf = re.sub(r"service pop3-login \{.*?\n\}\n", "", conf, flags=re.S)
        # One more listener per protocol that expects a HAProxy PROXY header (for the proxy's
        # backend proxy_protocol option); not in self.ports: it greets only after a header.
        self.haproxy_ports = {}
        conf += "haproxy_trusted_networks = 127.0.0.0/8\n"
        for proto, on in (("imap", imap), ("pop3", pop3)):
            if on:
                hp = free_port()
                self.haproxy_ports[proto] = hp
                conf = conf.replace(
                    "service %s-login {\n" % proto,
                    "service %s-login {\n  inet_listener %s_haproxy {\n    port = %d\n"
                    "    haproxy = yes\n  }\n" % (proto, proto, hp), 1)
        (w / "dovecot.conf").write_text(conf + extra_conf)
        errlog = open(w / "dovecot.stderr", "ab")
        if listen != LOCAL:
            conf = conf.replace("listen = 127.0.0.1\n", f"listen = {listen}\n", 1)
            (w / "dovecot.conf").write_text(conf + extra_conf)
        self.netns = netns
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen(prefix + ["dovecot", "-F", "-c", str(w / "dovecot.conf")],
                                     stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                     start_new_session=True)
        errlog.close()
        self.pid = self.proc.pid
        try:
            if netns:
                # Not reachable from here: probe from inside the namespace.
                for name, port in self.ports.items():
                    if port:
                        netns_wait_greeting(netns, listen.split(",")[0].strip(), port,
                                            name.endswith("s"), timeout)
                return self
            wait_ports([v for v in self.ports.values() if v], self.proc, timeout,
                       f"dovecot ({w})", w / "dovecot.stderr")
            self._wait_greetings(timeout)
        except EnvError as e:
            self.stop()
            raise EnvError(f"{e}\ndovecot.log:\n{log_tail(w / 'dovecot.log')}") from None
        return self

    def _wait_greetings(self, timeout: float) -> None:
        """Read a greeting on every port: Dovecot's login processes greet only once they are
        connected to auth, so this means "ready". (Stopping a Dovecot whose login processes are
        still starting takes 6 s instead of 1 s.)"""
        noverify = ssl_context(verify=False)
        deadline = time.monotonic() + timeout
        for name, port in self.ports.items():
            if not port:
                continue
            while True:
                try:
                    with socket.create_connection((LOCAL, port), timeout=2) as s:
                        conn = noverify.wrap_socket(s) if name.endswith("s") else s
                        line = conn.recv(200)
                        conn.close()
                    if line.startswith((b"* OK", b"+OK")):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise EnvError(f"dovecot: no greeting on {name} port {port}")
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM the master (PID from Popen = base_dir/master.pid), wait for it and its
        children; SIGKILL after `timeout`."""
        if self.pid is None:
            return "gone"
        how = terminate_pid(self.pid, timeout, self.proc)
        self.pid = None
        return how

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- users and mail
    def set_users(self, users: dict[str, str]) -> None:
        """(Re)write the passwd-files (WORKDIR/passwd.d/<user>, one per user). New users work at
        once; a changed password of an existing user may take up to 1 s (Dovecot re-stats a
        passwd-file at most once per second)."""
        for u, pw in users.items():
            for s in (u, pw):
                if ":" in s or "\n" in s or "\r" in s or "\0" in s:
                    raise ValueError(f"passwd-file cannot hold ':' or control chars: {s!r}")
            if "/" in u or u in ("", ".", ".."):
                raise ValueError(f"user name unusable as a file name: {u!r}")
        d = make_workdir(self.workdir / "passwd.d")
        for u in set(self.users) - set(users):
            (d / u).unlink(missing_ok=True)
        for u, pw in users.items():
            f = d / u
            tmp = d / f".{u}.tmp"
            tmp.write_text(f"{u}:{{PLAIN}}{pw}::::::\n", encoding="utf-8")
            tmp.chmod(0o644)
            tmp.replace(f)
        self.users = dict(users)

    def add_user(self, user: str, password: str) -> None:
        self.set_users({**self.users, user: password})

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        root = self.workdir / "mail" / user
        if folder.upper() == "INBOX":
            return root
        return root / ("." + folder.replace("/", "."))

    def _mkmaildir(self, d: Path) -> None:
        """Create the maildir `d` (and the user's root maildir above it) owned by the mail
        user; Maildir++ subfolders get the `maildirfolder` marker."""
        root = self.workdir / "mail"
        todo, p = [], d
        while p != root:
            todo.append(p)
            p = p.parent
        for p in reversed(todo):
            for q in (p, p / "cur", p / "new", p / "tmp"):
                if not q.exists():
                    q.mkdir(mode=0o700)
                    os.chown(q, self.uid, self.gid)
            if p.parent != root and not (p / "maildirfolder").exists():
                (p / "maildirfolder").touch(0o600)
                os.chown(p / "maildirfolder", self.uid, self.gid)

    def deliver(self, user: str, messages: Iterable[bytes], folder: str = "INBOX",
                flags: str = "", new: bool = False) -> list[str]:
        """Write messages into the user's maildir (tmp/ then rename into cur/ or new/), owned
        by the mail user. Dovecot assigns UIDs in delivery order (file names carry increasing
        timestamps, which is its sort key) and picks up messages delivered after login at the
        next SELECT/NOOP. flags: maildir flag letters, e.g. "S" for \\Seen. Returns names."""
        d = self.maildir(user, folder)
        self._mkmaildir(d)
        names = []
        host = "portcullis"
        for msg in messages:
            self._seq += 1
            base = (f"{1_600_000_000 + self._seq}.M{self._seq:06d}P{os.getpid()}"
                    f"Q{self._seq}.{host},S={len(msg)},W={len(msg)}")
            tmp = d / "tmp" / base
            with open(tmp, "wb") as f:
                f.write(msg)
            os.chown(tmp, self.uid, self.gid)
            os.chmod(tmp, 0o600)
            name = base if new else f"{base}:2,{''.join(sorted(flags))}"
            os.rename(tmp, d / ("new" if new else "cur") / name)
            names.append(name)
        return names

    def read_maildir(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Stored messages in UID order (dovecot-uidlist; files Dovecot has not seen yet
        follow in delivery order)."""
        d = self.maildir(user, folder)
        files = {}
        for sub in ("cur", "new"):
            if (d / sub).is_dir():
                for f in (d / sub).iterdir():
                    files[f.name.split(":", 1)[0]] = f
        order: dict[str, int] = {}
        ul = d / "dovecot-uidlist"
        if ul.exists():
            for line in ul.read_text(errors="replace").splitlines()[1:]:
                m = re.match(r"(\d+)\s.*?:(.+)$", line) or re.match(r"(\d+)\s+(\S+)$", line)
                if m:
                    order[m.group(2).split(":", 1)[0]] = int(m.group(1))

        def key(base: str):
            if base in order:
                return (0, order[base], 0, base)
            t = re.match(r"(\d+)(?:\.M(\d+))?", base)
            return (1, int(t.group(1)) if t else 0, int(t.group(2) or 0) if t else 0, base)
        return [files[b].read_bytes() for b in sorted(files, key=key)]

    # ---- for proxy configs
    def backends(self, tls: str = "none", name: str = "dovecot1", ca: Path | str | None = None,
                 sni: str | None = "backend.test", **extra) -> list[dict]:
        """Backend entries for the proxy config: one imap and/or one pop3 pool member.
        tls: none (plain port) | starttls (plain port) | implicit (imaps/pop3s port)."""
        out = []
        for proto, plain, tlsport in (("imap", "imap", "imaps"), ("pop3", "pop3", "pop3s")):
            port = self.ports.get(tlsport if tls == "implicit" else plain)
            if not port:
                continue
            b = {"name": name if proto == "imap" else f"{name}-pop3", "protocol": proto,
                 "host": LOCAL, "port": port, "tls": tls}
            if tls != "none":
                if ca:
                    b["tls_ca"] = str(ca)
                if sni:
                    b["tls_sni"] = sni
            b.update(extra)
            out.append(b)
        return out


# --------------------------------------------------------------------------------------------
# Redis


class Redis:
    """redis-server on a free 127.0.0.1 port, no persistence, stopped by PID."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.port = 0
        self.workdir: Path | None = None

    def start(self, workdir: Path | str, port: int | None = None,
              timeout: float = 10.0) -> "Redis":
        self.workdir = w = make_workdir(workdir)
        self.port = port or free_port()
        log = open(w / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", LOCAL, "--save", "",
             "--appendonly", "no", "--dir", str(w), "--daemonize", "no",
             "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.pid = self.proc.pid
        try:
            wait_ports([self.port], self.proc, timeout, "redis-server", w / "redis.log")
            wait_for(lambda: self.command("PING") == "PONG", timeout, interval=0.02,
                     what="redis-server to answer PING")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> str:
        if self.pid is None:
            return "gone"
        how = terminate_pid(self.pid, timeout, self.proc)
        self.pid = None
        return how

    @property
    def url(self) -> str:
        return f"redis://{LOCAL}:{self.port}"

    def command(self, *args: str | bytes | int):
        """Send one command (RESP), return the decoded reply (str/int/list/None; errors raise)."""
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        req = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection((LOCAL, self.port), timeout=5) as s:
            s.sendall(req)
            f = s.makefile("rb")
            return _resp_read(f)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise EnvError("redis: connection closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise EnvError("redis: " + rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise EnvError(f"redis: bad reply {line!r}")


# --------------------------------------------------------------------------------------------
# Portcullis

LOG_PROBLEMS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:",
                "level=fatal",
                "Assertion", "FATAL")


def deep_merge(base: dict, over: dict) -> dict:
    """Merge `over` into a copy of `base`: dicts merge recursively, other values (lists
    included) replace, a value of None deletes the key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def proxy_config(certs: Certs, dovecot: Dovecot | None = None,
                 ports: dict[str, int] | None = None, backend_tls: str = "none",
                 backends: list[dict] | None = None, overrides: dict | None = None,
                 extra_listeners: list[dict] | None = None) -> dict:
    """The default test config (see the format in the task/README): four listeners on free
    ports (or `ports` by listener name), both proxy certificates, backends from `dovecot`
    (backend_tls none|starttls|implicit, verified with the test CA and SNI backend.test) or
    `backends`, then `overrides` deep-merged (dicts merge, lists replace, None deletes)."""
    ports = dict(ports or {})
    ls = []
    for name, proto, tls in (("imaps", "imap", "implicit"), ("imap", "imap", "starttls"),
                             ("pop3s", "pop3", "implicit"), ("pop3", "pop3", "starttls")):
        ls.append({"name": name, "bind": f"{LOCAL}:{ports.get(name) or free_port()}",
                   "protocol": proto, "tls": tls})
    ls += extra_listeners or []
    if backends is None:
        backends = dovecot.backends(tls=backend_tls, ca=certs.ca) if dovecot else []
    cfg = {
        "workers": 2,
        "instance": "test",
        "allow_plaintext_auth": False,
        "log": {"level": "debug"},
        "listeners": ls,
        "tls": {
            "certificates": [
                {"cert": str(certs.server), "key": str(certs.server_key)},
                {"cert": str(certs.sni), "key": str(certs.sni_key)},
            ],
            "ticket_key_file": str(certs.ticket_key),
        },
        "backends": backends,
        # drain_timeout: SIGTERM waits for sessions; Proxy.stop() allows 10 s.
        # Every test client is 127.0.0.1: no per-address connection cap unless a test sets one.
        "limits": {"preauth_timeout": "60s", "max_line": "8k", "max_preauth_literal": "8k",
                   "drain_timeout": "3s", "max_connections_per_address": 0},
        # Login policy off unless a test turns a limit on: tests log in hundreds of times from
        # 127.0.0.1 as a handful of users (the policy tests set what they test).
        "policy": {"user_login_burst": 0, "addr_login_burst": 0, "user_fail_limit": 0,
                   "addr_fail_limit": 0, "user_max_sessions": 0, "addr_max_sessions": 0},
        # Tests run as root with files root owns: stay root (privilege drop has its own test).
        "run_as_root": True,
        "admin": {"bind": f"{LOCAL}:{free_port()}"},
    }
    return deep_merge(cfg, overrides or {})


_SAMPLE_RE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text exposition → {(sample name, frozenset of (label, value)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                           for k, v in _LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def to_yaml(cfg: dict) -> str:
    if yaml is not None:
        return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=False,
                              width=1000)
    return json.dumps(cfg, indent=2) + "\n"  # JSON is YAML


_BIND_RE = re.compile(r"""bind:\s*["']?([^"'\s,}]+):(\d+)""")


class Proxy:
    """build/portcullis with a generated config; stderr → WORKDIR/portcullis.log."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.workdir: Path | None = None
        self.config: dict | None = None
        self.config_path: Path | None = None
        self.ports: dict[str, int] = {}
        self.admin_port: int | None = None
        self.stop_problems: list[str] = []
        self.returncode: int | None = None

    def start(self, workdir: Path | str, config: dict | str, binary: str | Path = DEFAULT_BINARY,
              timeout: float = 10.0, env: dict | None = None, args: Sequence[str] = (),
              wait: bool = True) -> "Proxy":
        """config: dict (written as YAML) or YAML text. binary is relative to the repo root
        unless absolute. Waits until every listener port accepts TCP (unless wait=False)."""
        self.workdir = w = make_workdir(workdir)
        binary = Path(binary)
        if not binary.is_absolute():
            binary = REPO / binary
        if not binary.exists():
            raise EnvError(f"proxy binary {binary} not found (run make)")
        if isinstance(config, dict):
            self.config = config
            text = to_yaml(config)
            self.ports = {}
            for i, l in enumerate(config.get("listeners", [])):
                self.ports[l.get("name", f"l{i}")] = int(str(l["bind"]).rsplit(":", 1)[1])
            adm = config.get("admin") or {}
            self.admin_port = (int(str(adm["bind"]).rsplit(":", 1)[1])
                               if adm.get("bind") and adm.get("enabled", True) else None)
        else:
            # Raw text (may be deliberately odd): find the listener ports with a regex.
            text = config
            self.config = None
            self.ports = {f"l{i}": int(m.group(2)) for i, m in enumerate(_BIND_RE.finditer(text))}
        self.config_path = w / "portcullis.yaml"
        self.config_path.write_text(text)
        self.binary = binary
        e = dict(os.environ)
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        e.update(env or {})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(binary), "-c", str(self.config_path), *args],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=w,
                                     env=e, start_new_session=True)
        log.close()
        self.pid = self.proc.pid
        self.stop_problems = []
        if wait:
            try:
                wait_ports(self.ports.values(), self.proc, timeout, "portcullis", self.log_path)
            except EnvError:
                self.stop(timeout=2)
                raise
        return self

    @property
    def log_path(self) -> Path:
        return self.workdir / "portcullis.log"

    def log(self) -> str:
        """The proxy's log so far. Lines are written by a writer thread (log.queue_size) a
        moment after the event: wait until the file stops growing (20 ms quiet, 0.5 s at most),
        so a line logged before the client saw the answer is there."""
        if not self.log_path.exists():
            return ""
        deadline = time.monotonic() + 0.5
        size, quiet = self.log_path.stat().st_size, 0
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            now = self.log_path.stat().st_size
            quiet = quiet + 1 if now == size else 0
            size = now
        return self.log_path.read_text(errors="replace")

    @property
    def asan(self) -> bool:
        """Built with AddressSanitizer (make SANITIZE=1): its quarantine keeps freed memory, so
        RSS says nothing about leaks there; LeakSanitizer checks them at exit instead."""
        return b"__asan_init" in Path(self.binary).read_bytes()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def port(self, name: str) -> int:
        return self.ports[name]

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, wait up to `timeout`, then SIGKILL (noted as a problem for check_log)."""
        if self.pid is None:
            return "gone"
        was_dead = self.proc.poll() is not None
        how = terminate_pid(self.pid, timeout, self.proc)
        self.returncode = self.proc.returncode
        if was_dead:
            self.stop_problems.append(f"proxy had already exited (status {self.returncode}) "
                                      "before stop()")
        elif how == "kill":
            self.stop_problems.append(f"proxy ignored SIGTERM for {timeout:.0f}s: SIGKILLed")
        elif self.returncode not in (0, -signal.SIGTERM):
            self.stop_problems.append(f"proxy exit status {self.returncode} after SIGTERM")
        self.pid = None
        return how

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET `path` from the admin listener; returns (status, body)."""
        import http.client
        c = http.client.HTTPConnection(LOCAL, self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def wait_healthy(self, timeout: float = 10.0) -> None:
        """Wait until GET /healthz answers 200 (listeners bound, workers started, the scan
        engine loaded): readiness without connecting to a listener, so a TLS listener sees no
        half-open probe (start(wait=False) first). Fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise EnvError(f"portcullis exited with status {self.proc.returncode} before it "
                               f"was healthy; log tail:\n{log_tail(self.log_path)}")
            try:
                if self.http_get("/healthz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EnvError(f"portcullis: /healthz not 200 after {timeout:.0f}s; log tail:\n"
                               f"{log_tail(self.log_path)}")
            time.sleep(0.05)

    # ---- waiting for observable state (instead of sleeping)
    def log_mark(self) -> int:
        """The log's current length: pass it as wait_log(after=) to see only later lines."""
        return len(self.log())

    def wait_log(self, pattern: str | re.Pattern, timeout: float = 10.0, after: int = 0,
                 count: int = 1) -> re.Match:
        """Wait until the log (from offset `after`) holds `pattern` (a substring, or a compiled
        regex) at least `count` times; return the last match. Fails with the log's tail."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))

        def found():
            ms = list(rx.finditer(self.log()[after:]))
            return ms[count - 1] if len(ms) >= count else None
        return wait_for(found, timeout, what=lambda: f"{rx.pattern!r} (x{count}) in the proxy "
                        f"log; tail:\n{log_tail(self.log_path)}")

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """/metrics as {(sample name, frozenset of (label, value)): value}."""
        status, body = self.http_get("/metrics")
        if status != 200:
            raise EnvError(f"/metrics: HTTP {status}")
        return parse_metrics(body)

    def metric(self, name: str, labels: dict | None = None, default: float = 0.0) -> float:
        """One sample of /metrics (`default` when it is absent)."""
        return self.metrics().get((name, frozenset((labels or {}).items())), default)

    def wait_metric(self, name: str, labels: dict | None = None,
                    predicate: Callable[[float], bool] | None = None,
                    value: float | None = None, timeout: float = 10.0) -> float:
        """Poll /metrics until the sample `name{labels}` equals `value` or satisfies
        `predicate` (an absent sample counts as 0); return its value."""
        if predicate is None:
            if value is None:
                raise ValueError("wait_metric needs value= or predicate=")
            predicate = (lambda v: v == value)
        seen = []

        def ok():
            v = self.metric(name, labels)
            seen[:] = [v]
            return (True, v) if predicate(v) else None
        want = f"== {value:g}" if value is not None else "the predicate"
        return wait_for(ok, timeout, what=lambda: f"metric {name}{labels or ''} {want} "
                        f"(last {seen[0] if seen else None})")[1]

    def wait_redis_ready(self, timeout: float = 10.0) -> float:
        """Wait until every worker's Redis connections (command and subscriber) are ready."""
        n = 2 * int((self.config or {}).get("workers", 1))
        return self.wait_metric("portcullis_redis_connections_ready", predicate=lambda v: v >= n,
                                timeout=timeout)

    def check_log(self) -> list[str]:
        """Problems: sanitizer reports, fatal/assert lines in the log, and abnormal exits."""
        found = [f"{self.log_path.name}:{n}: {line}"
                 for n, line in enumerate(self.log().splitlines(), 1)
                 if any(p in line for p in LOG_PROBLEMS)]
        return found + self.stop_problems


# --------------------------------------------------------------------------------------------
# Demo (deploy/demo.sh)

DEMO_USERS = {"demo": "demo", "demo2": "demo2pw"}
DEMO_PORTS = {"imaps": 10993, "imap": 10143, "pop3s": 10995, "pop3": 10110}
DEMO_ADMIN_PORT = 10190
DEMO_MESSAGES = 20  # generated messages in demo's INBOX; the EICAR test message comes after


def demo_proxy_config(d: Path, certs: Certs, dv: Dovecot, r: "Redis", ports: dict[str, int],
                      admin_port: int) -> dict:
    """The demo's proxy: the test config with what a deployment turns on — the login policy at
    its defaults and the session registry in the demo's Redis, scanning with the generated
    EICAR test signature — and the admin listener on a known port."""
    import malware  # beside this file; only the demo needs it here
    db = d / "signatures"
    malware.write_db(str(db))
    scan_tmp = make_workdir(d / "scan-tmp")
    return proxy_config(certs, dv, ports=ports, overrides={
        "instance": "demo",
        "log": {"level": "info"},
        "policy": None,  # defaults: rate limits, lock-out, session caps
        "redis": {"host": LOCAL, "port": r.port, "prefix": "demo:"},
        "scan": {"enabled": True, "database_dir": str(db), "threads": 1,
                 "tmpdir": str(scan_tmp)},
        "admin": {"bind": f"{LOCAL}:{admin_port}"},
    })


def _demo_state(d: Path) -> dict:
    try:
        return json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _demo_stop_pids(state: dict) -> list[str]:
    done = []
    for what in ("proxy", "dovecot", "redis"):
        info = state.get(what)
        if not info:
            continue
        pid = info["pid"]
        if pid_alive(pid):
            # PID reuse guard: argv[0] (or the script run by an interpreter) must be what we
            # started; redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                argv = ""
            cmd = " ".join(argv.split("\0")[:2])
            names = [os.path.basename(a) for a in argv.replace("\0", " ").split()[:2]]
            if not set(names) & set(info["exe"]):
                done.append(f"{what}: pid {pid} is now {cmd!r}, not ours: left alone")
                continue
            how = terminate_pid(pid, 10)
            done.append(f"{what}: stopped pid {pid} ({'SIGTERM' if how == 'term' else how})")
    return done


def demo_start(dir: str, no_proxy: bool = False) -> int:
    d = Path(dir).resolve()
    state = _demo_state(d)
    if any(pid_alive(v["pid"]) for v in state.values() if isinstance(v, dict) and "pid" in v):
        print(f"demo: already running (state in {d}/state.json); stop it with: make demo-stop",
              file=sys.stderr)
        return 1
    binary = os.environ.get("PORTCULLIS_BIN", DEFAULT_BINARY)
    if not no_proxy and not (REPO / binary).exists():   # absolute paths stay absolute
        print(f"demo: {REPO / binary} not found: run make first (or use --no-proxy)",
              file=sys.stderr)
        return 1
    if d.exists():
        shutil.rmtree(d)
    make_workdir(d)
    state = {}

    def save():
        (d / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    try:
        certs = make_certs(d / "certs")
        r = Redis().start(d / "redis")
        state["redis"] = {"pid": r.pid, "port": r.port, "exe": ["redis-server", "redis-check-rdb"]}
        save()
        dv = Dovecot().start(d / "dovecot", users=DEMO_USERS, ssl=True, cert=certs.backend,
                             key=certs.backend_key)
        state["dovecot"] = {"pid": dv.pid, "ports": dv.ports, "exe": ["dovecot"]}
        save()
        import malware
        for i, u in enumerate(DEMO_USERS):
            msgs = gen_messages(DEMO_MESSAGES if i == 0 else 5, seed=100 + i,
                                to=f"{u}@example.test")
            if i == 0:  # UID DEMO_MESSAGES + 1: what the scanner blocks
                msgs.append(malware.MESSAGES["plain"].data)
            dv.deliver(u, msgs)
    except Exception as e:
        print(f"demo: {e}", file=sys.stderr)
        _demo_stop_pids(state)
        (d / "state.json").unlink(missing_ok=True)
        return 1

    ports = {k: (v if port_is_free(v) else free_port()) for k, v in DEMO_PORTS.items()}
    admin_port = DEMO_ADMIN_PORT if port_is_free(DEMO_ADMIN_PORT) else free_port()
    proxy_ports = None
    if not no_proxy:
        cfg = demo_proxy_config(d, certs, dv, r, ports, admin_port)
        px = Proxy()
        try:
            # Ready when /healthz says so: a TCP probe of the implicit-TLS ports would show up
            # as failed handshakes (event=tls_failed) in the demo's log and metrics.
            px.start(d / "proxy", cfg, binary=binary, wait=False)
            px.wait_healthy(timeout=20)
        except EnvError as e:
            print(f"demo: Portcullis failed to start: {e}", file=sys.stderr)
            for line in _demo_stop_pids(state):
                print("demo: " + line, file=sys.stderr)
            (d / "state.json").unlink(missing_ok=True)
            return 1
        exe = Path(binary).name
        state["proxy"] = {"pid": px.pid, "ports": px.ports, "exe": [exe, "portcullis"],
                          "admin_port": admin_port, "log": str(px.log_path),
                          "config": str(px.config_path)}
        save()
        proxy_ports = px.ports

    rel = os.path.relpath(d, Path.cwd())
    ca = f"{rel}/certs/ca.pem"
    print(f"Demo running (state: {rel}/state.json). Users: "
          + ", ".join(f"{u}/{p}" for u, p in DEMO_USERS.items()))
    print(f"  Redis:   127.0.0.1:{r.port}")
    print(f"  Dovecot: imap 127.0.0.1:{dv.ports['imap']}  imaps {dv.ports['imaps']}  "
          f"pop3 {dv.ports['pop3']}  pop3s {dv.ports['pop3s']}  (log {rel}/dovecot/dovecot.log)")
    if proxy_ports:
        p = proxy_ports
        print(f"  Portcullis: imaps 127.0.0.1:{p['imaps']}  imap+STARTTLS {p['imap']}  "
              f"pop3s {p['pop3s']}  pop3+STLS {p['pop3']}  (log {rel}/proxy/portcullis.log)")
        print("Try (IMAP: list INBOX, search it, fetch message 1; POP3: list, fetch 1):")
        print(f'  curl --cacert {ca} "imaps://127.0.0.1:{p["imaps"]}/INBOX" -u demo:demo')
        print(f'  curl --cacert {ca} "imaps://127.0.0.1:{p["imaps"]}/INBOX?ALL" -u demo:demo')
        print(f'  curl --cacert {ca} "imaps://127.0.0.1:{p["imaps"]}/INBOX;UID=1" -u demo:demo')
        print(f"Message {DEMO_MESSAGES + 1} carries the EICAR test string: you get Portcullis' "
              "notice instead:")
        print(f'  curl --cacert {ca} "imaps://127.0.0.1:{p["imaps"]}/INBOX;UID={DEMO_MESSAGES + 1}"'
              ' -u demo:demo')
        print(f'  curl --cacert {ca} "pop3s://127.0.0.1:{p["pop3s"]}/{DEMO_MESSAGES + 1}" '
              '-u demo:demo')
        print("Other commands:")
        print(f'  curl --cacert {ca} --ssl-reqd "imap://127.0.0.1:{p["imap"]}/INBOX?ALL" '
              '-u demo:demo')
        print(f'  curl --cacert {ca} "pop3s://127.0.0.1:{p["pop3s"]}/" -u demo:demo')
        print(f'  curl --cacert {ca} "pop3s://127.0.0.1:{p["pop3s"]}/1" -u demo:demo')
        print(f'  curl --cacert {ca} --ssl-reqd "pop3://127.0.0.1:{p["pop3"]}/" -u demo:demo')
        print(f'  openssl s_client -quiet -CAfile {ca} -connect 127.0.0.1:{p["imaps"]}')
        print(f"  Admin: curl http://127.0.0.1:{admin_port}/metrics  (and /healthz); "
              f"live sessions: redis-cli -p {r.port} --scan --pattern 'demo:sess:*'")
        print(f"  Log: tail -f {rel}/proxy/portcullis.log")
    else:
        print("  Portcullis: not started (--no-proxy); Dovecot directly:")
        print(f'  curl --cacert {ca} "imaps://127.0.0.1:{dv.ports["imaps"]}/INBOX" -u demo:demo')
    print("Stop with: make demo-stop")
    return 0


def demo_stop(dir: str) -> int:
    d = Path(dir).resolve()
    state = _demo_state(d)
    if not state:
        print("demo: not running (no state file)")
        return 0
    lines = _demo_stop_pids(state)
    for line in lines:
        print("demo: " + line)
    if not lines:
        print("demo: nothing was running")
    (d / "state.json").unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="mailenv.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("demo-start", help="start Redis, Dovecot and Portcullis in DIR")
    s.add_argument("dir")
    s.add_argument("--no-proxy", action="store_true", help="only Redis and Dovecot")
    s = sub.add_parser("demo-stop", help="stop what demo-start started (by PID)")
    s.add_argument("dir")
    s = sub.add_parser("certs", help="generate the test certificates into DIR")
    s.add_argument("dir")
    a = ap.parse_args(argv)
    if a.cmd == "demo-start":
        return demo_start(a.dir, no_proxy=a.no_proxy)
    if a.cmd == "demo-stop":
        return demo_stop(a.dir)
    if a.cmd == "certs":
        print(json.dumps(make_certs(a.dir).as_dict(), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
