"""POP3 RETR/TOP scanning through Portcullis (real libclamav, real Dovecot, real clients).

A user's mailbox holds every test message of malware.py (EICAR as a plain body, base64, zip in
base64, nested message/rfc822, quoted-printable, behind an unknown first header; clean
near-misses) between generated clean mail, plus a large infected and a large clean message
(bigger than the relay buffer). Through the proxy, with poplib, raw pipelined sockets, curl and
fetchmail: infected → the notice (X-Portcullis-Verdict naming the signature, the original
Subject/From/Message-ID), clean → byte-identical to what Dovecot sends directly; the mailbox is
unchanged afterwards. Then the verdict cache, a signature reload under an open session, the
over-size and error actions, and a saturated scan queue that must not delay other sessions.

Counters come from the admin listener's /metrics (portcullis_scan_*), see docs/scanning.md.
"""

from __future__ import annotations

import concurrent.futures
import os
import poplib
import random
import re
import signal
import ssl
import subprocess
import time

import pytest

import clients
import mailenv
import malware

HOST = mailenv.LOCAL
PASSWORD = "pop-scan-pw"
REF = re.compile(rb"\d{8}-[0-9a-f]{12}")
SIG = malware.SIGNATURE.encode()


def filler(i: int, size: int = 3000) -> bytes:
    return mailenv.gen_messages(1, seed=4000 + i, sizes=[size])[0]


def big_infected() -> bytes:
    """~600 KB: a large random attachment, EICAR in a second attachment at the end."""
    rnd = random.Random(9).randbytes(450_000)
    return malware.crlf(
        malware.headers("eicar big", 'MIME-Version: 1.0\nContent-Type: multipart/mixed; '
                        'boundary="bb"\n')
        + "\n--bb\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + malware.b64_lines(rnd)
        + "\n--bb\nContent-Type: application/octet-stream; name=\"e.com\"\n"
        + "Content-Transfer-Encoding: base64\n\n" + malware.b64_lines(malware.EICAR)
        + "\n--bb--\n")


DOTTY = (b"From: dots@example.test\r\nTo: bob@example.test\r\nSubject: dots\r\n"
         b"Message-ID: <dots@portcullis.test>\r\n\r\n.\r\n..\r\n.leading dot\r\n"
         b"middle\r\n. \r\n.\r\nend\r\n")

# The mailbox: (name, bytes, infected), message number = index + 1.
LAYOUT: list[tuple[str, bytes, bool]] = [("filler0", filler(0), False), ("dotty", DOTTY, False)]
for _n, _m in malware.MESSAGES.items():
    LAYOUT.append((_n, _m.data, _m.infected))
LAYOUT += [("big_infected", big_infected(), True),
           ("big_clean", filler(1, 700_000), False),
           ("filler2", filler(2), False)]
NUM = {n: i + 1 for i, (n, _, _) in enumerate(LAYOUT)}


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    return malware.write_db(str(env_tmp / "pop-scan-db"))


_users = iter(range(1000))


def new_user(dovecot, layout=LAYOUT) -> str:
    user = f"popscan{next(_users)}-{os.getpid()}"
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, [m for _, m, _ in layout])
    return user


def scan_proxy(proxy_factory, db_dir, env_tmp, top=None, **scan):
    cfg = {"enabled": True, "database_dir": str(db_dir), "threads": 2,
           "tmpdir": str(env_tmp)}
    cfg.update(scan)
    return proxy_factory(scan=cfg, **(top or {}))


def ctx(certs) -> ssl.SSLContext:
    return mailenv.ssl_context(certs.ca)


def pop(px, certs, user: str, timeout: float = 30) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL(HOST, px.port("pop3s"), context=ctx(certs), timeout=timeout)
    p.user(user)
    p.pass_(PASSWORD)
    return p


