"""Grid pooling between encoder stages, and the upcast that brings every stage back to the finest voxels.

Pooling groups the voxels of each cloud by `grid_coord // 2`. Pooled voxels come out ordered by
(cloud, x, y, z), as in the reference, which sorts the unique rows. Features are max-reduced after a
linear projection and coordinates mean-reduced, with torch's native `scatter_reduce` / `index_add_`
(no torch_scatter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .point import Point

_AXIS_BITS = 16  # serialization caps grid coordinates at 2**16, so (x, y, z) pack into 48 bits
_AXIS_MASK = (1 << _AXIS_BITS) - 1


def pack_voxel_keys(grid_coord: Tensor, batch: Tensor) -> Tensor:
    """int64 key ordered like the rows (batch, x, y, z); coordinates must be < 2**16."""
    grid = grid_coord.long()
    return (batch.long() << 3 * _AXIS_BITS) | (grid[:, 0] << 2 * _AXIS_BITS) | (grid[:, 1] << _AXIS_BITS) | grid[:, 2]


def unpack_voxel_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of `pack_voxel_keys`: (grid_coord (M, 3) int64, batch (M,) int64)."""
    grid = torch.stack((keys >> 2 * _AXIS_BITS & _AXIS_MASK, keys >> _AXIS_BITS & _AXIS_MASK, keys & _AXIS_MASK), dim=1)
    return grid, keys >> 3 * _AXIS_BITS


def segment_mean(values: Tensor, inverse: Tensor, counts: Tensor) -> Tensor:
    """Mean of `values` rows grouped by `inverse` (M groups with `counts` members each)."""
    total = values.new_zeros((counts.shape[0], values.shape[1])).index_add_(0, inverse, values)
    return total / counts.unsqueeze(1).to(values.dtype)


def segment_max(values: Tensor, inverse: Tensor, num_segments: int) -> Tensor:
    """Row-wise max of `values` grouped by `inverse`; every group must have a member."""
    out = values.new_empty((num_segments, values.shape[1]))
    index = inverse.unsqueeze(1).expand_as(values)
    return out.scatter_reduce_(0, index, values, reduce="amax", include_self=False)


class GridPooling(nn.Module):
    """Stage entry: Linear(C_in, C_out), max-pool over 2x2x2 voxel blocks, LayerNorm, GELU.

    Parameter names (`proj`, `norm.0`) match the released checkpoints' `enc.enc{s}.down.*`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if stride != 2:
            raise ValueError(f"only stride 2 is supported, got {stride}")
        self.stride = stride
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.GELU()

    def forward(self, point: Point) -> Point:
        keys = pack_voxel_keys(torch.div(point.grid_coord, self.stride, rounding_mode="floor"), point.batch)
        unique_keys, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
        grid_coord, batch = unpack_voxel_keys(unique_keys)
        num_voxels = unique_keys.shape[0]
        feat = segment_max(self.proj(point.feat), inverse, num_voxels)
        clouds = torch.arange(point.batch_size, device=batch.device)
        offset = torch.searchsorted(batch, clouds, right=True)  # voxels come sorted by cloud
        pooled = Point(
            coord=segment_mean(point.coord, inverse, counts),
            grid_coord=grid_coord,
            feat=self.act(self.norm(feat)),
            offset=offset,
            origin_coord=None if point.origin_coord is None else segment_mean(point.origin_coord, inverse, counts),
            pooling_inverse=inverse,
            rope_scale=point.rope_scale,
            sparse_backend=point.sparse_backend,
            _batch=batch,
        )
        return pooled


def upcast(levels: Sequence[Point], start: int = 0) -> Tensor:
    """Concatenate the features of levels `start..` at the resolution of level `start`.

    Order is [level start, start + 1, ..., last], as the reference's parent-first concatenation:
    `upcast(levels)` gives the 1232 channels a segmentation head reads (sonata),
    `upcast(levels, 2)` the 1088-channel stage-2 features of pretraining.
    """
    feat = levels[-1].feat
    for level in range(len(levels) - 1, start, -1):
        feat = torch.cat((levels[level - 1].feat, feat[levels[level].pooling_inverse]), dim=1)
    return feat


def upcast_rows(levels: Sequence[Point], rows: Tensor) -> Tensor:
    """`upcast(levels)[rows]` without building the upcast of the other rows."""
    index, parts = rows, [levels[0].feat[rows]]
    for level in levels[1:]:
        index = level.pooling_inverse[index]
        parts.append(level.feat[index])
    return torch.cat(parts, dim=1)


def linear_upcast(levels: Sequence[Point], weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`upcast(levels) @ weight.T + bias` without building the upcast.

    A linear map of concatenated features is the sum of per-level maps, so each level is projected at
    its own (coarser) resolution and only the projections are carried down: a segmentation head over
    1232 channels costs a few classes' worth of memory traffic instead of 1232.
    """
    splits = torch.split(weight.to(levels[-1].feat.dtype), [level.feat.shape[1] for level in levels], dim=1)
    out = levels[-1].feat @ splits[-1].t()
    for level in range(len(levels) - 1, 0, -1):
        out = levels[level - 1].feat @ splits[level - 1].t() + out[levels[level].pooling_inverse]
    return out if bias is None else out + bias.to(out.dtype)


def inverse_to_level(levels: Sequence[Point], level: int) -> Tensor:
    """(N_0,) index of the level-`level` voxel that each finest voxel belongs to."""
    index = torch.arange(levels[0].num_points, device=levels[0].coord.device)
    for s in range(1, level + 1):
        index = levels[s].pooling_inverse[index]
    return index


def copy_down(feat: Tensor, levels: Sequence[Point], level: int) -> Tensor:
    """Copy features living at `level` down to the finest voxels."""
    return feat[inverse_to_level(levels, level)]
