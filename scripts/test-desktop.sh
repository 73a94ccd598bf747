#!/usr/bin/env bash
# The whole desktop test flow, from a cold Debian machine (root, no display, 2 cores):
# system packages, npm, tauri-driver, UI build, Rust command tests, Vitest, UI tests in headless
# Chromium against mocked IPC, and end-to-end tests in the real app window under Xvfb.
# Screenshots and the app's log land in $ARTIFACTS_DIR (default: artifacts/desktop).
# `--e2e-only` runs only the end-to-end tests, on the app and UI already built (`APP_BIN` names the
# binary when it is not target/debug/gemma-chat-desktop, e.g. with a CARGO_TARGET_DIR elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export ARTIFACTS_DIR=${ARTIFACTS_DIR:-$ROOT/artifacts/desktop}
TOOLS=${GEMMA_CHAT_TOOLS:-$HOME/.cache/gemma-chat-tools}
TAURI_DRIVER_VERSION=2.1.0
mkdir -p "$ARTIFACTS_DIR"

step() { printf '\n== %s\n' "$*"; }

if [ "${1:-}" != --e2e-only ]; then
  step "system packages"
  source scripts/system-deps.sh
  install_system_deps

  step "tauri-driver (cached in $TOOLS)"
  if [ ! -x "$TOOLS/bin/tauri-driver" ]; then
    cargo install tauri-driver --version "$TAURI_DRIVER_VERSION" --locked --root "$TOOLS"
  fi

  step "npm ci and UI builds"
  npm ci --no-audit --no-fund
  npm run build
  npm run build:mock

  step "UI unit tests (Vitest)"
  npm test

  step "Rust: build the app, test the commands"
  cargo build --locked -p gemma-chat-desktop
  cargo test --locked -p gemma-chat-desktop

  step "UI tests in headless Chromium (mocked IPC)"
  npm run test:ui
fi

step "end-to-end in the real window (Xvfb + tauri-driver + WebKitWebDriver)"
DISPLAY_NUM=${DISPLAY_NUM:-99}
PORT=${WEBDRIVER_PORT:-4444}
# WebKitWebDriver, behind tauri-driver (its default, 4445, would be shared by concurrent runs).
NATIVE_PORT=$((PORT + 1))
export HUB_PORT=${HUB_PORT:-4480}
E2E_HOME=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Gone before the next run takes the same display and port.
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$E2E_HOME"
}
trap cleanup EXIT
# Another run's display, drivers or Hub would mix its app into this one: refuse instead.
for port in "$PORT" "$NATIVE_PORT" "$HUB_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is taken (another E2E run?): set WEBDRIVER_PORT and HUB_PORT" >&2
    exit 1
  fi
done
if [ -e "/tmp/.X$DISPLAY_NUM-lock" ]; then
  echo "display :$DISPLAY_NUM is taken (another E2E run?): set DISPLAY_NUM" >&2
  exit 1
fi
Xvfb ":$DISPLAY_NUM" -screen 0 1280x800x24 -nolisten tcp >"$ARTIFACTS_DIR/xvfb.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  [ -S "/tmp/.X11-unix/X$DISPLAY_NUM" ] && break
  sleep 0.1
done
export DISPLAY=":$DISPLAY_NUM"
# What the app reads: a throwaway data folder, and a WAV file standing in for the microphone.
export GEMMA_CHAT_DATA_DIR="$E2E_HOME/data"
export GEMMA_CHAT_TEST_MIC="$ROOT/tests/fixtures/C/audio_16k_mono.wav"
export XDG_DOWNLOAD_DIR="$E2E_HOME/downloads"
# Model downloads go to a throwaway Hugging Face cache, from a fake Hub the E2E test serves.
export HF_HOME="$E2E_HOME/hf"
export HF_ENDPOINT="http://127.0.0.1:$HUB_PORT"
# The app's log of this run; the E2E test prints its tail when a test fails.
export GEMMA_CHAT_LOG_DIR="$ARTIFACTS_DIR/logs"
rm -rf "$GEMMA_CHAT_LOG_DIR"
"$TOOLS/bin/tauri-driver" --port "$PORT" --native-port "$NATIVE_PORT" >"$ARTIFACTS_DIR/tauri-driver.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
APP_BIN="${APP_BIN:-$ROOT/target/debug/gemma-chat-desktop}" WEBDRIVER_PORT=$PORT npm run test:e2e
import -window root "$ARTIFACTS_DIR/e2e/screen-at-end.png" 2>/dev/null || true
step "all desktop tests passed; screenshots in $ARTIFACTS_DIR"