def direct(dovecot, user: str) -> poplib.POP3:
    p = poplib.POP3(HOST, dovecot.ports["pop3"], timeout=30)
    p.user(user)
    p.pass_(PASSWORD)
    return p


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def metrics(px) -> dict[str, float]:
    status, body = px.http_get("/metrics")
    assert status == 200
    out = {}
    for line in body.splitlines():
        if line.startswith("portcullis_scan_"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def scans(px) -> int:
    return int(metrics(px)["portcullis_scan_scans_total"])


def hits(px) -> int:
    return int(metrics(px)['portcullis_scan_cache_hits_total{cache="any"}'])


def header(msg: bytes, name: bytes) -> bytes | None:
    head = msg.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"(?mi)^" + re.escape(name) + rb":[ \t]*(.*)$", head)
    return m.group(1).rstrip(b"\r") if m else None


def assert_notice(got: bytes, orig: bytes, verdict: bytes = b"infected") -> None:
    v = header(got, b"X-Portcullis-Verdict")
    assert v is not None, got[:500]
    assert v.startswith(verdict + b";"), v
    if verdict == b"infected":
        assert b"signature=" + SIG in v, v
    assert REF.search(v)
    if verdict == b"infected":  # blocked notices built without a scan show no original text
        malware.assert_notice_fields(got, orig)
    assert malware.EICAR not in got


class Raw(clients.LineClient):
    """A raw POP3-over-TLS client that sees the exact bytes, logged in as `user`."""

    def __init__(self, port: int, certs, user: str, timeout: float = 30):
        super().__init__(port, clients.tls_context(certs), host=HOST, timeout=timeout)
        assert self.line().startswith(b"+OK")
        self.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert self.line().startswith(b"+OK")
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        return self.read_until(b"\r\n")

    def multi(self) -> bytes:
        """A whole multi-line response (status line to terminator), raw."""
        return self.pop3_multiline()


def raw_direct(dovecot, user: str, cmds: bytes) -> list[bytes]:
    """The same commands straight to Dovecot (plain port), raw responses."""
    s = clients.LineClient(dovecot.ports["pop3"], host=HOST, timeout=30)
    s.greeting(b"+OK")
    s.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
    s.line(), s.line()
    s.send(cmds)
    out = []
    for c in cmds.split(b"\r\n")[:-1]:
        if c.split()[0].upper() in (b"RETR", b"TOP"):
            out.append(s.pop3_multiline())
        else:
            out.append(s.line())
    s.send(b"QUIT\r\n")
    s.close()
    return out


def unstuff(lines_blob: bytes) -> bytes:
    """A raw multi-line response (status line included) → the message as stored."""
    body = lines_blob.split(b"\r\n", 1)[1]
    assert body.endswith(b".\r\n")
    body = body[:-3]
    return b"".join(ln[1:] if ln.startswith(b".") else ln
                    for ln in body.splitlines(keepends=True))


# ---------------------------------------------------------------------------------------------


def test_retr_every_variant_and_mailbox_unharmed(proxy_factory, dovecot, scan_db, env_tmp,
                                                 certs):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    d = direct(dovecot, user)
    stat_direct, list_direct = d.stat(), d.list()[1]
    d.quit()
    p = pop(px, certs, user)
    assert p.stat() == stat_direct
    assert p.list()[1] == list_direct
    for name, data, infected in LAYOUT:
        resp, lines, octets = p.retr(NUM[name])
        got = joined(lines)
        if infected:
            assert_notice(got, data)
            # The status line's octet count is the notice's size.
            assert int(resp.split()[1]) == len(got), (name, resp)
        else:
            assert got == data, f"{name}: clean message altered"
    assert p.stat() == stat_direct  # the proxy never deletes nor marks anything
    p.quit()
    assert dovecot.read_maildir(user) == before
    m = metrics(px)
    n_inf = sum(1 for _, _, i in LAYOUT if i)
    assert m['portcullis_scan_verdicts_total{verdict="infected"}'] == n_inf
    assert m['portcullis_scan_verdicts_total{verdict="clean"}'] == len(LAYOUT) - n_inf
    assert m['portcullis_scan_actions_total{action="block"}'] == n_inf
    log = px.log()
    for name, _, infected in LAYOUT:
        line = [x for x in log.splitlines() if "event=scan_verdict" in x
                and f"msg={NUM[name]} command=RETR" in x]
        assert len(line) == 1, name
        assert f"user=\"{user}\"" in line[0] and "proto=pop3" in line[0]
        if infected:
            assert f'signature="{malware.SIGNATURE}" action=block' in line[0]
            assert REF.search(line[0].encode())


