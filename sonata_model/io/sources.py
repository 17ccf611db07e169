"""One random-access interface over every frame source, and the spec strings the command lines take.

    bag:/data/run1.mcap[:/points]          rosbag2 (.mcap / .db3 / bag folder) or ROS 1 .bag, one topic
                                           (PointCloud2, or Velodyne packets: one frame per revolution)
    kitti:/data/semantickitti[:00,01]      SemanticKITTI sequences (all by default; "seq00" also works)
    nuscenes:/data/nuscenes[:v1.0-mini]    nuScenes lidarseg (v1.0-trainval by default)
    frames:/data/extracted                 per-frame folders
    pointcept:/data/scannet[:train,val]    scenes preprocessed by Pointcept (ScanNet, S3DIS, ...; every
                                           split by default); ScanNet's 20 classes unless --label-set
    scannet:/data/scannet                  the ScanNet v2 download (`*_vh_clean_2.ply` meshes + labels)
    pcd:/data/scans  or  pcd:/data/a.pcd   PCD files (ascii / binary / binary_compressed, any fields):
                                           every *.pcd of a folder in name order, or one file; unlabelled

Bags are indexed by message time on open and read one message at a time (see `bags.BagSource`); a
damaged bag must be read front to back with `bags.iter_bag_frames` (or extracted) instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from typing import Protocol, runtime_checkable

from .bags import BagError, BagSource
from .datasets import DatasetError, FrameFolder, NuScenesLidarSeg, SemanticKitti
from .frame import Frame
from .labels import LabelSet, load_label_set
from .pcd import PcdError, PcdSource
from .ply import PlyError
from .pointcept import PointceptScenes
from .pointcloud2 import PointCloudError
from .scannet import ScanNetScenes

SOURCE_KINDS = ("bag", "kitti", "nuscenes", "frames", "pcd", "pointcept", "scannet")
SPEC_SYNTAX = (
    "bag:PATH[:TOPIC], kitti:ROOT[:SEQUENCES], nuscenes:ROOT[:VERSION], frames:DIR, pcd:FILE_OR_DIR, "
    "pointcept:ROOT[:SPLITS], scannet:ROOT"
)
_SPLITS = re.compile(r"[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*")
_KITTI_SEQUENCES = re.compile(r"(seq)?\d+(,(seq)?\d+)*")
log = logging.getLogger(__name__)


class SourceSpecError(ValueError):
    """A malformed source spec string."""


@runtime_checkable
class FrameSource(Protocol):
    """Random access to the frames of a dataset or bag; `label_set` is None for unlabelled sources."""

    name: str
    label_set: LabelSet | None

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Frame: ...


class DatasetSource:
    """A dataset reader with the `name` and `label_set` of a FrameSource."""

    def __init__(
        self,
        reader: SemanticKitti | NuScenesLidarSeg | FrameFolder | PointceptScenes | ScanNetScenes,
        name: str,
        label_set: LabelSet | None,
    ):
        self.reader, self.name, self.label_set = reader, name, label_set

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> Frame:
        return self.reader[i]


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'KIND:PATH[:OPTION]' -> (kind, path, option); a path may itself contain ':'."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not rest:
        raise SourceSpecError(f"source {spec!r}: expected KIND:PATH[:OPTION], one of {SPEC_SYNTAX}")
    head, sep, tail = rest.rpartition(":")
    is_option = {
        "bag": tail.startswith("/"),  # a topic
        "kitti": _KITTI_SEQUENCES.fullmatch(tail) is not None,
        "nuscenes": tail.startswith("v1.0"),
        "frames": False,
        "pcd": False,
        "pointcept": _SPLITS.fullmatch(tail) is not None and "/" not in tail,
        "scannet": False,
    }[kind]
    if sep and head and is_option:
        return kind, head, tail
    return kind, rest, None


def open_source(
    spec: str, *, intensity_scale: float | None = None, label_set: str | LabelSet | None = None
) -> FrameSource:
    """A FrameSource from a spec string (see the module docstring).

    `label_set` (a name, path or LabelSet) replaces the source's own; `intensity_scale` applies to bags
    and PCD files.
    """
    kind, path, option = parse_spec(spec)
    labels = load_label_set(label_set) if isinstance(label_set, (str, os.PathLike)) else label_set
    if kind == "bag":
        source = BagSource(path, option, intensity_scale=intensity_scale)
        source.label_set = labels
        return source
    if kind == "kitti":
        sequences = [s.removeprefix("seq") for s in option.split(",")] if option else None
        reader = SemanticKitti(path, sequences, labels)
        return DatasetSource(reader, spec, reader.label_set)
    if kind == "nuscenes":
        reader = NuScenesLidarSeg(path, option or "v1.0-trainval", labels)
        return DatasetSource(reader, spec, reader.label_set)
    if kind == "pcd":
        return PcdSource(path, intensity_scale=intensity_scale, label_set=labels)
    if kind == "pointcept":
        reader = PointceptScenes(path, option.split(",") if option else None, labels)
        return DatasetSource(reader, spec, reader.label_set)
    if kind == "scannet":
        reader = ScanNetScenes(path, labels)
        return DatasetSource(reader, spec, reader.label_set)
    reader = FrameFolder(path)
    if labels is None and reader.label_set_name:
        labels = load_label_set(reader.label_set_name)
    return DatasetSource(reader, spec, labels)


SKIPPABLE = (DatasetError, PointCloudError, PcdError, PlyError, BagError, OSError, ValueError)


class SkippingSource:
    """A source whose corrupt frames read as None (for training), counted in `skipped` by error type.

    Corrupt means the frame's files or message raise one of SKIPPABLE; a batch collate drops the Nones.
    """

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
            self.skipped[type(exc).__name__] += 1
            log.warning("%s: frame %d skipped: %s", self.name, i, exc)
            return None
