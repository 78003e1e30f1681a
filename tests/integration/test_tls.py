"""TLS features of Portcullis, client side and backend side.

Client side: TLS 1.2 minimum (and 1.3 when configured), configured TLS 1.2 ciphers and TLS 1.3
suites, certificate choice by SNI, session resumption by ticket within one process, across a
restart, across two instances sharing `tls.ticket_key_file`, key rotation ([B, A] accepts A's
tickets and issues B's), and a graceful full handshake when the keys differ.

Backend side: implicit TLS and STARTTLS to Dovecot verified against the test CA work; a wrong
CA, a wrong expected name (SNI/verification name) or a backend certificate not signed by the CA
make the login fail with NO [UNAVAILABLE] and a log line naming the verification error."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest

import clients
import mailenv

HOST = "127.0.0.1"
SNI_NAME = "mail.example.test"     # the second proxy certificate (certs.sni)


# ---------------------------------------------------------------------------------- helpers


def client_ctx(certs, *, tls: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """Client context trusting the test CA; tls="1.2"/"1.3" pins the version."""
    ctx = mailenv.ssl_context(certs.ca, verify=verify)
    if tls:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[tls]
        ctx.minimum_version = ctx.maximum_version = v
    return ctx


def tls_open(port: int, ctx: ssl.SSLContext, name: str | None = "localhost",
             session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSocket, bytes]:
    """Connect, handshake, read the greeting (which also delivers TLS 1.3 tickets)."""
    raw = socket.create_connection((HOST, port), timeout=10)
    try:
        s = ctx.wrap_socket(raw, server_hostname=name, session=session)
    except BaseException:
        raw.close()
        raise
    greeting = _readline(s)
    assert greeting.startswith(b"* OK"), greeting
    return s, greeting


def _readline(s) -> bytes:
    out = bytearray()
    while not out.endswith(b"\r\n"):
        c = s.recv(1)
        if not c:
            break
        out += c
    return bytes(out)


def session_of(port: int, ctx: ssl.SSLContext, name: str | None = "localhost",
               session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    """One connection: greeting, NOOP (the session really works), LOGOUT. Returns the session
    to resume next time and whether this connection was resumed."""
    s, _ = tls_open(port, ctx, name, session)
    try:
        s.sendall(b"a NOOP\r\n")
        assert _readline(s).startswith(b"a OK"), "NOOP failed"
        sess, reused = s.session, s.session_reused
        s.sendall(b"b LOGOUT\r\n")
        while not _readline(s).startswith((b"b ", b"")):
            pass
    finally:
        s.close()
    assert sess is not None and sess.has_ticket, "server issued no session ticket"
    return sess, reused


def der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def write_keys(path: Path, *keys: bytes) -> Path:
    for k in keys:
        assert len(k) == 80
    path.write_bytes(b"".join(keys))
    path.chmod(0o600)
    return path


@pytest.fixture
def keydir(env_tmp, request) -> Path:
    d = env_tmp / "ticket-keys" / f"{request.node.name[:50]}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    return d


def tls_overrides(**tls) -> dict:
    return {"tls": tls}


# ------------------------------------------------------------------------- protocol versions


def test_tls12_and_tls13_accepted_by_default(proxy_factory, certs):
    px = proxy_factory()
    for v, want in (("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")):
        s, _ = tls_open(px.port("imaps"), client_ctx(certs, tls=v))
        assert s.version() == want
        s.close()
    s, _ = tls_open(px.port("imaps"), client_ctx(certs))
    assert s.version() == "TLSv1.3"           # the best both sides have
    s.close()


def _legacy_ctx(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that can speak only `version` (TLS 1.0/1.1 need security level 0 on the
    client side with OpenSSL 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():          # deprecated on purpose: that is the test
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def test_tls11_client_refused(proxy_factory, certs):
    px = proxy_factory()
    with pytest.raises(ssl.SSLError) as ei:
        tls_open(px.port("imaps"), _legacy_ctx(ssl.TLSVersion.TLSv1_1))
    # the refusal comes from the server (an alert), not from our own client's policy
    assert "ALERT_PROTOCOL_VERSION" in str(ei.value) or "protocol version" in str(ei.value), \
        ei.value
    # STARTTLS port: same rule
    with socket.create_connection((HOST, px.port("imap")), timeout=10) as raw:
        assert _readline(raw).startswith(b"* OK")
        raw.sendall(b"s STARTTLS\r\n")
        assert _readline(raw).startswith(b"s OK")
        with pytest.raises(ssl.SSLError):
            _legacy_ctx(ssl.TLSVersion.TLSv1_1).wrap_socket(raw)
    px.wait_log(re.compile(r"event=tls_failed error=\"?unsupported protocol"))


def test_min_version_13(proxy_factory, certs):
    px = proxy_factory(**tls_overrides(min_version="1.3"))
    with pytest.raises(ssl.SSLError):
        tls_open(px.port("imaps"), client_ctx(certs, tls="1.2"))
    s, _ = tls_open(px.port("imaps"), client_ctx(certs, tls="1.3"))
    assert s.version() == "TLSv1.3"
    s.close()


def test_handshake_timeout(proxy_factory, certs):
    px = proxy_factory(tls={"handshake_timeout": "700ms"})
    for port, prefix in ((px.port("imaps"), b""), (px.port("imap"), b"s STARTTLS\r\n")):
        with socket.create_connection((HOST, port), timeout=10) as raw:
            if prefix:
                assert _readline(raw).startswith(b"* OK")
                raw.sendall(prefix)
                assert _readline(raw).startswith(b"s OK")
            raw.sendall(b"\x16\x03\x01\x00")        # the start of a ClientHello, then silence
            t0 = time.monotonic()
            assert raw.recv(100) == b""                # closed by the proxy
            took = time.monotonic() - t0
        assert 0.5 < took < 3.0, took
    assert "event=timeout phase=tls_handshake" in px.log()


def test_plaintext_on_implicit_tls_port(proxy_factory, certs):
    """An IMAP command where a ClientHello belongs: at most a TLS alert, never an IMAP answer,
    and the connection is closed at once."""
    px = proxy_factory()
    with socket.create_connection((HOST, px.port("imaps")), timeout=5) as raw:
        raw.sendall(b"a LOGIN alice alicepw\r\n")
        got = b""
        while True:
            try:
                chunk = raw.recv(4096)
            except ConnectionResetError:      # closed with our bytes unread: fine too
                break
            if not chunk:
                break
            got += chunk
    assert got == b"" or got[:1] == b"\x15", got          # nothing, or an alert record
    assert b"OK" not in got and b"BAD" not in got
    # the listener is fine afterwards
    s, _ = tls_open(px.port("imaps"), client_ctx(certs))
    s.close()


# ----------------------------------------------------------------------------------- ciphers


def test_configured_tls12_ciphers_honoured(proxy_factory, certs):
    default = proxy_factory()
    s, _ = tls_open(default.port("imaps"), client_ctx(certs, tls="1.2"))
    assert s.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"   # first of the default list
    s.close()

    px = proxy_factory(**tls_overrides(ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"))
    s, _ = tls_open(px.port("imaps"), client_ctx(certs, tls="1.2"))
    assert s.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    s.close()
    only_gcm = client_ctx(certs, tls="1.2")
    only_gcm.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        tls_open(px.port("imaps"), only_gcm)


def test_configured_tls13_suites_honoured(proxy_factory, certs):
    px = proxy_factory(**tls_overrides(ciphersuites="TLS_CHACHA20_POLY1305_SHA256"))
    s, _ = tls_open(px.port("imaps"), client_ctx(certs, tls="1.3"))
    assert s.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
    s.close()
    default = proxy_factory()
    s, _ = tls_open(default.port("imaps"), client_ctx(certs, tls="1.3"))
    # issue 19: AES-128-GCM first by default (OpenSSL's own order starts with AES-256-GCM)
    assert s.cipher()[0] == "TLS_AES_128_GCM_SHA256"
    s.close()


def server_temp_key(port: int, *args: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    m = re.search(r"^Server Temp Key: (\S+?),", r.stdout, re.M)
    assert m, r.stdout + r.stderr
    return m.group(1)


def test_groups_x25519_first_and_configurable(proxy_factory, certs):
    """TLS 1.2 takes the curve by server preference: X25519 first by default even when the
    client lists P-256 first; tls.groups changes it."""
    px = proxy_factory()
    assert server_temp_key(px.port("imaps"), "-tls1_2", "-groups", "P-256:X25519") == "X25519"
    px = proxy_factory(**tls_overrides(groups="P-256:X25519"))
    assert server_temp_key(px.port("imaps"), "-tls1_2", "-groups", "X25519:P-256") == "ECDH"


def test_bad_cipher_config_refused(proxy_factory, certs, env_tmp):
    cfg = mailenv.proxy_config(certs, None, backends=[], overrides=tls_overrides(
        ciphers="NO-SUCH-CIPHER"))
    cfg["listeners"] = [cfg["listeners"][0]]
    cfg["backends"] = [{"name": "b", "host": HOST, "port": 1}]
    path = env_tmp / "bad-ciphers.yaml"
    path.write_text(mailenv.to_yaml(cfg))
    r = subprocess.run([str(mailenv.REPO / "build/portcullis"), "-t", "-c", str(path)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "tls.ciphers" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------- SNI


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_sni_selects_certificate(proxy_factory, certs, tls):
    px = proxy_factory()
    port = px.port("imaps")
    s, _ = tls_open(port, client_ctx(certs, tls=tls), name=SNI_NAME)   # verifies the name too
    assert s.getpeercert(binary_form=True) == der(certs.sni)
    s.close()
    s, _ = tls_open(port, client_ctx(certs, tls=tls), name="MAIL.Example.TEST")  # any case
    assert s.getpeercert(binary_form=True) == der(certs.sni)
    s.close()
    s, _ = tls_open(port, client_ctx(certs, tls=tls), name="localhost")
    assert s.getpeercert(binary_form=True) == der(certs.server)
    s.close()
    noverify = client_ctx(certs, tls=tls, verify=False)
    for name in (None, "unknown.example.test"):                      # no SNI, unknown name
        s, _ = tls_open(port, noverify, name=name)
        assert s.getpeercert(binary_form=True) == der(certs.server), name
        s.close()
    # STARTTLS port: the same choice
    with socket.create_connection((HOST, px.port("imap")), timeout=10) as raw:
        _readline(raw)
        raw.sendall(b"s STARTTLS\r\n")
        assert _readline(raw).startswith(b"s OK")
        s = client_ctx(certs, tls=tls).wrap_socket(raw, server_hostname=SNI_NAME)
        assert s.getpeercert(binary_form=True) == der(certs.sni)
        s.sendall(b"a CAPABILITY\r\n")
        assert _readline(s).startswith(b"* CAPABILITY")
        s.close()


# ----------------------------------------------------------------------- session resumption


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("name", ["localhost", SNI_NAME])
def test_resumption_same_process(proxy_factory, certs, tls, name):
    px = proxy_factory()
    ctx = client_ctx(certs, tls=tls)
    sess, reused = session_of(px.port("imaps"), ctx, name)
    assert not reused
    for _ in range(3):                         # mobile clients reconnect again and again
        sess, reused = session_of(px.port("imaps"), ctx, name, sess)
        assert reused
    assert re.search(r"tls=TLSv1\.[23]/\S+/resumed", px.log())


# ------------------------------------------------------- SSL object reuse (issue 19, tls.c)


@pytest.mark.parametrize("cache", [64, 0])
def test_ssl_reuse_leaks_nothing_between_clients(proxy_factory, certs, cache):
    """One worker, so every connection takes the SSL object the previous one gave back (cache
    64; 0 = no reuse, the reference): each client still gets the certificate its own SNI asks
    for, its own version, and resumption only with a ticket it holds itself."""
    px = proxy_factory(workers=1, tls={"ssl_cache": cache})
    port = px.port("imaps")
    noverify = client_ctx(certs, verify=False)

    def cert(name, ctx=noverify, p=port):
        s, _ = tls_open(p, ctx, name=name)
        try:
            return s.getpeercert(binary_form=True), s.version(), s.session_reused
        finally:
            s.close()

    sni, default = der(certs.sni), der(certs.server)
    # the SNI context of the previous client must not stay on the object
    for name, want in ((SNI_NAME, sni), (None, default), (SNI_NAME, sni),
                       ("unknown.example.test", default), (SNI_NAME, sni), ("localhost", default),
                       (SNI_NAME, sni)):
        assert cert(name)[0] == want, name
    # STARTTLS shares the list: no SNI after an SNI client gets the default certificate
    with socket.create_connection((HOST, px.port("imap")), timeout=10) as raw:
        _readline(raw)
        raw.sendall(b"s STARTTLS\r\n")
        assert _readline(raw).startswith(b"s OK")
        s = noverify.wrap_socket(raw, server_hostname=None)
        assert s.getpeercert(binary_form=True) == default
        s.close()
    # versions alternate on reused objects
    for v in ("1.2", "1.3", "1.2", "1.3"):
        _, got, _ = cert("localhost", client_ctx(certs, tls=v))
        assert got == f"TLSv{v}", v
    # resumption: only the client holding the ticket resumes, a fresh client after it does not
    for v in ("1.3", "1.2"):
        ctx = client_ctx(certs, tls=v)
        sess, reused = session_of(port, ctx, SNI_NAME)
        assert not reused
        assert not session_of(port, client_ctx(certs, tls=v), SNI_NAME)[1]
        sess, reused = session_of(port, ctx, SNI_NAME, sess)
        assert reused, v
        assert not session_of(port, client_ctx(certs, tls=v), "localhost")[1]
        assert session_of(port, ctx, SNI_NAME, sess)[1], v


@pytest.mark.parametrize("ending", ["close_notify", "tcp_close"])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_relay_reads_and_ends_through_the_batching_bio(proxy_factory, certs, tls, ending):
    """After the handshake one BIO both writes and reads (conn.c, issue 19: the socket BIO is
    freed). A logged-in session still relays both ways, pipelined commands in one record
    included, and a client that leaves with or without close_notify is an ordinary disconnect,
    not a TLS error."""
    px = proxy_factory()
    s, _ = tls_open(px.port("imaps"), client_ctx(certs, tls=tls))
    try:
        s.sendall(b"a LOGIN alice alicepw\r\n")
        while not (line := _readline(s)).startswith(b"a "):
            assert line, "connection closed during LOGIN"
        assert line.startswith(b"a OK"), line
        s.sendall(b"b SELECT INBOX\r\nc NOOP\r\nd FETCH 1 (RFC822.SIZE)\r\n")
        got = {}
        while len(got) < 3:
            line = _readline(s)
            assert line, "connection closed in relay"
            if line[:2] in (b"b ", b"c ", b"d "):
                got[line[:1]] = line
        assert all(v.split()[1] == b"OK" for v in got.values()), got
    finally:
        if ending == "close_notify":
            try:
                s.unwrap()  # close_notify, and the proxy's own in answer
            except (OSError, ssl.SSLError):
                pass
            s.close()
        else:
            os.close(s.detach())  # FIN without close_notify
    px.wait_log(re.compile(r'user="alice" event=close reason="client disconnected" '), 10)
    assert "client error" not in px.log()


def test_resumption_without_ticket_key_file(proxy_factory, certs):
    """No key file: OpenSSL's per-process keys still give resumption within the process."""
    px = proxy_factory(tls={"ticket_key_file": None})
    ctx = client_ctx(certs, tls="1.3")
    sess, _ = session_of(px.port("imaps"), ctx)
    assert session_of(px.port("imaps"), ctx, session=sess)[1]


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_resumption_across_restart(proxy_factory, certs, keydir, tls):
    keys = write_keys(keydir / "k", os.urandom(80))
    ctx = client_ctx(certs, tls=tls)
    a = proxy_factory(tls={"ticket_key_file": str(keys)})
    sess, _ = session_of(a.port("imaps"), ctx, SNI_NAME)
    ports = dict(a.ports)
    a.stop()
    b = proxy_factory(ports=ports, tls={"ticket_key_file": str(keys)})
    _, reused = session_of(b.port("imaps"), ctx, SNI_NAME, sess)
    assert reused, "ticket from before the restart not accepted"


