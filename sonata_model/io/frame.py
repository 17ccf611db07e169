"""One LiDAR / RGB-D frame as plain arrays: the unit every reader yields and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_LABEL = -1
"""Label of unlabelled points in `Frame.segment` (train ids are 0..C-1)."""


@dataclass
class Frame:
    """Arrays of one scan, in the sensor frame unless `pose` says otherwise.

    Only `coord` is required; optional per-point arrays have N rows when present.
    """

    coord: np.ndarray  # (N, 3) float32, metres
    strength: np.ndarray | None = None  # (N,) float32 in [0, 1] (LiDAR intensity / remission)
    color: np.ndarray | None = None  # (N, 3) uint8, 0-255
    normal: np.ndarray | None = None  # (N, 3) float32, unit length
    segment: np.ndarray | None = None  # (N,) int32 train ids, IGNORE_LABEL = unlabelled
    instance: np.ndarray | None = None  # (N,) int32, 0 = no instance
    pose: np.ndarray | None = None  # (4, 4) float64 sensor -> world
    stamp_ns: int = 0
    frame_id: str = ""
    name: str = ""  # unique within its source, e.g. "seq00/000123" or "run1.mcap#42"
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other per-point fields: ring, time

    def __post_init__(self) -> None:
        n = len(self.coord)
        for key in ("strength", "color", "normal", "segment", "instance"):
            value = getattr(self, key)
            if value is not None and len(value) != n:
                raise ValueError(f"Frame {self.name!r}: {key} has {len(value)} rows, coord has {n}")

    @property
    def num_points(self) -> int:
        return len(self.coord)
