"""Time timm's MobileNet-V5 encoder (`mobilenetv5_300m_enc`, the Gemma 3n vision tower) on CPU.

Random weights, one 768x768 image, eval mode, no_grad, a fixed number of torch threads: the
reference point for `cargo run --release -p gemma3n --example vision_bench`.

    python bench_vision_timm.py --threads 2 --runs 5
    python bench_vision_timm.py --export /tmp/mnv5   # also write weights + input + output for a parity check

With --export, every layer scale is set to 1 (timm initialises them to 1e-5, which would hide most
of each block) and the weights are written with the checkpoint prefix
`model.vision_tower.timm_model.`, so the Rust example can load them and compare its output.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
import timm
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--export", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = timm.create_model("mobilenetv5_300m_enc", pretrained=False).eval()
    x = torch.rand(1, 3, args.size, args.size)

    with torch.no_grad():
        if args.export is not None:
            for name, p in model.named_parameters():
                if name.endswith("layer_scale.gamma"):
                    p.fill_(1.0)
        model(x)  # warm-up
        times, cpu = [], []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            out = model(x)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)

    params = sum(p.numel() for p in model.parameters())
    print(f"timm {timm.__version__} torch {torch.__version__} threads {args.threads}: "
          f"mobilenetv5_300m_enc ({params / 1e6:.1f} M params) on 1x3x{args.size}x{args.size} -> {list(out.shape)}")
    print(f"wall: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.runs} runs")
    # On a shared machine the process's CPU time is the steadier figure.
    print(f"cpu:  median {statistics.median(cpu):.3f} s, min {min(cpu):.3f} s")

    if args.export is not None:
        args.export.mkdir(parents=True, exist_ok=True)
        prefix = "model.vision_tower.timm_model."
        state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(args.export / "model.safetensors"))
        save_file({"pixel_values": x, "output": out.contiguous()}, str(args.export / "io.safetensors"))
        print(f"wrote {args.export}/model.safetensors and io.safetensors")


if __name__ == "__main__":
    main()
