#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, every Rust test (parity with the committed
# reference outputs included) and the desktop app's tests (UI unit tests, UI tests in headless
# Chromium, end-to-end tests in the real window). Runs from a fresh clone, as root or with sudo,
# with no GPU, no display and no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/system-deps.sh
install_system_deps

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
# The desktop app embeds the built UI, so the UI is built (and tested) before any workspace build.
scripts/test-desktop.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The model's parity tests again with the CPU kernels held to the baseline level (the run above
# used the best level this CPU has; the kernels' own tests cover every level in between).
GEMMA_CHAT_CPU=baseline cargo test --locked -p kernels -p gemma3n
# The API server against the real `openai` Python client and curl (its own small venv).
tests/openai/run.sh
# Every fuzz target over its committed seeds (nightly, cargo-fuzz): the same inputs every run.
scripts/fuzz.sh --replay
