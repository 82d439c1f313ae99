#!/usr/bin/env bash
# Assembles dist/d8-<version>-macos-app-layout.zip: d8.app with its
# Info.plist, PkgInfo and an empty Contents/MacOS. macOS binaries cannot be
# linked on Linux (ring's build needs Apple's SDK); on a Mac,
# installer/macos/build-macos.sh builds them into the same bundle.
# Usage: build-layout.sh VERSION OUT_DIR
set -euo pipefail
version=$1 out=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$work/d8-$version-macos
install -d "$dir/d8.app/Contents/MacOS" "$dir/d8.app/Contents/Resources"
install -m 0644 "$here/Info.plist" "$dir/d8.app/Contents/Info.plist"
printf 'APPL????' > "$dir/d8.app/Contents/PkgInfo"
cat > "$dir/README.txt" <<TXT
d8 $version for macOS: the application bundle without its programs, which
can only be built on a Mac. From a clone of d8, on the Mac:

    installer/macos/build-macos.sh

builds d8 and d8-desktop into dist/d8.app and zips it.
TXT
(cd "$work" && zip -qr "$out/d8-$version-macos-app-layout.zip" "d8-$version-macos")
echo "$out/d8-$version-macos-app-layout.zip"
