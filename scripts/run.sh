#!/usr/bin/env bash
# Set up everything a fresh Debian/Ubuntu machine needs, build the desktop app and the
# `gemma-chat` command (release, portable: the CPU kernels are chosen at run time), and start the app. With no model
# configured it opens the bundled demo model, so this needs no network beyond the package
# registries. Arguments are passed to the app.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
install_system_deps
npm ci --no-audit --no-fund
npm run build
cargo build --release -p gemma-chat-desktop -p gemma-chat-cli
echo "The command line is at target/release/gemma-chat (try: target/release/gemma-chat --help)."
exec target/release/gemma-chat-desktop "$@"
