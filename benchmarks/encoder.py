"""Encoder speed on one frame: voxels and milliseconds per stage, total, memory, aten ops and syncs.

    python benchmarks/encoder.py --config sonata --points 120000 --device cuda --precision bf16
    python benchmarks/encoder.py --config demo --points 30000 --device cpu --record
    python benchmarks/encoder.py --config sonata --scene room --points 100000 --warmup 1 --repeats 2

--scene lidar: a synthetic 64-beam drive frame (sonata_model.synth), cropped or tiled to --points;
--scene room: the indoor test room (test/scenes.py: floor, walls, boxes) with colour and normals.
Weights are random (speed does not depend on them); a 13-class linear head runs as in the node. Median of
--repeats runs after --warmup runs. "pipeline_ms": the Segmenter's stages (prepare: the input transform
on the host; voxelize: the upload and the plan; encoder; head) and "copies": the labels and
probabilities to the host, as the node reads them, timed once the device is idle (not in "total").
`--vary`: frame k keeps all but (k mod 10) % of the points, so that frames have new voxel counts
within a 10 % band, as a sensor's stream has (what is compiled or cached per shape is paid again).

After the timed runs, one more frame runs under `sonata_model.profiling.count_ops`: aten ops (a GPU
launches a kernel for each that is not a view) and sync-shaped ops (each makes the host wait for a
GPU), for the whole `Segmenter` call with the embedding read ("frame"), for the frame plan alone
("plan", `sonata_model.plan.build_plan`), and for the encoder forward over it ("forward"); and the
plan and forward once more in the shape a GPU runs ("plan_gpu_shape", "forward_gpu_shape": size
buckets, the neighbour table instead of a CPU's conv pairs, the neighbour search in one call).
`--buckets` plans with size buckets (padding rows; shapes shared by frames of similar size).
`--profile` adds one frame under torch.profiler: the self time of its heaviest ops on the host and, on a
GPU, on the device.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from common import emit, summarize

import sonata_model as sm
import sonata_model.segmenter as segmenter_module
from sonata_model.profiling import OpCounts, count_ops
from sonata_model.synth.drive import generate_drive

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from scenes import room

HEAD_CLASSES = 13  # a linear head as the node runs one (random weights), so that "head" and "copies" are real


def lidar_frame(points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    frame = next(iter(generate_drive(sensor="hdl64", frames=1, seed=seed)))
    coord, strength = frame.coord, frame.strength
    reps = -(-points // len(coord))
    if reps > 1:  # tile with a small offset so that voxels stay distinct
        coord = np.concatenate([coord + np.float32(0.013 * k) for k in range(reps)])
        strength = np.tile(strength, reps)
    return coord[:points], strength[:points]


def frame_inputs(scene: str, points: int, config: sm.EncoderConfig) -> dict[str, np.ndarray]:
    """Segmenter keyword inputs; features the scene lacks are zeros (normals: `normals="zeros"`)."""
    if scene == "room":
        cloud = room(points)
        inputs = {"coord": cloud["coord"], "color": cloud["color"], "normal": cloud["normal"]}
        strength = np.zeros(len(cloud["coord"]), np.float32)
    else:
        coord, strength = lidar_frame(points)
        inputs = {"coord": coord, "color": np.zeros_like(coord)}
    if "strength" in config.feature_keys:
        inputs["strength"] = strength
    return {k: v for k, v in inputs.items() if k == "coord" or k in config.feature_keys}


def count_frame(segmenter: sm.Segmenter, inputs: dict[str, np.ndarray]) -> dict[str, dict]:
    """Ops of one whole frame (with the embedding read), of its plan and of the encoder forward; and of
    the plan and forward in the shape a GPU runs ("gpu_shape": size buckets, the neighbour table, the
    search in one call), counted on this device."""
    with count_ops() as frame:
        segmenter(**inputs).embedding_tensor  # noqa: B018  (computed on first access)
    out = {"frame": _ops_summary(frame)}
    for name, overrides in (("", {}), ("_gpu_shape", GPU_SHAPE)):
        plan, prepared = _count_plan(segmenter, inputs, overrides)
        with torch.inference_mode(), segmenter._autocast(), count_ops() as forward:
            segmenter.encoder.forward_plan(prepared.plan, prepared.feat)
        out |= {f"plan{name}": _ops_summary(plan), f"forward{name}": _ops_summary(forward)}
    return out


GPU_SHAPE = {"buckets": sm.SizeBuckets(), "conv_pairs": False, "search_chunk": 1 << 40}


def _count_plan(segmenter: sm.Segmenter, inputs: dict[str, np.ndarray], overrides: dict) -> tuple:
    """The ops of `build_plan` in one `prepare` (its keyword arguments replaced by `overrides`)."""
    original, counts = segmenter_module.build_plan, {}

    def counted(*args, **kwargs):
        with count_ops() as plan:
            result = original(*args, **{**kwargs, **overrides})
        counts["plan"] = plan
        return result

    segmenter_module.build_plan = counted
    try:
        with torch.inference_mode():
            prepared = segmenter.prepare([sm.Cloud(**inputs)])
    finally:
        segmenter_module.build_plan = original
    return counts["plan"], prepared


def profile_frame(segmenter: sm.Segmenter, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Where one whole frame goes (torch.profiler): the 12 heaviest aten ops by self time on the host
    ("host_self_ms") and, on a GPU, by self time on the device ("device_self_ms", kernels included)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = segmenter.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as profiler:
        segmenter(**inputs).embedding_tensor.sum().item()
    events = profiler.key_averages()
    out = {"host_self_ms": _heaviest(events, "self_cpu_time_total")}
    if cuda:
        out["device_self_ms"] = _heaviest(events, "self_device_time_total")
    return out


def _heaviest(events, attribute: str, top: int = 12) -> dict[str, float]:
    ranked = sorted(events, key=lambda e: -getattr(e, attribute))
    total = sum(getattr(e, attribute) for e in events)
    return {"total": round(total / 1e3, 2)} | {e.key: round(getattr(e, attribute) / 1e3, 2) for e in ranked[:top]}


def _ops_summary(counts: OpCounts) -> dict:
    return {**counts.summary(), "top_ops": dict(counts.ops.most_common(12))}


class StageClock:
    """Forward hooks on each stage: CUDA events (read at the end) or perf_counter on CPU."""

    def __init__(self, encoder: sm.SonataEncoder, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.current: dict[int, tuple] = {}
        self.samples: dict[int, list[float]] = defaultdict(list)
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
    parser.add_argument("--scene", default="lidar", choices=["lidar", "room"])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "flash"])
    parser.add_argument("--buckets", action="store_true", help="plan with size buckets (sm.SizeBuckets())")
    parser.add_argument("--cuda-graphs", action="store_true", help="forward from CUDA graphs (implies --buckets)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--vary", action="store_true", help="frame k drops (k mod 10) %% of the points")
    parser.add_argument("--profile", action="store_true", help="add one profiled frame: self ms of the top ops")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/<name>.json")
    parser.add_argument("--name", help="result name (default encoder_<config>_<device>[_graphs])")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    config = sm.get_config(args.config)
    encoder = sm.SonataEncoder(config).to(device).eval()
    head = sm.LinearHead(config.head_channels, HEAD_CLASSES).to(device).eval()
    segmenter = sm.Segmenter(
        encoder,
        head,
        device=device,
        precision=args.precision,
        normals="zeros",
        attention=args.attention,
        buckets=sm.SizeBuckets() if args.buckets or args.cuda_graphs else None,
        cuda_graphs=args.cuda_graphs,
    )
    inputs = frame_inputs(args.scene, args.points, config)
    clock = StageClock(encoder, device) if not args.cuda_graphs else None  # a replay runs no stage's hooks
    totals, timings = [], defaultdict(list)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for run in range(args.warmup + args.repeats):
        drop = (run % 10) * (len(inputs["coord"]) // 100)
        frame = {k: v[: len(v) - drop] for k, v in inputs.items()} if args.vary else inputs
        start = time.perf_counter()
        out = segmenter(**frame)
        _ = out.embedding_tensor.sum().item()  # wait for the device
        elapsed = (time.perf_counter() - start) * 1e3
        copy_start = time.perf_counter()
        _ = out.labels, out.probability  # to the host, as the node reads them (the device is idle now)
        copies_ms = (time.perf_counter() - copy_start) * 1e3
        if clock is not None:
            clock.collect()
        if run >= args.warmup:
            totals.append(elapsed)
            timings["copies"].append(copies_ms)
            for name, value in out.timings_ms.items():
                timings[name].append(value)
        elif clock is not None:
            for samples in clock.samples.values():
                samples.clear()
    result = {
        "config": args.config,
        "parameters": sm.count_parameters(encoder),
        "scene": args.scene,
        "points": len(inputs["coord"]),
        "device": args.device,
        "precision": args.precision,
        "attention": segmenter.attention,
        "buckets": args.buckets or args.cuda_graphs,
        "cuda_graphs": args.cuda_graphs,
        "threads": torch.get_num_threads(),
        "vary": args.vary,
        "voxels_per_stage": [level.num_voxels for level in segmenter.prepare([sm.Cloud(**inputs)]).plan.levels],
        "stage_ms": clock and [summarize(clock.samples[i])["median_ms"] for i in sorted(clock.samples)],
        "pipeline_ms": {name: summarize(values)["median_ms"] for name, values in timings.items()},
        "plan_ms": summarize(timings["voxelize"])["median_ms"],  # the plan (grid sampling included), features
        "forward_ms": summarize(timings["encoder"])["median_ms"],
        "total": summarize(totals),
    }
    if device.type == "cuda":  # the timed frames' memory, before the counted ones below
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        import psutil

        result["rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    result["ops"] = count_frame(segmenter, inputs)
    if args.profile:
        result["profile"] = profile_frame(segmenter, inputs)
    if segmenter.graphed is not None:
        result["cuda_graph_captures"] = segmenter.graphed.captures
    default_name = f"encoder_{args.config}_{args.device}" + ("_graphs" if args.cuda_graphs else "")
    emit(args.name or default_name, result, args.record)


if __name__ == "__main__":
    main()
