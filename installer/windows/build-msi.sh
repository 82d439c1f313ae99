#!/usr/bin/env bash
# Builds dist/d8-<version>-windows-x64.msi with wixl (msitools).
# Usage: build-msi.sh VERSION BIN_DIR OUT_DIR
set -euo pipefail
version=$1 bin=$(cd "$2" && pwd) out=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$(cd "$out" && pwd)
sed -e "s/@VERSION@/$version/" -e "s#@BIN@/##g" "$here/d8.wxs" > "$work/d8.wxs"
# wixl finds File/@Source from the current directory, and ignores
# Package/@Platform: the architecture is given here.
(cd "$bin" && wixl -a x64 -o "$out/d8-$version-windows-x64.msi" "$work/d8.wxs")
echo "$out/d8-$version-windows-x64.msi"
