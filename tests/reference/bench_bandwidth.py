"""Memory read bandwidth for the decode bound in docs/benchmarks.md (STREAM-like sum).

    /work/venv-ref/bin/python tests/reference/bench_bandwidth.py --threads 2

Sums a 2 GiB f32 buffer (far larger than the caches) several times with torch's vectorised,
multi-threaded reduction and prints one JSON line: the median read rate in GB/s.  With the
kernel's transparent huge pages on `madvise`, the buffer sits on ordinary 4 KiB pages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def rate(buf: torch.Tensor, repeats: int) -> float:
    buf.sum()  # fault the pages in and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return buf.numel() * buf.element_size() / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = int(args.gib * (1 << 30)) // 4
    buf = torch.ones(n, dtype=torch.float32)
    print(json.dumps({"threads": args.threads, "gib": args.gib,
                      "read_gb_s": rate(buf, args.repeats)}))


if __name__ == "__main__":
    main()
