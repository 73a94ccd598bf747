#!/usr/bin/env bash
# The API server against the real `openai` Python client and curl, on the tiny fixture C.
# Makes its own small venv from PyPI (cached under ~/.cache/gemma-chat-tools), builds the CLI,
# and prints `N passed, 0 failed` (non-zero exit on any failure).  The client transcript goes to
# ${OPENAI_TRANSCRIPT:-target/openai-transcript.md}.
set -euo pipefail
cd "$(dirname "$0")/../.."

requirements=tests/openai/requirements.txt
venv="$HOME/.cache/gemma-chat-tools/openai-venv-$(sha256sum "$requirements" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  mv "$venv.partial" "$venv"
fi

cargo build --quiet --locked -p gemma-chat-cli
target="${CARGO_TARGET_DIR:-target}"
"$venv/bin/python" tests/openai/check.py \
  --bin "$target/debug/gemma-chat" \
  --model tests/fixtures/C/model \
  --media tests/fixtures/C \
  --transcript "${OPENAI_TRANSCRIPT:-$target/openai-transcript.md}"
