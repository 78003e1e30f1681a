#!/usr/bin/env bash
# mkdeb.sh BUILD_DIR OUT_DIR — build the Debian package from already built binaries with
# dpkg-deb (no debhelper needed). Dependencies are computed from the binaries' shared libraries
# (dpkg -S on ldd's output), so they match the machine that built them (Debian 12).
set -euo pipefail
build=${1:-build}
out=${2:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^#define PORTCULLIS_VERSION "\(.*\)"/\1/p' "$root/proxy/main.c")
version=${version:-0.1.0}
arch=$(dpkg --print-architecture)
stage="$out/deb/portcullis_${version}_${arch}"
rm -rf "$stage"
install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/etc/portcullis" \
    "$stage/lib/systemd/system" "$stage/usr/share/doc/portcullis/examples"
install -m 0755 "$build/portcullis" "$stage/usr/sbin/portcullis"
bins=("$stage/usr/sbin/portcullis")
if [ -x "$build/portcullis-ctl" ]; then
    install -m 0755 "$build/portcullis-ctl" "$stage/usr/sbin/portcullis-ctl"
    bins+=("$stage/usr/sbin/portcullis-ctl")
fi
strip --strip-unneeded "${bins[@]}"
# The shipped configuration: the documented defaults, running as the package's user, with the
# certificate postinst generates (replace it with yours).
sed -e 's|^user: ""  |user: portcullis|' "$root/deploy/portcullis.yaml" > "$stage/etc/portcullis/portcullis.yaml"
chmod 0640 "$stage/etc/portcullis/portcullis.yaml"
install -m 0644 "$root/deploy/portcullis.service" "$stage/lib/systemd/system/portcullis.service"
install -m 0644 "$root/README.md" "$root"/docs/*.md "$stage/usr/share/doc/portcullis/"
cp -r "$root/deploy/examples/." "$stage/usr/share/doc/portcullis/examples/"
install -m 0644 "$root/LICENSE" "$stage/usr/share/doc/portcullis/copyright"

# Runtime dependencies: the packages owning the shared libraries the binaries load.
deps=$(for b in "${bins[@]}"; do ldd "$b"; done | awk '/=> \//{print $3}' | sort -u |
       while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null; done |
       cut -d: -f1 | sort -u | grep -v '^libc6$' | paste -sd, | sed 's/,/, /g')
cat > "$stage/DEBIAN/control" <<CTL
Package: portcullis
Version: $version
Architecture: $arch
Maintainer: Portcullis developers <portcullis@example.org>
Depends: libc6, $deps, adduser, openssl
Recommends: redis-server, clamav-freshclam
Section: mail
Priority: optional
Description: IMAP/POP3 TLS proxy with in-flight virus scanning
 Portcullis sits in front of existing mail servers: it terminates TLS, logs users in to
 their backend, scans downloaded mail with libclamav and keeps rate limits and session state
 in Redis so that several instances act as one.
CTL
echo "/etc/portcullis/portcullis.yaml" > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd portcullis >/dev/null; then
        adduser --system --group --no-create-home --home /var/lib/portcullis portcullis
    fi
    chgrp portcullis /etc/portcullis/portcullis.yaml
    # A self-signed certificate so that the shipped configuration is valid; replace it.
    if [ ! -e /etc/portcullis/cert.pem ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=$(hostname -f 2>/dev/null || hostname)" \
            -keyout /etc/portcullis/key.pem -out /etc/portcullis/cert.pem 2>/dev/null
        chgrp portcullis /etc/portcullis/key.pem /etc/portcullis/cert.pem
        chmod 0640 /etc/portcullis/key.pem
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
POST
cat > "$stage/DEBIAN/postrm" <<'POST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
POST
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"
dpkg-deb --root-owner-group --build "$stage" "$out/portcullis_${version}_${arch}.deb" >/dev/null
echo "$out/portcullis_${version}_${arch}.deb"
