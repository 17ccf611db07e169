"""Grid pooling between encoder stages, and the upcast that brings every stage back to the finest voxels.

Which finer voxel pools into which coarser one (2x2x2 blocks of each cloud, coarser voxels ordered by
(cloud, x, y, z) as the reference sorts its unique rows) is part of the frame plan; here features are
max-reduced after a linear projection, with torch's native `scatter_reduce` (no torch_scatter).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .point import Point


def segment_max(values: Tensor, inverse: Tensor, num_segments: int) -> Tensor:
    """Row-wise max of `values` grouped by `inverse`; a group without members is zeros."""
    out = values.new_zeros((num_segments, values.shape[1]))
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

    def forward(self, feat: Tensor, parent: Tensor, num_rows: int) -> Tensor:
        """(C_finer, C_in) features -> (num_rows, C_out): row `parent[i]` pools finer row i."""
        return self.act(self.norm(segment_max(self.proj(feat), parent, num_rows)))


def upcast(levels: Sequence[Point], start: int = 0, rows: Tensor | None = None) -> Tensor:
    """The features of levels `start..` concatenated at the resolution of level `start` (at its `rows`
    only, when given).

    Order is [level start, start + 1, ..., last], as the reference's parent-first concatenation:
    `upcast(levels)` gives the 1232 channels a segmentation head reads (sonata),
    `upcast(levels, 2)` the 1088-channel stage-2 features of pretraining. Each level is gathered once,
    straight from its own rows through the composed pooling inverses, into its columns of the output:
    one pass over the (rows, C) result, which for a large frame is hundreds of MB.
    """
    levels = levels[start:]
    indices, index = [], rows
    for i, level in enumerate(levels):
        if i:
            index = level.pooling_inverse if index is None else level.pooling_inverse[index]
        indices.append(index)
    feats = [level.feat for level in levels]
    if torch.is_grad_enabled() and any(feat.requires_grad for feat in feats):  # `out=` has no autograd
        return torch.cat([f if i is None else f[i] for f, i in zip(feats, indices, strict=True)], dim=1)
    dtype = functools.reduce(torch.promote_types, [feat.dtype for feat in feats])
    widths = [feat.shape[1] for feat in feats]
    out = feats[0].new_empty((feats[0].shape[0] if rows is None else rows.shape[0], sum(widths)), dtype=dtype)
    for feat, index, columns in zip(feats, indices, out.split(widths, dim=1), strict=True):
        if index is None:
            columns.copy_(feat)
        else:
            torch.index_select(feat.to(dtype), 0, index, out=columns)
    return out


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
