"""Global and local views of a scene for self-distillation, and the batches the distiller consumes.

Per scene (Sonata's MultiViewGenerator): drop the points outside the domain's range, grid-sample
(random representative), keep the sampled coordinates as `origin_coord` (metres); a first global
view of the nearest U(global_scale) * min(N, max_size) points around a random point, a second global
view around a random point of the first; local views (U(local_scale)) around points of the first
global view not yet covered by earlier local views.
Global views share one appearance jitter; local views draw their own. Every view then goes through
the encoder's input transform (`InputTransform`: centring per domain, then the augmentation in metres,
then the coordinate scale and grid sampling in model units), as the Segmenter applies it at inference,
so no two points of a view share a voxel and training sees what inference will.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..domains import InputTransform
from ..io.frame import Frame
from . import augment


@dataclass(frozen=True)
class ViewConfig:
    transform: InputTransform
    feature_keys: tuple[str, ...]
    global_views: int = 2
    local_views: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    max_size: int = 65536
    scale: tuple[float, float] = (0.9, 1.1)
    rotate_z_p: float = 0.8
    tilt: float = np.pi / 64
    tilt_p: float = 0.8
    flip_p: float = 0.5
    jitter_sigma: float = 0.005
    jitter_clip: float = 0.02
    elastic: tuple[tuple[float, float], ...] = ((0.2, 0.4), (0.8, 1.6))

    @classmethod
    def lidar(cls, **values) -> ViewConfig:
        """Outdoor scans: metre-scale parameters grown with the scene (scans span ~100 m, voxels ~5-10 cm):
        jitter 2 cm (clip 5 cm), elastic fields of 1 m / 0.4 m and 4 m / 1.6 m."""
        lidar = dict(jitter_sigma=0.02, jitter_clip=0.05, elastic=((1.0, 0.4), (4.0, 1.6)))
        return cls(**{**lidar, **values})


@dataclass
class ViewBatch:
    coord: Tensor  # (N, 3) float32 augmented model coordinates (the encoder's `coord` feature)
    origin_coord: Tensor  # (N, 3) float32 pre-augmentation coordinates, metres
    grid_coord: Tensor  # (N, 3) int64 per-view voxel coordinates
    feat: Tensor  # (N, C) float32 encoder input
    offset: Tensor  # (V,) int64 cumulative counts per view

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewBatch:
        return ViewBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in dataclasses.fields(self)}
        )

    def pin_memory(self) -> ViewBatch:
        return ViewBatch(**{f.name: getattr(self, f.name).pin_memory() for f in dataclasses.fields(self)})

    @classmethod
    def stack(cls, views: list[dict[str, np.ndarray]]) -> ViewBatch:
        def cat(key, dtype):
            return torch.from_numpy(np.concatenate([v[key] for v in views]).astype(dtype, copy=False))

        return cls(
            coord=cat("coord", np.float32),
            origin_coord=cat("origin_coord", np.float32),
            grid_coord=cat("grid_coord", np.int64),
            feat=cat("feat", np.float32),
            offset=torch.as_tensor(np.cumsum([len(v["coord"]) for v in views]), dtype=torch.long),
        )


@dataclass
class PretrainBatch:
    global_views: ViewBatch  # views of sample s at [s * G, (s + 1) * G)
    local_views: ViewBatch  # views of sample s at [s * L, (s + 1) * L)
    num_samples: int
    names: list[str]
    skipped: int = 0  # corrupt frames replaced while building this batch

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PretrainBatch:
        return dataclasses.replace(
            self,
            global_views=self.global_views.to(device, non_blocking),
            local_views=self.local_views.to(device, non_blocking),
        )

    def pin_memory(self) -> PretrainBatch:
        return dataclasses.replace(
            self, global_views=self.global_views.pin_memory(), local_views=self.local_views.pin_memory()
        )


def grid_sample_numpy(coord: np.ndarray, grid_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices of one random point per voxel, their grid coordinates with the minimum subtracted)."""
    cell = np.floor(coord / np.float64(grid_size)).astype(np.int64)  # float64, as the reference (see grid.py)
    cell -= cell.min(axis=0)
    key = (cell[:, 0] << 42) | (cell[:, 1] << 21) | cell[:, 2]
    order = rng.permutation(len(coord))
    _, first = np.unique(key[order], return_index=True)
    index = np.sort(order[first])
    return index, cell[index]


MIN_VIEW_POINTS = 10  # fewer points in range make no view worth training on


class NothingToViewError(ValueError):
    """A frame has (almost) no point inside the domain's range: the pretraining stream draws another."""


