"""Garbage-collector pauses over a stream of frames, with and without the node's freeze of its start-up objects.

    python benchmarks/gc_pauses.py [--config demo] [--points 60000] [--frames 60] [--record]

A `Segmenter` (the node's model path: plan, forward, head) runs `--frames` synthetic LiDAR frames twice
in one process: first as it is, then after `sonata_ros.gc_policy.freeze_startup_objects()` (what the
node calls once configured). Every collection is timed through `gc.callbacks`; the JSON gives, per
generation, how many ran, their total and their longest pause, and how many objects a full collection
had to walk. A full (generation 2) collection walks every tracked object: torch and the model are
~170k of them.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch
from common import emit
from encoder import frame_inputs

import sonata_model as sm
from sonata_ros.gc_policy import freeze_startup_objects, thaw


class PauseLog:
    """Collections by generation: (count, total ms, longest ms)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {}
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.setdefault(info["generation"], []).append((time.perf_counter() - self._start) * 1e3)

    def summary(self) -> dict[str, dict]:
        return {
            f"generation_{g}": {"count": len(v), "total_ms": round(sum(v), 1), "longest_ms": round(max(v), 1)}
            for g, v in sorted(self.pauses.items())
        }


def stream(segmenter: sm.Segmenter, inputs: dict[str, np.ndarray], frames: int) -> dict:
    log = PauseLog()
    start = time.perf_counter()
    for _ in range(frames):
        segmenter(**inputs)
    gc.callbacks.remove(log._callback)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "walked_by_a_full_collection": len(gc.get_objects()),
        "collections": log.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--points", type=int, default=60_000)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/gc_pauses.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = sm.get_config(args.config)
    head = sm.LinearHead(sum(config.enc_channels), 13)
    segmenter = sm.Segmenter(sm.SonataEncoder(config).eval(), head, device="cpu", domain=config.domain)
    inputs = frame_inputs("lidar", args.points, config)
    for _ in range(3):  # warm-up, as the node's
        segmenter(**inputs)
    result = {"config": args.config, "points": args.points, "frames": args.frames}
    result["as_it_is"] = stream(segmenter, inputs, args.frames)
    result["frozen_objects"] = freeze_startup_objects()
    try:
        result["after_freeze"] = stream(segmenter, inputs, args.frames)
    finally:
        thaw()
    emit("gc_pauses", result, args.record)


if __name__ == "__main__":
    main()
