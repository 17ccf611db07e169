"""One random-access interface over every frame source, and the spec strings the CLIs take.

    bag:/data/run1.mcap[:/points]          rosbag2 (.mcap / .db3 / bag dir) or ROS 1 .bag, one topic
    kitti:/data/semantickitti[:00,01]      SemanticKITTI sequences (all by default)
    nuscenes:/data/nuscenes[:v1.0-mini]    nuScenes lidarseg (v1.0-trainval by default)
    frames:/data/extracted                 per-frame folders (sonata-extract's output)

Bags are indexed by message timestamp on open and read one message at a time (mcap and db3 seek by
time); for many epochs of training, extract them to frame folders first (`sonata-extract`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Protocol, runtime_checkable

from .bags import BagError, BagFrames, bag_timestamps
from .datasets import DatasetError, FrameFolder, NuScenesLidarSeg, SemanticKitti
from .frame import Frame
from .labels import LabelSet, load_label_set
from .pointcloud2 import PointCloudError

SOURCE_KINDS = ("bag", "kitti", "nuscenes", "frames")
log = logging.getLogger(__name__)


class SourceSpecError(ValueError):
    """A malformed source spec string."""


@runtime_checkable
class FrameSource(Protocol):
    name: str
    label_set: LabelSet | None

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Frame: ...


class BagSource:
    """Random access into one PointCloud2 topic of a bag, by the message timestamps."""

    def __init__(self, path: str | os.PathLike, topic: str | None = None, intensity_scale: float | None = None):
        self.path, self.topic, self.intensity_scale = Path(path), topic, intensity_scale
        self.timestamps = bag_timestamps(self.path, topic)
        self.name = f"bag:{self.path}"
        self.label_set = None

    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Frame:
        stamp = int(self.timestamps[i])
        same_stamp_before = int((self.timestamps[:i] == stamp).sum())
        frames = BagFrames(
            self.path, self.topic, intensity_scale=self.intensity_scale, start_ns=stamp, stop_ns=stamp + 1
        )
        for k, frame in enumerate(frames):
            if k == same_stamp_before:
                frame.name = f"{self.path.name}#{i}"
                return frame
        raise DatasetError(f"{self.path}: message {i} could not be read ({frames.report})")


class _Named:
    """Adds `name` and `label_set` to a dataset reader."""

    def __init__(self, reader, name: str, label_set: LabelSet | None) -> None:
        self.reader, self.name, self.label_set = reader, name, label_set

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> Frame:
        return self.reader[i]


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'kind:path[:option]' -> (kind, path, option)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not rest:
        raise SourceSpecError(f"source {spec!r}: expected KIND:PATH[:OPTION] with KIND one of {SOURCE_KINDS}")
    path, option = rest, None
    head, sep, tail = rest.rpartition(":")
    looks_like_option = {
        "bag": tail.startswith("/"),
        "kitti": tail.replace(",", "").isdigit(),
        "nuscenes": tail.startswith("v1.0"),
        "frames": False,
    }[kind]
    if sep and head and looks_like_option:
        path, option = head, tail
    return kind, path, option


def open_source(spec: str, intensity_scale: float | None = None) -> FrameSource:
    """A FrameSource from a spec string (see the module docstring)."""
    kind, path, option = parse_spec(spec)
    if kind == "bag":
        return BagSource(path, option, intensity_scale)
    if kind == "kitti":
        sequences = option.split(",") if option else None
        reader = SemanticKitti(path, sequences)
        return _Named(reader, spec, reader.label_set)
    if kind == "nuscenes":
        reader = NuScenesLidarSeg(path, option or "v1.0-trainval")
        return _Named(reader, spec, reader.label_set)
    reader = FrameFolder(path)
    label_set = load_label_set(reader.label_set_name) if reader.label_set_name else None
    return _Named(reader, spec, label_set)


SKIPPABLE = (DatasetError, PointCloudError, BagError, OSError, ValueError)


class SkippingSource:
    """Wraps a source so that a corrupt frame becomes None (skipped and counted) instead of an error."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.name, self.label_set = source.name, source.label_set
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Frame | None:
        try:
            return self.source[i]
        except SKIPPABLE as exc:
            reason = type(exc).__name__
            self.skipped[reason] += 1
            log.warning("%s: frame %d skipped: %s", self.name, i, exc)
            return None
