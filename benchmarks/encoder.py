"""Encoder speed on a LiDAR-like frame: voxels and milliseconds per stage, total, peak memory.

    python benchmarks/encoder.py --config sonata --points 120000 --device cuda --precision bf16
    python benchmarks/encoder.py --config demo --points 30000 --device cpu --record

The frame is a synthetic 64-beam drive frame (sonata_model.synth), cropped or tiled to --points.
Weights are random (speed does not depend on them). Median of --repeats runs after --warmup runs.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from common import emit, summarize

import sonata_model as sm
from sonata_model.synth.drive import generate_drive


def lidar_frame(points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    frame = next(iter(generate_drive(sensor="hdl64", frames=1, seed=seed)))
    coord, strength = frame.coord, frame.strength
    reps = -(-points // len(coord))
    if reps > 1:  # tile with a small offset so that voxels stay distinct
        coord = np.concatenate([coord + np.float32(0.013 * k) for k in range(reps)])
        strength = np.tile(strength, reps)
    return coord[:points], strength[:points]


class StageClock:
    """Forward hooks on each stage: CUDA events (read at the end) or perf_counter on CPU."""

    def __init__(self, encoder: sm.SonataEncoder, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.current: dict[int, tuple] = {}
        self.samples: dict[int, list[float]] = defaultdict(list)
        self.voxels: dict[int, int] = {}
        for index, stage in enumerate(encoder.stages()):
            stage.register_forward_pre_hook(self._start(index))
            stage.register_forward_hook(self._stop(index))

    def _stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, index):
        def hook(module, args):
            self.current[index] = (self._stamp(),)

        return hook

    def _stop(self, index):
        def hook(module, args, output):
            self.current[index] = (self.current[index][0], self._stamp())
            self.voxels[index] = output.num_points

        return hook

    def collect(self) -> None:
        for index, (start, stop) in self.current.items():
            if self.cuda:
                stop.synchronize()
                self.samples[index].append(start.elapsed_time(stop))
            else:
                self.samples[index].append((stop - start) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", choices=sorted(sm.CONFIGS))
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "flash"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/encoder_<config>_<device>.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = sm.get_config(args.config)
    encoder = sm.SonataEncoder(config).to(device).eval()
    encoder.set_attention_kernel(args.attention)
    segmenter = sm.Segmenter(encoder, None, device=device, precision=args.precision, normals="zeros")
    coord, strength = lidar_frame(args.points)
    inputs = {"strength": strength} if "strength" in config.feature_keys else {}
    if "color" in config.feature_keys:
        inputs["color"] = np.zeros_like(coord)
    clock = StageClock(encoder, device)
    totals, timings = [], defaultdict(list)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for run in range(args.warmup + args.repeats):
        start = time.perf_counter()
        out = segmenter(coord, **inputs)
        _ = out.embedding_tensor.sum().item()  # wait for the device
        elapsed = (time.perf_counter() - start) * 1e3
        clock.collect()
        if run >= args.warmup:
            totals.append(elapsed)
            for name, value in out.timings_ms.items():
                timings[name].append(value)
        else:
            for samples in clock.samples.values():
                samples.clear()
    result = {
        "config": args.config,
        "parameters": sm.count_parameters(encoder),
        "points": len(coord),
        "device": args.device,
        "precision": args.precision,
        "attention": args.attention,
        "voxels_per_stage": [clock.voxels[i] for i in sorted(clock.voxels)],
        "stage_ms": [summarize(clock.samples[i])["median_ms"] for i in sorted(clock.samples)],
        "pipeline_ms": {name: summarize(values)["median_ms"] for name, values in timings.items()},
        "total": summarize(totals),
    }
    if device.type == "cuda":
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        import psutil

        result["rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    emit(f"encoder_{args.config}_{args.device}", result, args.record)


if __name__ == "__main__":
    main()
