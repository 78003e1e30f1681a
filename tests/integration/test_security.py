"""Security checks from the outside (issue 9): TLS versions and ciphers as openssl s_client sees
them, no core dumps, no secrets in the log."""

from __future__ import annotations

import imaplib
import subprocess
from pathlib import Path

import pytest

import mailenv


def s_client(port: int, *args: str, send: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                           "-servername", "localhost", *args],
                          input=send, capture_output=True, timeout=20)


@pytest.mark.parametrize("args", [["-tls1"], ["-tls1_1"],
                                  ["-tls1_2", "-cipher", "AES128-SHA:AES256-SHA:DES-CBC3-SHA"],
                                  ["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"],
                                  ["-tls1_2", "-cipher", "aNULL"]],
                         ids=["tls1.0", "tls1.1", "cbc-rsa-kx", "dhe", "anon"])
def test_weak_tls_refused(proxy_factory, args):
    px = proxy_factory()
    for port in (px.port("imaps"), px.port("pop3s")):
        # @SECLEVEL=0 lets this OpenSSL offer what it would refuse itself: the refusal must
        # come from the proxy.
        extra = list(args)
        if "-cipher" in extra:
            i = extra.index("-cipher") + 1
            extra[i] += ":@SECLEVEL=0"
        else:
            extra += ["-cipher", "DEFAULT:@SECLEVEL=0"]
        r = s_client(port, *extra)
        out = r.stdout + r.stderr
        assert r.returncode != 0 or b"Cipher is (NONE)" in out, out[-2000:]
        assert b"* OK" not in out and b"+OK" not in out


def test_good_tls_accepted(proxy_factory, certs):
    px = proxy_factory()
    for args in (["-tls1_2"], ["-tls1_3"]):
        r = s_client(px.port("imaps"), "-CAfile", str(certs.ca), "-verify_return_error",
                     "-ign_eof", *args, send=b"a LOGOUT\r\n")
        assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-1000:]
        assert b"* OK" in r.stdout


def test_no_core_dumps_and_no_secrets_logged(proxy_factory, certs):
    px = proxy_factory()
    limits = Path(f"/proc/{px.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"),
                          ssl_context=mailenv.ssl_context(certs.ca), timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "S3cr3t-wrong-pw")
    mailenv.imap_login_literal(m, "alice", "alicepw")
    m.logout()
    log = px.log()
    assert "S3cr3t-wrong-pw" not in log and "alicepw" not in log
