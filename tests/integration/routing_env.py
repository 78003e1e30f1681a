"""Shared by the per-user routing tests (issue 17: test_routing.py with a map file,
test_routing_ldap.py with slapd): three real Dovecots that all hold every test user, each
mailbox carrying a marker message that names its server, so a session shows which backend it
reached; and the IMAP helpers that read it (login and backend_of also serve the backend-pool
tests, test_backends.py, whose Dovecots carry the same marker)."""

from __future__ import annotations

import imaplib
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

import mailenv

NB = 3


def marker(name: str, user: str) -> bytes:
    return (f"From: ops@example.test\r\nTo: {user}\r\nSubject: backend={name}\r\n"
            f"Message-ID: <{name}.{user}@portcullis.test>\r\n\r\nThis mailbox lives on {name}.\r\n"
            ).encode()


@contextmanager
def dovecot_pool(env_tmp, users: dict[str, str], tag: str = "route"):
    """NB Dovecots labelled dv0.., every user (with a marker) on each."""
    dvs = [mailenv.Dovecot() for _ in range(NB)]

    def start(i):
        dv = dvs[i]
        dv.start(env_tmp / f"dovecot-{tag}-{i}", users=users, ssl=False)
        dv.label = f"dv{i}"
        for u in users:
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
    """dv0 and dv1 as pool entries (by their labels); dv2 is reached only by host:port, as a
    dynamic backend."""
    out = []
    for dv in dvs[:2]:
        for b in dv.backends(tls="none", name=dv.label):
            b["server"] = dv.label
            out.append(b)
    return out


def dynamic_target(dvs) -> str:
    return f"127.0.0.1:{dvs[2].ports['imap']}"


def login(px, certs, user, password):
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=15)
    m.login(user, password)
    return m


def backend_of(m) -> str:
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    found = re.search(rb"backend=(dv\d)", data[0][1])
    assert found, data
    return found.group(1).decode()


def which_backend(px, certs, user, password) -> str:
    m = login(px, certs, user, password)
    try:
        return backend_of(m)
    finally:
        m.logout()


def login_error(px, certs, user, password) -> str:
    m = imaplib.IMAP4_SSL(mailenv.LOCAL, px.port("imaps"), ssl_context=mailenv.ssl_context(certs.ca),
                          timeout=15)
    try:
        with pytest.raises(imaplib.IMAP4.error) as e:
            m.login(user, password)
        return str(e.value)
    finally:
        m.logout()
