#!/usr/bin/env bash
# One sitting of issue 12's comparison (docs/benchmarks.md, "Sitting I"): per CPU level, our
# portable build against llama.cpp built for that level from the llama-cpp-python sdist, on the
# same E2B checkpoint and GGUFs, 2 threads, pp$PP + tg$TG, $ROUNDS rounds.  Needs (never
# committed; prepare_bench.sh makes them all):
#   $FULL/E2B, $FULL/e2b-{bf16,q8_0,q4_k_m}.gguf
#   $LLAMA/build-avx2/bin/llama-bench    AVX2+FMA+F16C; AVX-512, AVX-VNNI and AMX off
#   $LLAMA/build-native/bin/llama-bench  -DGGML_NATIVE=ON
#   $OURS        cargo build --release -p gemma3n --example bench (no RUSTFLAGS)
#   $OURS_NATIVE the same with RUSTFLAGS="-C target-cpu=native" in another target folder
# Prints one line per run: round, level, engine, format, then the engine's own figures.
set -euo pipefail
FULL=${FULL:-/work/fullsize}
LLAMA=${LLAMA:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp}
OURS=${OURS:-target/release/examples/bench}
OURS_NATIVE=${OURS_NATIVE:-}
PP=${PP:-128}
TG=${TG:-64}
ROUNDS=${ROUNDS:-2}
LEVELS=${LEVELS:-avx2:build-avx2 native:build-native}

ours() { # level binary format model
  local out
  out=$(GEMMA_CHAT_CPU=$1 "$2" "$4" --quant "$3" --threads 2 --prompt-tokens "$PP" \
    --gen-tokens "$TG" 2>/dev/null | grep '^{')
  echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("pp %.1f tg %.2f rss_mb %.0f level %s" % (r["prefill_tok_s"], r["decode_tok_s"], r["peak_rss_mb"], r["cpu_level"]))'
}
llama() { # build gguf repack
  local rss
  /usr/bin/time -f '%M' -o /tmp/llama-rss "$LLAMA/$1/bin/llama-bench" -m "$FULL/e2b-$2.gguf" \
    -t 2 -p "$PP" -n "$TG" -r 1 --repack "$3" -o json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("pp %.1f tg %.2f" % (r[0]["avg_ts"], r[1]["avg_ts"]), end="")'
  rss=$(cat /tmp/llama-rss)
  echo " rss_mb $((rss / 1024))"
}

for round in $(seq "$ROUNDS"); do
  for entry in $LEVELS; do
    level=${entry%%:*} build=${entry##*:}
    formats="q4k:q4_k_m q8_0:q8_0"
    [ "$level" = native ] && formats="$formats bf16:bf16"
    for fmt in $formats; do
      ours_fmt=${fmt%%:*} gguf=${fmt##*:}
      echo "$round $level ours-portable $ours_fmt $(ours "$level" "$OURS" "$ours_fmt" "$FULL/E2B")"
      if [ "$level" = native ] && [ -n "$OURS_NATIVE" ]; then
        echo "$round $level ours-native-build $ours_fmt $(ours "$level" "$OURS_NATIVE" "$ours_fmt" "$FULL/E2B")"
      fi
      [ "$ours_fmt" = q4k ] &&
        echo "$round $level ours-portable-on-gguf $gguf $(ours "$level" "$OURS" q4k "$FULL/e2b-$gguf.gguf")"
      if [ "$gguf" = bf16 ]; then
        echo "$round $level llama.cpp $gguf $(llama "$build" "$gguf" 1)"
      else
        echo "$round $level llama.cpp-repack0 $gguf $(llama "$build" "$gguf" 0)"
        echo "$round $level llama.cpp-repack1 $gguf $(llama "$build" "$gguf" 1)"
      fi
    done
  done
done
