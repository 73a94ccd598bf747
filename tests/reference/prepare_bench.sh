#!/usr/bin/env bash
# Everything bench_levels.sh and bench_all.sh need, from nothing, on a fresh machine (about
# 15-25 minutes on 2 cores; ~45 GB of disk).  Nothing here is committed or needed by the tests:
#   $VENV        the pinned reference environment (tests/reference/requirements.txt)
#   $FULL/E2B    random bf16 weights at the real E2B shapes (make_full_size.py)
#   $LLAMA       llama.cpp from the llama-cpp-python 0.3.36 sdist, built twice:
#                build-avx2 (AVX2+FMA+F16C; AVX-512, VNNI and AMX off) and build-native
#   $FULL/e2b-{bf16,q8_0,q4_k_m}.gguf   llama.cpp's own converter, then llama-quantize
# Each step is skipped when its output exists.  Run from the repository root.
set -euo pipefail
VENV=${VENV:-/work/venv-ref}
FULL=${FULL:-/work/fullsize}
WORK=${WORK:-/work/llama}
SDIST=llama_cpp_python-0.3.36
LLAMA=$WORK/$SDIST/vendor/llama.cpp
here=$(cd "$(dirname "$0")" && pwd)

command -v cmake >/dev/null || { apt-get update && apt-get install -y cmake; }
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -r "$here/requirements.txt"
fi
[ -f "$FULL/E2B/model.safetensors.index.json" ] ||
  "$VENV/bin/python" "$here/make_full_size.py" --variant E2B --out "$FULL"

mkdir -p "$WORK"
if [ ! -d "$LLAMA" ]; then
  # The sdist itself, not a wheel; pip builds its metadata in an isolated environment.
  (cd "$WORK" && python3 -m pip download --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==${SDIST#*-}" -d . && tar xzf "$SDIST.tar.gz")
  # Move the embedding tables to the CPU only when they need padding (see pad_per_layer_table.py).
  python3 - "$LLAMA/conversion/gemma.py" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
old = """            data_torch = data_torch.to(device="cpu")

            vocab_size = self.hparams.get("vocab_size", 262400)
            current_size = data_torch.shape[0]  # First dimension is vocab_size

            if current_size < vocab_size:
"""
new = """            vocab_size = self.hparams.get("vocab_size", 262400)
            current_size = data_torch.shape[0]  # First dimension is vocab_size

            if current_size < vocab_size:
                data_torch = data_torch.to(device="cpu")
"""
if old not in src:
    raise SystemExit(f"{path}: the embedding-padding code is not where this patch expects it")
open(path, "w").write(src.replace(old, new))
EOF
fi
build() { # folder, cmake flags...
  local dir=$1
  shift
  [ -x "$LLAMA/$dir/bin/llama-bench" ] && return
  cmake -S "$LLAMA" -B "$LLAMA/$dir" -DCMAKE_BUILD_TYPE=Release -DLLAMA_OPENSSL=OFF "$@" >/dev/null
  cmake --build "$LLAMA/$dir" -j "$(nproc)" --target llama-bench llama-quantize >/dev/null
}
build build-avx2 -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
build build-native -DGGML_NATIVE=ON

if [ ! -f "$FULL/e2b-bf16.gguf" ]; then
  [ -d "$FULL/E2B-gguf-src" ] || python3 "$here/pad_per_layer_table.py" "$FULL/E2B" "$FULL/E2B-gguf-src"
  PYTHONPATH=$LLAMA/gguf-py "$VENV/bin/python" "$LLAMA/convert_hf_to_gguf.py" "$FULL/E2B-gguf-src" \
    --outtype bf16 --outfile "$FULL/e2b-bf16.gguf"
fi
for q in Q8_0 Q4_K_M; do
  out=$FULL/e2b-${q,,}.gguf
  [ -f "$out" ] || "$LLAMA/build-native/bin/llama-quantize" "$FULL/e2b-bf16.gguf" "$out" "$q" >/dev/null
done
ls -la "$FULL"/*.gguf
