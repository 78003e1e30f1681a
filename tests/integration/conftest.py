"""pytest fixtures for the Portcullis integration tests (built on mailenv.py).

Fixtures
  env_tmp          session  base work dir (/tmp/portcullis-it-XXXX, 0755 so Dovecot's
                            unprivileged processes can reach the maildirs); removed at the end
                            unless --keep-tmp
  certs            session  mailenv.Certs (test CA, proxy/SNI/RSA certs, backend + wrong backend)
  users            session  {user: password} of the session Dovecot (USERS below)
  dovecot          session  mailenv.Dovecot: IMAP+POP3, STARTTLS + imaps/pop3s with the backend
                            cert; INBOX of every user seeded with SEED_COUNT messages, available
                            as dovecot.seeded[user] (list of bytes, UID order)
  redis            session  mailenv.Redis (redis.port, redis.command("PING"))
  dovecot_factory  function dovecot_factory(users=None, ssl=True, seed=0, **start_kw) → another
                            started Dovecot (for multi-backend tests); stopped after the test
  proxy_factory    function proxy_factory(**overrides) → started mailenv.Proxy pointing at the
                            session dovecot. Special keywords: backend_tls="none|starttls|
                            implicit", backends=[...], dovecot=<Dovecot>, extra_listeners=[...],
                            ports={name: port}, config_text="raw yaml", binary=, env=, args=,
                            wait=True, timeout=10. Everything else is deep-merged into the
                            default config (dicts merge, lists replace, None deletes a key).
                            After the test every proxy is stopped and the test ERRORs (teardown)
                            if Proxy.check_log() finds sanitizer/fatal lines or a bad exit.
Helpers (wait for observable state; never sleep a fixed time for something to happen)
  clients.py       LineClient / connect() (raw line client, plain or TLS: lines, literals,
                   tagged IMAP responses, POP3 multi-line answers, timeouts that say what was
                   awaited), tls_context(certs), wait_for(pred, timeout, interval, what=),
                   wait_steady(read, quiet), rss_kb / fd_count / cpu_ticks / read_bytes,
                   ctl(px, *args) (portcullis-ctl with the proxy's config)
  Proxy            px.wait_log(pattern, timeout, after=px.log_mark(), count=1) → re.Match;
                   px.wait_metric(name, labels, predicate= or value=, timeout) → value;
                   px.metric(name, labels); px.wait_redis_ready()
Options
  --keep-tmp          keep the work directories (logs, configs, maildirs) and print their path
  --proxy-binary=P    binary for proxy_factory (default build/portcullis)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mailenv  # noqa: E402

USERS = mailenv.TEST_USERS          # alice, bob, jürgen (UTF-8), carol (p a"s\s{x}), mbsync
SEED_COUNT = mailenv.SEED_COUNT     # messages seeded into every user's INBOX


def pytest_addoption(parser):
    g = parser.getgroup("portcullis")
    g.addoption("--keep-tmp", action="store_true", default=False,
                help="keep the integration work directories (logs, configs, maildirs)")
    g.addoption("--proxy-binary", default=mailenv.DEFAULT_BINARY,
                help="Portcullis binary for proxy_factory (relative to the repo root)")


def user_seed(user: str) -> int:
    return zlib.crc32(user.encode())


@pytest.fixture(scope="session")
def env_tmp(request):
    if os.geteuid() != 0:
        pytest.skip("the integration environment needs root (Dovecot)")
    d = Path(tempfile.mkdtemp(prefix="portcullis-it-"))
    d.chmod(0o755)
    yield d
    if request.config.getoption("--keep-tmp"):
        print(f"\n[integration] work directories kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(env_tmp) -> mailenv.Certs:
    return mailenv.make_certs(env_tmp / "certs")


@pytest.fixture(scope="session")
def users() -> dict[str, str]:
    return dict(USERS)


@pytest.fixture(scope="session")
def dovecot(env_tmp, certs, users):
    dv = mailenv.Dovecot()
    dv.start(env_tmp / "dovecot", users=users, ssl=True, cert=certs.backend,
             key=certs.backend_key)
    dv.seeded = {}
    try:
        for u in users:
            msgs = mailenv.gen_messages(SEED_COUNT, seed=user_seed(u))
            dv.deliver(u, msgs)
            dv.seeded[u] = msgs
        yield dv
    finally:
        dv.stop()


@pytest.fixture(scope="session")
def redis(env_tmp):
    r = mailenv.Redis().start(env_tmp / "redis")
    yield r
    r.stop()


@pytest.fixture
def dovecot_factory(env_tmp, certs, request):
    started = []

    def make(users=None, ssl=True, seed=0, **kw):
        n = len(list(env_tmp.glob("dovecot-extra-*")))
        dv = mailenv.Dovecot()
        dv.start(env_tmp / f"dovecot-extra-{n}", users=users or dict(USERS), ssl=ssl,
                 cert=certs.backend if ssl else None, key=certs.backend_key if ssl else None,
                 **kw)
        started.append(dv)
        dv.seeded = {}
        if seed:
            for u in dv.users:
                msgs = mailenv.gen_messages(seed, seed=user_seed(u))
                dv.deliver(u, msgs)
                dv.seeded[u] = msgs
        return dv

    yield make
    for dv in started:
        dv.stop()


@pytest.fixture
def proxy_factory(env_tmp, certs, dovecot, request):
    started: list[mailenv.Proxy] = []
    binary = request.config.getoption("--proxy-binary")
    test = request.node.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test)[:60]

    def make(*, backend_tls="none", backends=None, extra_listeners=None, ports=None,
             config_text=None, binary=binary, env=None, args=(), wait=True, timeout=10.0,
             **overrides) -> mailenv.Proxy:
        dv = overrides.pop("dovecot", None) or dovecot
        workdir = env_tmp / "proxy" / f"{safe}-{len(started)}"
        if config_text is not None:
            cfg = config_text
        else:
            cfg = mailenv.proxy_config(certs, dv, ports=ports, backend_tls=backend_tls,
                                       backends=backends, overrides=overrides,
                                       extra_listeners=extra_listeners)
        px = mailenv.Proxy()
        started.append(px)
        px.start(workdir, cfg, binary=binary, timeout=timeout, env=env, args=args, wait=wait)
        return px

    yield make
    problems = []
    for px in started:
        if px.workdir is None:
            continue
        px.stop()
        for p in px.check_log():
            problems.append(f"{px.workdir.name}: {p}")
    if problems:
        tails = "\n".join(f"--- {px.log_path}\n{mailenv.log_tail(px.log_path, 20)}"
                          for px in started if px.workdir is not None)
        pytest.fail("Portcullis log problems:\n" + "\n".join(problems[:50]) + "\n" + tails,
                    pytrace=False)
