"""PyTorch (transformers) anchor for docs/benchmarks.md: bf16 text decoder, greedy decoding.

    /work/venv-ref/bin/python tests/reference/bench_torch.py /work/fullsize/E2B --threads 2

Prints one JSON line with the same fields as `gemma-chat bench --json`: prefill of a synthetic
prompt (pp), then `--gen-tokens` single-token steps (tg) with the KV cache.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import Gemma3nForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = Gemma3nForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size_per_layer_input, (1, args.prompt_tokens), generator=g)

    with torch.inference_mode():
        t1 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        prefill_s = time.perf_counter() - t1
        past = out.past_key_values
        t2 = time.perf_counter()
        for _ in range(args.gen_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - t2

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "engine": "pytorch-bf16",
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "load_s": load_s,
        "ttft_ms": prefill_s * 1e3,
        "prefill_tok_s": args.prompt_tokens / prefill_s,
        "decode_tok_s": args.gen_tokens / decode_s,
        "peak_rss_mb": peak,
    }))


if __name__ == "__main__":
    main()
