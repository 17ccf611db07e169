"""Scenes preprocessed by Pointcept (ScanNet, ScanNet200, S3DIS, ...): the indoor data Sonata trains on.

Pointcept's preprocessing writes one folder of arrays per scene, grouped by split::

    <root>/<split>/<scene>/coord.npy       (N, 3) float32, metres
    <root>/<split>/<scene>/color.npy       (N, 3) uint8                       (optional)
    <root>/<split>/<scene>/normal.npy      (N, 3) float32                     (optional)
    <root>/<split>/<scene>/segment20.npy   (N,) int, ScanNet's 20 classes    (ScanNet; -1 unlabelled)
    <root>/<split>/<scene>/segment.npy     (N,) int, the dataset's classes   (S3DIS and others)
    <root>/<split>/<scene>/instance.npy    (N,) int, -1 = none               (optional)

Labels are already train ids (0..C-1, -1 ignored). With ScanNet's `segment20.npy` the label set is
`scannet20` (the released linear-probe head's class order); `segment.npy` (read under any other label
set) needs the label set named (`--label-set`), whose class count bounds the ids. Instances become 1-based
(`Frame.instance`: 0 = none). Arrays are memory-mapped; every file is checked (dtype, shape, label
range) and named in the error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import DatasetError, load_array
from .frame import IGNORE_LABEL, Frame
from .labels import LabelSet, load_label_set

SCANNET_SEGMENT = "segment20"


class PointceptScenes:
    """Random access to the scene folders under `root` (only those of `splits` when given), by name."""

    def __init__(self, root: str | os.PathLike, splits: list[str] | None = None, label_set: LabelSet | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder (expected Pointcept's <split>/<scene>/coord.npy)")
        tops = [self.root / split for split in splits] if splits else [self.root]
        for top in tops:
            if not top.is_dir():
                raise DatasetError(f"{top}: no such split folder")
        self.scenes = sorted(coord.parent for top in tops for coord in top.rglob("coord.npy"))
        if not self.scenes:
            raise DatasetError(f"{self.root}: no scene folder (<split>/<scene>/coord.npy) under {tops[0]}")
        # any scene: ScanNet's test split has no labels
        scannet = any((scene / f"{SCANNET_SEGMENT}.npy").is_file() for scene in self.scenes)
        self.label_set = label_set or (load_label_set("scannet20") if scannet else None)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> Frame:
        folder = self.scenes[i]
        coord = load_array(folder / "coord.npy", np.float32, (3,), None)
        n = len(coord)
        color = _optional(folder / "color.npy", (3,), n, np.uint8)
        normal = _optional(folder / "normal.npy", (3,), n, np.float32)
        segment = None
        if self.label_set is not None:
            path = folder / f"{SCANNET_SEGMENT}.npy"
            if self.label_set.name != "scannet20" or not path.is_file():
                path = folder / "segment.npy"
            segment = _optional(path, (), n, None)
            segment = None if segment is None else _labels(path, segment, self.label_set.num_classes)
        instance = _optional(folder / "instance.npy", (), n, None)
        if instance is not None:
            instance = (_integers(folder / "instance.npy", instance) + 1).astype(np.int32)
        name = folder.relative_to(self.root).as_posix()
        return Frame(coord=coord, color=color, normal=normal, segment=segment, instance=instance, name=name)


def _optional(path: Path, tail: tuple[int, ...], n: int, dtype) -> np.ndarray | None:
    return load_array(path, dtype, tail, n) if path.is_file() else None


def _integers(path: Path, array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(f"{path}: dtype {array.dtype}, expected an integer type")
    return np.asarray(array, dtype=np.int64)


def _labels(path: Path, array: np.ndarray, num_classes: int) -> np.ndarray:
    """Train ids as int32, checked to lie in [-1, num_classes)."""
    labels = _integers(path, array)
    bad = (labels < IGNORE_LABEL) | (labels >= num_classes)
    if bad.any():
        raise DatasetError(
            f"{path}: label {int(labels[bad][0])} outside [{IGNORE_LABEL}, {num_classes}) "
            f"(the label set has {num_classes} classes)"
        )
    return labels.astype(np.int32)
