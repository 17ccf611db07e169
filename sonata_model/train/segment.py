"""`sonata-segment`: label every frame of a recording, into a bag that RViz or Foxglove shows as it plays.

    sonata-segment --encoder runs/lidar/encoder.pth --head head.pth --data bag:/data/run2.mcap:/points \\
        --out /data/run2_labelled
    ros2 bag play /data/run2_labelled        # rviz2 -d config/sonata.rviz, fixed frame: the cloud's

Each frame becomes one PointCloud2 in the perception node's segmentation layout (x, y, z, class_id,
probability, rgb; class 255 where a point is not segmented, e.g. outside the model's range) on the node's
output topic, with the frame's stamp and frame id: every frame of the recording, none dropped, through
the same `Segmenter` as the node. The points are the frame's valid points (NaN and all-zero returns
left out). Frames without a stamp (datasets) are written 0.1 s apart. Unreadable frames are skipped and
counted (a damaged bag is read front to back, its good frames kept); a frame with no point in the
model's range is written unsegmented; a model that reads intensity labels a frame without it with
strength 0, as the node does by default (counted: less accurate). The bag is built in a hidden folder
beside OUT and moved to OUT once complete: an interrupted run leaves no OUT that looks finished. Ends
with a report: frames written, skipped and unsegmented, the share of each class, ms per frame.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import head_label_set, load, load_head
from ..encoder import SonataEncoder
from ..io.bags import BAG_FORMATS, BagError, BagWriter
from ..io.datasets import DatasetError
from ..io.frame import Frame
from ..io.labels import UNKNOWN, LabelSet, LabelSetError
from ..io.pcd import PcdError
from ..io.segmentation_cloud import class_ids, packed_palette, segmentation_points
from ..io.sources import SPEC_SYNTAX, SourceSpecError, open_source, parse_spec
from ..segmenter import NothingInRangeError, Segmenter
from .extract import readable_frames
from .probe import frame_cloud

NODE_TOPIC = "/sonata_perception/output/segmentation"
UNSTAMPED_PERIOD_NS = 100_000_000  # 10 Hz, a LiDAR's usual rate


@dataclass
class SegmentReport:
    """What a run wrote: frames, their points per class id (255: not segmented), and the time per frame."""

    names: list[str]
    written: int = 0
    skipped: int = 0  # unreadable frames
    unsegmented: int = 0  # frames without a point in the model's range
    without_intensity: int = 0  # frames labelled with strength 0: the model reads intensity, they had none
    class_points: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    ms: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = max(1, int(self.class_points.sum()))
        out = [
            f"{self.written} frames written, {self.skipped} unreadable skipped, {self.unsegmented} without a "
            f"point in the model's range; {int(self.class_points.sum())} points, "
            f"{np.mean(self.ms) if self.ms else 0.0:.0f} ms per frame"
        ]
        named = [(name, self.class_points[k]) for k, name in enumerate(self.names)] + [
            ("(not segmented)", self.class_points[255])
        ]
        if self.without_intensity:
            out.append(f"{self.without_intensity} frames had no intensity: labelled with strength 0, less accurately")
        out += [f"  {name:>16s}  {100 * count / total:5.1f} %" for name, count in named if count]
        return out


def segment_recording(
    segmenter: Segmenter,
    spec: str,
    out: str | Path,
    labels: LabelSet,
    *,
    topic: str = NODE_TOPIC,
    bag_format: str = "mcap",
    frames: int = 0,
) -> SegmentReport:
    """Label the frames of source `spec` (all, or the first `frames`) into the bag `out` (see the module
    docstring); `labels` names and colours the head's classes."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: remove it or choose another --out")
    staging = out.parent / f".{out.name}.partial"  # the bag is built in here, under its final name
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's
    staging.mkdir(parents=True)
    kind, _, _ = parse_spec(spec)
    source = None if kind == "bag" else open_source(spec)  # a bag is read front to back
    palette = packed_palette(labels.colors)
    report, counts = SegmentReport(list(labels.names)), Counter()
    try:
        with BagWriter(staging / out.name, bag_format, topic) as writer:
            for index, frame in readable_frames(spec, source, 1, counts):
                if frames and report.written >= frames:
                    break
                class_id, probability = _label(segmenter, frame, report)
                stamp = frame.stamp_ns or index * UNSTAMPED_PERIOD_NS
                packed = segmentation_points(frame.coord, class_id, probability, palette)
                writer.write_points(packed, stamp, frame.frame_id)
                report.class_points += np.bincount(class_id, minlength=256)
                report.written += 1
        (staging / out.name).replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.skipped = counts["unreadable"]
    return report


def _label(segmenter: Segmenter, frame: Frame, report: SegmentReport) -> tuple[np.ndarray, np.ndarray]:
    """(class id uint8, probability float32) of every point of `frame`; 255 / 0 where not segmented."""
    start = time.perf_counter()
    cloud = frame_cloud(frame)
    if cloud.strength is None and "strength" in segmenter.encoder.config.feature_keys:  # as the node's default
        cloud.strength = np.zeros(frame.num_points, np.float32)
        report.without_intensity += 1
    try:
        result = segmenter.segment_batch([cloud])[0]
    except NothingInRangeError:
        report.unsegmented += 1
        return np.full(frame.num_points, UNKNOWN, np.uint8), np.zeros(frame.num_points, np.float32)
    except ValueError as exc:
        raise ValueError(f"frame {frame.name or '?'}: {exc}") from exc
    labelled = class_ids(result.labels), result.probability  # probability 0 where not segmented
    report.ms.append((time.perf_counter() - start) * 1e3)
    return labelled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument("--data", required=True, help=f"source spec: {SPEC_SYNTAX}")
    parser.add_argument("--out", required=True, help="the bag to write (rosbag2: a folder; bag1: a .bag file)")
    parser.add_argument("--format", default="mcap", choices=BAG_FORMATS)
    parser.add_argument("--topic", default=NODE_TOPIC, help=f"topic of the labelled clouds (default {NODE_TOPIC})")
    parser.add_argument("--frames", type=int, default=0, help="label the first K frames (0: all)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--domain", help="indoor | outdoor | object (default: the encoder checkpoint's)")
    parser.add_argument("--label-set", help="names and colours of the head's classes (default: the head's own)")
    args = parser.parse_args(argv)
    try:
        encoder: SonataEncoder = load(args.encoder)
        head = load_head(args.head)
        labels = head_label_set(head, args.label_set)
        segmenter = Segmenter(encoder, head, device=args.device, precision=args.precision, domain=args.domain)
        report = segment_recording(
            segmenter, args.data, args.out, labels, topic=args.topic, bag_format=args.format, frames=args.frames
        )
    except (BagError, DatasetError, PcdError, SourceSpecError, LabelSetError, FileExistsError, ValueError) as exc:
        print(f"sonata-segment: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}:", *report.lines(), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