def test_resumption_across_instances_and_different_keys(proxy_factory, certs, keydir):
    shared = write_keys(keydir / "shared", os.urandom(80))
    other = write_keys(keydir / "other", os.urandom(80))
    a = proxy_factory(tls={"ticket_key_file": str(shared)})
    b = proxy_factory(tls={"ticket_key_file": str(shared)})
    c = proxy_factory(tls={"ticket_key_file": str(other)})
    for tls in ("1.2", "1.3"):
        ctx = client_ctx(certs, tls=tls)
        sess, _ = session_of(a.port("imaps"), ctx)
        assert session_of(b.port("imaps"), ctx, session=sess)[1], f"TLS {tls}: a→b"
        # b's ticket (issued on the resumed connection) works on a again
        sess_b, _ = session_of(b.port("imaps"), ctx, session=sess)
        assert session_of(a.port("imaps"), ctx, session=sess_b)[1], f"TLS {tls}: b→a"
        # a different key file: a full handshake, and the session works normally
        sess_c, reused = session_of(c.port("imaps"), ctx, session=sess)
        assert not reused, f"TLS {tls}: resumed with a foreign ticket"
        assert session_of(c.port("imaps"), ctx, session=sess_c)[1]
    # logging in on the connection that fell back to a full handshake works
    m = imaplib.IMAP4_SSL(HOST, c.port("imaps"), ssl_context=client_ctx(certs), timeout=10)
    m.login("alice", mailenv.TEST_USERS["alice"])
    m.logout()
    assert "level=error" not in c.log()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_ticket_key_rotation(proxy_factory, certs, keydir, tls):
    """Key A in use; rotate to [B, A]: A's tickets are still accepted, new tickets are B's,
    so a later file [B] (A dropped) accepts them while A's old tickets get a full handshake."""
    key_a, key_b = os.urandom(80), os.urandom(80)
    ctx = client_ctx(certs, tls=tls)
    only_a = proxy_factory(tls={"ticket_key_file": str(write_keys(keydir / "a", key_a))})
    sess_a, _ = session_of(only_a.port("imaps"), ctx)

    b_then_a = proxy_factory(tls={"ticket_key_file": str(write_keys(keydir / "ba", key_b,
                                                                     key_a))})
    sess_b, reused = session_of(b_then_a.port("imaps"), ctx, session=sess_a)
    assert reused, "ticket under the old key A refused after rotation to [B, A]"

    only_b = proxy_factory(tls={"ticket_key_file": str(write_keys(keydir / "b", key_b))})
    assert session_of(only_b.port("imaps"), ctx, session=sess_b)[1], \
        "the re-issued ticket is not under the new key B"
    assert not session_of(only_b.port("imaps"), ctx, session=sess_a)[1], \
        "a ticket under the dropped key A was accepted"

    # step 1 of the documented procedure: [A, B] still issues A tickets but accepts B's
    a_then_b = proxy_factory(tls={"ticket_key_file": str(write_keys(keydir / "ab", key_a,
                                                                     key_b))})
    sess_ab, reused = session_of(a_then_b.port("imaps"), ctx, session=sess_b)
    assert reused, "a ticket under the second record was refused"
    assert session_of(only_a.port("imaps"), ctx, session=sess_ab)[1], \
        "[A, B] did not re-issue the ticket under its first record A"