def test_pipelined_retrs_infected_in_middle_then_quit(proxy_factory, dovecot, scan_db, env_tmp,
                                                      certs):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    order = ["filler0", "dotty", "base64", "big_clean", "big_infected", "near_plain", "filler2"]
    cmds = b"".join(b"RETR %d\r\n" % NUM[n] for n in order) + b"NOOP\r\n"
    want = raw_direct(dovecot, user, cmds)
    r = Raw(px.port("pop3s"), certs, user)
    r.send(cmds)  # one write: the whole burst is pipelined
    for name, w in zip(order, want):
        got = r.multi()
        data = dict((n, m) for n, m, _ in LAYOUT)[name]
        if name in ("base64", "big_infected"):
            notice = unstuff(got)
            assert_notice(notice, data)
        else:
            assert got == w, f"{name}: differs from Dovecot's own response"
    assert r.line() == want[-1]  # NOOP answered after them, in order
    # RETR of an infected message and QUIT in one write: the backend closes right after its
    # +OK, while the verdict is still pending; the client still gets both, in order.
    r.send(b"RETR %d\r\nQUIT\r\n" % NUM["zip_base64"])
    got = r.multi()
    assert_notice(unstuff(got), malware.MESSAGES["zip_base64"].data)
    assert r.line().startswith(b"+OK")
    r.close()


def test_top(proxy_factory, dovecot, scan_db, env_tmp, certs):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    cmds = (b"TOP %d 3\r\n" % NUM["near_plain"] + b"TOP %d 5\r\n" % NUM["big_clean"])
    want = raw_direct(dovecot, user, cmds)
    r = Raw(px.port("pop3s"), certs, user)
    r.send(cmds)
    for w in want:
        assert r.multi() == w
    # TOP is judged on the whole message (issue 15): even TOP n 0 of an infected message,
    # whose header alone is clean, is the notice (its header).
    r.send(b"TOP %d 0\r\n" % NUM["plain"])
    got = unstuff(r.multi())
    assert_notice(got, malware.MESSAGES["plain"].data)
    assert got.endswith(b"\r\n\r\n")
    # TOP n k of an infected message: the notice's header and its first k body lines.
    r.send(b"TOP %d 3\r\n" % NUM["plain"])  # EICAR is body line 3
    got = unstuff(r.multi())
    assert_notice(got, malware.MESSAGES["plain"].data)
    head, body = got.split(b"\r\n\r\n", 1)
    assert body.count(b"\r\n") == 3
    r.send(b"TOP %d 500\r\n" % NUM["nested_rfc822"])
    whole = unstuff(r.multi())
    assert_notice(whole, malware.MESSAGES["nested_rfc822"].data)
    assert b"Reference:" in whole
    r.close()


def test_curl_pop3s(proxy_factory, dovecot, scan_db, env_tmp, certs):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    base = f"pop3s://localhost:{px.port('pop3s')}"
    common = ["curl", "-sS", "--cacert", str(certs.ca), "--resolve",
              f"localhost:{px.port('pop3s')}:127.0.0.1", "-u", f"{user}:{PASSWORD}"]
    for name in ("dotty", "quoted_printable", "near_zip_base64", "big_infected", "big_clean"):
        data = dict((n, m) for n, m, _ in LAYOUT)[name]
        r = subprocess.run(common + [f"{base}/{NUM[name]}"], capture_output=True, timeout=60,
                           check=True)
        if name in ("quoted_printable", "big_infected"):
            assert_notice(r.stdout, data)
        else:
            assert r.stdout == data, name


