"""Regression tests for issue 14 (relay core: a paused filter must be resumed by an "output
drained" event; every close after login says why). Real Dovecot, real libclamav, scanning on.

Every answer has a deadline of a few seconds: on the code that has the defects these tests fail
by timing out quickly (Stall) or by a bare close (Closed), never by hanging the suite.

- pipelined part fetches (two parts, two partial chunks, re-fetches of judged messages) in ONE
  write: every tagged answer within 5 s, the FETCH responses byte-identical to what Dovecot
  sends directly for the same commands (clean messages);
- FETCH (BODY[] BODY[1] BINARY[1]) of a ~3 MB multipart message: the whole correct answer (or
  the notice, infected), or a `* BYE` / tagged NO before any close — never a bare close;
- POP3 RETR of a ~9 MB message whose verdict is cached, read slowly (twice in a session, then
  in a new one), and with the next commands written while that answer is going out: every
  answer complete, in order, byte-identical to Dovecot's.

On today's code every test here fails except the slow-reader POP3 one (the 4.8 MB stall seen
once with fetchmail was not reproduced by slow reading alone; the commands-mid-answer variant
is the one that stalls).
"""

from __future__ import annotations

import random
import socket
import ssl
import time

import pytest

import mailenv
import malware
from raw14 import (REF, Closed, RawImap, Stall, all_fetches, fetch_items, is_notice,
                   notice_body, tls_context)

PASSWORD = "regress14-pw"
ANSWER_S = 5.0          # every tagged answer, from the write that sent its command

# The mailbox of the part-fetch tests: clean messages, multipart from 8 KB on (so BODY[1] is the
# text part and BODY[TEXT] the whole MIME body); message 7 is the one of the issue.
PART_SIZES = [3000, 12000, 30000, 50000, 8000, 100000, 40000, 20000]


@pytest.fixture(scope="module")
def scan_db(env_tmp):
    d = env_tmp / "regress14-db"
    malware.write_db(str(d))
    return d


_n = iter(range(10000))


def new_user(dovecot, msgs: list[bytes]) -> str:
    user = f"regress14-{next(_n)}"
    dovecot.add_user(user, PASSWORD)
    dovecot.deliver(user, msgs)
    return user


def scan_proxy(proxy_factory, scan_db, env_tmp, top=None, **scan):
    cfg = {"enabled": True, "database_dir": str(scan_db), "threads": 2,
           "tmpdir": str(env_tmp), "keepalive_interval": "1s"}
    cfg.update(scan)
    return proxy_factory(scan=cfg, **(top or {}))


def part_user(dovecot) -> tuple[str, list[bytes]]:
    msgs = mailenv.gen_messages(len(PART_SIZES), seed=1414, sizes=PART_SIZES)
    assert b"multipart/mixed" in msgs[6]
    return new_user(dovecot, msgs), msgs


def selected(c: RawImap, mailbox: bytes = b"INBOX") -> RawImap:
    r = c.command(b"SELECT " + mailbox, 10)
    assert r.ok, r.tagged
    return c


def run_both(px, dovecot, certs, user: str, warmup: list[bytes], cmds: list[bytes]):
    """`warmup` one at a time (each judged), then `cmds` in ONE write, through the proxy and
    straight to Dovecot. Returns (proxy results, direct results)."""
    out = []
    for make in (lambda: RawImap.proxy(px, certs, user, PASSWORD),
                 lambda: RawImap.direct(dovecot, user, PASSWORD)):
        c = selected(make())
        try:
            for w in warmup:
                r = c.command(w, ANSWER_S)
                assert r.ok, (c.name, w, r.tagged)
            out.append(c.pipeline(cmds, ANSWER_S))
            # still in step afterwards
            assert c.command(b"NOOP", ANSWER_S).ok
        finally:
            c.logout()
    return out[0], out[1]


def assert_same(got, want) -> None:
    """Every command answered OK in time, and the same FETCH responses, byte for byte (as a
    multiset: Dovecot may interleave the answers of pipelined FETCH commands)."""
    for g, w in zip(got, want):
        assert g.ok and w.ok, (g, w)
        assert g.elapsed <= ANSWER_S, g
    gf, wf = sorted(all_fetches(got)), sorted(all_fetches(want))
    assert len(gf) == len(wf), (len(gf), len(wf), [f[:60] for f in gf], [f[:60] for f in wf])
    for a, b in zip(gf, wf):
        assert a == b, (len(a), len(b), a[:200], b[:200])


# ----------------------------------------------------------------------------------- (a)


