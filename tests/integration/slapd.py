"""A throwaway OpenLDAP slapd for the LDAP routing lookup tests (issue 17).

Slapd(workdir, certs).start() writes a slapd.conf (mdb backend, schemas from Debian's slapd
package), loads a generated tree with slapadd (~0.3 s for 1 200 users), then runs
`slapd -d 0` as a plain child process on two free 127.0.0.1 ports: ldap:// (StartTLS offered)
and ldaps://, both with `certs.server` (signed by the test CA). stop() ends it by its PID;
start() again reuses the same ports and data (the reconnect test).

The host attribute is `mailHost` from Debian's misc.schema (objectClass inetLocalMailRecipient,
an auxiliary class next to inetOrgPerson): the attribute sendmail/Postfix LDAP routing already
uses, so an existing directory often has it; no custom schema is needed.

Tree (suffix dc=portcullis,dc=test):
  cn=reader,ou=system        bind DN (password READER_PW); with the TLS client certificate
                             CLIENT_DN (SASL EXTERNAL) the only identities allowed to read
  uid=userNNNN,ou=people     N_USERS users; mailHost by NNNN % 3 from BACKENDS
  uid=admin                  an ordinary user (the injection tests must not find it)
  uid=nohost                 a user without mailHost
  uid=dup (twice, in ou=people and ou=other)   ambiguous
Anonymous binds can search nothing, so a lookup that finds a user proves the bind worked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from mailenv import free_port

SUFFIX = "dc=portcullis,dc=test"
BASE = f"ou=people,{SUFFIX}"
BIND_DN = f"cn=reader,ou=system,{SUFFIX}"
READER_PW = "r3ader-Secret"
N_USERS = 1200
# The three kinds of answer the routing chain must understand: host, host:port, pool entry name.
BACKENDS = ("imap-a.example.test", "127.0.0.2:1143", "backend-c")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "misc")
# SASL EXTERNAL: slapd takes the client certificate's subject as the bind identity.
CLIENT_DN = "cn=ldl-client"


def user_host(i: int) -> str:
    return BACKENDS[i % 3]


def _ldif(n_users: int, hosts: tuple[str, ...] = BACKENDS,
          extra: dict[str, str] | None = None) -> str:
    out = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: portcullis\n"
        "o: Portcullis tests\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=other,{SUFFIX}\nobjectClass: organizationalUnit\nou: other\n",
        f"dn: ou=system,{SUFFIX}\nobjectClass: organizationalUnit\nou: system\n",
        f"dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: reader\nuserPassword: {READER_PW}\n",
    ]

    def person(uid: str, host: str | None, ou: str = "people") -> str:
        s = (f"dn: uid={uid},ou={ou},{SUFFIX}\nobjectClass: inetOrgPerson\n"
             f"objectClass: inetLocalMailRecipient\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
             f"mail: {uid}@example.test\n")
        return s + (f"mailHost: {host}\n" if host else "")

    for i in range(n_users):
        out.append(person(f"user{i:04d}", hosts[i % len(hosts)]))
    out.append(person("admin", "admin-host.example.test"))
    for uid, host in (extra or {}).items():
        out.append(person(uid, host))
    out.append(person("nohost", None))
    out.append(person("dup", "dup-a.example.test"))
    out.append(person("dup", "dup-b.example.test", ou="other"))
    return "\n".join(out)


def make_client_cert(d: Path, certs) -> tuple[Path, Path]:
    """A TLS client certificate (subject CLIENT_DN, clientAuth) signed by the test CA."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "client.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
        "[dn]\nCN = ldl-client\n[ext]\nbasicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n")
    r = subprocess.run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-config", "client.cnf",
                        "-CA", str(certs.ca), "-CAkey", str(certs.ca_key), "-days", "30",
                        "-keyout", "client.key", "-out", "client.pem"],
                       cwd=d, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl: {r.stderr}")
    return d / "client.pem", d / "client.key"


class Slapd:
    def __init__(self, workdir: Path, certs, n_users: int = N_USERS,
                 hosts: tuple[str, ...] = BACKENDS, extra: dict[str, str] | None = None):
        """hosts: the mailHost values userNNNN get, by NNNN % len(hosts) (the daemon's
        routing tests point them at their own backends); extra: more uid -> mailHost."""
        self.dir = Path(workdir)
        self.certs = certs
        self.n_users = n_users
        self.hosts = tuple(hosts)
        self.extra = dict(extra or {})
        self.port = free_port()
        self.ldaps_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "slapd.conf"

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _write_conf(self) -> None:
        d = self.dir
        (d / "db").mkdir(parents=True, exist_ok=True)
        inc = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in SCHEMAS)
        self.conf.write_text(f"""{inc}
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {self.certs.ca}
TLSCertificateFile {self.certs.server}
TLSCertificateKeyFile {self.certs.server_key}
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
directory {d}/db
index uid eq
access to attrs=userPassword by anonymous auth by * none
TLSVerifyClient allow
access to * by dn.exact="{BIND_DN}" read by dn.exact="{CLIENT_DN}" read by * none
""")

    def start(self, timeout: float = 10.0) -> "Slapd":
        if not self.conf.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write_conf()
            ldif = self.dir / "tree.ldif"
            ldif.write_text(_ldif(self.n_users, self.hosts, self.extra))
            r = subprocess.run(["slapadd", "-q", "-f", str(self.conf), "-l", str(ldif)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"slapadd failed: {r.stderr}")
        self.log = open(self.dir / "slapd.log", "ab")
        self.proc = subprocess.Popen(
            ["slapd", "-d", "0", "-f", str(self.conf),
             "-h", f"{self.uri}/ {self.ldaps_uri}/"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited {self.proc.returncode}; see {self.dir}/slapd.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.ldaps_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("slapd did not listen in time")

    def pause(self) -> None:
        """SIGSTOP, then wait until every thread has stopped: kill() returns before a thread
        busy on another core stops, and it could still answer one more request."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        task = Path(f"/proc/{self.proc.pid}/task")
        while time.monotonic() < deadline:
            states = []
            for t in task.iterdir():
                try:
                    states.append((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    pass
            if states and all(st in "Tt" for st in states):
                return
            time.sleep(0.005)
        raise RuntimeError("slapd did not stop")

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self.log.close()
