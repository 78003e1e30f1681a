"""The three-Dovecot pool of the map-file and auth_http routing tests (issue 17: test_routing.py,
test_routing_http.py) with their fixed user set, over routing_env (shared with the LDAP tests):
dv0 and dv1 are pool entries; dv2 is reached only as a dynamic backend (host:port). Started once
per test module that uses the `pool` fixture (import it from here)."""

from __future__ import annotations

import pytest

import routing_env

NB = routing_env.NB
NMAP = 1000  # users in the map
# The users that exist on every Dovecot (and carry its marker): a sample spread over the map.
SAMPLE = [f"u{i:04d}" for i in range(0, NMAP, 41)]
EXTRA = ["ann@dom1.test", "bob@dom1.test", "stranger", "nomad@else.test"]
USERS = {u: f"pw-{u}" for u in SAMPLE + EXTRA}

marker = routing_env.marker
pool_backends = routing_env.pool_backends
backend_of = routing_env.backend_of


@pytest.fixture(scope="module")
def pool(env_tmp, certs):
    with routing_env.dovecot_pool(env_tmp, USERS) as dvs:
        yield dvs


def login(px, certs, user, password=None):
    return routing_env.login(px, certs, user, password or USERS[user])


def which_backend(px, certs, user) -> str:
    return routing_env.which_backend(px, certs, user, USERS[user])


def login_error(px, certs, user) -> str:
    return routing_env.login_error(px, certs, user, USERS[user])
