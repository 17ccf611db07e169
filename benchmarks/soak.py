"""Soak: the perception node over thousands of 64-beam-size frames; resident memory and latency drift.

    python benchmarks/soak.py --frames 10000 --record      # CPU: `tiny` LiDAR model, random weights
    python benchmarks/soak.py --checkpoint model.pth --frames 2000 --device cuda
    python benchmarks/soak.py --checkpoint demo --sensor vlp16 --keep 0.08 0.2 --frames 2000 --record
        # the node as shipped (demo model and head) on small clouds (2-5k points): steady-state RSS

Frames are synthetic drive frames of a 64-beam sensor (about 120k points), each randomly thinned to
a fraction drawn in `--keep` (default 90-100 %) so that no two frames share a voxel count (real scans
never do, and shape-keyed caches are what leak). One frame at a time, each answered before the next
(reliable QoS). Reported: the node's RSS after the first frame, after `--settle` frames and at the
end, its growth after settling, and latency p50 / p99 per window of frames, so that a drift in either
shows.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit
from node_harness import benchmark_parameters, drive_messages, model_files, running_node

import sonata_model as sm


def thinned(msg, keep: float, rng: np.random.Generator):
    """A copy of `msg` (unorganized) keeping a random `keep` fraction of its points, in order."""
    step = msg.point_step
    points = np.frombuffer(bytes(msg.data), np.uint8).reshape(-1, step)
    rows = np.sort(rng.choice(len(points), int(len(points) * keep), replace=False))
    out = copy.copy(msg)
    out.height, out.width, out.row_step = 1, len(rows), len(rows) * step
    out.data = points[rows].tobytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(sm.CONFIGS))
    parser.add_argument(
        "--checkpoint", help="use this checkpoint instead of random weights of --config; 'demo': the shipped model"
    )
    parser.add_argument("--keep", type=float, nargs=2, default=(0.9, 1.0), help="fraction of each frame kept")
    parser.add_argument("--name", help="result name (default soak_<config or demo>_<device>)")
    parser.add_argument("--grid-size", type=float, default=0.1, help="voxel size (m) of the random-weight model")
    parser.add_argument("--sensor", default="hdl64")
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--settle", type=int, default=100)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak_"))
    lidar = {"in_channels": 4, "feature_keys": ("coord", "strength"), "grid_size": args.grid_size}
    encoder, head = model_files(args.config, args.checkpoint, workdir, **lidar)
    base = drive_messages(args.sensor, 20, with_color=False)
    rng = np.random.default_rng(0)
    parameters = benchmark_parameters(encoder, head, args.device, args.precision)
    start = time.monotonic()
    with running_node(workdir, parameters) as node:
        rss = {}
        trace, latencies, points = [], [], []
        for index in range(args.frames):
            msg = thinned(base[index % len(base)], rng.uniform(*args.keep), rng)
            points.append(msg.width)
            latencies.append(node.ask(msg))
            if index == 0:
                rss["first_frame"] = node.rss_mb()
            if index + 1 == args.settle:
                rss["after_settle"] = node.rss_mb()
            if (index + 1) % 100 == 0:
                trace.append({"frame": index + 1, "rss_mb": round(node.rss_mb(), 1)})
                print(f"{index + 1} frames, RSS {trace[-1]['rss_mb']} MB", flush=True)
        rss["end"] = node.rss_mb()
    windows = [
        {
            "frames": f"{w}-{min(w + args.window, len(latencies))}",
            "p50_ms": round(float(np.percentile(latencies[w : w + args.window], 50)), 2),
            "p99_ms": round(float(np.percentile(latencies[w : w + args.window], 99)), 2),
        }
        for w in range(0, len(latencies), args.window)
    ]
    after = [t["rss_mb"] for t in trace if t["frame"] > args.settle]
    model_name = "demo" if args.checkpoint == "demo" else args.config
    emit(
        args.name or f"soak_{model_name}_{args.device}",
        {
            "config": args.config,
            "checkpoint": args.checkpoint or f"random weights, coord + strength, grid {args.grid_size} m",
            "sensor": args.sensor,
            "frames": args.frames,
            "keep": list(args.keep),
            "points_per_frame": {"min": int(min(points)), "max": int(max(points))},
            "wall_s": round(time.monotonic() - start, 1),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "rss_growth_after_settle_mb": round(max(after, default=rss["end"]) - rss["after_settle"], 1),
            "latency_windows": windows,
            "rss_trace": trace,
        },
        args.record,
    )


if __name__ == "__main__":
    main()