def test_fetchmail_pulls_mailbox(proxy_factory, dovecot, scan_db, env_tmp, certs):
    user = new_user(dovecot)
    before = dovecot.read_maildir(user)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    work = env_tmp / f"fetchmail-scan-{px.port('pop3s')}"
    out = work / "out"
    out.mkdir(parents=True)
    rc = work / "fetchmailrc"
    rc.write_text(
        "set no syslog\nset no bouncemail\nset invisible\n"
        f"poll 127.0.0.1 with proto POP3 port {px.port('pop3s')} uidl\n"
        f'  user "{user}" there with password "{PASSWORD}" is "{user}" here\n'
        f'  ssl sslcertck sslcommonname localhost sslcertfile "{certs.ca}" sslproto TLS1.2+\n'
        "  keep fetchall no rewrite\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n")
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(work), FETCHMAILHOME=str(work))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--pidfile",
                        str(work / "fm.pid")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = [p.read_bytes() for p in out.iterdir()]
    assert len(got) == len(LAYOUT)
    # fetchmail hands messages to the MDA with LF line ends (and may add a Status header).
    by_subject = {}
    for g in got:
        crlf = g.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        by_subject.setdefault(malware.header_text(crlf, "Subject"), []).append(crlf)
    for name, data, infected in LAYOUT:
        cands = by_subject.get(malware.header_text(data, "Subject"), [])
        if infected:
            assert any(header(c, b"X-Portcullis-Verdict") for c in cands), name
            notice = [c for c in cands if header(c, b"X-Portcullis-Verdict")][0]
            assert_notice(notice, data)
        else:
            assert data in cands, name
    assert dovecot.read_maildir(user) == before  # keep: nothing deleted or changed


def test_second_retr_served_from_verdict_cache(proxy_factory, dovecot, scan_db, env_tmp,
                                               certs):
    user = new_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp, top={"workers": 1})
    p = pop(px, certs, user)
    first_inf = joined(p.retr(NUM["base64"])[1])
    first_clean = joined(p.retr(NUM["big_clean"])[1])
    s0, h0 = scans(px), hits(px)
    assert s0 == 2 and h0 == 0
    again_inf = joined(p.retr(NUM["base64"])[1])
    again_clean = joined(p.retr(NUM["big_clean"])[1])
    p.quit()
    p = pop(px, certs, user)  # another session (another device) as well
    third = joined(p.retr(NUM["base64"])[1])
    p.quit()
    assert scans(px) == s0, "a cached verdict was scanned again"
    assert hits(px) == 3
    assert again_clean == first_clean
    # The cached verdict rebuilds the same notice: same reference, same bytes.
    assert again_inf == first_inf == third
    assert px.log().count("cached=yes") == 3


def test_verdict_shared_between_instances_through_redis(proxy_factory, dovecot, scan_db,
                                                       env_tmp, certs, redis):
    """Instance A scans; instance B (same Redis, same signatures) judges the same messages from
    the shared cache without scanning, and builds the same notice (same reference id)."""
    user = new_user(dovecot)
    pfx = f"vc-{os.getpid()}:"
    shared = {"redis": {"host": HOST, "port": redis.port, "prefix": pfx}}

    def ready(px):
        px.wait_redis_ready()

    a = scan_proxy(proxy_factory, scan_db, env_tmp, top=shared)
    b = scan_proxy(proxy_factory, scan_db, env_tmp, top=shared)
    ready(a)
    ready(b)
    p = pop(a, certs, user)
    inf_a = joined(p.retr(NUM["zip_base64"])[1])
    clean_a = joined(p.retr(NUM["big_clean"])[1])
    p.quit()
    assert scans(a) == 2
    keys = redis.command("KEYS", pfx + "vc:*")
    assert len(keys) == 2, keys
    ttl = redis.command("PTTL", keys[0])
    assert 0 < ttl <= 86_400_000  # scan.verdict_cache_ttl default 1d
    p = pop(b, certs, user)
    inf_b = joined(p.retr(NUM["zip_base64"])[1])
    clean_b = joined(p.retr(NUM["big_clean"])[1])
    p.quit()
    assert scans(b) == 0, "instance B scanned what A had judged"
    assert metrics(b)['portcullis_scan_cache_hits_total{cache="remote"}'] == 2
    assert clean_b == clean_a == joined(direct(dovecot, user).retr(NUM["big_clean"])[1])
    assert inf_b == inf_a  # same reference id, same notice bytes
    assert_notice(inf_b, malware.MESSAGES["zip_base64"].data)
    # A tampered entry is never trusted: it is a miss, and the message is scanned.
    for k in keys:
        redis.command("SET", k, "v1 C garbage - -")
    c = scan_proxy(proxy_factory, scan_db, env_tmp, top=shared)
    ready(c)
    p = pop(c, certs, user)
    assert joined(p.retr(NUM["zip_base64"])[1]) != malware.MESSAGES["zip_base64"].data
    p.quit()
    assert scans(c) == 1


