"""The three-Dovecot pool of the routing tests (issue 17), shared by test_routing.py (map file)
and test_routing_http.py (auth_http): every Dovecot holds the same users, each mailbox a marker
message naming the Dovecot, so the backend a session reached is read from the mailbox. dv0 and
dv1 are pool entries; dv2 is reached only as a dynamic backend (host:port). Started once per
test module that uses the `pool` fixture (import it from here)."""

from __future__ import annotations

import imaplib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

import mailenv

NB = 3
NMAP = 1000  # users in the map
# The users that exist on every Dovecot (and carry its marker): a sample spread over the map.
SAMPLE = [f"u{i:04d}" for i in range(0, NMAP, 41)]
EXTRA = ["ann@dom1.test", "bob@dom1.test", "stranger", "nomad@else.test"]
USERS = {u: f"pw-{u}" for u in SAMPLE + EXTRA}


def marker(name: str, user: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: {user}\r\nSubject: backend={name}\r\n"
            f"Message-ID: <{name}.{user}@portcullis.test>\r\n\r\nThis mailbox lives on {name}.\r\n"
            ).encode()


@pytest.fixture(scope="module")
def pool(env_tmp, certs):
    dvs = [mailenv.Dovecot() for _ in range(NB)]

    def start(i):
        dv = dvs[i]
        dv.start(env_tmp / f"dovecot-route-{i}", users=USERS, ssl=False)
        dv.label = f"dv{i}"
        for u in USERS:
            dv.deliver(u, [marker(dv.label, u)])

    # Started and stopped side by side: a Dovecot takes about a second each way.
    with ThreadPoolExecutor(NB) as ex:
        futures = [ex.submit(start, i) for i in range(NB)]
    try:
        for f in futures:
            f.result()
        yield dvs
    finally:
        with ThreadPoolExecutor(NB) as ex:
            list(ex.map(lambda dv: dv.stop() if dv.pid else None, dvs))


def pool_backends(dvs):
    out = []
    for dv in dvs[:2]:  # dv2 is reached only by host:port: a dynamic backend
        for b in dv.backends(tls="none", name=dv.label):
            b["server"] = dv.label
            out.append(b)
    return out


def login(px, certs, user, password=None):
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=15)
    m.login(user, password or USERS[user])
    return m


def backend_of(m) -> str:
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    found = re.search(rb"backend=(dv\d)", data[0][1])
    assert found, data
    return found.group(1).decode()


def which_backend(px, certs, user) -> str:
    m = login(px, certs, user)
    try:
        return backend_of(m)
    finally:
        m.logout()


def login_error(px, certs, user) -> str:
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=15)
    try:
        with pytest.raises(imaplib.IMAP4.error) as e:
            m.login(user, USERS[user])
        return str(e.value)
    finally:
        m.logout()
