"""Time transformers' Gemma3nAudioEncoder on one 30-second clip at the released audio-config shape
(default Gemma3nAudioConfig: width 1536, 12 conformer blocks, 128 mel bins), random init, fp32, CPU.

    python bench_audio_tower.py [--threads 2] [--runs 3] [--bf16-weights]

Compare with `cargo run --release -p gemma3n --example audio_tower_bench` (RAYON_NUM_THREADS=2).
Besides wall time it reports the process CPU time per run, which other jobs disturb far less.
--bf16-weights rounds the weights to bf16 values, as in the released checkpoints (computation
stays fp32; the option exists so both programs run on the same kind of weights).
"""

import argparse
import statistics
import time

import torch
from transformers import Gemma3nAudioConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

FRAMES = 2997  # 480 000 samples, 513-sample windows every 160 samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bf16-weights", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Gemma3nAudioConfig()
    model = Gemma3nAudioEncoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
            if args.bf16_weights:
                p.copy_(p.bfloat16().float())
    mel = torch.randn(1, FRAMES, cfg.input_feat_size)
    padding = torch.zeros(1, FRAMES, dtype=torch.bool)  # the encoder's mask is True = padding
    with torch.inference_mode():
        t = time.perf_counter()
        out = model(mel, padding)
        print(f"warm-up: {time.perf_counter() - t:.3f} s, output {tuple(out.last_hidden_state.shape)}")
        times, cpu = [], []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            model(mel, padding)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    print(
        f"transformers audio tower, 30 s clip ({FRAMES} frames), {args.threads} threads: "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.runs} runs, "
        f"median CPU time {statistics.median(cpu):.2f} s"
    )


if __name__ == "__main__":
    main()
