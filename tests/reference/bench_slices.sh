#!/usr/bin/env bash
# One sitting of the MatFormer slice benchmark in docs/benchmarks.md: random-weight E4B
# (tests/reference/make_full_size.py --variant E4B --out $FULL) loaded whole and at three
# published slices, q4k, 2 threads, one process at a time, ROUNDS rounds interleaved.  Each line
# of $OUT/slices.jsonl is `gemma-chat bench --json` plus the slice and the process's peak RSS.
set -euo pipefail
FULL=${FULL:-/work/fullsize}
OUT=${OUT:-$FULL/results}
BIN=${BIN:-target/release/gemma-chat}
SLICES=${SLICES:-E2B E2.98B-layer E3.59B-layer full}
ROUNDS=${ROUNDS:-2}
PP=${PP:-32}
TG=${TG:-32}
mkdir -p "$OUT"
: > "$OUT/slices.jsonl"
for round in $(seq "$ROUNDS"); do
  for slice in $SLICES; do
    args=(bench --model "$FULL/E4B" --quant q4k --threads 2 --prompt-tokens "$PP" --gen-tokens "$TG" --json)
    [ "$slice" != full ] && args+=(--slice "$slice")
    /usr/bin/time -f 'peak_rss_kb=%M' -o "$OUT/time.txt" "$BIN" "${args[@]}" > "$OUT/bench.json"
    rss=$(sed -n 's/^peak_rss_kb=//p' "$OUT/time.txt")
    printf '{"round": %s, "slice": "%s", "process_peak_rss_kb": %s, "bench": %s}\n' \
      "$round" "$slice" "$rss" "$(cat "$OUT/bench.json")" | tee -a "$OUT/slices.jsonl"
  done
done
