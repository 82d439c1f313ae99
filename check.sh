#!/usr/bin/env bash
# Everything CI checks, plus formatting and lints. Run before every commit.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
bash .ci/run
