"""Tests of the test environment itself (mailenv.py + conftest.py), straight against Dovecot and
Redis, no proxy. They prove the fixtures work and stay as regression tests for them."""

from __future__ import annotations

import imaplib
import poplib
import re
import socket
import ssl
import subprocess
import textwrap

import pytest

import clients
import mailenv
from mailenv import SEED_COUNT, TEST_USERS as USERS

HOST = "127.0.0.1"
ALL_USERS = list(USERS)


def imaps(dovecot, certs, hostname_check=True) -> imaplib.IMAP4_SSL:
    ctx = mailenv.ssl_context(certs.ca)
    ctx.check_hostname = hostname_check
    return imaplib.IMAP4_SSL(HOST, dovecot.ports["imaps"], ssl_context=ctx, timeout=10)


def imap_starttls(dovecot, certs) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, dovecot.ports["imap"], timeout=10)
    assert "STARTTLS" in m.capabilities
    m.starttls(mailenv.ssl_context(certs.ca))
    return m


def pop3_retr_all(p: poplib.POP3) -> list[bytes]:
    count, _ = p.stat()
    out = []
    for i in range(1, count + 1):
        _, lines, _ = p.retr(i)          # poplib strips CRLF and undoes dot-stuffing
        out.append(b"\r\n".join(lines) + b"\r\n")
    return out


# ---------------------------------------------------------------------------------- certs


