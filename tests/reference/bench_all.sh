#!/usr/bin/env bash
# One sitting of the E2B comparison in docs/benchmarks.md: our engine, llama.cpp and PyTorch,
# 2 threads, one big process at a time.  Needs (outside the repo, never committed):
#   $FULL/E2B            tests/reference/make_full_size.py --variant E2B --out $FULL
#   $FULL/e2b-*.gguf     convert_hf_to_gguf.py (bf16) + llama-quantize Q8_0 / Q4_K_M
#   $LLAMA/$LLAMA_BUILD/bin   llama-bench built from the llama-cpp-python sdist (see the doc)
#   target/release/examples/bench   cargo build --release -p gemma3n --example bench (portable:
#                                   no RUSTFLAGS; GEMMA_CHAT_CPU picks the kernels' level)
set -euo pipefail
FULL=${FULL:-/work/fullsize}
LLAMA=${LLAMA:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp}
LLAMA_BUILD=${LLAMA_BUILD:-build}
PY=${PY:-/work/venv-ref/bin/python}
PP=${PP:-128}
TG=${TG:-64}
OUT=${OUT:-$FULL/results}
FORMATS=${FORMATS:-q8_0:Q8_0 q4k:Q4_K_M bf16:BF16}
OURS=${OURS:-target/release/examples/bench}
TORCH=${TORCH:-1}
TORCH_TG=${TORCH_TG:-$TG}
mkdir -p "$OUT"
peak() { /usr/bin/time -f 'peak_rss_kb=%M' "$@"; }

gcc -O3 -march=native -fopenmp tests/reference/bench_bandwidth.c -o "$OUT/bandwidth"
OMP_NUM_THREADS=2 "$OUT/bandwidth" > "$OUT/bandwidth.txt"
for fmt in $FORMATS; do
  ours=${fmt%%:*} gguf=${fmt##*:}
  peak "$OURS" "$FULL/E2B" --quant "$ours" --threads 2 \
    --prompt-tokens "$PP" --gen-tokens "$TG" > "$OUT/ours-$ours.txt" 2>&1
  extra=()
  [ "$gguf" != BF16 ] && extra=(--repack 0)   # llama.cpp's AMX path crashes on quantised Gemma 3n
  peak "$LLAMA/$LLAMA_BUILD/bin/llama-bench" -m "$FULL/e2b-${gguf,,}.gguf" -t 2 -p "$PP" -n "$TG" -r 1 \
    "${extra[@]}" -o json > "$OUT/llama-$ours.txt" 2>&1
done
[ "$TORCH" = 1 ] && peak "$PY" tests/reference/bench_torch.py "$FULL/E2B" --threads 2 \
  --prompt-tokens "$PP" --gen-tokens "$TORCH_TG" > "$OUT/torch-bf16.txt" 2>&1
grep -H -E 'read_gb_s_4k|prefill_tok_s|avg_ts|peak_rss_kb' "$OUT"/*.txt
