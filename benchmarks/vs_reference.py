"""This project against the public reference implementation (facebookresearch/sonata), side by side.

    python benchmarks/vs_reference.py --reference /tmp/sonata-ref/src --reference-path /tmp/sonata-ref/deps \\
        --config sonata --record

Same released-format checkpoint (`--checkpoint`, or a random-valued one written here with
`sm.save_encoder`, which is the released layout), same cloud, one run: the median time per frame of
each after warm-up (the reference: its default transform, forward and all-level upcast, as its demos
do; here: `Segmenter` and its embedding), the ratio (and its quartiles over the alternating pairs of
frames, `speedup_per_pair`), and the largest difference of the all-level
upcast features (1232 channels for `sonata`) over all input points. `--cuda-graphs` (CUDA): ours as
the real-time node runs it, size buckets and the forward replayed from a CUDA graph (captured in the
warm-up; the same cloud falls in the same bucket every frame, as a sensor's stream mostly does).

The reference runs in a subprocess (`reference_env/run_reference.py`) with `--reference-python` and a
PYTHONPATH of only the reference source and `--reference-path`, so none of its imports enter this
process; nothing is downloaded. After both have warmed up, their frames alternate (reference, ours, ...)
so that a shared machine's changing load falls on both; the 1-minute load average is recorded. On a
busy machine two torch threads per process oversubscribe the cores and slow this project's side (all
of it multi-threaded) more than the reference's (its spconv runs on one thread): `--threads 1` then
gives the steadier ratio. Its dependencies torch_scatter, timm and huggingface_hub are replaced by
the small stand-ins in `benchmarks/reference_env/` (`segment_csr` via `torch.segment_reduce`, timm's
`DropPath`, no hub); addict comes from `--reference-path` (see reference_env/README.md).

Making the comparison exact. The reference's GridSample ("train" mode) keeps a random point per voxel
and this project the first, so the cloud is reduced beforehand to one point per 2 cm voxel, with the
reduction made stable under both sides' centre shift: the points that set the bounding box are kept
(the shift cannot change) and every other point lies at least 1e-3 voxel from a voxel boundary (both
sides divide by the grid size in float64, but each computes the centre shift its own way, which may
round differently in float32). Both sides then keep every
point, and each input point's features are compared. The reference's curve orders are not shuffled
(its default in pooling layers, even at inference); see run_reference.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, summarize

import sonata_model as sm
from sonata_model.sparse_conv import default_backend

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))
from scenes import room  # noqa: E402  (the indoor test scene: floor, walls, boxes, colour, normals)

BOUNDARY_MARGIN = 1e-3  # in voxels


def centre_shift(coord: np.ndarray) -> np.ndarray:
    """The reference's CenterShift in float32: x, y to the bounding-box centre, z to its minimum."""
    low, high = coord.min(axis=0), coord.max(axis=0)
    return np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]], dtype=np.float32)


def one_point_per_voxel(coord: np.ndarray, grid_size: float) -> np.ndarray:
    """Indices of a subset with one point per voxel that both voxelizations keep whole (module docstring)."""
    keep = np.arange(len(coord))
    for _ in range(20):
        points = coord[keep]
        box = np.unique([points[:, 0].argmin(), points[:, 0].argmax(), points[:, 1].argmin(), points[:, 1].argmax()])
        floor = points[:, 2].argmin()
        scaled = (points - centre_shift(points)).astype(np.float64) / grid_size
        frac = scaled - np.floor(scaled)
        safe = (frac > BOUNDARY_MARGIN) & (frac < 1 - BOUNDARY_MARGIN)
        safe[floor, 2] = True  # exactly 0 after the shift on both sides
        safe = safe.all(axis=1)
        anchors = np.union1d(box, [floor])
        if not safe[anchors].all():  # an anchor sits on a boundary: drop it, the box moves, try again
            keep = np.delete(keep, anchors[~safe[anchors]])
            continue
        priority = np.concatenate((anchors, np.setdiff1d(np.arange(len(points)), anchors)))
        cells = np.floor(scaled[priority]).astype(np.int64)
        _, first = np.unique(cells, axis=0, return_index=True)
        chosen = np.zeros(len(points), dtype=bool)
        chosen[priority[first]] = True
        if (chosen & safe).all():
            return keep
        keep = keep[chosen & safe]
    raise RuntimeError("no stable one-point-per-voxel subset found; try another --seed")


