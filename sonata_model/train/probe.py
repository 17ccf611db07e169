"""`sonata-probe`: fit a linear head on a frozen encoder from a few labelled frames.

    sonata-probe --encoder runs/lidar/encoder.pth --data frames:/data/labelled --frames 8 --out head.pth

The encoder is frozen, so every frame's per-voxel features (the all-level upcast the head reads) are
computed once and kept; the head — one Linear(C_upcast, classes), as the released probes — is then
trained on them with AdamW (lr 0.002, weight decay 0.02, cross-entropy weighted per class by the inverse
square root of its share of the labelled voxels, `--class-weights`: rare classes such as cars, poles and
people are a percent of a LiDAR frame, and an unweighted head learns to overlook them). Each voxel is
labelled by the point the grid sampling kept for it. `--frames K` uses K frames, `--points P` only P labelled points
per frame (data-efficiency runs). The head is saved in the released format with its class names.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import LinearHead, load, save_head
from ..encoder import SonataEncoder
from ..io.frame import IGNORE_LABEL, Frame
from ..io.labels import LabelSet
from ..io.sources import SPEC_SYNTAX, FrameSource, open_source
from ..pooling import upcast
from ..segmenter import Cloud, Segmenter

CLASS_WEIGHTINGS = ("sqrt-inverse", "inverse", "none")


@dataclass
class ProbeSettings:
    frames: int = 0  # 0: every frame of the source
    points_per_frame: int = 0  # 0: every labelled point
    steps: int = 2000
    batch_points: int = 65536
    lr: float = 0.002
    weight_decay: float = 0.02
    seed: int = 0
    class_weights: str = "sqrt-inverse"  # one of CLASS_WEIGHTINGS


def class_weights(labels: torch.Tensor, num_classes: int, weighting: str) -> torch.Tensor | None:
    """Cross-entropy weight per class: its share of `labels` to the power -1/2 ("sqrt-inverse") or -1
    ("inverse"); classes without a label get 0. None for "none"."""
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTINGS}, got {weighting!r}")
    if weighting == "none":
        return None
    share = torch.bincount(labels, minlength=num_classes).double() / max(len(labels), 1)
    power = 0.5 if weighting == "sqrt-inverse" else 1.0
    weights = torch.where(share > 0, share.clamp_min(1e-12) ** -power, torch.zeros_like(share))
    return (weights / weights[share > 0].mean()).float()


def frame_cloud(frame: Frame) -> Cloud:
    return Cloud(frame.coord, color=frame.color, normal=frame.normal, strength=frame.strength)


@torch.inference_mode()
def voxel_features(segmenter: Segmenter, frame: Frame) -> tuple[torch.Tensor, np.ndarray]:
    """(M, C) upcast features of a frame's voxels and the point each voxel kept (its label is the voxel's)."""
    prepared = segmenter.prepare([frame_cloud(frame)])
    with segmenter._autocast():
        feat = upcast(segmenter.encode(prepared)).float()
    return feat, prepared.voxel_index.cpu().numpy()


def choose_frames(source: FrameSource, count: int, seed: int) -> list[int]:
    """`count` frame indices spread evenly over the source (all when count is 0)."""
    if count <= 0 or count >= len(source):
        return list(range(len(source)))
    offset = np.random.default_rng(seed).integers(0, max(1, len(source) // count))
    return [int(i) for i in np.linspace(offset, len(source) - 1, count).round()]


def extract(
    segmenter: Segmenter, sources: list[FrameSource], settings: ProbeSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of the labelled voxels used for training (kept on the CPU, float16)."""
    rng = np.random.default_rng(settings.seed)
    feats, labels = [], []
    for source in sources:
        for index in choose_frames(source, settings.frames, settings.seed):
            frame = source[index]
            if frame.segment is None:
                raise ValueError(f"{source.name}: frame {index} has no labels; probing needs labelled frames")
            feat, kept = voxel_features(segmenter, frame)
            label = frame.segment[kept]
            keep = np.flatnonzero(label != IGNORE_LABEL)
            if settings.points_per_frame and len(keep) > settings.points_per_frame:
                keep = rng.choice(keep, settings.points_per_frame, replace=False)
            feats.append(feat[torch.as_tensor(keep, device=feat.device)].half().cpu())
            labels.append(torch.as_tensor(label[keep], dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)


def fit_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: ProbeSettings, device: torch.device
) -> LinearHead:
    """Train one Linear layer on cached features (mini-batches of points, AdamW, cross-entropy weighted
    per class as `settings.class_weights` says)."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    weight = class_weights(labels, num_classes, settings.class_weights)
    weight = None if weight is None else weight.to(device)
    head = LinearHead(features.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    n = len(labels)
    for _ in range(settings.steps):
        index = torch.randint(0, n, (min(settings.batch_points, n),), generator=generator)
        logits = head(features[index].to(device).float())
        loss = F.cross_entropy(logits, labels[index].to(device), weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return head.eval()


def train_probe(
    encoder: SonataEncoder,
    sources: list[FrameSource],
    label_set: LabelSet,
    settings: ProbeSettings,
    device: str = "auto",
    domain: str | None = None,
) -> LinearHead:
    segmenter = Segmenter(encoder, None, device=device, domain=domain)
    features, labels = extract(segmenter, sources, settings)
    if len(labels) == 0:
        raise ValueError("no labelled points in the chosen frames")
    head = fit_head(features, labels, label_set.num_classes, settings, segmenter.device)
    head.class_names, head.label_set, head.domain = list(label_set.names), label_set.name, domain
    return head.cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", required=True, help="encoder checkpoint (sm.load)")
    parser.add_argument(
        "--data", action="append", required=True, help=f"labelled source spec (repeatable): {SPEC_SYNTAX}"
    )
    parser.add_argument("--out", required=True, help="head checkpoint to write")
    parser.add_argument("--frames", type=int, default=0, help="use K frames per source (0: all)")
    parser.add_argument("--points", type=int, default=0, help="use P labelled points per frame (0: all)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTINGS,
        default="sqrt-inverse",
        help="cross-entropy weight per class from its share of the labelled voxels (default: sqrt-inverse)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--domain", help="indoor | outdoor | object (default: the encoder checkpoint's)")
    parser.add_argument("--label-set", help="label set name or YAML path, replacing the sources' own")
    args = parser.parse_args(argv)
    sources = [open_source(spec, label_set=args.label_set) for spec in args.data]
    label_sets = {s.label_set.name for s in sources if s.label_set is not None}
    if len(label_sets) != 1:
        parser.error(f"the sources must share one label set, found {sorted(label_sets) or 'none'}")
    settings = ProbeSettings(
        frames=args.frames,
        points_per_frame=args.points,
        steps=args.steps,
        seed=args.seed,
        class_weights=args.class_weights,
    )
    head = train_probe(load(args.encoder), sources, sources[0].label_set, settings, args.device, args.domain)
    save_head(
        args.out,
        head,
        meta={
            "encoder": args.encoder,
            "data": args.data,
            "frames": args.frames,
            "points_per_frame": args.points,
            "steps": args.steps,
            "class_weights": args.class_weights,
        },
    )
    print(f"head written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