def _inside(coord: np.ndarray, box: tuple[float, ...] | None) -> np.ndarray:
    """Row indices of the points inside the domain's range box (all without one)."""
    if box is None:
        return np.arange(len(coord))
    return np.flatnonzero(np.all((coord >= box[:3]) & (coord <= box[3:]), axis=1))


def _nearest(coord: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    distance = np.square(coord - centre).sum(axis=1)
    if size >= len(coord):
        return np.arange(len(coord))
    return np.argpartition(distance, size - 1)[:size]


def _crop_size(rng: np.random.Generator, scale: tuple[float, float], available: int) -> int:
    return max(10, int(rng.uniform(*scale) * available))


def make_views(frame: Frame, config: ViewConfig, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """(global views, local views) of one frame, each a dict of numpy arrays ready for `ViewBatch.stack`."""
    inside = _inside(frame.coord, config.transform.range_box)
    if len(inside) < MIN_VIEW_POINTS:
        raise NothingToViewError(
            f"frame {frame.name or '?'}: {len(inside)} points inside the {config.transform.domain} domain's range"
        )
    index, _ = grid_sample_numpy(frame.coord[inside], config.transform.voxel_size, rng)
    index = inside[index]
    coord = frame.coord[index].astype(np.float64)
    extras = {
        key: getattr(frame, key)[index] for key in ("color", "normal", "strength") if getattr(frame, key) is not None
    }
    if not config.transform.needs_colour:  # outdoor / objects: missing colour and normals are zeros
        for key in ("color", "normal"):
            if key in config.feature_keys and key not in extras:
                extras[key] = np.zeros((len(index), 3), np.uint8 if key == "color" else np.float32)
    missing = [k for k in config.feature_keys if k != "coord" and k not in extras]
    if missing:
        raise ValueError(f"frame {frame.name!r} lacks {missing}, which the encoder's features need")
    shared = _appearance(extras, rng)
    available = min(len(coord), config.max_size)
    major = _nearest(coord, coord[rng.integers(len(coord))], _crop_size(rng, config.global_scale, available))
    global_index = [major]
    for _ in range(config.global_views - 1):
        centre = coord[major[rng.integers(len(major))]]
        global_index.append(_nearest(coord, centre, _crop_size(rng, config.global_scale, available)))
    local_index, covered = [], np.zeros(len(major), bool)
    for _ in range(config.local_views):
        if covered.all():
            covered[:] = False
        centre = coord[major[rng.choice(np.flatnonzero(~covered))]]
        view = _nearest(coord, centre, _crop_size(rng, config.local_scale, available))
        local_index.append(view)
        covered |= np.isin(major, view)
    global_views = [_view(coord, shared, idx, config, rng) for idx in global_index]
    local_views = [_view(coord, _appearance(extras, rng), idx, config, rng) for idx in local_index]
    return global_views, local_views


def _appearance(extras: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    jittered = dict(extras)
    if "color" in extras:
        jittered["color"] = augment.colour_jitter(extras["color"], rng)
    if "strength" in extras:
        jittered["strength"] = augment.strength_jitter(extras["strength"], rng)
    return jittered


def _view(
    coord: np.ndarray,
    appearance: dict[str, np.ndarray],
    index: np.ndarray,
    config: ViewConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    transform = config.transform
    origin = coord[index]
    points = augment.normalise_to_unit_sphere(origin) if transform.unit_sphere else origin
    if transform.centre == "xyz":
        points = augment.centre_shift(points)
    linear = augment.random_rigid(rng, config.rotate_z_p, config.tilt, config.tilt_p, config.flip_p, config.scale)
    points = points @ linear.T
    points = augment.jitter(points, rng, config.jitter_sigma, config.jitter_clip)
    points = augment.elastic(points, rng, config.elastic)
    points = points * transform.scale
    keep, grid = grid_sample_numpy(points, transform.grid, rng)
    points = points[keep]
    if transform.centre == "xy_after_grid":
        points = augment.centre_shift(points, with_z=False)
    parts = []
    for key in config.feature_keys:
        if key == "coord":
            parts.append(points)
        elif key == "color":
            parts.append(appearance["color"][index][keep] / 255.0)
        elif key == "normal":
            normal = appearance["normal"][index][keep] @ linear.T
            parts.append(normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9))
        else:
            parts.append(appearance["strength"][index][keep, None])
    return {
        "coord": points.astype(np.float32),
        "origin_coord": origin[keep].astype(np.float32),
        "grid_coord": grid,
        "feat": np.concatenate(parts, axis=1).astype(np.float32),
    }