def indoor_cloud(points: int, grid_size: float, seed: int) -> dict[str, np.ndarray]:
    scene = room(points, seed=seed)
    keep = one_point_per_voxel(scene["coord"], grid_size)
    return {
        "coord": scene["coord"][keep],
        "color": scene["color"][keep].astype(np.float32),  # 0-255 as float32: same colour/255 on both sides
        "normal": scene["normal"][keep],
    }


def random_checkpoint(config_name: str, path: Path, seed: int) -> Path:
    """A released-layout encoder file with random weights, biases and norm scales (all paths exercised)."""
    torch.manual_seed(seed)
    encoder = sm.SonataEncoder(sm.get_config(config_name))
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if name.endswith("bias") or "mask_token" in name:
                parameter.normal_(0.0, 0.02)
            elif parameter.ndim == 1:  # LayerNorm scale
                parameter.normal_(1.0, 0.1)
    return sm.save_encoder(path, encoder)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


class ReferenceProcess:
    """The reference in its own process (reference_env/run_reference.py), one frame per request."""

    def __init__(self, args: argparse.Namespace, cloud_file: Path, checkpoint: Path, work: Path) -> None:
        self.output = work / "reference_feat.npy"
        self.log = (work / "reference_stderr.txt").open("w+")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        folders = [args.reference, *args.reference_path]  # resolved: the process runs in `work`
        env["PYTHONPATH"] = os.pathsep.join(str(Path(folder).resolve()) for folder in folders)
        command = [
            args.reference_python,
            str(HERE / "reference_env" / "run_reference.py"),
            str(cloud_file),
            str(checkpoint),
            str(self.output),
            f"--warmup={args.warmup}",
            f"--device={args.device}",
            f"--threads={torch.get_num_threads()}",
            f"--precision={args.precision}",
        ]
        self.process = subprocess.Popen(
            command, env=env, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.ready = self._answer()

    def frame(self) -> dict:
        return self._ask("frame")

    def features(self) -> np.ndarray:
        self._ask("save")
        return np.load(self.output)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()

    def _ask(self, request: str) -> dict:
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the reference process ended ({self.process.wait()}):\n{self.log.read()[-4000:]}")
        return json.loads(line)


class ProjectRunner:
    """This project's side: `Segmenter` and its all-level embedding, per input point; with `cuda_graphs`
    as the real-time node runs it (size buckets, the forward replayed from a CUDA graph)."""

    def __init__(
        self,
        encoder: sm.SonataEncoder,
        cloud: dict[str, np.ndarray],
        device: str,
        precision: str,
        cuda_graphs: bool = False,
    ) -> None:
        self.segmenter = sm.Segmenter(
            encoder,
            None,
            device=device,
            precision=precision,
            domain="indoor",
            buckets=sm.SizeBuckets() if cuda_graphs else None,
            cuda_graphs=cuda_graphs,
        )
        self.cloud = cloud
        self.voxels = 0
        self.feat: torch.Tensor | None = None

    def frame(self) -> float:
        start = time.perf_counter()
        out = self.segmenter(self.cloud["coord"], color=self.cloud["color"], normal=self.cloud["normal"])
        self.feat = out.embedding_rows(torch.as_tensor(out.voxel_of_point))  # every point's all-level features
        if self.segmenter.device.type == "cuda":
            torch.cuda.synchronize()
        self.voxels = len(out.voxel_index)
        return (time.perf_counter() - start) * 1e3


def pair_ratios(reference_ms: list[float], ours_ms: list[float]) -> dict[str, float]:
    """Quartiles of reference / ours over the alternating frames, pair by pair: a machine whose speed
    drifts during the run moves both frames of a pair alike, so the spread shows what the drift leaves."""
    q25, median, q75 = np.percentile(np.array(reference_ms) / np.array(ours_ms), [25, 50, 75])
    return {"q25": round(float(q25), 2), "median": round(float(median), 2), "q75": round(float(q75), 2)}


def reference_version(path: str) -> str:
    done = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="reference source folder (holds the `sonata` package)")
    parser.add_argument("--reference-python", default=sys.executable, help="python that runs the reference")
    parser.add_argument(
        "--reference-path", nargs="*", default=[], help="extra PYTHONPATH folders for the reference (addict)"
    )
    parser.add_argument("--reference-version", help="what to record as the reference's version (default: git HEAD)")
    parser.add_argument("--checkpoint", help="released-format encoder file (default: random weights, --config)")
    parser.add_argument("--config", default="sonata", choices=sorted(sm.CONFIGS))
    parser.add_argument("--points", type=int, default=100_000, help="room points before the voxel reduction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast, both sides")
    parser.add_argument("--cuda-graphs", action="store_true", help="ours as the real-time node runs (CUDA only)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/<name>.json")
    parser.add_argument("--name", help="result name (default vs_reference_<device>)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="vs_reference_") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint or random_checkpoint(args.config, work / "enc.pth", args.seed))
        encoder = sm.load(checkpoint)
        cloud = indoor_cloud(args.points, encoder.config.transform("indoor").grid, args.seed)
        cloud_file = work / "cloud.npz"
        np.savez(cloud_file, **cloud)
        loads = [os.getloadavg()[0]]
        reference = ReferenceProcess(args, cloud_file, checkpoint, work)  # loads and warms up first
        ours = ProjectRunner(encoder, cloud, args.device, args.precision, args.cuda_graphs)
        for _ in range(args.warmup):
            ours.frame()
        reference_frames, ours_ms = [], []
        for _ in range(args.repeats):  # alternate, so that both sides share the machine's load
            reference_frames.append(reference.frame())
            ours_ms.append(ours.frame())
            loads.append(os.getloadavg()[0])
        reference_feat = reference.features()
        reference.close()
    ours_feat = ours.feat.float().cpu().numpy()
    if reference_feat.shape != ours_feat.shape:
        raise RuntimeError(f"feature shapes differ: reference {reference_feat.shape}, ours {ours_feat.shape}")
    difference = np.abs(reference_feat - ours_feat)
    reference_summary = summarize([f["ms"] for f in reference_frames])
    ours_summary = summarize(ours_ms)
    result = {
        "config": args.config if not args.checkpoint else str(args.checkpoint),
        "parameters": reference.ready["parameters"],
        "points": len(cloud["coord"]),
        "voxels": {"reference": reference_frames[-1]["voxels"], "ours": ours.voxels},
        "device": args.device,
        "precision": args.precision,
        "reference": {
            **reference_summary,
            "version": args.reference_version or reference_version(args.reference),
            "torch_threads": reference.ready["torch_threads"],
            "stand_ins": "torch_scatter.segment_csr via torch.segment_reduce, timm DropPath, no huggingface_hub "
            "(benchmarks/reference_env); CPU spconv: Native algorithm, bias added after the conv, one thread, "
            "fp32 (no bf16 kernels); curve orders not shuffled",
        },
        "ours": {
            **ours_summary,
            "sparse_backend": default_backend(),
            "attention": ours.segmenter.attention,
            "cuda_graphs": args.cuda_graphs,
        },
        "speedup": round(reference_summary["median_ms"] / ours_summary["median_ms"], 2),
        "speedup_per_pair": pair_ratios([f["ms"] for f in reference_frames], ours_ms),
        "feature_channels": ours_feat.shape[1],
        "max_abs_diff": float(difference.max()),
        "max_abs_feature": float(np.abs(reference_feat).max()),
        "mean_abs_diff": float(difference.mean()),
        "min_cosine": float(cosine(reference_feat, ours_feat).min()),  # per point, over all levels' features
        "load_average_1min": [round(x, 2) for x in loads],  # before, then after each pair of frames
    }
    emit(args.name or f"vs_reference_{args.device}" + ("_graphs" if args.cuda_graphs else ""), result, args.record)


if __name__ == "__main__":
    main()