def test_ticket_key_rotation_by_reload(proxy_factory, certs, keydir):
    """The documented procedure on a running instance: rewrite the file, SIGHUP."""
    key_a, key_b = os.urandom(80), os.urandom(80)
    path = write_keys(keydir / "keys", key_a)
    ctx = client_ctx(certs, tls="1.3")
    px = proxy_factory(tls={"ticket_key_file": str(path)})
    sess_a, _ = session_of(px.port("imaps"), ctx)

    write_keys(keydir / "keys.new", key_b, key_a).replace(path)
    os.kill(px.pid, signal.SIGHUP)
    _wait_log(px, "event=reloaded", 1)
    sess_b, reused = session_of(px.port("imaps"), ctx, session=sess_a)
    assert reused

    # a broken file (a half-written copy) is refused and the running keys stay
    (keydir / "keys.new").write_bytes(key_b[:40])
    (keydir / "keys.new").replace(path)
    os.kill(px.pid, signal.SIGHUP)
    _wait_log(px, "event=reload_failed", 1)
    assert "multiple of 80" in px.log()
    assert session_of(px.port("imaps"), ctx, session=sess_a)[1]

    write_keys(keydir / "keys.new", key_b).replace(path)
    os.kill(px.pid, signal.SIGHUP)
    _wait_log(px, "event=reloaded", 2)
    assert session_of(px.port("imaps"), ctx, session=sess_b)[1]
    assert not session_of(px.port("imaps"), ctx, session=sess_a)[1]


