#!/usr/bin/env bash
# Type-checks d8 and the desktop app for macOS (aarch64-apple-darwin) on
# Linux: every `cfg(target_os = "macos")` path (the LaunchAgent service, the
# Keychain store, the app's macOS code) is compiled, nothing is linked.
#
# Apple's SDK cannot be had here. The one C dependency, ring, compiles its C
# with clang for the target; the four headers it needs beyond clang's own
# come from installer/macos/typecheck/ (stand-ins written for this check,
# never used for anything that runs). A real build: installer/macos/build-macos.sh on a Mac.
# Needs: clang and llvm-ar (Debian: clang, llvm), the Rust target.
# `typecheck.sh clippy` lints instead (warnings are errors), as check.sh does.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$(pwd)/installer/macos/typecheck
sdk=$(mktemp -d)   # SDKROOT: an empty stand-in, so cc-rs does not look for Xcode
trap 'rm -rf "$sdk"' EXIT
export SDKROOT=$sdk CC_aarch64_apple_darwin=clang AR_aarch64_apple_darwin=llvm-ar \
  CFLAGS_aarch64_apple_darwin="-isystem $here"
if [ "${1:-check}" = clippy ]; then
  cargo clippy --workspace --all-targets --locked --target aarch64-apple-darwin -- -D warnings
else
  cargo check --workspace --all-targets --locked --target aarch64-apple-darwin
fi
