"""Space-filling-curve codes that order PTv3's attention patches: z-order and Hilbert, and "-trans".

Bit-exact with the reference implementation's codes, written as integer arithmetic on int64 tensors
(CPU and CUDA; loops over bit levels only):
- z-order: bit interleaving, x at bit 3i+2, y at 3i+1, z at 3i;
- Hilbert: Skilling's transform (Programming the Hilbert curve, 2004) with x the most significant axis,
  i.e. the index the reference computes with its bit-array version;
- "-trans": x and y swapped first.

One deliberate difference: the reference takes one depth for the whole batch (from the batch's largest
coordinate) and puts the cloud index at bit 3 * depth. Hilbert order depends on the depth, so here each
cloud uses its own depth and the cloud index sits at bit 48: a cloud is ordered exactly as it would be
alone, whatever else is in the batch. A single cloud gets the reference's codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ORDERS: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16
BATCH_SHIFT = 3 * MAX_DEPTH

_SPREAD = (
    (32, 0x1F00000000FFFF),
    (16, 0x1F0000FF0000FF),
    (8, 0x100F00F00F00F00F),
    (4, 0x10C30C30C30C30C3),
    (2, 0x1249249249249249),
)


def _spread_bits(v: Tensor) -> Tensor:
    """Put bit i of v (< 2**21) at bit 3i."""
    v = v & 0x1FFFFF
    for shift, mask in _SPREAD:
        v = (v | (v << shift)) & mask
    return v


def _interleave(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    return (_spread_bits(x) << 2) | (_spread_bits(y) << 1) | _spread_bits(z)


def _hilbert(x: Tensor, y: Tensor, z: Tensor, depth: Tensor | int) -> Tensor:
    """Skilling's AxesToTranspose, then the transposed bits read as one index; depth per point or shared."""
    axes = [x.clone(), y.clone(), z.clone()]
    depth = torch.as_tensor(depth, device=x.device)
    for level in range(MAX_DEPTH - 1, 0, -1):  # Q = 2**level, from the top bit down to 2
        active = level < depth
        q, p = 1 << level, (1 << level) - 1
        for i in range(3):
            on = active & ((axes[i] & q) != 0)
            axes[0] = axes[0] ^ torch.where(on, p, 0)
            if i:
                swap = torch.where(active & ~on, (axes[0] ^ axes[i]) & p, 0)
                axes[0] = axes[0] ^ swap
                axes[i] = axes[i] ^ swap
    code = _interleave(*axes)
    for shift in (1, 2, 4, 8, 16, 32):  # Gray decode of the interleaved bit stream (prefix xor from the top)
        code = code ^ (code >> shift)
    return code


def encode(grid_coord: Tensor, depth: int | Tensor, order: str) -> Tensor:
    """(N,) int64 code of (N, 3) non-negative grid coordinates (< 2**depth) along curve `order`.

    `depth` may be one int or an (N,) tensor (per point); it matters for Hilbert only.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    grid = grid_coord.long()
    x, y, z = grid[:, 0], grid[:, 1], grid[:, 2]
    if order.endswith("-trans"):
        x, y = y, x
    if order.startswith("z"):
        return _interleave(x, y, z)
    return _hilbert(x, y, z, depth)


def cloud_depths(grid_coord: Tensor, offset: Tensor) -> Tensor:
    """(B,) depth of each cloud: bit length of (its largest grid coordinate + 1), as the reference."""
    batch = _batch_of(offset, grid_coord.shape[0])
    largest = grid_coord.long().amax(dim=1)
    cloud_max = torch.zeros(len(offset), dtype=torch.long, device=grid_coord.device)
    cloud_max = cloud_max.scatter_reduce(0, batch, largest, "amax")
    powers = torch.pow(2, torch.arange(MAX_DEPTH + 2, device=grid_coord.device))
    depth = ((cloud_max + 1).unsqueeze(1) >= powers).sum(dim=1)
    too_deep = depth > MAX_DEPTH
    if bool(too_deep.any()):
        cloud = int(too_deep.nonzero()[0])
        raise ValueError(
            f"cloud {cloud} spans {int(cloud_max[cloud]) + 1} voxels along an axis: more than "
            f"2**{MAX_DEPTH}; use a coarser grid or crop the cloud"
        )
    return depth


def _batch_of(offset: Tensor, n: int) -> Tensor:
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts, output_size=n)


@dataclass
class Serialization:
    code: Tensor  # (K, N) int64: cloud << 48 | code
    order: Tensor  # (K, N) int64: point at each position along curve k
    inverse: Tensor  # (K, N) int64: position of each point along curve k
    depth: Tensor  # (B,) per-cloud depth


def serialize(grid_coord: Tensor, offset: Tensor, orders: Sequence[str]) -> Serialization:
    """Codes, orders and inverse orders of a batch of clouds along each curve in `orders`."""
    n = grid_coord.shape[0]
    batch = _batch_of(offset, n)
    depth = cloud_depths(grid_coord, offset)
    point_depth = depth[batch]
    code = torch.stack([(batch << BATCH_SHIFT) | encode(grid_coord, point_depth, o) for o in orders])
    order = torch.argsort(code, dim=1)
    positions = torch.arange(n, device=grid_coord.device).expand(len(orders), n)
    inverse = torch.empty_like(order).scatter_(1, order, positions)
    return Serialization(code=code, order=order, inverse=inverse, depth=depth)
