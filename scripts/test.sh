#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, Rust tests (parity with the committed
# reference outputs included). Runs from a fresh clone, as root or with sudo, with no GPU,
# no display and no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/system-deps.sh
install_system_deps

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
