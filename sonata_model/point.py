"""`Point`: one level of a batch of point clouds: the encoder's input voxels, and each level it returns.

A batch holds B clouds concatenated along the first axis; `offset[b]` is the end row of cloud b.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .grid import offset_to_batch


@dataclass
class Point:
    """A batch of point clouds at one resolution.

    `pooling_inverse` (on a pooled level) maps every point of the finer level it was pooled from to its
    row here, the index the upcast uses to copy coarse features back down.
    """

    coord: Tensor  # (N, 3) float, model units
    grid_coord: Tensor  # (N, 3) int64, per-cloud voxel coordinate >= 0
    feat: Tensor  # (N, C)
    offset: Tensor  # (B,) int64 cumulative point counts
    origin_coord: Tensor | None = None  # (N, 3) pre-augmentation coordinates (pretraining matching)
    mask: Tensor | None = None  # (N,) bool, points replaced by the mask token (pretraining)
    pooling_inverse: Tensor | None = None  # (N_finer,) int64 on pooled levels
    _batch: Tensor | None = field(default=None, repr=False)

    @property
    def num_points(self) -> int:
        return self.coord.shape[0]

    @property
    def batch_size(self) -> int:
        return self.offset.shape[0]

    @property
    def batch(self) -> Tensor:
        """(N,) int64 cloud index of every point."""
        if self._batch is None:
            self._batch = offset_to_batch(self.offset, self.num_points)
        return self._batch
