#!/usr/bin/env bash
# Portcullis build/test dependencies (Debian 12). Idempotent; < 1 s when everything is present.
#
#   bash deploy/deps.sh          install what is missing (needs root), create the mail user
#
# What it does:
#   1. dpkg-query checks the package list below; only if something is missing it runs
#      `apt-get update` + `apt-get install -y --no-install-recommends <missing>`.
#      While installing, a temporary /usr/sbin/policy-rc.d (exit 101) stops the package scripts
#      from starting the system dovecot/redis-server/slapd services (only if no policy-rc.d exists
#      already; it is removed afterwards). The tests never use the system instances anyway:
#      they run private Dovecot/Redis processes on free 127.0.0.1 ports with their own
#      config and directories (tests/integration/mailenv.py), so a running system instance
#      on 143/993/110/995/6379 would not collide either.
#   2. Creates the system user `portcullis-mail` (no home, nologin shell) that owns the test
#      maildirs: Dovecot's userdb gives every test user this uid/gid. Dovecot refuses to run
#      mail processes as root, and a dedicated user keeps test mail away from real accounts.
set -euo pipefail

PACKAGES=(
    build-essential pkg-config clang llvm libclang-rt-14-dev clang-format clang-tidy cppcheck
    libev-dev libssl-dev libyaml-dev libhiredis-dev libclamav-dev libcmocka-dev libsystemd-dev
    libcurl4-openssl-dev # proxy/authhttp.c: the auth_http lookup (libcurl multi on the loop)
    # the package (make deb, test_package.py): lint, hardening-check, the logrotate file
    lintian devscripts logrotate
    redis-server dovecot-core dovecot-imapd dovecot-pop3d
    libldap-dev slapd ldap-utils # proxy/ldaplookup.c; test_ldaplookup.py runs a private slapd
    python3 python3-pytest python3-prometheus-client python3-yaml
    isync fetchmail curl openssl clamav-testfiles iproute2 iptables zip procps
    groff-base man-db
    prometheus # only for promtool: test_metrics.py runs `promtool check metrics` on /metrics
    nginx libnginx-mod-mail # test_authhttp.py: nginx's mail proxy against the auth_http responder
)
MAIL_USER=portcullis-mail

# One dpkg-query call for all packages: prints "name<TAB>status" for the known ones.
missing=()
declare -A installed=()
while IFS=$'\t' read -r name status; do
    [[ "$status" == "install ok installed" ]] && installed["${name%%:*}"]=1
done < <(dpkg-query -W -f='${Package}\t${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for p in "${PACKAGES[@]}"; do
    [[ -n "${installed[$p]:-}" ]] || missing+=("$p")
done

need_user=0
getent passwd "$MAIL_USER" >/dev/null || need_user=1

if ((${#missing[@]} == 0 && need_user == 0)); then
    echo "deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

SUDO=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null; then
        SUDO=(sudo)
    else
        echo "deps: need root (missing packages: ${missing[*]:-none}; mail user $MAIL_USER present: $((1 - need_user)))" >&2
        exit 1
    fi
fi

if ((${#missing[@]} > 0)); then
    echo "deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    our_policy=0
    if [[ ! -e $policy ]]; then
        # Deny service starts during this install only (invoke-rc.d/deb-systemd-invoke honour it).
        printf '#!/bin/sh\n# temporary, written by portcullis deploy/deps.sh\nexit 101\n' |
            "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        our_policy=1
    fi
    cleanup() { ((our_policy)) && "${SUDO[@]}" rm -f "$policy"; return 0; }
    trap cleanup EXIT
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    cleanup
    trap - EXIT
fi

if ! getent passwd "$MAIL_USER" >/dev/null; then
    echo "deps: creating system user $MAIL_USER (owner of the test maildirs)"
    "${SUDO[@]}" useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$MAIL_USER"
fi

echo "deps: done"
