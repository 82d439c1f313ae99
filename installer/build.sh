#!/usr/bin/env bash
# Builds d8 and the desktop app for every platform this Linux machine can
# build for, and packages them into dist/:
#
#   dist/d8_<version>_arm64.deb, dist/d8_<version>_amd64.deb   Raspberry Pi OS / Debian / Ubuntu
#   dist/d8-<version>-linux-<arch>.tar.gz                        other distributions (install.sh inside)
#   dist/d8-<version>-windows-x64.msi                            per-user Windows installer
#   dist/d8-<version>-macos-app-layout.zip                       d8.app without its binaries (see below)
#
# Usage: installer/build.sh [TARGET ...]
#   TARGET: aarch64-unknown-linux-gnu, x86_64-unknown-linux-gnu, x86_64-pc-windows-gnu
#   (default: all three). Set D8_PROFILE=dev for a quick unoptimised build.
#
# It installs what it needs when it can (Rust targets with rustup; Debian's
# cross compilers, wixl and lintian with apt-get, as root) and says what it
# could not do. macOS binaries cannot be linked on Linux (ring's build needs
# Apple's SDK): on a Mac, `installer/build-macos.sh` builds them into the
# same layout.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
profile=${D8_PROFILE:-release}
out_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu x86_64-pc-windows-gnu)
dist=dist
mkdir -p "$dist"
problems=()
say() { printf '\n== %s\n' "$*"; }

# --- tools -------------------------------------------------------------
apt_need=()
for t in "${targets[@]}"; do
  case $t in
    aarch64-unknown-linux-gnu)
      command -v aarch64-linux-gnu-gcc >/dev/null || apt_need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
      command -v aarch64-linux-gnu-strip >/dev/null || apt_need+=(binutils-aarch64-linux-gnu) ;;
    x86_64-pc-windows-gnu)
      command -v x86_64-w64-mingw32-gcc >/dev/null || apt_need+=(gcc-mingw-w64-x86-64)
      command -v wixl >/dev/null || apt_need+=(wixl msitools) ;;
    x86_64-unknown-linux-gnu) command -v cc >/dev/null || apt_need+=(gcc libc6-dev) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done
command -v dpkg-deb >/dev/null || apt_need+=(dpkg)
command -v lintian >/dev/null || apt_need+=(lintian)
if [ ${#apt_need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${apt_need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_need[@]}"
  else
    echo "missing: ${apt_need[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi
toolchain=$(basename "$(readlink -f "$(rustc --print sysroot)")")
for t in "${targets[@]}"; do
  [ -d "$(rustc --print sysroot)/lib/rustlib/$t" ] || rustup target add --toolchain "$toolchain" "$t"
done

# --- build -------------------------------------------------------------
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
declare -A strip_for=(
  [aarch64-unknown-linux-gnu]=aarch64-linux-gnu-strip
  [x86_64-unknown-linux-gnu]=strip
  [x86_64-pc-windows-gnu]=x86_64-w64-mingw32-strip
)
for t in "${targets[@]}"; do
  say "building d8 and d8-desktop for $t ($profile)"
  start=$(date +%s)
  cargo build --locked --profile "$profile" --target "$t" -p d8 -p d8-desktop --bins
  exe=$([ "$t" = x86_64-pc-windows-gnu ] && echo .exe || true)
  mkdir -p "$dist/bin/$t"
  for b in d8 d8-desktop; do
    cp "target/$t/$out_dir/$b$exe" "$dist/bin/$t/$b$exe"
    "${strip_for[$t]}" "$dist/bin/$t/$b$exe"
  done
  echo "   $(( $(date +%s) - start )) s; $(du -h "$dist/bin/$t"/* | awk '{printf "%s %s  ", $2, $1}')"
done

# --- packages ----------------------------------------------------------
for t in "${targets[@]}"; do
  case $t in
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    *) continue ;;
  esac
  say "Debian package and tarball for $arch"
  deb=$(installer/deb/build-deb.sh "$version" "$arch" "$dist/bin/$t" "$dist")
  if lintian --fail-on error --suppress-tags-from-file installer/deb/lintian-suppressed "$deb"; then
    echo "   lintian: no errors"
  else
    problems+=("lintian reported errors for $deb")
  fi
  installer/linux/build-tarball.sh "$version" "$arch" "$dist/bin/$t" "$dist"
done
if printf '%s\n' "${targets[@]}" | grep -qx x86_64-pc-windows-gnu; then
  say "Windows installer"
  installer/windows/build-msi.sh "$version" "$dist/bin/x86_64-pc-windows-gnu" "$dist"
fi
say "macOS bundle layout"
installer/macos/build-layout.sh "$version" "$dist"

say "dist/"
(cd "$dist" && ls -l --block-size=K -- *.deb *.tar.gz *.msi *.zip 2>/dev/null || true)
echo
echo "Not built here: macOS binaries (Apple's SDK is needed to link; on a Mac: installer/macos/build-macos.sh)."
if [ ${#problems[@]} -gt 0 ]; then
  printf 'PROBLEM: %s\n' "${problems[@]}" >&2
  exit 1
fi
