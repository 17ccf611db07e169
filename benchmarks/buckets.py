"""How many CUDA graphs a LiDAR stream needs: distinct plan signatures over a synthetic drive per
bucket growth, and the captures a graph cache of a given capacity makes (each capture is one slow frame).

    python benchmarks/buckets.py --config demo --sensor hdl64 --frames 40 --record

Runs on the CPU: a plan's signature depends on the voxels only, not on the device. Bucketed plans pad
every level to `SizeBuckets(growth=g)` capacities, so frames of similar size share a signature; a larger
growth means fewer signatures and more padding rows (reported as the mean padded share of level 0).
"""

from __future__ import annotations

import argparse
from collections import Counter, OrderedDict

import numpy as np
import torch
from common import emit

import sonata_model as sm
from sonata_model.synth.drive import generate_drive


def lru_captures(signatures: list[tuple], capacity: int) -> int:
    """Captures a least-recently-used cache of `capacity` graphs makes over the stream (as GraphedForward)."""
    cache: OrderedDict[tuple, None] = OrderedDict()
    captures = 0
    for signature in signatures:
        if signature in cache:
            cache.move_to_end(signature)
            continue
        captures += 1
        cache[signature] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return captures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", choices=sorted(sm.CONFIGS))
    parser.add_argument("--sensor", default="hdl64")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--growths", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    parser.add_argument("--capacities", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/buckets_<config>.json")
    args = parser.parse_args()

    frames = list(generate_drive(args.sensor, frames=args.frames, seed=args.seed))
    encoder = sm.SonataEncoder(sm.get_config(args.config)).eval()
    rows = []
    for growth in args.growths:
        segmenter = sm.Segmenter(encoder, None, device="cpu", buckets=sm.SizeBuckets(growth=growth))
        signatures, padding = [], []
        with torch.inference_mode():
            for frame in frames:
                level = (plan := segmenter.prepare([sm.Cloud(frame.coord, strength=frame.strength)]).plan).levels[0]
                signatures.append(plan.signature)
                padding.append(1 - level.num_voxels / level.capacity)
        rows.append(
            {
                "growth": growth,
                "distinct_signatures": len(Counter(signatures)),
                "captures_by_cache_capacity": {str(c): lru_captures(signatures, c) for c in args.capacities},
                "level0_padding_mean": round(float(np.mean(padding)), 3),
            }
        )
    emit(
        f"buckets_{args.config}",
        {"config": args.config, "sensor": args.sensor, "frames": args.frames, "seed": args.seed, "growths": rows},
        args.record,
    )


if __name__ == "__main__":
    main()
