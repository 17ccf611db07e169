"""`sonata-eval`: mIoU, per-class IoU, accuracy and the confusion matrix of encoder + head on labelled frames.

    sonata-eval --encoder encoder.pth --head head.pth --data frames:/data/val --report eval/

Every input point is scored (through the grid-sampling inverse map, as the node labels them);
points labelled ignore (-1) are left out; points the model leaves unlabelled (outside the domain's
range, e.g. multipath under the road) count as misses in the "no label" column. Writes report.json and
confusion.png into --report.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import LinearHead, load, load_head
from ..encoder import SonataEncoder
from ..figures import pyplot, save_figure
from ..io.frame import IGNORE_LABEL
from ..io.labels import LabelSet
from ..io.sources import SPEC_SYNTAX, FrameSource, open_source
from ..segmenter import Segmenter
from .probe import choose_frames, frame_cloud


@dataclass
class Scores:
    """Confusion (C, C + 1) int64: rows ground truth; columns prediction, the last one "no label"."""

    confusion: np.ndarray
    names: list[str]

    @classmethod
    def empty(cls, names: list[str]) -> Scores:
        return cls(np.zeros((len(names), len(names) + 1), np.int64), list(names))

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        self.confusion += confusion_matrix(truth, predicted, len(self.names))

    @property
    def iou(self) -> np.ndarray:
        labelled = self.confusion[:, :-1]
        tp = np.diag(labelled).astype(np.float64)
        union = labelled.sum(0) + self.confusion.sum(1) - tp
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def miou(self) -> float:
        present = self.confusion.sum(1) > 0
        return float(np.nanmean(self.iou[present])) if present.any() else float("nan")

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.confusion.sum()))

    def report(self) -> dict:
        return {
            "miou": self.miou,
            "accuracy": self.accuracy,
            "points": int(self.confusion.sum()),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.names, self.iou, strict=True)},
            "unlabelled": int(self.confusion[:, -1].sum()),
            "confusion": self.confusion.tolist(),
            "classes": self.names,
        }


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C + 1) counts of (truth, prediction) over the labelled points; prediction -1 (none) -> column C."""
    keep = (truth != IGNORE_LABEL) & (truth >= 0) & (truth < num_classes)
    columns = num_classes + 1
    column = np.where(predicted[keep] < 0, num_classes, predicted[keep]).astype(np.int64)
    index = truth[keep].astype(np.int64) * columns + column
    return np.bincount(index, minlength=num_classes * columns).reshape(num_classes, columns)


def evaluate(
    encoder: SonataEncoder,
    head: LinearHead,
    sources: list[FrameSource],
    names: list[str],
    frames: int = 0,
    device: str = "auto",
    domain: str | None = None,
) -> Scores:
    """Scores over the labelled points of `frames` frames per source (0: all). A source labelled in other
    classes than the head's `names` (a synthetic-world head on SemanticKITTI) has its labels mapped onto
    them by class name (`head_classes`)."""
    segmenter = Segmenter(encoder, head, device=device, domain=domain)
    scores = Scores.empty(names)
    target = LabelSet("head", tuple(names), np.zeros((len(names), 3), np.uint8))
    for source in sources:
        mapped = _other_classes(source, names)
        for index in choose_frames(source, frames, seed=0):
            frame = source[index]
            if frame.segment is None:
                raise ValueError(f"{source.name}: frame {index} has no labels")
            truth = source.label_set.translate(frame.segment, target) if mapped else frame.segment
            scores.add(truth, segmenter.segment_batch([frame_cloud(frame)])[0].labels)
    return scores


def _other_classes(source: FrameSource, names: list[str]) -> bool:
    return source.label_set is not None and list(source.label_set.names) != names


def head_classes(names: list[str], sources: list[FrameSource]) -> list[str]:
    """What each source's labels become for a head predicting `names`: a line per source whose classes
    differ (mapped by name; the others ignored). ValueError when a source shares no class with the head."""
    notes = []
    for source in sources:
        if not _other_classes(source, names):
            continue
        common = [n for n in source.label_set.names if n in names]
        if not common:
            raise ValueError(
                f"{source.name}: labelled in {source.label_set.name!r}, which shares no class name with the "
                f"head's {names}: pass --label-set with the head's label set if the ids are the same"
            )
        ignored = [n for n in source.label_set.names if n not in names]
        notes.append(
            f"{source.name}: labels in {source.label_set.name!r} mapped by name onto the head's classes "
            f"({len(common)} in common; ignored: {', '.join(ignored) or 'none'})"
        )
    return notes


def plot_confusion(scores: Scores, path: str | Path) -> Path:
    plt = pyplot()

    rows = scores.confusion.sum(1, keepdims=True)
    normalised = scores.confusion / np.maximum(rows, 1)
    size = 2 + 0.45 * len(scores.names)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(scores.names))
    axis.set_xticks(np.arange(len(scores.names) + 1), [*scores.names, "(no label)"], rotation=90, fontsize=8)
    axis.set_yticks(ticks, scores.names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("ground truth")
    axis.set_title(f"mIoU {scores.miou:.3f}, accuracy {scores.accuracy:.3f} (rows normalised)")
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument(
        "--data", action="append", required=True, help=f"labelled source spec (repeatable): {SPEC_SYNTAX}"
    )
    parser.add_argument("--frames", type=int, default=0, help="evaluate K frames per source (0: all)")
    parser.add_argument("--report", default="eval", help="folder for report.json and confusion.png")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--domain", help="indoor | outdoor | object (default: the encoder checkpoint's)")
    parser.add_argument("--label-set", help="label set name or YAML path, replacing the sources' own")
    args = parser.parse_args(argv)
    head = load_head(args.head)
    sources = [open_source(spec, label_set=args.label_set) for spec in args.data]
    names = head.class_names or (list(sources[0].label_set.names) if sources[0].label_set else None)
    if names is None or len(names) != head.num_classes:
        parser.error("cannot name the head's classes: save it with sonata-probe or use a source with a label set")
    try:
        notes = head_classes(list(names), sources)
    except ValueError as exc:
        parser.error(str(exc))
    for note in notes:
        print(note)
    scores = evaluate(load(args.encoder), head, sources, list(names), args.frames, args.device, args.domain)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / "report.json").write_text(json.dumps(scores.report(), indent=1))
    plot_confusion(scores, report / "confusion.png")
    print(f"mIoU {scores.miou:.4f}  accuracy {scores.accuracy:.4f}  ({scores.confusion.sum()} points)")
    for name, value in zip(names, scores.iou, strict=True):
        print(f"  {name:>16s}  {'-' if np.isnan(value) else f'{value:.4f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