# Defect (issue 14): "a client that pipelines two part fetches of one message with scanning on
# (`c FETCH 7 (UID BODY.PEEK[1])` and `d FETCH 7 (UID BODY.PEEK[TEXT])` in one write ...) gets
# the first answer and then nothing until it sends another command: `start_part()` finds the
# verdict in the session memo, `down_paused()` waits for `can_output()`, `sess_pump()` flushes
# the pending answer synchronously and never re-runs the filter, and no write event is armed."
def test_regress_14_pipelined_parts_one_write(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user, _ = part_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    got, want = run_both(px, dovecot, certs, user, [],
                         [b"FETCH 7 (UID BODY.PEEK[1])", b"FETCH 7 (UID BODY.PEEK[TEXT])"])
    assert_same(got, want)


# Defect (issue 14): the same stall with "`<0.4096>` and `<4096.4096>` chunks" of one message
# in one write: the first chunk's verdict came from the second connection (now: the proxy's
# own fetch on the same connection), the second chunk
# finds it in the session memo and waits for output room that no event ever reports.
def test_regress_14_pipelined_partial_chunks(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user, _ = part_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    got, want = run_both(px, dovecot, certs, user, [],
                         [b"FETCH 7 (UID BODY.PEEK[]<0.4096>)",
                          b"FETCH 7 (UID BODY.PEEK[]<4096.4096>)",
                          b"FETCH 7 (UID BODY.PEEK[]<8192.4096>)"])
    assert_same(got, want)


# Defect (issue 14): "... or re-fetching parts of two messages already judged in the session"
# gets the first answer and then nothing: both verdicts are in the session memo, so every
# answer is released from the memo path that waits for a drained output without an event.
def test_regress_14_refetch_judged_parts(proxy_factory, dovecot, certs, scan_db, env_tmp):
    user, _ = part_user(dovecot)
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    warm = [b"UID FETCH 4 (UID BODY.PEEK[1])", b"UID FETCH 6 (UID BODY.PEEK[TEXT])"]
    again = [b"UID FETCH 4 (UID BODY.PEEK[TEXT])", b"UID FETCH 6 (UID BODY.PEEK[1])",
             b"UID FETCH 4 (UID BODY.PEEK[]<0.4096>)", b"UID FETCH 6 (UID BODY.PEEK[]<4096.4096>)"]
    got, want = run_both(px, dovecot, certs, user, warm, again)
    assert_same(got, want)


# ----------------------------------------------------------------------------------- (b)


def big_first(size: int, infected: bool) -> bytes:
    """~size bytes, multipart: part 1 a big random attachment (so BODY[1] and BINARY[1] are
    megabytes too and follow the message literal in Dovecot's answer), part 2 a short text,
    and for `infected` EICAR in a third part."""
    rnd = random.Random(14 + infected).randbytes(int(size * 0.735))
    tail = ("\n--b3\nContent-Type: application/octet-stream; name=\"e.com\"\n"
            "Content-Transfer-Encoding: base64\n\n" + malware.b64_lines(malware.EICAR)
            if infected else "")
    subject = "eicar three megabytes" if infected else "clean three megabytes"
    return malware.crlf(
        malware.headers(subject,
                        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b3"\n')
        + "\n--b3\nContent-Type: application/octet-stream; name=\"r.bin\"\n"
        + "Content-Transfer-Encoding: base64\n\n" + malware.b64_lines(rnd)
        + "\n--b3\nContent-Type: text/plain\n\nSee the attachments.\n"
        + tail + "\n--b3--\n")


MULTI = b"(BODY[] BODY[1] BINARY[1])"
CONTENT = ("BODY[]", "BODY[1]", "BINARY[1]")


def multi_item_fetch(px, certs, user: str, seq: int, timeout: float) -> tuple[dict | None, str]:
    """FETCH seq (BODY[] BODY[1] BINARY[1]) through the proxy. Returns (items, "") for a
    complete OK answer, or (None, why) for a refusal said before the close; a bare close or a
    stall fails the test."""
    c = selected(RawImap.proxy(px, certs, user, PASSWORD))
    try:
        r = c.command(b"FETCH %d " % seq + MULTI, timeout)
    except Closed as e:
        seen = e.seen
        tag = b"t%d " % c.n
        assert b"* BYE " in seen or tag + b"NO " in seen, \
            f"connection closed without * BYE or NO: {seen[-300:]!r}"
        return None, "closed after " + seen[-200:].decode("latin-1")
    finally:
        c.close()
    if not r.ok:
        assert r.status == b"NO" and len(r.tagged) > 12, r.tagged   # NO with a reason
        return None, r.tagged.decode("latin-1")
    fetches = [fetch_items(f)[1] for f in r.fetches()]
    items = {}
    for f in fetches:
        items.update({k: v for k, v in f.items() if k in CONTENT})
    return items, ""


def direct_items(dovecot, user: str, seq: int) -> dict:
    d = selected(RawImap.direct(dovecot, user, PASSWORD))
    try:
        r = d.command(b"FETCH %d " % seq + MULTI.replace(b"[", b".PEEK["), 30)
        assert r.ok, r.tagged
    finally:
        d.logout()
    items = {}
    for f in r.fetches():
        items.update({k: v for k, v in fetch_items(f)[1].items() if k in CONTENT})
    return items


# Defect (issue 14): "Every path that ends a session after login sends `* BYE` / `-ERR` first —
# today a FETCH of `BODY[] BODY[1] BINARY[1]` of a 3 MB message closes the connection with no
# BYE (`suffix_append` → `fail_session` waits for a boundary that never comes)." Clean: the
# answer must be complete and byte-identical to Dovecot's (or a refusal said before the close).
def test_regress_14_multi_item_3mb_clean(proxy_factory, dovecot, certs, scan_db, env_tmp):
    big = big_first(3_000_000, infected=False)
    assert len(big) > 2_900_000
    user = new_user(dovecot, [mailenv.gen_messages(1, seed=5)[0], big])
    want = direct_items(dovecot, user, 2)
    assert set(want) == set(CONTENT) and want["BODY[]"] == big
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    got, why = multi_item_fetch(px, certs, user, 2, 20)
    if got is not None:
        assert set(got) == set(CONTENT), list(got)
        for k in CONTENT:
            assert got[k] == want[k], (k, len(got[k]), len(want[k]))
    else:
        assert "BYE" in why or "NO" in why, why


# Defect (issue 14): the same multi-item FETCH of a 3 MB message, infected (EICAR in the last
# part): every content item must be the notice (BODY[]) or its text (the parts), or the session
# is refused with `* BYE` / NO first — never a bare close, never the virus.
def test_regress_14_multi_item_3mb_infected(proxy_factory, dovecot, certs, scan_db, env_tmp):
    big = big_first(3_000_000, infected=True)
    assert len(big) > 2_900_000
    user = new_user(dovecot, [mailenv.gen_messages(1, seed=6)[0], big])
    px = scan_proxy(proxy_factory, scan_db, env_tmp)
    got, why = multi_item_fetch(px, certs, user, 2, 20)
    if got is not None:
        assert set(got) == set(CONTENT), list(got)
        assert is_notice(got["BODY[]"]), got["BODY[]"][:300]
        assert malware.SIGNATURE.encode() in got["BODY[]"]
        body = notice_body(got["BODY[]"])
        for k in ("BODY[1]", "BINARY[1]"):
            assert b"withheld" in got[k] and b"X-Portcullis-Verdict" not in got[k], got[k][:300]
            assert raw14_unref(got[k]) == raw14_unref(body), k
        for v in got.values():
            assert malware.EICAR not in v
    else:
        assert "BYE" in why or "NO" in why, why


def raw14_unref(b: bytes) -> bytes:
    return REF.sub(b"REF", b)


# ----------------------------------------------------------------------------------- (c)


class SlowPop3:
    """POP3 over TLS with a small receive buffer, read in small slices with pauses."""

    def __init__(self, px, certs, user: str):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        s.settimeout(10)
        s.connect((mailenv.LOCAL, px.port("pop3s")))
        self.s = tls_context(certs).wrap_socket(s, server_hostname="localhost")
        self.buf = bytearray()
        assert self.line(10).startswith(b"+OK")
        self.s.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert self.line(10).startswith(b"+OK")
        assert self.line(10).startswith(b"+OK")

    def _fill(self, stall: float, n: int = 65536) -> None:
        self.s.settimeout(stall)
        try:
            d = self.s.recv(n)
        except (socket.timeout, TimeoutError):
            raise Stall(f"POP3: no bytes for {stall}s after {len(self.buf)} buffered") from None
        except (OSError, ssl.SSLError) as e:
            raise Closed(f"POP3: {e!r}") from None
        if not d:
            raise Closed(f"POP3: closed; tail {bytes(self.buf[-200:])!r}")
        self.buf += d

    def line(self, stall: float) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill(stall)
        i = self.buf.index(b"\r\n") + 2
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def read_multi(self, first_byte: float, stall: float, pause: float) -> bytes:
        """One whole raw multi-line response (status line to terminator), read 8 KB at a time
        with `pause` between reads. Fails when no byte arrives for `stall` seconds."""
        out = bytearray(self.line(first_byte))
        assert out.startswith(b"+OK"), out
        if self.buf.startswith(b".\r\n"):                       # an empty body
            del self.buf[:3]
            return bytes(out + b".\r\n")
        scanned = 0
        while True:
            i = self.buf.find(b"\r\n.\r\n", max(scanned - 4, 0))
            if i >= 0:
                out += self.buf[: i + 5]
                del self.buf[: i + 5]
                return bytes(out)
            scanned = len(self.buf)
            time.sleep(pause)
            self._fill(stall, 8192)

    def retr_slowly(self, nums: list[int], first_byte: float, stall: float = 10,
                    pause: float = 0.001) -> list[bytes]:
        """RETR every message of `nums` in ONE write; their raw responses, read slowly."""
        self.s.sendall(b"".join(b"RETR %d\r\n" % n for n in nums))
        return [self.read_multi(first_byte, stall, pause) for _ in nums]

    def quit(self) -> None:
        try:
            self.s.sendall(b"QUIT\r\n")
            self.line(5)
        except (Stall, Closed, OSError):
            pass
        self.s.close()


def direct_retr(dovecot, user: str, n: int) -> bytes:
    s = socket.create_connection((mailenv.LOCAL, dovecot.ports["pop3"]), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\nRETR {n}\r\n".encode())
    assert f.readline().startswith(b"+OK")
    assert f.readline().startswith(b"+OK")
    out = bytearray(f.readline())
    assert out.startswith(b"+OK"), out
    while not out.endswith(b"\r\n.\r\n"):
        out += f.readline()
    s.sendall(b"QUIT\r\n")
    s.close()
    return bytes(out)


# Defect (issue 14): "A POP3 RETR of a 9 MB cached-clean message also stopped once after 4.8 MB
# (fetchmail timed out after 300 s; not reproduced since) — likely the same class" (a paused
# filter waiting for output room with no write event armed). RETR twice in one session (the
# second from the verdict cache), then in a new session, each read slowly: byte-identical.
def test_regress_14_pop3_cached_9mb_slow_reader(proxy_factory, dovecot, certs, scan_db,
                                                env_tmp):
    big = mailenv.make_message(random.Random(9), 1, 9_000_000, seed=1409)
    assert len(big) > 8_900_000
    user = new_user(dovecot, [mailenv.gen_messages(1, seed=7)[0], big])
    want = {n: direct_retr(dovecot, user, n) for n in (1, 2)}
    # one worker: without Redis the verdict cache is the worker's own memory
    px = scan_proxy(proxy_factory, scan_db, env_tmp, top={"workers": 1})
    p = SlowPop3(px, certs, user)
    try:
        [first] = p.retr_slowly([2], first_byte=60)
        assert first == want[2], (len(first), len(want[2]))
        [again] = p.retr_slowly([2], first_byte=10)            # the cached verdict
        assert again == want[2], (len(again), len(want[2]))
        # cached, pipelined with another answer waiting behind it
        got = p.retr_slowly([2, 1, 2], first_byte=10)
        for n, g in zip([2, 1, 2], got):
            assert g == want[n], (n, len(g), len(want[n]))
    finally:
        p.quit()
    p = SlowPop3(px, certs, user)                               # a new session: cached too
    try:
        [third] = p.retr_slowly([2], first_byte=10)
        assert third == want[2], (len(third), len(want[2]))
    finally:
        p.quit()
    assert px.log().count("cached=yes") >= 4


# Defect (issue 14), the same POP3 class with the client's next commands arriving while the
# cached 9 MB answer is still going out (RFC 2449 PIPELINING): the backend's answers to them
# fill the relay buffer behind the held answer, the output step finds no room and waits for a
# write event, but nothing is left to write: the client gets no further byte (seen at 3.8 to
# 8.5 MB). Every answer must arrive, in order, byte-identical to Dovecot's.
def test_regress_14_pop3_cached_9mb_commands_mid_answer(proxy_factory, dovecot, certs, scan_db,
                                                        env_tmp):
    big = mailenv.make_message(random.Random(9), 1, 9_000_000, seed=1409)
    user = new_user(dovecot, [mailenv.gen_messages(1, seed=7)[0], big,
                              mailenv.gen_messages(1, seed=8, sizes=[600_000])[0]])
    want = {n: direct_retr(dovecot, user, n) for n in (1, 2, 3)}
    px = scan_proxy(proxy_factory, scan_db, env_tmp, top={"workers": 1})
    p = SlowPop3(px, certs, user)
    try:
        [first] = p.retr_slowly([2], first_byte=60, pause=0)   # judged, now in the cache
        assert first == want[2], (len(first), len(want[2]))
    finally:
        p.quit()
    # the next commands after these many bytes of the cached answer
    for trigger in (300_000, 1_000_000, 2_000_000, 3_500_000, 5_000_000, 7_000_000):
        p = SlowPop3(px, certs, user)
        try:
            p.s.sendall(b"RETR 2\r\n")
            while len(p.buf) < trigger:
                p._fill(10, 8192)
            p.s.sendall(b"NOOP\r\nRETR 3\r\nSTAT\r\n")
            got = p.read_multi(10, stall=10, pause=0)
            assert got == want[2], (trigger, len(got), len(want[2]))
            assert p.line(10).startswith(b"+OK"), trigger
            assert p.read_multi(10, stall=10, pause=0) == want[3], trigger
            assert p.line(10).startswith(b"+OK"), trigger
        finally:
            p.quit()