def _wait_log(px, text: str, count: int, timeout: float = 10.0) -> None:
    px.wait_log(text, timeout, count=count)


@pytest.mark.parametrize("size,why", [(0, "at least one"), (79, "multiple of 80"),
                                      (170, "multiple of 80"), (9 * 80, "at most 8")])
def test_bad_ticket_key_file_refused(certs, env_tmp, size, why):
    path = env_tmp / f"bad-ticket-{size}.key"
    path.write_bytes(os.urandom(size))
    cfg = mailenv.proxy_config(certs, None, overrides={"tls": {"ticket_key_file": str(path)}})
    cfg["backends"] = [{"name": "b", "host": HOST, "port": 1},
                       {"name": "p", "host": HOST, "port": 2, "protocol": "pop3"}]
    conf = env_tmp / f"bad-ticket-{size}.yaml"
    conf.write_text(mailenv.to_yaml(cfg))
    r = subprocess.run([str(mailenv.REPO / "build/portcullis"), "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0, r.stdout
    assert "ticket_key_file" in r.stderr and why in r.stderr, r.stderr


# --------------------------------------------------------------------- backend verification


def _login_fetch(px, certs, user, password, want: bytes) -> None:
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=client_ctx(certs), timeout=15)
    try:
        m.login(user, password)
        typ, _ = m.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == want
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("name", ["backend.test", None])
def test_backend_tls_verified_ok(proxy_factory, dovecot, certs, users, mode, name):
    """name None: no tls_sni, so the host 127.0.0.1 is verified against the IP SAN."""
    pat = re.compile(r"imap-login: (?:Info: )?Login: user=<alice>,.*\bTLS\b")
    before = len(pat.findall(dovecot.log()))
    px = proxy_factory(backend_tls=mode,
                       backends=dovecot.backends(tls=mode, ca=certs.ca, sni=name))
    _login_fetch(px, certs, "alice", users["alice"], dovecot.seeded["alice"][0])
    # the backend leg really is TLS: Dovecot logged one more TLS login for this user
    clients.wait_for(lambda: len(pat.findall(dovecot.log())) > before,
                     what="Dovecot to log a TLS login")
    assert "event=backend_tls_failed" not in px.log()


@pytest.fixture(scope="module")
def wrong_cert_dovecot(env_tmp, certs):
    """A Dovecot serving `wrong_backend` (self-signed backend.test, not from the test CA)."""
    dv = mailenv.Dovecot()
    dv.start(env_tmp / f"dovecot-wrongcert-{time.monotonic_ns()}",
             users={"alice": mailenv.TEST_USERS["alice"]}, ssl=True,
             cert=certs.wrong_backend, key=certs.wrong_backend_key)
    yield dv
    dv.stop()


def _expect_unavailable(px, certs, user, password) -> None:
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=client_ctx(certs), timeout=15)
    try:
        with pytest.raises(imaplib.IMAP4.error) as ei:
            m.login(user, password)
        assert "[UNAVAILABLE]" in str(ei.value), ei.value
        # the session is still usable pre-auth
        typ, _ = m.noop()
        assert typ == "OK"
    finally:
        try:
            m.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("case,verify_error", [
    ("wrong_ca", "unable to get local issuer certificate"),
    ("wrong_name", "hostname mismatch"),
    ("wrong_ip", "IP address mismatch"),
    ("wrong_cert", "self-signed certificate"),
])
def test_backend_tls_verification_fails(proxy_factory, dovecot, wrong_cert_dovecot, certs,
                                        users, mode, case, verify_error):
    dv, ca, sni = dovecot, certs.ca, "backend.test"
    if case == "wrong_ca":
        ca = certs.wrong_backend            # trusts only the self-signed cert, not the CA
    elif case == "wrong_name":
        sni = "other.test"
    elif case == "wrong_ip":
        sni = "127.0.0.2"
    else:
        dv = wrong_cert_dovecot
    px = proxy_factory(dovecot=dv, backends=dv.backends(tls=mode, ca=ca, sni=sni))
    _expect_unavailable(px, certs, "alice", users["alice"])
    log = px.log()
    line = next((ln for ln in log.splitlines() if "event=backend_tls_failed" in ln), None)
    assert line, log[-2000:]
    assert verify_error in line, line
    assert users["alice"] not in log
    # logfmt: the verification error is one quoted value
    assert re.search(r'verify="[^"]*' + re.escape(verify_error), line), line


