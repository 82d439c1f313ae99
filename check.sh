#!/usr/bin/env bash
# Everything CI checks, plus formatting and lints. Run before every commit.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Windows and macOS code paths too (CI type-checks them; lints here).
cargo clippy --workspace --all-targets --locked --target x86_64-pc-windows-gnu -- -D warnings
bash installer/macos/typecheck.sh clippy
bash .ci/run
