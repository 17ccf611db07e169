"""Input domains: how a cloud in metres becomes the coordinates an encoder family was trained on.

A checkpoint's weights only mean something with the transform it was trained with. The authors'
encoders differ by domain (Sonata: indoor only; Concerto and Utonia: indoor scenes, outdoor LiDAR,
objects), and so do this project's own models. One `InputTransform` per (family, domain):

1. `range_box` (metres, outdoor only): points outside are not segmented (class 255). Real scans hold
   multipath returns metres below the road; one such point must not move every other point.
2. `unit_sphere` (objects): centre on the centroid and divide by the largest radius.
3. `scale`: coordinates are multiplied by it (model units; e.g. 0.2 for outdoor LiDAR).
4. `centre`: "xyz" puts each cloud's x, y bounding-box centre and z minimum at 0 (the reference's
   CenterShift, indoor and objects); "none" keeps the sensor / ego frame (outdoor LiDAR: the vehicle at
   the origin, the road in the xy-plane, as the authors' outdoor recipes); "xy_after_grid" re-centres
   x, y on the sampled voxels' bounding box after grid sampling (Concerto's outdoor PCA demo).
5. grid sampling at `grid` model units per voxel (the real voxel edge is `grid / scale` metres). In
   the sensor frame (a range box, no shift before sampling) the grid counts from the box's corner rather
   than from each scan's minimum (the reference's choice): a voxel's grid coordinate then depends on
   its position only, so cropping a scan regroups only the attention patches next to the cut.

Missing modalities: outdoor and object domains feed zeros for missing colour and normals (the newer
encoders were trained with modality dropout); the indoor domain requires colour and estimates
normals, as the released Sonata weights need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .grid import device_constant, offset_to_batch

DOMAINS = ("indoor", "outdoor", "object")
CENTRES = ("xyz", "none", "xy_after_grid")
FAMILIES = ("sonata", "utonia")
"""`sonata`: PTv3 m2 (Sonata, Concerto, this project's models); `utonia`: PTv3 m3 (3D RoPE attention)."""

OUTDOOR_RANGE = (-150.0, -150.0, -4.0, 150.0, 150.0, 30.0)
"""Outdoor points segmented (metres, sensor / ego frame, z up). Below -4 m is multipath under the road
(the authors' outdoor configs clip z at -4 m too); beyond 150 m or 30 m up the scan is too sparse."""


class DomainError(ValueError):
    """An unknown domain or an inconsistent transform."""


@dataclass(frozen=True)
class InputTransform:
    """How metres become model coordinates and voxels, for one encoder family and domain."""

    domain: str
    scale: float = 1.0
    grid: float = 0.02  # voxel edge in model units
    centre: str = "xyz"
    unit_sphere: bool = False
    range_box: tuple[float, ...] | None = None  # (xmin, ymin, zmin, xmax, ymax, zmax) in metres

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise DomainError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.centre not in CENTRES:
            raise DomainError(f"centre must be one of {CENTRES}, got {self.centre!r}")
        if not (self.scale > 0 and self.grid > 0):
            raise DomainError(f"scale and grid must be positive, got scale {self.scale}, grid {self.grid}")
        if self.range_box is not None:
            box = tuple(float(v) for v in self.range_box)
            if len(box) != 6 or any(lo >= hi for lo, hi in zip(box[:3], box[3:], strict=True)):
                raise DomainError(f"range_box must be [xmin, ymin, zmin, xmax, ymax, zmax], got {self.range_box}")
            object.__setattr__(self, "range_box", box)

    @property
    def voxel_size(self) -> float:
        """Voxel edge in metres (relative units for objects, which are normalised first)."""
        return self.grid / self.scale

    @property
    def needs_colour(self) -> bool:
        """Indoor weights (released Sonata) need real colour; the other domains take zeros."""
        return self.domain == "indoor"

    @property
    def default_normals(self) -> str:
        """What to feed a normal-reading model when the cloud has none: indoor estimates, others zeros."""
        return "estimate" if self.domain == "indoor" else "zeros"

    def replace(self, **changes) -> InputTransform:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        parts = [f"domain {self.domain}", f"scale {self.scale:g}", f"voxel {self.voxel_size:g}"]
        parts.append(f"centre {self.centre}")
        if self.unit_sphere:
            parts.append("unit sphere")
        if self.range_box is not None:
            parts.append("range " + ",".join(f"{v:g}" for v in self.range_box))
        return ", ".join(parts)

    # ------------------------------------------------------------------------ the transform (torch)

    @property
    def grid_origin(self) -> tuple[float, float, float] | None:
        """Model-unit corner the voxel grid counts from, or None for each cloud's minimum (step 5)."""
        if self.range_box is None or self.centre == "xyz":
            return None
        return tuple(v * self.scale for v in self.range_box[:3])

    def inside(self, coord: Tensor) -> Tensor:
        """(N,) bool: the points this domain segments (all, without a range box)."""
        if self.range_box is None:
            return torch.ones(coord.shape[0], dtype=torch.bool, device=coord.device)
        box = device_constant(tuple(self.range_box), coord.dtype, coord.device)
        return ((coord >= box[:3]) & (coord <= box[3:])).all(dim=1)

    def to_model(self, coord: Tensor, batch: Tensor, num_clouds: int, valid: Tensor | None = None) -> Tensor:
        """Steps 2-4 on a batch of clouds (`batch` (N,): each point's cloud) in metres -> model units;
        the per-cloud centre and radius are taken over the `valid` points (default: all)."""
        if self.unit_sphere:
            centroid = _segment_mean(coord, batch, num_clouds, valid)
            coord = coord - centroid[batch]
            norm = coord.norm(dim=1) if valid is None else torch.where(valid, coord.norm(dim=1), 0)
            radius = torch.zeros(num_clouds, dtype=coord.dtype, device=coord.device)
            radius = radius.scatter_reduce(0, batch, norm, "amax", include_self=False)
            coord = coord / radius.clamp_min(torch.finfo(coord.dtype).tiny)[batch, None]
        coord = coord * self.scale
        if self.centre == "xyz":
            coord = coord - bounding_box_shift(coord, batch, num_clouds, with_z=True, valid=valid)[batch]
        return coord

    def after_grid_shift(self, voxel_coord: Tensor, voxel_offset: Tensor) -> Tensor:
        """Step 5's (B, 3) per-cloud shift of the sampled voxels ("xy_after_grid": the x, y centre of their
        bounding box); zeros for the other centres."""
        if self.centre != "xy_after_grid":
            return voxel_coord.new_zeros((len(voxel_offset), 3))
        batch = offset_to_batch(voxel_offset, voxel_coord.shape[0])
        return bounding_box_shift(voxel_coord, batch, len(voxel_offset), with_z=False)


def bounding_box_shift(coord: Tensor, batch: Tensor, clouds: int, with_z: bool, valid: Tensor | None = None) -> Tensor:
    """(B, 3) per cloud: x, y of the bounding-box centre, and z of its minimum (or 0 without z)."""
    index = batch.unsqueeze(1).expand_as(coord)
    low_values = coord if valid is None else torch.where(valid[:, None], coord, torch.inf)
    high_values = coord if valid is None else torch.where(valid[:, None], coord, -torch.inf)
    low = coord.new_full((clouds, 3), torch.inf).scatter_reduce(0, index, low_values, "amin")
    high = coord.new_full((clouds, 3), -torch.inf).scatter_reduce(0, index, high_values, "amax")
    z = low[:, 2:] if with_z else torch.zeros_like(low[:, 2:])
    return torch.cat(((low[:, :2] + high[:, :2]) / 2, z), dim=1)


def _segment_mean(coord: Tensor, batch: Tensor, clouds: int, valid: Tensor | None) -> Tensor:
    weight = coord.new_ones(coord.shape[0]) if valid is None else valid.to(coord.dtype)
    total = coord.new_zeros((clouds, 3)).index_add_(0, batch, coord * weight[:, None])
    count = coord.new_zeros(clouds).index_add_(0, batch, weight).clamp_min(1)
    return total / count[:, None]


# The authors' reference transforms (see the repository README, "Which weights?").
_REFERENCE: dict[tuple[str, str], InputTransform] = {
    # Sonata's inference transform; Concerto's indoor one is identical.
    ("sonata", "indoor"): InputTransform("indoor", scale=1.0, grid=0.02, centre="xyz"),
    # Concerto's outdoor recipe (scene x0.2 on a 1 cm grid = 5 cm voxels) in the ego frame, as its
    # KITTI / nuScenes probing configs (the PCA demo's x, y re-centring is `centre="xy_after_grid"`).
    ("sonata", "outdoor"): InputTransform("outdoor", scale=0.2, grid=0.01, centre="none", range_box=OUTDOOR_RANGE),
    ("sonata", "object"): InputTransform("object", scale=1.0, grid=0.01, centre="xyz", unit_sphere=True),
    ("utonia", "indoor"): InputTransform("indoor", scale=0.5, grid=0.01, centre="xyz"),
    ("utonia", "outdoor"): InputTransform("outdoor", scale=0.2, grid=0.01, centre="none", range_box=OUTDOOR_RANGE),
    ("utonia", "object"): InputTransform("object", scale=1.0, grid=0.01, centre="xyz", unit_sphere=True),
}
DEFAULT_DOMAIN = {"sonata": "indoor", "utonia": "outdoor"}
"""A released file does not say its domain: Sonata's weights are indoor-only (Concerto's too, except
`concerto_large_outdoor`, which needs domain outdoor); Utonia is universal and this is a LiDAR node."""


def reference_transform(family: str, domain: str) -> InputTransform:
    """The authors' transform of `family` for `domain`."""
    if family not in FAMILIES:
        raise DomainError(f"unknown encoder family {family!r}; expected one of {FAMILIES}")
    if domain not in DOMAINS:
        raise DomainError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return _REFERENCE[(family, domain)]
