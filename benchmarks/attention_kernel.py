"""How far torch's CPU attention is from a hand-written kernel at PTv3's shape (head dim 16).

    python benchmarks/attention_kernel.py --threads 1 --record

Times `F.scaled_dot_product_attention` and `kernels/attend16.cpp` (a register-blocked 16-lane kernel,
compiled here with torch.utils.cpp_extension: needs a C++ compiler and ninja; -O3 -march=native) on
the same (patches, heads, slots, 16) float32 patches (defaults: a `sonata` stage-0 level of ~41k
voxels: 40 patches of 1024 slots, 3 heads), alternating, and reports GFLOPS (queries x keys x 4 x 16)
and the largest difference. The answer decides whether a custom kernel could carry a CPU speed-up:
the kernel is not used by the project.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import emit, summarize
from torch.utils.cpp_extension import load

HEAD_DIM = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1024, help="patch length (a multiple of 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    kernel = load(
        "sonata_bench_attend16",
        [str(Path(__file__).parent / "kernels" / "attend16.cpp")],
        extra_cflags=["-O3", "-march=native", "-mprefer-vector-width=512"],
    )
    build_s = time.perf_counter() - start
    qkv = torch.randn(args.patches, args.slots, 3, args.heads, HEAD_DIM, generator=torch.Generator().manual_seed(0))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (P, H, L, 16) views, as SerializedAttention's
    scale = HEAD_DIM**-0.5
    runs = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2),
        "attend16": lambda: kernel.attend16(q, k, v, scale),
    }
    difference = (runs["sdpa"]() - runs["attend16"]()).abs().max().item()
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            begin = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - begin) * 1e3)
    gflop = args.patches * args.heads * args.slots**2 * HEAD_DIM * 4 / 1e9
    result = {"shape": [args.patches, args.heads, args.slots, HEAD_DIM], "gflop": round(gflop, 3)}
    for name, times in samples.items():
        summary = summarize(times)
        result[name] = {**summary, "gflops": round(gflop / summary["median_ms"] * 1e3, 1)}
    result["speedup"] = round(result["sdpa"]["median_ms"] / result["attend16"]["median_ms"], 2)
    result["max_abs_diff"] = difference
    result["build_s"] = round(build_s, 1)
    emit("attention_kernel_cpu", result, args.record)


if __name__ == "__main__":
    main()
