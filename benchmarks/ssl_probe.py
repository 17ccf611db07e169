"""Does self-distillation pretraining help? Linear-probe mIoU: pretrained vs random encoder vs raw input.

    python benchmarks/ssl_probe.py --record        # config/pretrain/demo.yaml: the shipped demo model's recipe

1. generates an unlabelled synthetic drive for pretraining (labels stripped), and separate labelled
   drives (other seeds, so other streets) for probing and for validation;
2. pretrains the encoder config with sonata-pretrain's Trainer;
3. fits a linear head with few labels (`--probe-frames`, `--probe-points` per frame) on
   (a) the pretrained encoder, (b) the same architecture with random weights, (c) the raw input
   features of each voxel (coord, strength) — and scores each on the validation drive (mIoU).
Prints one JSON object; --record writes benchmarks/results/ssl_probe.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from common import emit

import sonata_model as sm
from sonata_model.io.datasets import FrameFolderWriter
from sonata_model.io.labels import load_label_set
from sonata_model.io.sources import open_source
from sonata_model.synth.drive import generate_drive
from sonata_model.train.config import load_run_config
from sonata_model.train.evaluate import Scores, evaluate
from sonata_model.train.pretrain import Trainer
from sonata_model.train.probe import ProbeSettings, choose_frames, fit_head, frame_cloud, train_probe


def write_drive(root: Path, sensor: str, frames: int, seed: int, labelled: bool) -> str:
    writer = FrameFolderWriter(root, label_set="synthetic" if labelled else None)
    for frame in generate_drive(sensor, frames=frames, seed=seed):
        if not labelled:
            frame.segment = frame.instance = None
        frame.name = f"s{seed}_{frame.name}"
        writer.write(frame)
    writer.finish()
    return f"frames:{root}"


def input_only_scores(config: sm.EncoderConfig, probe: list, val: list, settings: ProbeSettings, names) -> Scores:
    """Linear head on each voxel's raw encoder input (coord * scale, strength): the floor to beat."""
    segmenter = sm.Segmenter(sm.SonataEncoder(config), None, device="cpu", normals="zeros")
    feats, labels = [], []
    for source in probe:
        for index in choose_frames(source, settings.frames, settings.seed):
            frame = source[index]
            prepared = segmenter.prepare([frame_cloud(frame)])
            point = prepared.point
            label = frame.segment[prepared.voxel_index.numpy()]
            keep = np.flatnonzero(label >= 0)
            if settings.points_per_frame and len(keep) > settings.points_per_frame:
                keep = np.random.default_rng(settings.seed).choice(keep, settings.points_per_frame, replace=False)
            feats.append(point.feat[keep])
            labels.append(torch.as_tensor(label[keep], dtype=torch.long))
    head = fit_head(torch.cat(feats), torch.cat(labels), len(names), settings, torch.device("cpu"))
    scores = Scores.empty(list(names))
    with torch.inference_mode():
        for source in val:
            for index in range(len(source)):
                frame = source[index]
                prepared = segmenter.prepare([frame_cloud(frame)])
                inverse = prepared.voxel_of_point
                predicted = torch.where(inverse >= 0, head(prepared.point.feat).argmax(1)[inverse.clamp(min=0)], -1)
                scores.add(frame.segment, predicted.numpy())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ssl_probe")
    parser.add_argument("--config", default="config/pretrain/demo.yaml", help="pretraining run config")
    parser.add_argument("--encoder", help="encoder config name (default: the run config's)")
    parser.add_argument("--sensor", default="vlp16")
    parser.add_argument("--pretrain-drives", type=int, default=4, help="drives (seeds) of unlabelled data")
    parser.add_argument("--pretrain-frames", type=int, default=40, help="frames per pretraining drive")
    parser.add_argument("--probe-frames", type=int, default=4, help="labelled frames for the linear probe")
    parser.add_argument("--probe-points", type=int, default=2000, help="labelled points per probe frame")
    parser.add_argument("--val-frames", type=int, default=8)
    parser.add_argument("--steps", type=int, help="pretraining steps (default: the run config's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra run config overrides (key=value)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    pretrain = [
        write_drive(data / f"pretrain{k}", args.sensor, args.pretrain_frames, 100 + k, labelled=False)
        for k in range(args.pretrain_drives)
    ]
    probe = write_drive(data / "probe", args.sensor, args.probe_frames, 200, labelled=True)
    val = write_drive(data / "val", args.sensor, args.val_frames, 300, labelled=True)
    generated = time.perf_counter()

    run = load_run_config(
        args.config,
        args.set,
        data=pretrain,
        encoder=args.encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        out=str(out / "pretrain"),
    )
    exported = Trainer(run).train()
    pretrained_at = time.perf_counter()

    labels = load_label_set("synthetic")
    settings = ProbeSettings(frames=args.probe_frames, points_per_frame=args.probe_points, steps=1500, seed=args.seed)
    probe_sources, val_sources = [open_source(probe)], [open_source(val)]
    torch.manual_seed(args.seed)
    random_encoder = sm.SonataEncoder(run.encoder_config()).eval()
    results = {}
    for name, encoder in (("pretrained", sm.load(exported)), ("random", random_encoder)):
        head = train_probe(encoder, probe_sources, labels, settings, device="cpu")
        results[name] = evaluate(encoder, head, val_sources, list(labels.names), device="cpu")
    results["input_only"] = input_only_scores(run.encoder_config(), probe_sources, val_sources, settings, labels.names)
    finished = time.perf_counter()

    emit(
        "ssl_probe",
        {
            "pretrained_miou": round(results["pretrained"].miou, 4),
            "random_miou": round(results["random"].miou, 4),
            "input_only_miou": round(results["input_only"].miou, 4),
            "per_class_iou": {
                k: {n: (None if np.isnan(v) else round(float(v), 3)) for n, v in zip(labels.names, s.iou, strict=True)}
                for k, s in results.items()
            },
            "settings": {
                **{k: v for k, v in vars(args).items() if k != "record"},
                "encoder_parameters": sm.count_parameters(random_encoder),
                "run": dataclasses.asdict(run),
                "probe": dataclasses.asdict(settings),
            },
            "seconds": {
                "generate": round(generated - started),
                "pretrain": round(pretrained_at - generated),
                "probe_and_eval": round(finished - pretrained_at),
                "total": round(finished - started),
            },
        },
        args.record,
    )


if __name__ == "__main__":
    main()
