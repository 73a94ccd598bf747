#!/usr/bin/env bash
# Fuzz Gemma Chat's file parsers with cargo-fuzz (libFuzzer, nightly toolchain); see fuzz/README.md.
#
#   scripts/fuzz.sh TARGET SECONDS   run one target, print libFuzzer's final statistics
#   scripts/fuzz.sh --all SECONDS    run every target for SECONDS each; fails on any finding
#   scripts/fuzz.sh --replay         run every target once over its committed seeds (CI: the
#                                    same inputs every time, so a red run is a regression)
#   scripts/fuzz.sh --build          build the targets only
#   scripts/fuzz.sh --list           list the targets
#
# Limits: 2 GB RSS (and per allocation), a per-input timeout, one process (no -jobs/-fork).
# The corpus grows in fuzz/work/corpus/TARGET (seeded from the committed fuzz/corpus/TARGET);
# crashing, hanging and out-of-memory inputs land in fuzz/work/artifacts/TARGET.  Builds go to
# fuzz/target, away from the stable workspace's target folder.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
TOOLS=${GEMMA_CHAT_TOOLS:-$HOME/.cache/gemma-chat-tools}
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(safetensors gguf image audio messages mic_convert)

# Longest input libFuzzer makes (bytes; the seeds fit) and the per-input timeout (seconds).
max_len() {
  case $1 in
    gguf) echo 16384 ;;
    audio) echo 8192 ;;
    *) echo 4096 ;;
  esac
}
input_timeout() {
  case $1 in
    audio) echo 30 ;;
    *) echo 10 ;;
  esac
}

# Scratch folders (`fuzz/src/lib.rs`) of fuzz processes that have ended; a run beside this one
# keeps its own.
remove_stale_scratch() {
  local dir
  for dir in /dev/shm/gemma-chat-fuzz-*; do
    [ -d "$dir" ] && ! kill -0 "${dir##*-}" 2>/dev/null && rm -rf "$dir"
  done
  return 0
}

usage() {
  sed -n '2,8s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

ensure_tools() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
  fi
  export PATH="$TOOLS/bin:$PATH"
  if ! cargo-fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
  fi
}

build() {
  # Its own target folder and lock file (fuzz/target, fuzz/Cargo.lock); debug assertions on,
  # so that integer overflows count as findings.
  (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo +nightly fuzz build --debug-assertions "$@")
}

# Run one target for $2 seconds (0: each committed seed once, nothing new); prints a summary
# line, returns libFuzzer's status.
run_target() {
  local target=$1 seconds=$2
  local inputs=("$FUZZ/work/corpus/$target" "$FUZZ/corpus/$target") budget=(-max_total_time="$seconds")
  if [ "$seconds" -eq 0 ]; then
    inputs=("$FUZZ/corpus/$target") budget=(-runs=0)
  fi
  local corpus="$FUZZ/work/corpus/$target" artifacts="$FUZZ/work/artifacts/$target/"
  local log="$FUZZ/work/logs/$target.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  local status=0
  (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo +nightly fuzz run --debug-assertions "$target" \
    "${inputs[@]}" -- \
    "${budget[@]}" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout="$(input_timeout "$target")" -max_len="$(max_len "$target")" \
    -print_final_stats=1 -artifact_prefix="$artifacts") >"$log" 2>&1 || status=$?
  grep -E '^stat::|^(==[0-9]+== )?(ERROR|SUMMARY):|^Done [0-9]+ runs' "$log" || true
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    echo "fuzz $target: ${runs:-?} executions in $seconds s, no findings"
  else
    echo "fuzz $target: FAILED (status $status) after ${runs:-?} executions; log $log, inputs in $artifacts" >&2
    tail -n 40 "$log" >&2
  fi
  return "$status"
}

[ $# -ge 1 ] || usage
case $1 in
  --list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
  --build)
    ensure_tools
    build
    ;;
  --all | --replay)
    if [ "$1" = --replay ]; then
      [ $# -eq 1 ] || usage
      seconds=0
    else
      [ $# -eq 2 ] || usage
      seconds=$2
    fi
    ensure_tools
    build
    failed=()
    for target in "${TARGETS[@]}"; do
      run_target "$target" "$seconds" || failed+=("$target")
    done
    remove_stale_scratch
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzzing found problems in: ${failed[*]}" >&2
      exit 1
    fi
    ;;
  -*)
    usage
    ;;
  *)
    [ $# -eq 2 ] || usage
    printf '%s\n' "${TARGETS[@]}" | grep -qx "$1" || { echo "unknown fuzz target $1" >&2; usage; }
    ensure_tools
    build "$1"
    status=0
    run_target "$1" "$2" || status=$?
    remove_stale_scratch
    exit "$status"
    ;;
esac
