#!/usr/bin/env bash
# Packages for `make bench` only (Debian 12): the peers Portcullis is measured against and the
# plot tool. Idempotent; < 1 s when everything is present. Run by `make bench` after deps.sh.
#
#   nginx + libnginx-mod-mail   nginx's mail proxy (IMAP/POP3 with TLS, auth_http)
#   haproxy                     TCP mode with TLS termination (a blind relay: the fast floor)
#   gnuplot-nox                 the PNG in docs/benchmarks.md
#   strace                      syscalls per login and output writes per MB (issue 19)
#
# As in deploy/deps.sh, a temporary /usr/sbin/policy-rc.d keeps the package scripts from starting
# the system nginx/haproxy services: the bench runs private instances on free loopback ports.
set -euo pipefail

PACKAGES=(nginx libnginx-mod-mail haproxy gnuplot-nox strace)

missing=()
declare -A installed=()
while IFS=$'\t' read -r name status; do
    [[ "$status" == "install ok installed" ]] && installed["${name%%:*}"]=1
done < <(dpkg-query -W -f='${Package}\t${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for p in "${PACKAGES[@]}"; do
    [[ -n "${installed[$p]:-}" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "bench-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

SUDO=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null; then
        SUDO=(sudo)
    else
        echo "bench-deps: need root (missing packages: ${missing[*]})" >&2
        exit 1
    fi
fi

echo "bench-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
policy=/usr/sbin/policy-rc.d
our_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, written by portcullis deploy/bench-deps.sh\nexit 101\n' |
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
# Packages start nothing here (policy-rc.d), but a system nginx/haproxy left running by an
# earlier install would only cost CPU during the measurements: say so rather than stop it.
for d in nginx haproxy; do
    if pgrep -x "$d" >/dev/null 2>&1; then
        echo "bench-deps: note: a system $d is running; it is not used by the bench" >&2
    fi
done
echo "bench-deps: done"
