"""A model on the labelled real scan: mIoU, accuracy, per-class IoU, a confusion PNG and a BEV picture.

    python benchmarks/real_scans.py --record                       # the shipped demo model
    python benchmarks/real_scans.py --encoder runs/x/encoder.pth --head head.pth --domain outdoor
    python benchmarks/real_scans.py --precision bf16 --name real_scans_bf16 --record --no-figures
    python benchmarks/real_scans.py --sector-probe --name real_scans_sector_probe --record --no-figures

The scan is SemanticKITTI's (HDL-64E, 123,389 points, ground truth; `../shared/real/`, never part of
the repository). Its 19 classes are mapped by name onto the model's label set (for the demo model the
13 synthetic classes; SemanticKITTI's bicycle, motorcycle, other-vehicle, motorcyclist, parking and
other-ground have no synthetic namesake and are left out). Every point is scored, as the node labels
it; points the model leaves unlabelled (outside its domain's range) count as misses. With --record the
figures go to `benchmarks/results/<name>.json`, `docs/<name>_bev.png` and `docs/<name>_confusion.png`.

--sector-probe asks how much of the gap to the real scan is the head's: the scan is cut into 16 sectors
around the sensor; a linear head is fitted (`sonata-probe`'s `fit_head`) on the same encoder's features
of the even sectors' real labels and scored with the model's own head on the odd sectors' points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import emit
from real_lidar import REAL_ROOT, RealDataMissing, semantic_kitti

import sonata_model as sm
from sonata_model.io.labels import UNKNOWN
from sonata_model.synth.render import Panel, render_bev
from sonata_model.train.evaluate import Scores, plot_confusion

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", help="encoder checkpoint (default: the shipped demo model)")
    parser.add_argument("--head", help="head checkpoint (default: the shipped demo head)")
    parser.add_argument("--domain", help="indoor | outdoor | object (default: the checkpoint's)")
    parser.add_argument("--real", type=Path, default=REAL_ROOT, help="the folder of the real scans")
    parser.add_argument("--name", default="real_scans", help="names the JSON and the PNGs (docs/<name>_*.png)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="on the CPU (bf16: autocast)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--no-figures", action="store_true", help="with --record: the JSON only")
    parser.add_argument("--sector-probe", action="store_true", help="also a head fitted on half the scan's sectors")
    args = parser.parse_args()
    from sonata_ros.model_loading import load_model

    model = load_model(args.encoder or "", args.head or "", "")
    labels = model.label_set
    try:
        scan = semantic_kitti(args.real, labels)
    except RealDataMissing as exc:
        print(f"real_scans: {exc}", file=sys.stderr)
        return 2
    segmenter = sm.Segmenter(model.encoder, model.head, device="cpu", domain=args.domain, precision=args.precision)
    cloud, truth = sm.Cloud(scan.coord.astype(np.float32), strength=scan.strength), scan.segment
    start = time.perf_counter()
    predicted = segmenter.segment_batch([cloud])[0].labels
    seconds = time.perf_counter() - start
    scores = Scores.empty(list(labels.names))
    scores.add(truth, predicted)
    report = scores.report()
    present = [n for n, count in zip(labels.names, scores.confusion.sum(1), strict=True) if count]

    confusion_png, bev_png = DOCS / f"{args.name}_confusion.png", DOCS / f"{args.name}_bev.png"
    figures = args.record and not args.no_figures
    if figures:
        plot_confusion(scores, confusion_png)
        palette = labels.palette()
        render_bev(
            [
                Panel("prediction", cloud.coord, palette[np.where(predicted >= 0, predicted, UNKNOWN)]),
                Panel("ground truth (mapped)", cloud.coord, palette[np.where(truth >= 0, truth, UNKNOWN)]),
            ],
            bev_png,
            extent=35.0,
            legend=[(n, labels.colors[i]) for i, n in enumerate(labels.names)] + [("unknown", (128, 128, 128))],
        )
    emit(
        args.name,
        {
            "scan": "SemanticKITTI (spvnas 000000), HDL-64E, 123,389 points",
            "model": model.description,
            "domain": segmenter.domain,
            "precision": args.precision,
            "transform": segmenter.transform.describe(),
            "classes_scored": present,
            "miou": round(scores.miou, 4),
            "accuracy": round(scores.accuracy, 4),
            "iou": {k: (None if v is None else round(v, 4)) for k, v in report["iou"].items() if k in present},
            "scored_points": report["points"],
            "unlabelled_points": report["unlabelled"],
            "seconds": round(seconds, 2),
            "figures": [str(p.relative_to(ROOT)) for p in (confusion_png, bev_png)] if figures else [],
            **({"sector_probe": sector_probe(segmenter, scan, predicted, labels)} if args.sector_probe else {}),
        },
        args.record,
    )
    return 0


def sector_probe(segmenter: sm.Segmenter, scan, predicted: np.ndarray, labels, sectors: int = 16) -> dict:
    """The model's head against one fitted on the real labels of every other sector, on the sectors left."""
    from sonata_model.io.frame import Frame
    from sonata_model.train.probe import ProbeSettings, fit_head, voxel_features

    azimuth = np.arctan2(scan.coord[:, 1], scan.coord[:, 0])
    held_out = np.floor((azimuth + np.pi) / (2 * np.pi / sectors)).astype(np.int64) % 2 == 1
    frame = Frame(scan.coord.astype(np.float32), strength=scan.strength, segment=scan.segment)
    features, kept_point = voxel_features(segmenter, frame)
    voxel_labels = scan.segment[kept_point]
    train = np.flatnonzero((voxel_labels >= 0) & ~held_out[kept_point])
    head = fit_head(
        features[train],
        torch.as_tensor(voxel_labels[train], dtype=torch.long),
        len(labels.names),
        ProbeSettings(),
        torch.device("cpu"),
    )
    fitted = sm.Segmenter(segmenter.encoder, head, device="cpu", domain=segmenter.domain)
    refitted = fitted.segment_batch([sm.Cloud(frame.coord, strength=frame.strength)])[0].labels
    result = {"sectors": sectors, "held_out_points": int(held_out.sum()), "train_voxels": len(train)}
    for name, guess in (("model_head", predicted), ("head_fitted_on_the_other_sectors", refitted)):
        scores = Scores.empty(list(labels.names))
        scores.add(scan.segment[held_out], guess[held_out])
        present = [n for n, count in zip(labels.names, scores.confusion.sum(1), strict=True) if count]
        iou = {k: (None if v is None else round(v, 4)) for k, v in scores.report()["iou"].items() if k in present}
        result[name] = {"miou": round(scores.miou, 4), "iou": iou}
    return result


if __name__ == "__main__":
    sys.exit(main())
