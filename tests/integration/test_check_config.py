"""`portcullis -t` checks everything start checks except binding (issue 18): signature files
present and loadable when scanning is on, `user:`/`group:` that exist, the root rules. Each case
here made -t say "valid" while start then refused. -t never binds, so no ports or servers are
needed: a config from the default test config with no live backend."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import mailenv
import malware


def check(binary: Path, env_tmp: Path, certs, name: str, **overrides) -> subprocess.CompletedProcess:
    cfg = mailenv.proxy_config(certs, None, backends=[
        {"name": "b", "host": mailenv.LOCAL, "port": 1},
        {"name": "b-pop3", "host": mailenv.LOCAL, "port": 1, "protocol": "pop3"}],
        overrides=overrides)
    path = env_tmp / f"check-{name}.yaml"
    path.write_text(mailenv.to_yaml(cfg))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([str(binary), "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture
def binary(request) -> Path:
    b = Path(request.config.getoption("--proxy-binary"))
    return b if b.is_absolute() else mailenv.REPO / b


def test_t_scanning_without_signatures(binary, env_tmp, certs):
    empty = env_tmp / "check-no-signatures"
    empty.mkdir(exist_ok=True)
    r = check(binary, env_tmp, certs, "nosigs",
              scan={"enabled": True, "database_dir": str(empty), "tmpdir": str(env_tmp)})
    assert r.returncode != 0, r
    assert str(empty) in r.stderr and "freshclam" in r.stderr, r.stderr
    assert "Can't open file or directory" not in r.stderr, r.stderr
    # with signatures the same configuration is valid
    db = env_tmp / "check-signatures"
    malware.write_db(str(db))
    r = check(binary, env_tmp, certs, "sigs",
              scan={"enabled": True, "database_dir": str(db), "tmpdir": str(env_tmp)})
    assert r.returncode == 0, r
    assert "is valid" in r.stdout


def test_t_unknown_user_and_group(binary, env_tmp, certs):
    r = check(binary, env_tmp, certs, "nouser", run_as_root=False, user="no-such-user-18")
    assert r.returncode != 0, r
    assert "unknown user no-such-user-18" in r.stderr, r.stderr
    r = check(binary, env_tmp, certs, "nogroup", run_as_root=False, user=mailenv.MAIL_USER,
              group="no-such-group-18")
    assert r.returncode != 0, r
    assert "unknown group no-such-group-18" in r.stderr, r.stderr
    r = check(binary, env_tmp, certs, "user-ok", run_as_root=False, user=mailenv.MAIL_USER)
    assert r.returncode == 0, r


@pytest.mark.skipif(os.geteuid() != 0, reason="the root rule applies to root")
def test_t_root_without_user(binary, env_tmp, certs):
    r = check(binary, env_tmp, certs, "root", run_as_root=False)
    assert r.returncode != 0, r
    assert "refusing to run as root" in r.stderr, r.stderr
