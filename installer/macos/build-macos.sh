#!/usr/bin/env bash
# On a Mac, from a clone of d8: builds d8 and d8-desktop for this Mac and
# puts them in dist/d8.app, zipped as dist/d8-<version>-macos-<arch>.zip.
#   installer/macos/build-macos.sh
# Needs Xcode's command line tools (xcode-select --install) and Rust.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -s)" = Darwin ] || { echo "run this on macOS" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cargo build --release --locked -p d8 -p d8-desktop --bins
app=dist/d8.app
rm -rf "$app" && mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources"
cp installer/macos/Info.plist "$app/Contents/Info.plist"
printf 'APPL????' > "$app/Contents/PkgInfo"
cp target/release/d8 target/release/d8-desktop "$app/Contents/MacOS/"
strip "$app/Contents/MacOS/d8" "$app/Contents/MacOS/d8-desktop"
plutil -lint "$app/Contents/Info.plist"
(cd dist && ditto -c -k --keepParent d8.app "d8-$version-macos-$(uname -m).zip")
echo "dist/d8-$version-macos-$(uname -m).zip (unsigned: right-click > Open the first time)"