def test_certs_chain(certs):
    ok = subprocess.run(["openssl", "verify", "-CAfile", certs.ca, certs.server, certs.sni,
                         certs.server_rsa, certs.backend], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(["openssl", "verify", "-CAfile", certs.ca, certs.wrong_backend],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert certs.ticket_key.stat().st_size == 80
    rsa = subprocess.run(["openssl", "x509", "-in", certs.server_rsa, "-noout", "-text"],
                         capture_output=True, text=True).stdout
    assert "rsaEncryption" in rsa and "2048 bit" in rsa
    sni = subprocess.run(["openssl", "x509", "-in", certs.sni, "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True).stdout
    assert "DNS:mail.example.test" in sni


def test_backend_cert_names(dovecot, certs):
    ctx = mailenv.ssl_context(certs.ca)
    for name in ("backend.test", HOST):
        with socket.create_connection((HOST, dovecot.ports["imaps"]), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                assert t.recv(100).startswith(b"* OK")
    with pytest.raises(ssl.SSLCertVerificationError):       # name not in the cert
        with socket.create_connection((HOST, dovecot.ports["imaps"]), timeout=5) as s:
            ctx.wrap_socket(s, server_hostname="other.test")
    wrong = mailenv.ssl_context(certs.wrong_backend)          # trusts only the wrong cert
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((HOST, dovecot.ports["imaps"]), timeout=5) as s:
            wrong.wrap_socket(s, server_hostname="backend.test")


# ---------------------------------------------------------------------------------- IMAP


@pytest.mark.parametrize("user", ALL_USERS)
def test_imaps_login_literal_and_fetch(dovecot, certs, user):
    m = imaps(dovecot, certs)
    try:
        mailenv.imap_login_literal(m, user, USERS[user])
        assert mailenv.imap_fetch_all(m) == dovecot.seeded[user]
    finally:
        m.logout()


@pytest.mark.parametrize("user", ALL_USERS)
def test_imaps_login_literal_plus(dovecot, certs, user):
    m = imaps(dovecot, certs)
    try:
        mailenv.imap_login_literal(m, user, USERS[user], nonsync=True)
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == SEED_COUNT
    finally:
        m.logout()


@pytest.mark.parametrize("user", ALL_USERS)
def test_starttls_authenticate_plain(dovecot, certs, user):
    m = imap_starttls(dovecot, certs)
    try:
        assert mailenv.imap_auth_plain(m, user, USERS[user]) == "OK"
        assert mailenv.imap_fetch_all(m) == dovecot.seeded[user]
    finally:
        m.logout()


def test_imaplib_quoted_login_with_quotes_and_backslash(dovecot, certs):
    # imaplib.login() quotes with \" and \\ escapes: Dovecot must unescape them.
    m = imaps(dovecot, certs)
    try:
        assert m.login("carol", USERS["carol"])[0] == "OK"
    finally:
        m.logout()


@pytest.mark.parametrize("user", ["alice", "jürgen", "carol"])
def test_wrong_password_rejected(dovecot, certs, user):
    m = imaps(dovecot, certs)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            mailenv.imap_login_literal(m, user, USERS[user] + "x")
    finally:
        m.shutdown()


def test_id_originating_ip_logged(dovecot, certs):
    # Trusted network: Dovecot takes the client address from ID (what Portcullis forwards).
    m = imaps(dovecot, certs)
    try:
        typ, _ = m.xatom("ID", '("x-originating-ip" "192.0.2.7" "x-originating-port" "4711")')
        assert typ == "OK"
        mailenv.imap_login_literal(m, "bob", USERS["bob"])
    finally:
        m.logout()
    assert wait_log(dovecot, r"Login: user=<bob>.*rip=192\.0\.2\.7")


def wait_log(dovecot, pattern, timeout=10.0):
    """Wait until Dovecot's log matches the regex `pattern` (fails the test on timeout)."""
    return clients.wait_for(lambda: re.search(pattern, dovecot.log()), timeout,
                            what=f"{pattern!r} in Dovecot's log")


# ---------------------------------------------------------------------------------- POP3


@pytest.mark.parametrize("user", ALL_USERS)
def test_pop3s_login_and_retr(dovecot, certs, user):
    p = poplib.POP3_SSL(HOST, dovecot.ports["pop3s"], context=mailenv.ssl_context(certs.ca),
                        timeout=10)
    try:
        p.user(user)
        p.pass_(USERS[user])
        assert pop3_retr_all(p) == dovecot.seeded[user]
    finally:
        p.quit()


@pytest.mark.parametrize("user", ALL_USERS)
def test_pop3_stls_login(dovecot, certs, user):
    p = poplib.POP3(HOST, dovecot.ports["pop3"], timeout=10)
    try:
        assert "STLS" in p.capa()
        p.stls(mailenv.ssl_context(certs.ca))
        p.user(user)
        p.pass_(USERS[user])
        assert p.stat()[0] == SEED_COUNT
    finally:
        p.quit()


def test_pop3_xclient_logged(dovecot, certs):
    p = poplib.POP3_SSL(HOST, dovecot.ports["pop3s"], context=mailenv.ssl_context(certs.ca),
                        timeout=10)
    try:
        # Dovecot announces XCLIENT in the greeting's response code (to trusted networks),
        # not in CAPA
        assert b"[XCLIENT]" in p.getwelcome()
        assert p._shortcmd("XCLIENT ADDR=192.0.2.8 PORT=4712").startswith(b"+OK")
        p.user("alice")
        p.pass_(USERS["alice"])
    finally:
        p.quit()
    assert wait_log(dovecot, r"Login: user=<alice>.*rip=192\.0\.2\.8")


# ---------------------------------------------------------------------------------- delivery


def test_seeded_maildir_matches(dovecot):
    for u in ALL_USERS:
        assert dovecot.read_maildir(u) == dovecot.seeded[u], u


def test_uid_order_is_delivery_order(dovecot, certs):
    # readdir order is hash order: Dovecot must sort new files by the time in their names
    dovecot.add_user("order", "orderpw")
    msgs = mailenv.gen_messages(40, seed=21, sizes=(300, 2000))
    dovecot.deliver("order", msgs[:25])
    dovecot.deliver("order", msgs[25:], new=True)       # new/ too: Dovecot moves them to cur/
    m = imaps(dovecot, certs)
    try:
        mailenv.imap_login_literal(m, "order", "orderpw")
        assert mailenv.imap_fetch_all(m) == msgs
    finally:
        m.logout()
    assert dovecot.read_maildir("order") == msgs


def test_deliver_while_logged_in_idle_and_folders(dovecot, certs):
    dovecot.add_user("late", "latepw")
    first = mailenv.gen_messages(2, seed=7)
    dovecot.deliver("late", first)
    m = imaps(dovecot, certs)
    try:
        mailenv.imap_login_literal(m, "late", "latepw")
        assert mailenv.imap_fetch_all(m) == first
        # IDLE: a message delivered now is announced with EXISTS
        m.select("INBOX")
        tag = m._new_tag()
        m.send(tag + b" IDLE\r\n")
        assert m.readline().startswith(b"+")
        more = mailenv.gen_messages(3, seed=8, sizes=(1000, 300_000))
        dovecot.deliver("late", more)
        m.sock.settimeout(10)
        line = m.readline()
        while b"EXISTS" not in line:
            line = m.readline()
        m.send(b"DONE\r\n")
        while not m.readline().startswith(tag):
            pass
        assert mailenv.imap_fetch_all(m) == first + more
        assert dovecot.read_maildir("late") == first + more
        # Maildir++ subfolder
        arch = mailenv.gen_messages(2, seed=9)
        dovecot.deliver("late", arch, folder="Archive", flags="S")
        typ, boxes = m.list()
        assert any(b'"Archive"' in b or b.endswith(b" Archive") for b in boxes), boxes
        assert mailenv.imap_fetch_all(m, "Archive") == arch
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        assert all(b"\\Seen" in d for d in data)
    finally:
        m.logout()


def test_big_messages_byte_identical(dovecot, certs):
    msgs = mailenv.gen_messages(2, seed=11, sizes=[1_200_000, 4_500_000])
    dovecot.deliver("mbsync", msgs, folder="Big")
    m = imaps(dovecot, certs)
    try:
        mailenv.imap_login_literal(m, "mbsync", USERS["mbsync"])
        assert mailenv.imap_fetch_all(m, "Big") == msgs
    finally:
        m.logout()


def test_gen_messages_deterministic_and_sized():
    a = mailenv.gen_messages(40, seed=5, sizes="mbsync")
    assert a == mailenv.gen_messages(40, seed=5, sizes="mbsync")
    assert a != mailenv.gen_messages(40, seed=6, sizes="mbsync")
    for msg in a:
        assert b"\n" not in msg.replace(b"\r\n", b"") and b"\r" not in msg.replace(b"\r\n", b"")
        assert msg.isascii()
        head = msg.split(b"\r\n\r\n", 1)[0]
        for h in (b"From:", b"To:", b"Date:", b"Subject:", b"Message-ID:", b"MIME-Version:",
                  b"Content-Type:"):
            assert h in head
    sized = mailenv.gen_messages(4, seed=1, sizes=[1024, 10_000, 200_000, 2_000_000])
    for want, msg in zip([1024, 10_000, 200_000, 2_000_000], sized):
        assert abs(len(msg) - want) < max(0.1 * want, 400), (want, len(msg))


def test_mbsync_preset_total():
    # Only sizes (no bodies): replicate the preset draw cheaply through a sizes callable.
    seen = []

    def spy(rng):
        r, acc = rng.random(), 0.0
        for w, a, b in mailenv.SIZE_PRESETS["mbsync"]:
            acc += w
            if r < acc:
                break
        seen.append(rng.randint(a, b))
        return 100
    mailenv.gen_messages(300, seed=1, sizes=spy)
    assert 10e6 < sum(seen) < 60e6 and max(seen) > 1e6 and min(seen) >= 1024


def test_second_dovecot_plaintext(dovecot_factory, dovecot):
    dv = dovecot_factory(users={"zed": "zedpw"}, ssl=False, seed=2)
    assert dv.ports["imaps"] == 0 and dv.ports["pop3s"] == 0
    assert set(dv.ports.values()).isdisjoint(set(dovecot.ports.values()))
    m = imaplib.IMAP4(HOST, dv.ports["imap"], timeout=10)
    try:
        assert "STARTTLS" not in m.capabilities
        m.login("zed", "zedpw")
        assert mailenv.imap_fetch_all(m) == dv.seeded["zed"]
    finally:
        m.logout()
    pid = dv.pid
    dv.stop()
    assert not mailenv.pid_alive(pid)
    assert not mailenv.port_open(dv.ports["imap"])


# ---------------------------------------------------------------------------------- Redis


def test_redis(redis):
    assert redis.command("PING") == "PONG"
    assert redis.command("SET", "pc:test", "v1") == "OK"
    assert redis.command("GET", "pc:test") == "v1"
    assert redis.command("INCR", "pc:n") == 1
    assert redis.command("CONFIG", "GET", "save") == ["save", ""]


# ---------------------------------------------------------------------------------- Proxy helper

FAKE_PROXY = textwrap.dedent("""\
    #!/usr/bin/python3
    # Stand-in for build/portcullis: listens on the config's ports, exits 0 on SIGTERM.
    import re, signal, socket, sys, time
    cfg = open(sys.argv[sys.argv.index("-c") + 1]).read()
    socks = []
    for host, port in re.findall(r'bind:\\s*"?([0-9.]+):(\\d+)', cfg):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen(); socks.append(s)
    print("level=info msg=started listeners=%d" % len(socks), file=sys.stderr, flush=True)
    {extra}
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        signal.pause()
    """)


def fake_binary(tmp_path, extra=""):
    p = tmp_path / "fake-portcullis"
    p.write_text(FAKE_PROXY.replace("{extra}", extra))
    p.chmod(0o755)
    return p


def test_proxy_helper_with_fake(proxy_factory, tmp_path, dovecot, certs):
    px = proxy_factory(binary=fake_binary(tmp_path), backend_tls="implicit",
                       limits={"max_line": "16k"}, allow_plaintext_auth=True)
    assert set(px.ports) == {"imaps", "imap", "pop3s", "pop3"}
    assert all(mailenv.port_open(p) for p in px.ports.values())
    cfg = px.config
    assert cfg["limits"] == {"preauth_timeout": "60s", "max_line": "16k",
                             "max_preauth_literal": "8k", "drain_timeout": "3s",
                             "max_connections_per_address": 0}
    assert cfg["allow_plaintext_auth"] is True
    assert cfg["backends"][0]["port"] == dovecot.ports["imaps"]
    assert cfg["backends"][0]["tls_ca"] == str(certs.ca)
    assert cfg["backends"][1]["port"] == dovecot.ports["pop3s"]
    text = px.config_path.read_text()
    if mailenv.yaml:
        assert mailenv.yaml.safe_load(text) == cfg
    assert "started listeners=5" in px.log()  # 4 listeners + the admin listener


def test_proxy_helper_detects_problems(tmp_path, certs, dovecot):
    cfg = mailenv.proxy_config(certs, dovecot)
    bad = fake_binary(tmp_path, extra='print("==1==ERROR: AddressSanitizer: heap-use-after-free",'
                      ' file=sys.stderr, flush=True)')
    px = mailenv.Proxy().start(tmp_path / "p1", cfg, binary=bad)
    px.stop()
    assert any("AddressSanitizer" in p for p in px.check_log())
    # a binary that exits at once: start() fails with the log tail
    dying = tmp_path / "dying"
    dying.write_text("#!/bin/sh\necho 'level=fatal msg=\"bad config\"' >&2\nexit 1\n")
    dying.chmod(0o755)
    with pytest.raises(mailenv.EnvError, match="bad config"):
        mailenv.Proxy().start(tmp_path / "p2", mailenv.proxy_config(certs, dovecot),
                              binary=dying)
