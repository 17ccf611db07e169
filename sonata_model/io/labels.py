"""Label sets: class names, display colours and the map from a dataset's raw ids to train ids.

A label set is a YAML file (`sonata_model/labels/*.yaml`, package data of the library)::

    name: semantic_kitti
    ignore_index: -1
    classes: [{name: car, color: [100, 150, 245]}, ...]   # train id = position
    learning_map: {10: 0, 252: 0, 0: -1, ...}             # raw id -> train id (optional)

`load_label_set` takes a path, or the name of one of the sets shipped with the library (found next to
its code wherever it is installed: pip, colcon or a source checkout; never in a ROS package's share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

UNKNOWN = 255  # class id of points without a label in published clouds
UNKNOWN_COLOR = (128, 128, 128)
MAX_RAW_ID = 1 << 16  # SemanticKITTI keeps the semantic id in 16 bits; no dataset needs more


class LabelSetError(ValueError):
    """A label-set file that is missing or malformed."""


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Class names and colours (train id = position), and the raw-id -> train-id map of a dataset.

    Without a learning map raw ids are train ids: 0..C-1 map to themselves, anything else is ignored.
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (C, 3) uint8
    ignore_index: int = -1
    learning_map: dict[int, int] | None = None
    _to_train: np.ndarray = field(init=False, repr=False)  # raw id -> train id lookup table
    _to_raw: np.ndarray = field(init=False, repr=False)  # train id -> raw id; last entry: ignore's raw id

    def __post_init__(self) -> None:
        mapping = self.learning_map if self.learning_map is not None else {i: i for i in range(self.num_classes)}
        # one entry past the largest raw id: the ignore answer for every larger id
        to_train = np.full(max(mapping, default=-1) + 2, self.ignore_index, dtype=np.int32)
        to_train[list(mapping)] = list(mapping.values())
        to_raw = np.full(self.num_classes + 1, -1, dtype=np.int64)
        to_raw[-1] = np.flatnonzero(to_train == self.ignore_index)[0]  # the smallest raw id read as ignored
        for train in range(self.num_classes):  # loop over classes
            raws = np.flatnonzero(to_train == train)
            to_raw[train] = raws[0] if len(raws) else -1
        object.__setattr__(self, "_to_train", to_train)
        object.__setattr__(self, "_to_raw", to_raw)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colour of every uint8 class id: the classes, then grey (255 = unknown)."""
        return palette_table(self.colors)

    def map_raw(self, raw: np.ndarray) -> np.ndarray:
        """Raw dataset ids -> train ids (int32; unmapped ids -> ignore_index), via a lookup table."""
        raw = np.asarray(raw)
        if raw.size and raw.min() < 0:
            raise ValueError(f"label set {self.name!r}: raw ids must be >= 0, got {raw.min()}")
        return self._to_train[np.minimum(raw, len(self._to_train) - 1)]

    def translate(self, train: np.ndarray, target: LabelSet) -> np.ndarray:
        """Train ids of this set -> train ids of `target`, class by class name (int32); classes `target`
        lacks, and ignored points, become `target.ignore_index` (e.g. SemanticKITTI -> synthetic)."""
        table = np.array([target.names.index(n) if n in target.names else target.ignore_index for n in self.names])
        train = np.asarray(train)
        known = (train >= 0) & (train < self.num_classes)
        return np.where(known, table[np.where(known, train, 0)], target.ignore_index).astype(np.int32)

    def raw_ids(self, train: np.ndarray) -> np.ndarray:
        """Train ids (ignore_index allowed) -> raw ids that `map_raw` maps back to them (uint32).

        Each class gets its smallest raw id; ignored points get the smallest raw id the map ignores.
        """
        train = np.asarray(train)
        bad = (train != self.ignore_index) & ((train < 0) | (train >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"label set {self.name!r}: train ids {np.unique(train[bad])[:5].tolist()} are neither "
                f"0..{self.num_classes - 1} nor ignore_index {self.ignore_index}"
            )
        table = self._to_raw
        missing = [self.names[t] for t in np.unique(train[train >= 0]) if table[t] < 0]
        if missing:
            raise ValueError(f"label set {self.name!r}: no raw id maps to {missing}")
        return table[np.where(train == self.ignore_index, -1, train)].astype(np.uint32)


LABEL_SETS = Path(__file__).resolve().parents[1] / "labels"
"""The label sets shipped with the library (package data of `sonata_model`)."""


def palette_table(colors: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 colour of every uint8 class id: `colors` (K, 3) for the first K, grey elsewhere."""
    table = np.tile(np.array(UNKNOWN_COLOR, np.uint8), (256, 1))
    table[: len(colors)] = colors
    table[UNKNOWN] = UNKNOWN_COLOR
    return table


def available_label_sets() -> list[str]:
    return sorted(p.stem for p in LABEL_SETS.glob("*.yaml"))


def load_label_set(name_or_path: str | os.PathLike) -> LabelSet:
    """A label set from a YAML path or by the name of a shipped set."""
    path = Path(name_or_path)
    if not path.is_file():
        path = LABEL_SETS / f"{name_or_path}.yaml"
        if not path.is_file():
            raise LabelSetError(f"label set {str(name_or_path)!r} not found; available: {available_label_sets()}")
    try:
        data = yaml.safe_load(path.read_text())
        classes = data["classes"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise LabelSetError(f"{path}: not a label set (no readable 'classes' list: {exc!r})") from exc
    for k, c in enumerate(classes if isinstance(classes, list) else [None]):
        if not isinstance(c, dict) or "name" not in c or "color" not in c:
            raise LabelSetError(f"{path}: class {k} is {c!r}; each class needs {{name: ..., color: [r, g, b]}}")
    names = tuple(str(c["name"]) for c in classes)
    try:
        colors = np.array([c["color"] for c in classes], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise LabelSetError(f"{path}: every class needs a colour [r, g, b] in 0-255 ({exc})") from exc
    if colors.shape != (len(names), 3) or colors.min(initial=0) < 0 or colors.max(initial=0) > 255:
        raise LabelSetError(f"{path}: every class needs a colour [r, g, b] in 0-255")
    if not 0 < len(names) < UNKNOWN:
        raise LabelSetError(f"{path}: {len(names)} classes; 1 to {UNKNOWN - 1} are supported")
    if data.get("ignore_index", -1) != -1:  # every reader and the scores take -1 as "no label"
        raise LabelSetError(f"{path}: ignore_index must be -1 (or left out), got {data['ignore_index']!r}")
    if len(set(names)) != len(names):
        raise LabelSetError(f"{path}: class names must be distinct (labels are matched by name), got {names}")
    learning_map = data.get("learning_map")
    if learning_map is not None:
        entries = learning_map.items() if isinstance(learning_map, dict) else None
        if entries is None or not all(isinstance(x, int) and not isinstance(x, bool) for kv in entries for x in kv):
            raise LabelSetError(f"{path}: learning_map must map integer raw ids to integer train ids")
        learning_map = dict(learning_map)
        bad = {k: v for k, v in learning_map.items() if not (0 <= k < MAX_RAW_ID and -1 <= v < len(names))}
        if bad:
            raise LabelSetError(
                f"{path}: learning_map entries {bad}: raw ids must be 0..{MAX_RAW_ID - 1}, "
                f"train ids -1..{len(names) - 1}"
            )
    return LabelSet(
        name=str(data.get("name", path.stem)),
        names=names,
        colors=colors.astype(np.uint8),
        learning_map=learning_map,
    )
