#!/usr/bin/env bash
# mkdeb.sh BUILD_DIR OUT_DIR — build the Debian package from binaries already built with
# dpkg-buildflags' hardening flags (make deb builds them in build/pkg), without debhelper but the
# way it would: the metadata lives in deploy/debian/ (control, changelog, copyright, maintainer
# scripts, logrotate file, lintian overrides); Depends comes from dpkg-shlibdeps, the control file
# from dpkg-gencontrol. Man pages (MAN_DIR, default build/man) and the signature path unit
# (deploy/portcullis-signatures.{path,service}) are packaged when they exist.
set -euo pipefail
build=${1:-build/pkg}
out=${2:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
meta="$root/deploy/debian"
man_dir=${MAN_DIR:-$root/build/man}

# The changelog names the package version; it must carry the version the binary reports.
version=$(dpkg-parsechangelog -l "$meta/changelog" -S Version)
upstream=$(sed -n 's/^#define PORTCULLIS_VERSION "\(.*\)"/\1/p' "$root/proxy/version.h")
if [ "${version%-*}" != "$upstream" ]; then
    echo "mkdeb: deploy/debian/changelog is at $version, proxy/version.h at $upstream:" \
         "add a changelog entry (dch -v $upstream-1)" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)
# Reproducible: file times and the archive's dates come from the changelog entry.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$meta/changelog" -S Timestamp)
export SOURCE_DATE_EPOCH

# A source-tree layout (debian/control, debian/portcullis/) as dpkg-shlibdeps expects.
work="$out/deb"
rm -rf "$work"
install -d "$work/debian"
work=$(cd "$work" && pwd)
cp "$meta/control" "$meta/changelog" "$work/debian/"
stage="$work/debian/portcullis"
doc="$stage/usr/share/doc/portcullis"
install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/etc/portcullis" "$stage/etc/logrotate.d" \
    "$stage/lib/systemd/system" "$doc/examples" "$stage/usr/share/lintian/overrides"

for b in portcullis portcullis-ctl; do
    install -m 0755 "$build/$b" "$stage/usr/sbin/$b"
    # As dh_strip does: no debug sections, no .comment/.note (lintian: binary-has-unneeded-section).
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/sbin/$b"
done

# The shipped configuration: the documented defaults, running as the package's user, with the
# certificate postinst generates (replace it with yours). 0640: it may hold secrets.
sed -e 's|^user: ""  |user: portcullis|' "$root/deploy/portcullis.yaml" > "$stage/etc/portcullis/portcullis.yaml"
chmod 0640 "$stage/etc/portcullis/portcullis.yaml"
install -m 0644 "$meta/portcullis.logrotate" "$stage/etc/logrotate.d/portcullis"
units=("$root/deploy/portcullis.service")
for u in "$root"/deploy/portcullis-signatures.path "$root"/deploy/portcullis-signatures.service; do
    [ -f "$u" ] && units+=("$u")
done
install -m 0644 "${units[@]}" "$stage/lib/systemd/system/"

install -m 0644 "$root/README.md" "$root"/docs/*.md "$doc/"
cp -r "$root/deploy/examples/." "$doc/examples/"
chmod -R u=rwX,go=rX "$doc/examples"
install -m 0644 "$meta/copyright" "$doc/copyright"
gzip -9n < "$meta/changelog" > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"

overrides="$stage/usr/share/lintian/overrides/portcullis"
install -m 0644 "$meta/lintian-overrides" "$overrides"
nman=0
for page in "$man_dir"/*.[1-8]; do
    [ -f "$page" ] || continue
    sect=${page##*.}
    install -d "$stage/usr/share/man/man$sect"
    gzip -9n < "$page" > "$stage/usr/share/man/man$sect/$(basename "$page").gz"
    chmod 0644 "$stage/usr/share/man/man$sect/$(basename "$page").gz"
    nman=$((nman + 1))
done
if [ "$nman" = 0 ]; then
    cat >> "$overrides" <<'OVR'

# Built without `make man` (build/man is empty): the pages are generated from the same source as
# --help; a package built after `make man` carries them and has no such override.
portcullis: no-manual-page [usr/sbin/portcullis]
portcullis: no-manual-page [usr/sbin/portcullis-ctl]
OVR
fi

install -m 0755 "$meta/postinst" "$meta/prerm" "$meta/postrm" "$stage/DEBIAN/"
# Every file under /etc is a conffile: dpkg keeps the admin's edits across upgrades.
(cd "$stage" && find etc -type f -printf '/%p\n' | LC_ALL=C sort) > "$stage/DEBIAN/conffiles"

# Depends: ${shlibs:Depends} from the libraries' shlibs/symbols files, versioned.
(cd "$work" && dpkg-shlibdeps -Tdebian/portcullis.substvars \
    debian/portcullis/usr/sbin/portcullis debian/portcullis/usr/sbin/portcullis-ctl)
(cd "$work" && dpkg-gencontrol -pportcullis -ldebian/changelog -cdebian/control \
    -Tdebian/portcullis.substvars -Pdebian/portcullis -fdebian/files)

# md5sums of everything but the conffiles (dpkg records those itself), as dh_md5sums does.
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | xargs -d '\n' md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/control"

find "$stage" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0 touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
deb="$out/portcullis_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
