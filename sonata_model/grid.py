"""Grid sampling (voxelization) on torch, CPU or CUDA: one representative point per voxel.

As the reference's GridSample, per cloud: grid = floor(coord / grid_size) minus the cloud's minimum,
or minus a fixed `origin` cell (outdoor domains anchor the grid on their range box, so that a voxel's
grid coordinate, hence its place along the serialization curves, does not depend on what else is in
the scan: cropping a scan or one far return no longer regroups every attention patch).
Voxels come out ordered by (cloud, x, y, z). The representative of a voxel is its lowest input index
(deterministic, for inference) or a uniformly random member drawn from a seeded generator (training).
`inverse` maps every input point to its voxel, which is how every input point gets a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

AXIS_LIMIT = 1 << 16  # serialization encodes grid coordinates below 2**16


@dataclass
class GridSample:
    index: Tensor  # (M,) int64 representative input point of each voxel
    inverse: Tensor  # (N,) int64 voxel of each input point
    grid_coord: Tensor  # (M, 3) int64 per-cloud voxel coordinates >= 0
    offset: Tensor  # (B,) int64 cumulative voxel counts


def offset_to_batch(offset: Tensor, num_points: int | None = None) -> Tensor:
    """(N,) cloud index of every point from cumulative counts (no host sync when N is given)."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    clouds = torch.arange(len(offset), device=offset.device)
    return torch.repeat_interleave(clouds, counts, output_size=num_points)


def grid_sample(
    coord: Tensor,
    offset: Tensor,
    grid_size: float,
    generator: torch.Generator | None = None,
    origin: tuple[float, float, float] | None = None,
) -> GridSample:
    """Voxelize a batch of clouds (rows offset[b-1]:offset[b]) at `grid_size` (in the units of `coord`).

    `origin`: a corner no point lies below (units of `coord`); grid coordinates then count from its
    cell in every cloud instead of from each cloud's minimum.
    """
    n = coord.shape[0]
    batch = offset_to_batch(offset, n)
    cell = torch.floor(coord / grid_size).long()
    if origin is None:
        low = torch.full((len(offset), 3), torch.iinfo(torch.long).max, device=coord.device)
        low = low.scatter_reduce(0, batch.unsqueeze(1).expand_as(cell), cell, "amin")[batch]
    else:
        low = torch.floor(torch.tensor(origin, dtype=torch.float64) / grid_size).long().to(coord.device)
    grid = cell - low
    extent = grid.amax(dim=0)
    if bool((extent >= AXIS_LIMIT).any()):
        too_big = torch.zeros(len(offset), dtype=torch.long, device=coord.device).scatter_reduce(
            0, batch, grid.amax(dim=1), "amax"
        )
        cloud = int(torch.argmax(too_big))
        raise ValueError(
            f"cloud {cloud} spans {int(too_big[cloud]) + 1} voxels of {grid_size:g} along an axis; "
            f"at most {AXIS_LIMIT} fit: crop it or use a coarser grid"
        )
    key = (batch << 48) | (grid[:, 0] << 32) | (grid[:, 1] << 16) | grid[:, 2]
    unique_keys, inverse = torch.unique(key, sorted=True, return_inverse=True)
    m = unique_keys.shape[0]
    if generator is None:
        priority = torch.arange(n, device=coord.device)
    else:
        priority = torch.randperm(n, generator=generator, device=generator.device).to(coord.device)
    best = torch.full((m,), n, dtype=torch.long, device=coord.device).scatter_reduce(0, inverse, priority, "amin")
    point_of_priority = torch.empty_like(priority)
    point_of_priority[priority] = torch.arange(n, device=coord.device)
    index = point_of_priority[best]
    voxel_batch = unique_keys >> 48
    voxel_offset = torch.searchsorted(voxel_batch, torch.arange(len(offset), device=coord.device), right=True)
    return GridSample(index=index, inverse=inverse, grid_coord=grid[index], offset=voxel_offset)