def test_signature_reload_under_open_session(proxy_factory, dovecot, env_tmp, certs):
    db = env_tmp / "pop-reload-db"
    malware.write_db(str(db))
    marker = b"PORTCULLIS-RELOAD-MARKER-7f3a"
    tagged = malware.crlf(malware.headers("reload target", "") + "\n") + marker + b"\r\n"
    user = new_user(dovecot, [("t", tagged, False), ("p", malware.MESSAGES["plain"].data, True)])
    px = scan_proxy(proxy_factory, db, env_tmp)
    p = pop(px, certs, user)
    assert joined(p.retr(1)[1]) == tagged
    with open(db / "portcullis-test.ndb", "a") as f:
        f.write("Portcullis.Test.Reload:0:*:%s\n" % marker.hex())
    os.kill(px.pid, signal.SIGHUP)
    # the session stays usable during the reload: a NOOP at every poll
    clients.wait_for(lambda: p.noop().startswith(b"+OK") and
                     "event=scan_reload result=ok" in px.log(), 30, interval=0.1,
                     what=lambda: "the signature reload; log tail:\n" +
                     mailenv.log_tail(px.log_path))
    got = joined(p.retr(1)[1])
    v = header(got, b"X-Portcullis-Verdict")
    assert v and b"signature=Portcullis.Test.Reload.UNOFFICIAL" in v, got[:400]
    assert_notice(joined(p.retr(2)[1]), malware.MESSAGES["plain"].data)
    assert p.stat()[0] == 2
    p.quit()
    assert "event=close" not in [x for x in px.log().splitlines()
                                 if "event=scan_reload" in x][0]


def test_oversize_pass_and_block(proxy_factory, dovecot, scan_db, env_tmp, certs):
    infected_2k = malware.MESSAGES["base64"].data + b"X" * 2000 + b"\r\n"
    layout = [("small", malware.MESSAGES["near_plain"].data, False),
              ("inf", infected_2k, True), ("big", filler(5, 300_000), False)]
    user = new_user(dovecot, layout)
    cmds = b"RETR 1\r\nRETR 2\r\nRETR 3\r\nTOP 3 100000\r\n"
    want = raw_direct(dovecot, user, cmds)
    # pass: messages over max_scan_size are delivered unscanned (even an infected one),
    # streamed however large; the one under the limit is still scanned.
    px = scan_proxy(proxy_factory, scan_db, env_tmp, max_scan_size="2k", max_file_size="2k",
                    memory_budget="1M", oversize_action="pass")
    r = Raw(px.port("pop3s"), certs, user)
    r.send(cmds)
    assert r.multi() == want[0]
    assert r.multi() == want[1]  # over the limit (octet count) and passed: the infected bytes
    assert r.multi() == want[2]
    assert r.multi() == want[3]  # TOP has no octet count: found over the limit mid-body
    r.close()
    log = px.log()
    assert log.count("verdict=oversize") == 3 and "verdict=clean" in log
    assert metrics(px)['portcullis_scan_verdicts_total{verdict="oversize"}'] == 3
    # block: a notice saying why, with the original's header fields.
    px2 = scan_proxy(proxy_factory, scan_db, env_tmp, max_scan_size="2k", max_file_size="2k",
                     memory_budget="1M", oversize_action="block")
    r = Raw(px2.port("pop3s"), certs, user)
    r.send(cmds + b"NOOP\r\n")
    assert r.multi() == want[0]
    for orig in (infected_2k, layout[2][1], layout[2][1]):
        got = unstuff(r.multi())
        assert_notice(got, orig, b"blocked")
        assert b"reason=oversize" in header(got, b"X-Portcullis-Verdict")
    assert r.line().startswith(b"+OK")
    r.close()


