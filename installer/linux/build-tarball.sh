#!/usr/bin/env bash
# Builds dist/d8-<version>-linux-<arch>.tar.gz (for distributions without
# dpkg): the binaries, their man pages, the systemd units, and install.sh.
# Usage: build-tarball.sh VERSION ARCH BIN_DIR OUT_DIR
set -euo pipefail
version=$1 arch=$2 bin=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=d8-$version-linux-$arch
dir=$work/$name
install -d "$dir"
install -m 0755 "$bin/d8" "$bin/d8-desktop" "$here/install.sh" "$dir/"
install -m 0644 "$root/installer/d8-orchestrator.service" "$root/installer/d8-worker.service" \
  "$here/d8-desktop.desktop" "$dir/"
install -m 0600 "$root/installer/deb/worker.env" "$dir/worker.env"
install -d "$dir/man"
install -m 0644 "$root"/installer/man/*.1 "$dir/man/"
tar -C "$work" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
