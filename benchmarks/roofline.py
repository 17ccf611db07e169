"""How close a CPU frame is to what the CPU can compute: the forward's arithmetic against this core's
best fp32 matmul rate, and what that bounds the speed-up over the reference to.

    python benchmarks/roofline.py --config sonata --threads 1 --record

The cloud is vs_reference.py's (the indoor room reduced to one point per 2 cm voxel), so the bound
applies to its recorded comparison (`--reference-result`, default benchmarks/results/vs_reference_cpu.json,
read only when its voxel count and thread count match this run's). A shared machine's speed changes
from hour to hour, so every time here is measured in this run and the reference enters only through
the recorded ratio.

FLOPs are counted from what the forward must compute, whatever the kernel: every Linear (rows x in x
out x 2), every sparse conv over its found neighbour pairs only (a kernel that skips nothing computes
more), every attention over its patches' scores (queries x keys x head dim x 4: q.k and p.v), with the
reference's padding copies as keys. The rates are measured here: the best of large fp32 matmuls
(`gemm_gflops`, what MKL reaches on this core) and scaled_dot_product_attention at PTv3's patch shape
(1024 x 1024, head dim 16). `floor_ms`: all FLOPs at the matmul rate, a lower bound for any fp32
implementation on these threads; `floor_with_attention_ms`: the attention at the measured SDPA rate
instead. `speedup_bound`: the reference's time over the floor (with every non-matmul op free), that
is the recorded speed-up times `frame_over_floor`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, emit, summarize
from encoder import StageClock
from torch import nn
from vs_reference import ProjectRunner, indoor_cloud

import sonata_model as sm
from sonata_model.attention import SerializedAttention
from sonata_model.sparse_conv import SubMConv3d


def forward_flops(encoder: sm.SonataEncoder, runner: ProjectRunner) -> Counter:
    """FLOPs of one forward of the runner's frame by (kind, stage) (see the module docstring)."""
    flops: Counter = Counter()

    def linear(module: nn.Linear, args) -> int:
        return 2 * args[0].shape[:-1].numel() * module.in_features * module.out_features

    def conv(module: SubMConv3d, args) -> int:
        level = args[1]
        table = level.neighbours[: level.num_voxels] if level.pairs is None else None
        found = int((table < level.capacity).sum()) if table is not None else sum(level.pairs.counts) + level.num_voxels
        return 2 * found * module.in_channels * module.out_channels

    def attention(module: SerializedAttention, args) -> int:
        layout = args[1]
        partial = layout.num_patches - layout.full_patches
        scores = layout.full_patches * layout.length**2 + partial * layout.query_length * layout.length
        return 4 * scores * module.channels  # heads x head dim = channels

    counters = {
        nn.Linear: ("linear", linear),
        SubMConv3d: ("conv", conv),
        SerializedAttention: ("attention", attention),
    }

    def hook(name: str):
        kind, count = counters[type(encoder.get_submodule(name))]
        stage = int(name.split(".")[1][3:]) if name.startswith("enc.") else 0  # the embedding feeds stage 0

        def record(module: nn.Module, args, _output) -> None:
            flops[kind, stage] += count(module, args)

        return record

    modules = [name for name, module in encoder.named_modules() if type(module) in counters]
    hooks = [encoder.get_submodule(name).register_forward_hook(hook(name)) for name in modules]
    try:
        runner.frame()
    finally:
        for hook in hooks:
            hook.remove()
    return flops


def best_rate(run, flops: float, repeats: int = 5) -> float:
    """GFLOPS of the fastest of `repeats` runs after one warm-up."""
    run()
    best = min(_seconds(run) for _ in range(repeats))
    return flops / best / 1e9


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def gemm_gflops() -> float:
    """The best fp32 matmul rate over a few large shapes (MKL's own sweet spots on this core)."""
    rates = []
    for m, k, n in ((2048, 2048, 2048), (8192, 1024, 1024), (4096, 384, 1536)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates.append(best_rate(lambda a=a, b=b: a @ b, 2 * m * k * n))
    return max(rates)


def sdpa_gflops() -> float:
    """scaled_dot_product_attention at PTv3's shape: 1024-slot patches, head dim 16 (fp32)."""
    q = torch.randn(32, 3, 1024, 16)
    return best_rate(lambda: F.scaled_dot_product_attention(q, q, q), 4 * 32 * 3 * 1024 * 1024 * 16)


def recorded_speedup(path: Path, voxels: int, threads: int) -> float | None:
    """vs_reference.py's recorded speed-up on the same cloud and threads (its two sides alternated, so the
    ratio holds whatever the machine's speed that day), if it recorded one."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result["voxels"]["reference"] != voxels or result["reference"]["torch_threads"] != threads:
        return None
    return result["speedup"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sonata", choices=sorted(sm.CONFIGS))
    parser.add_argument("--points", type=int, default=100_000, help="room points before the voxel reduction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-result", type=Path, default=RESULTS / "vs_reference_cpu.json")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write benchmarks/results/roofline_<config>_cpu[_<threads>threads].json (no suffix for one thread)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    encoder = sm.SonataEncoder(sm.get_config(args.config)).eval()
    cloud = indoor_cloud(args.points, encoder.config.transform("indoor").grid, args.seed)
    runner = ProjectRunner(encoder, cloud, "cpu", "fp32")
    with torch.inference_mode():
        flops = forward_flops(encoder, runner)  # also the warm-up
        clock = StageClock(encoder, torch.device("cpu"))
        frames = []
        for _ in range(args.repeats):
            frames.append(runner.frame())
            clock.collect()
    frame_ms = summarize(frames)
    total = sum(flops.values())
    attention = sum(value for (kind, _), value in flops.items() if kind == "attention")
    gemm, sdpa = gemm_gflops(), sdpa_gflops()
    floor_ms = total / gemm / 1e6
    with_attention_ms = (total - attention) / gemm / 1e6 + attention / sdpa / 1e6
    by_kind, by_stage = Counter(), Counter()
    for (kind, stage), value in flops.items():
        by_kind[kind] += value
        by_stage[stage] += value
    result = {
        "config": args.config,
        "voxels": runner.voxels,
        "threads": args.threads,
        "gflop": {kind: round(value / 1e9, 2) for kind, value in sorted(by_kind.items())},
        "gflop_total": round(total / 1e9, 2),
        "gflop_per_stage": [round(by_stage[s] / 1e9, 2) for s in sorted(by_stage)],
        "stage_ms": [summarize(clock.samples[s])["median_ms"] for s in sorted(clock.samples)],
        "gemm_gflops": round(gemm, 1),
        "sdpa_gflops": round(sdpa, 1),
        "floor_ms": round(floor_ms, 1),
        "floor_with_attention_ms": round(with_attention_ms, 1),
        "frame_ms": frame_ms,
        "achieved_gflops": round(total / frame_ms["median_ms"] / 1e6, 1),
        "frame_over_floor": round(frame_ms["median_ms"] / floor_ms, 2),
    }
    speedup = recorded_speedup(args.reference_result, runner.voxels, args.threads)
    if speedup is not None:  # reference / floor = (reference / ours) x (ours / floor), each ratio from one run
        result["recorded_speedup"] = {"file": args.reference_result.name, "speedup": speedup}
        result["speedup_bound"] = round(speedup * frame_ms["median_ms"] / floor_ms, 2)
        result["speedup_bound_with_attention"] = round(speedup * frame_ms["median_ms"] / with_attention_ms, 2)
    emit(f"roofline_{args.config}_cpu" + (f"_{args.threads}threads" if args.threads != 1 else ""), result, args.record)


if __name__ == "__main__":
    main()