def test_backend_tls_verify_off_accepts_wrong_cert(proxy_factory, wrong_cert_dovecot, certs,
                                                   users):
    dv = wrong_cert_dovecot
    px = proxy_factory(dovecot=dv, backends=dv.backends(tls="implicit", ca=certs.ca,
                                                        tls_verify=False))
    m = imaplib.IMAP4_SSL(HOST, px.port("imaps"), ssl_context=client_ctx(certs), timeout=15)
    m.login("alice", users["alice"])
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_backend_starttls_never_downgrades(proxy_factory, dovecot_factory, certs, users):
    """A backend configured for STARTTLS that does not offer it (or refuses it) must not get
    the user's password in plaintext: the login fails with NO [UNAVAILABLE]."""
    dv = dovecot_factory(users={"alice": users["alice"]}, ssl=False)
    px = proxy_factory(dovecot=dv, backends=dv.backends(tls="starttls", ca=certs.ca))
    _expect_unavailable(px, certs, "alice", users["alice"])
    px.wait_log(re.compile(r"event=login_failed reason=backend_unavailable .*does not offer "
                           r"STARTTLS"))
    # what must not happen (Dovecot logging the login) can only be watched for a while: a
    # password sent in plaintext would be logged within milliseconds
    time.sleep(0.3)
    assert "user=<alice>" not in dv.log() and "Login:" not in dv.log(), dv.log()[-1500:]
