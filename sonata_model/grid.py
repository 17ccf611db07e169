"""Voxel grid arithmetic shared by the frame plan, the normals and pretraining: cells and packed keys.

As the reference's GridSample, per cloud: grid = floor(coord / grid_size) minus the cloud's minimum
(the division in float64, as the reference's numpy does: in float32 a point within ~1e-7 of a cell
boundary lands in the cell next to the reference's, and data stored at millimetre precision puts many
points exactly on the boundaries of a 2 cm grid),
or minus a fixed `origin` cell (outdoor domains anchor the grid on their range box, so that a voxel's
grid coordinate, hence its place along the serialization curves, does not depend on what else is in
the scan: cropping a scan or one far return no longer regroups every attention patch).
A voxel is named by one int64 key (`pack_keys`), ordered like (level, cloud, x, y, z): sorting keys
sorts voxels the way the reference sorts unique rows, and adding `offset_keys(delta)` to a key moves
it by a grid offset (coordinates carry a margin, so a step of a few cells never leaves its field).
Everything here is a handful of tensor ops on all points, without a host sync.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

AXIS_LIMIT = 1 << 16  # serialization encodes grid coordinates below 2**16
AXIS_BITS = 17  # per axis in a key: coordinates < 2**16 plus a margin for neighbour offsets
BATCH_BITS = 9  # clouds per batch < 2**9 (the largest cloud value marks padding rows)
LEVEL_SHIFT = 3 * AXIS_BITS + BATCH_BITS  # 60: up to 7 levels below the sign bit
MAX_CLOUDS = (1 << BATCH_BITS) - 1
PAD_CLOUD = MAX_CLOUDS  # the cloud value of padding rows: sorts after every real cloud of a level
MARGIN_KEY = (1 << 2 * AXIS_BITS) + (1 << AXIS_BITS) + 1  # the key of grid (1, 1, 1): a one-cell margin
_AXIS_MASK = (1 << AXIS_BITS) - 1
_BATCH_MASK = (1 << BATCH_BITS) - 1


def offset_to_batch(offset: Tensor, num_points: int | None = None) -> Tensor:
    """(N,) cloud index of every point from cumulative counts (no host sync when N is given)."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    clouds = torch.arange(len(offset), device=offset.device)
    return torch.repeat_interleave(clouds, counts, output_size=num_points)


def voxel_grid(
    coord: Tensor,
    batch: Tensor,
    num_clouds: int,
    grid_size: float,
    valid: Tensor | None = None,
    origin: tuple[float, float, float] | None = None,
) -> Tensor:
    """(N, 3) int64 grid coordinates: floor(coord / grid_size) minus the minimum over each cloud's valid
    points (rows with `valid` False get coordinates relative to their cloud too, but take no part), or
    minus the cell of `origin` (units of `coord`, a corner no valid point lies below) in every cloud."""
    cell = torch.floor(coord.double() / grid_size).long()
    if origin is not None:
        origin_cell = tuple(math.floor(float(v) / float(grid_size)) for v in origin)  # float64, as `cell`
        return cell - device_constant(origin_cell, torch.long, coord.device)
    if valid is not None:
        cell = torch.where(valid[:, None], cell, torch.iinfo(torch.long).max)
    low = cell.new_full((num_clouds, 3), torch.iinfo(torch.long).max)
    low = low.scatter_reduce(0, batch[:, None].expand_as(cell), cell, "amin")
    return cell - low[batch]


@functools.cache
def device_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """`values` as a tensor on `device`, built once: a tensor of Python numbers built per frame is a
    blocking upload (on a GPU the host waits for the work queued before it)."""
    return torch.tensor(values, dtype=dtype, device=device)


def pack_keys(grid: Tensor, batch: Tensor | int, level: Tensor | int = 0) -> Tensor:
    """int64 key of (level, cloud, x, y, z); grid coordinates in [0, 2**17), cloud < 2**9, level < 8.

    Broadcasts: `grid` (..., 3) with `batch` and `level` of its leading shape."""
    cloud_level = batch if isinstance(level, int) and level == 0 else (level << BATCH_BITS) + batch
    return (grid * _constants(grid.device)[0]).sum(dim=-1) + (cloud_level << 3 * AXIS_BITS)


def level_keys(grid: Tensor, batch: Tensor, num_levels: int) -> Tensor:
    """(L, N) key of every (N, 3) grid coordinate at levels 0..L-1: `pack_keys` of its cell at level l
    (grid >> l) plus the one-cell margin, for all levels in a few ops (the level and margin terms are
    constants)."""
    shifts, level_terms = _level_constants(num_levels, grid.device)
    weights = _constants(grid.device)[0]
    return ((grid >> shifts) * weights).sum(dim=-1) + level_terms + (batch << 3 * AXIS_BITS)


@functools.cache
def _level_constants(num_levels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(L, 1, 1) shifts and (L, 1) level field + margin of `level_keys`, built once per device."""
    levels = torch.arange(num_levels, dtype=torch.long)
    terms = (levels << LEVEL_SHIFT) + MARGIN_KEY
    return levels.view(-1, 1, 1).to(device), terms.view(-1, 1).to(device)


def unpack_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of `pack_keys` without the level: (grid (..., 3) int64, cloud (...) int64)."""
    _, shifts, masks = _constants(keys.device)
    fields = (keys.unsqueeze(-1) >> shifts) & masks
    return fields[..., :3], fields[..., 3]


@functools.cache
def _constants(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(axis weights, field shifts, field masks) of the key layout, built once per device."""
    weights = torch.tensor([1 << 2 * AXIS_BITS, 1 << AXIS_BITS, 1], dtype=torch.long, device=device)
    shifts = torch.tensor([2 * AXIS_BITS, AXIS_BITS, 0, 3 * AXIS_BITS], dtype=torch.long, device=device)
    masks = torch.tensor([_AXIS_MASK] * 3 + [_BATCH_MASK], dtype=torch.long, device=device)
    return weights, shifts, masks


def offset_keys(deltas: Tensor) -> Tensor:
    """What adding each (K, 3) signed grid offset does to a `pack_keys` key (no field may leave its range)."""
    return (deltas[:, 0] << 2 * AXIS_BITS) + (deltas[:, 1] << AXIS_BITS) + deltas[:, 2]


def kernel_offsets(kernel_size: int, device: torch.device) -> Tensor:
    """(K^3, 3) offsets in the order of a conv weight's (kx, ky, kz) axes."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    return torch.cartesian_prod(r, r, r)
