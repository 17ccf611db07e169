"""`Point`: one level of a batch of point clouds, with what the encoder derives from it.

A batch holds B clouds concatenated along the first axis; `offset[b]` is the end row of cloud b.
Each encoder stage works on one `Point` level. The per-level structures that several blocks share
(serialization orders, the sparse-conv neighbour map, the attention patch layouts) are built once,
lazily, and cached on the level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .attention import PatchLayout
from .grid import offset_to_batch
from .serialization import Serialization, serialize
from .sparse_conv import SparseGeometry


@dataclass
class Point:
    """A batch of point clouds at one resolution.

    `pooling_inverse` (on a pooled level) maps every point of the finer level it was pooled from to its
    row here, the index the upcast uses to copy coarse features back down.
    """

    coord: Tensor  # (N, 3) float, metres
    grid_coord: Tensor  # (N, 3) int64, per-cloud voxel coordinate >= 0
    feat: Tensor  # (N, C)
    offset: Tensor  # (B,) int64 cumulative point counts
    origin_coord: Tensor | None = None  # (N, 3) pre-augmentation coordinates (pretraining matching)
    mask: Tensor | None = None  # (N,) bool, points replaced by the mask token (pretraining)
    pooling_inverse: Tensor | None = None  # (N_finer,) int64 on pooled levels
    rope_scale: Tensor | None = None  # (3,) training-time scaling of the coordinates RoPE sees (Utonia)
    sparse_backend: str | None = None
    _batch: Tensor | None = field(default=None, repr=False)
    _serialization: Serialization | None = field(default=None, repr=False)
    _geometry: SparseGeometry | None = field(default=None, repr=False)
    _layouts: dict[tuple[int, int], PatchLayout] = field(default_factory=dict, repr=False)

    @property
    def num_points(self) -> int:
        return self.coord.shape[0]

    @property
    def batch_size(self) -> int:
        return self.offset.shape[0]

    @property
    def rope_coord(self) -> Tensor:
        """The coordinates rotary attention rotates by: `coord`, scaled per axis while training."""
        return self.coord if self.rope_scale is None else self.coord * self.rope_scale

    @property
    def batch(self) -> Tensor:
        """(N,) int64 cloud index of every point."""
        if self._batch is None:
            self._batch = offset_to_batch(self.offset, self.num_points)
        return self._batch

    def serialize(self, orders: tuple[str, ...]) -> None:
        """Compute the space-filling-curve orders (curve k is used by blocks with order_index k)."""
        self._serialization = serialize(self.grid_coord, self.offset, orders)
        self._layouts.clear()

    @property
    def serialization(self) -> Serialization:
        if self._serialization is None:
            raise RuntimeError("Point.serialize() must run before the serialization is used")
        return self._serialization

    @property
    def geometry(self) -> SparseGeometry:
        """Neighbour structure for the submanifold convolutions of this level (built once)."""
        if self._geometry is None:
            self._geometry = SparseGeometry.build(
                self.grid_coord, self.batch, self.batch_size, backend=self.sparse_backend
            )
        return self._geometry

    def patch_layout(self, order_index: int, patch_size: int) -> PatchLayout:
        """Attention patches along curve `order_index` (built once per level, order and size)."""
        key = (order_index, patch_size)
        if key not in self._layouts:
            order = self.serialization.order[order_index]
            self._layouts[key] = PatchLayout.build(order, self.offset, patch_size)
        return self._layouts[key]