def test_scan_error_blocks(proxy_factory, dovecot, scan_db, env_tmp, certs):
    big = [("b%d" % i, filler(20 + i, 2_500_000), False) for i in range(2)]
    user = new_user(dovecot, big)
    # The scan time limit is a structural limit (issue 15): limits_action, not error_action.
    px = scan_proxy(proxy_factory, scan_db, env_tmp, scan_timeout="1ms",
                    error_action="pass")
    p = pop(px, certs, user)
    got = joined(p.retr(1)[1])
    assert_notice(got, big[0][1], b"blocked")
    assert b"reason=limit" in header(got, b"X-Portcullis-Verdict")
    p.quit()
    assert "verdict=limit" in px.log()
    # limits_action pass delivers the original.
    px2 = scan_proxy(proxy_factory, scan_db, env_tmp, scan_timeout="1ms", limits_action="pass")
    p = pop(px2, certs, user)
    assert joined(p.retr(2)[1]) == big[1][1]
    p.quit()


def test_saturated_queue_never_blocks_other_sessions(proxy_factory, dovecot, scan_db, env_tmp,
                                                     certs):
    n_sessions, per = 5, 4
    layout = [("m%d" % i, filler(100 + i, 1_200_000), False) for i in range(n_sessions * per)]
    user = new_user(dovecot, layout)
    px = scan_proxy(proxy_factory, scan_db, env_tmp, threads=1, queue=1)
    idle = pop(px, certs, user)
    stop = time.time() + 120

    def fetcher(k: int) -> bool:
        p = pop(px, certs, user, timeout=60)
        ok = True
        for j in range(per):
            i = k * per + j
            ok = ok and joined(p.retr(i + 1)[1]) == layout[i][1]
        p.quit()
        return ok

    with concurrent.futures.ThreadPoolExecutor(n_sessions) as ex:
        futs = [ex.submit(fetcher, k) for k in range(n_sessions)]
        worst = 0.0
        while not all(f.done() for f in futs) and time.time() < stop:
            t = time.monotonic()
            assert idle.noop().startswith(b"+OK")
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.05)  # behaviour under test: a NOOP every 50 ms, timed, while loaded
        assert all(f.result() for f in futs)
    idle.quit()
    assert worst < 0.5, f"NOOP took {worst:.3f}s while the scan queue was saturated"
    assert "event=scan_queue_full" in px.log()  # the queue really was full
    assert scans(px) == n_sessions * per


def test_client_gone_during_scan_and_budget_wait(proxy_factory, dovecot, scan_db, env_tmp,
                                                 certs):
    """Sessions that end while their message is collected, waits for budget or is scanned:
    every request is cancelled (ASan runs check the frees) and the proxy serves on."""
    layout = [("m%d" % i, filler(300 + i, 900_000), False) for i in range(6)]
    user = new_user(dovecot, layout)
    px = scan_proxy(proxy_factory, scan_db, env_tmp, threads=1, queue=1, max_scan_size="1M",
                    memory_budget="1M")
    for k in range(6):
        r = Raw(px.port("pop3s"), certs, user)
        r.send(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(6)))
        time.sleep(0.02 * k)  # behaviour under test: hang up at a different stage each time
        r.close()
    p = pop(px, certs, user)
    assert joined(p.retr(6)[1]) == layout[5][1]
    p.quit()
    # running scans of closed sessions finish: the budget comes back whole
    px.wait_metric("portcullis_scan_budget_bytes", {"state": "used"}, value=0)
