#!/usr/bin/env bash
# Builds dist/d8_<version>_<arch>.deb from the binaries in BIN_DIR and
# prints its path. Usage: build-deb.sh VERSION ARCH BIN_DIR OUT_DIR
#
# The package: /usr/bin/d8 and /usr/bin/d8-desktop, their man pages; the systemd units of
# installer/ (ExecStart pointed at /usr/bin/d8); /etc/d8/worker.env, mode
# 0600, for the worker's settings and keys (never in a unit file); a `d8`
# system user owning /var/lib/d8. Nothing is enabled or started: the
# installation prints how to. Purging removes the user, /var/lib/d8 and
# /etc/d8.
set -euo pipefail
version=$1 arch=$2 bin=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/d8

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/d8" \
  "$pkg/usr/share/doc/d8" "$pkg/usr/share/applications"
install -m 0755 "$bin/d8" "$bin/d8-desktop" "$pkg/usr/bin/"
for unit in d8-orchestrator.service d8-worker.service; do
  # The packaged binary's path; the comment's manual steps do not apply.
  sed -e 's#/usr/local/bin/d8#/usr/bin/d8#g' -e '/^# Install:/,/^# The join token/d' \
    "$root/installer/$unit" > "$pkg/lib/systemd/system/$unit"
  chmod 0644 "$pkg/lib/systemd/system/$unit"
done
install -m 0600 "$here/worker.env" "$pkg/etc/d8/worker.env"
install -m 0644 "$root/installer/linux/d8-desktop.desktop" "$pkg/usr/share/applications/"
install -m 0644 "$here/copyright" "$pkg/usr/share/doc/d8/copyright"
# One man page per command (installer/man/, checked against the CLI by
# tests/it/man.rs).
install -d "$pkg/usr/share/man/man1"
for page in "$root"/installer/man/*.1; do
  gzip -9n < "$page" > "$pkg/usr/share/man/man1/$(basename "$page").gz"
  chmod 0644 "$pkg/usr/share/man/man1/$(basename "$page").gz"
done
sed "s/@VERSION@/$version/" "$here/changelog" | gzip -9n > "$pkg/usr/share/doc/d8/changelog.gz"
chmod 0644 "$pkg/usr/share/doc/d8/changelog.gz"
for s in postinst prerm postrm; do
  install -m 0755 "$here/$s" "$pkg/DEBIAN/$s"
done
echo /etc/d8/worker.env > "$pkg/DEBIAN/conffiles"

# The newest glibc symbol version the binaries need.
objdump=objdump
[ "$arch" = arm64 ] && objdump=aarch64-linux-gnu-objdump
glibc=$("$objdump" -T "$bin/d8" "$bin/d8-desktop" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@GLIBC@/$glibc/" \
  "$here/control" > "$pkg/DEBIAN/control"

deb="$out/d8_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
