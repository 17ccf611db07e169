"""`FramePlan`: everything index-like about a batch of clouds, built once on the device before the network.

The encoder's maths depends on the features; everything else depends only on where the voxels are:
the voxels of every level (grid sampling, then 2x2x2 pooling per stage), their coordinates, which
finer voxel pools into which coarser one, the space-filling-curve orders, the attention patches along
each order, and the 3x3x3 neighbours of every voxel for the sparse convolution. The plan computes all
of it for all levels at once (one sort of the members' keys per level in a single call, one
serialization, one neighbour search, one patch layout pass) and makes the host wait for the device
exactly once: to learn the sizes, which the shapes of everything after depend on. The encoder forward
over a plan then has no host sync and no Python branch on the data, so it can be captured whole
(CUDA graphs, `torch.compile(fullgraph=True)`).

Rows. Level l has `capacity` rows: its `num_voxels` real voxels first, ordered by (cloud, x, y, z) as
the reference sorts unique rows, then padding rows when the plan is bucketed (`SizeBuckets`: frames of
similar size share every shape). Padding rows are inert: no real row reads them (they are nobody's
neighbour, sit in no real attention patch, pool only into padding rows), so they change no real
voxel's output. A plan built from voxels (`voxelize=False`, pretraining views) keeps their row order at
level 0.

Attention patches follow the reference's rule: a cloud of n >= K voxels is cut into ceil(n / K)
patches of K consecutive curve positions, the last one completed with the K - n % K positions before
it (copies, whose outputs are dropped); a cloud of n < K voxels is one sequence of n. Here every level
has one patch length L (K, or the largest cloud when all are shorter), short clouds' patches are
padded to L with masked keys, and (bucketed) spare patches complete a fixed count. `AttentionLayout`
holds it per (level, order) for the kernel chosen: "sdpa" (P x L slots, an additive key mask when
some slot is not a key) or "flash" (flash_attn varlen: the real slots packed, `cu_seqlens`). A level's
full patches (every slot its own row's) come first; the others (a cloud's last patch, a short cloud)
are queried at their own slots only, so a 1,214-voxel level of 1,024-patches attends 1,214 queries,
not 2,048 (the copies stay keys).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .configs import EncoderConfig
from .grid import (
    AXIS_BITS,
    AXIS_LIMIT,
    BATCH_BITS,
    LEVEL_SHIFT,
    MARGIN_KEY,
    MAX_CLOUDS,
    PAD_CLOUD,
    kernel_offsets,
    offset_keys,
    pack_keys,
    unpack_keys,
)
from .point import Point
from .serialization import serialize

ATTENTION_KERNELS = ("sdpa", "flash")
SPARSE_BACKENDS = ("torch", "spconv")
KERNEL_SIZE = 3
_INVALID = torch.iinfo(torch.long).max  # key of members that take no part (outside the domain's range)


class EmptyCloudError(ValueError):
    """A cloud of the batch has no voxel (no valid member)."""

    def __init__(self, clouds: list[int]) -> None:
        super().__init__(f"cloud(s) {clouds} have no point to voxelize")
        self.clouds = clouds


@dataclass(frozen=True)
class SizeBuckets:
    """Row capacities shared by frames of similar size: the smallest `minimum * growth**k` (rounded up to
    a multiple of 8) above a level's voxel count, so every bucketed level has at least one padding row."""

    growth: float = 1.25
    minimum: int = 64

    def __post_init__(self) -> None:
        if not self.growth > 1 or self.minimum < 1:
            raise ValueError(f"SizeBuckets: growth must be > 1 and minimum >= 1, got {self.growth}, {self.minimum}")

    def capacity(self, rows: int) -> int:
        k = max(0, math.ceil(math.log(max(rows + 1, 1) / self.minimum, self.growth)))
        while True:
            capacity = -(-math.ceil(self.minimum * self.growth**k) // 8) * 8
            if capacity > rows:
                return capacity
            k += 1


@dataclass
class AttentionLayout:
    """The slots attention runs on at one level along one curve, and where every row reads its output.

    sdpa: `index` (P * L,) level row of each slot, patch p at slots [p L, (p + 1) L); the first
    `full_patches` patches are queried at all L slots, the others at their first `query_length` slots
    (their own rows come first); the outputs are those queries in that order. `bias` (P - full_patches,
    1, 1, L) 0 / -inf on the keys of the partly queried patches (None when every slot is a key).
    flash: `index` (P * L,) level row of each packed slot, sequence p at [cu_seqlens[p], cu_seqlens[p + 1])
    (spare tail slots belong to none). `inverse` (C,) the output holding each row's own output
    (padding rows: 0).
    """

    kernel: str
    index: Tensor
    inverse: Tensor
    num_patches: int
    length: int
    full_patches: int = 0
    query_length: int = 0
    bias: Tensor | None = None
    cu_seqlens: Tensor | None = None


@dataclass
class ConvPairs:
    """The neighbour table of a level compacted into its (row, neighbour) pairs, for a CPU: the pairs of
    the 26 non-centre kernel offsets, grouped by offset (rows ascending within a group), so that a
    grouped matmul multiplies each group by its own tap of the weight without copying the weight."""

    source: Tensor  # (Q,) neighbour row of each pair
    target: Tensor  # (Q,) row it contributes to
    ends: Tensor  # (27,) int32 cumulative pair count after each kernel offset (the centre's group is empty)
    counts: tuple[int, ...]  # pairs per kernel offset, host side


@dataclass
class LevelPlan:
    """One level: `capacity` rows of which the first `num_voxels` are real (see the module docstring)."""

    num_voxels: int
    capacity: int
    counts: tuple[int, ...]  # real voxels per cloud
    coord: Tensor  # (C, 3) float: level 0 the representatives', then means of the pooled rows
    origin_coord: Tensor | None  # (C, 3) the same for the members' pre-augmentation coordinates
    grid_coord: Tensor  # (C, 3) int64 (padding rows: 0)
    batch: Tensor  # (C,) int64 cloud of each row (padding rows: PAD_CLOUD)
    offset: Tensor  # (B,) int64 cumulative real voxel counts
    parent: Tensor | None  # (C of the finer level,) row here of each finer row (levels >= 1)
    neighbours: Tensor | None  # (C, 27) int64 row at each kernel offset, C (a zero row) where none (torch conv)
    pairs: ConvPairs | None  # the table compacted (torch conv on a CPU, where it is cheaper)
    layouts: tuple[AttentionLayout, ...]  # one per order of the plan
    spatial_shape: tuple[int, int, int]  # grid extent (spconv)
    rulebook: dict = field(default_factory=dict, repr=False)  # spconv's pairs, built by the stage's first conv

    @property
    def padded(self) -> bool:
        return self.capacity > self.num_voxels


@dataclass
class FramePlan:
    """The plan of one batch; `levels[s]` serves encoder stage s (see the module docstring)."""

    levels: list[LevelPlan]
    num_clouds: int
    orders: tuple[str, ...]
    attention: str
    sparse_backend: str
    voxel_of_member: Tensor  # (N,) level-0 row of each member; -1 for members that took no part
    representative: Tensor  # (C_0,) member kept for each level-0 row: the lowest (padding rows: 0)

    @property
    def signature(self) -> tuple:
        """Everything the forward's shapes and Python control flow depend on: plans with equal
        signatures can share one captured graph (copy one into the other's tensors with `copy_`)."""
        return (
            self.num_clouds,
            self.orders,
            self.attention,
            self.sparse_backend,
            tuple(
                (
                    level.capacity,
                    None if level.pairs is None else level.pairs.counts,
                    tuple(
                        (t.num_patches, t.length, t.full_patches, t.query_length, t.bias is None) for t in level.layouts
                    ),
                )
                for level in self.levels
            ),
        )

    def tensors(self) -> list[Tensor]:
        """The device tensors the forward reads, in a fixed order."""
        out = []
        for level in self.levels:
            out += [t for t in (level.coord, level.parent, level.neighbours) if t is not None]
            if level.pairs is not None:
                out += [level.pairs.source, level.pairs.target, level.pairs.ends]
            for layout in level.layouts:
                out += [t for t in (layout.index, layout.inverse, layout.bias, layout.cu_seqlens) if t is not None]
        return out

    def copy_(self, other: FramePlan) -> FramePlan:
        """Copy `other`'s forward tensors into this plan's (equal signatures), e.g. a captured graph's."""
        if other.signature != self.signature:
            raise ValueError("FramePlan.copy_: the plans' signatures differ (different bucket or batch)")
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.copy_(theirs)
        for mine, theirs in zip(self.levels, other.levels, strict=True):
            for name in ("num_voxels", "counts", "origin_coord", "grid_coord", "batch", "offset"):
                setattr(mine, name, getattr(theirs, name))
        self.voxel_of_member, self.representative = other.voxel_of_member, other.representative
        return self

    def points(self, feats: Sequence[Tensor]) -> list[Point]:
        """The real rows of every level with the forward's features `feats` (one per level)."""
        out = []
        for s, (level, feat) in enumerate(zip(self.levels, feats, strict=True)):
            m = level.num_voxels
            finer = self.levels[s - 1].num_voxels if s else 0
            out.append(
                Point(
                    coord=level.coord[:m],
                    grid_coord=level.grid_coord[:m],
                    feat=feat[:m],
                    offset=level.offset,
                    origin_coord=None if level.origin_coord is None else level.origin_coord[:m],
                    pooling_inverse=None if level.parent is None else level.parent[:finer],
                    _batch=level.batch[:m],
                )
            )
        return out

    def shift_coords(self, shift: Tensor) -> None:
        """Subtract a (B, 3) per-cloud shift from the coordinates of every level (means commute with it)."""
        padded = torch.cat((shift, shift.new_zeros(PAD_CLOUD + 1 - shift.shape[0], 3)))
        for level in self.levels:
            level.coord = level.coord - padded[level.batch]


def build_plan(
    config: EncoderConfig,
    coord: Tensor,
    grid_coord: Tensor,
    batch: Tensor,
    num_clouds: int,
    *,
    voxelize: bool,
    valid: Tensor | None = None,
    origin_coord: Tensor | None = None,
    attention: str = "sdpa",
    sparse_backend: str = "torch",
    buckets: SizeBuckets | None = None,
    grid_size: float | None = None,
    conv_pairs: bool = False,
) -> FramePlan:
    """The plan of `num_clouds` clouds for an encoder shaped like `config`.

    Members: (N, 3) `coord` (model units) with (N, 3) int64 level-0 `grid_coord` (>= 0 per cloud) of
    cloud `batch` (N,). `voxelize`: level 0 is the distinct cells of the `valid` members, represented by
    their lowest member; otherwise the members are level 0's voxels (distinct cells), in their order.
    Raises ValueError naming the cloud when a cloud spans 2**16 voxels or more along an axis, and
    `EmptyCloudError` when a cloud has no valid member. One host sync. `conv_pairs` (CPU tensors only):
    compact every level's neighbour table into `ConvPairs` (a second read of the host's own memory, no
    device to wait for).
    """
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, got {attention!r}")
    if sparse_backend not in SPARSE_BACKENDS:
        raise ValueError(f"sparse-conv backend must be one of {SPARSE_BACKENDS}, got {sparse_backend!r}")
    if conv_pairs and (grid_coord.device.type != "cpu" or buckets is not None or sparse_backend != "torch"):
        raise ValueError("conv pairs are for the torch conv on CPU tensors without size buckets")
    if buckets is not None and sparse_backend == "spconv":
        raise ValueError("size buckets need the torch sparse conv (spconv builds its own pairs per frame)")
    if not 0 < num_clouds <= MAX_CLOUDS - 1:
        raise ValueError(f"a batch holds 1 to {MAX_CLOUDS - 1} clouds, got {num_clouds}")
    num_levels = config.num_stages
    if num_levels > (1 << (63 - LEVEL_SHIFT)) - 1:
        raise ValueError(f"at most {(1 << (63 - LEVEL_SHIFT)) - 1} encoder stages, got {num_levels}")
    device, n = grid_coord.device, grid_coord.shape[0]
    levels = torch.arange(num_levels, device=device)

    # Every member's key at every level, sorted per level: equal keys are one voxel.
    key = pack_keys((grid_coord >> levels[:, None, None]) + 1, batch, levels[:, None])  # (L, N)
    if valid is not None:
        key = torch.where(valid, key, _INVALID)
    sorted_key, perm = torch.sort(key, dim=1)
    first = torch.nn.functional.pad(sorted_key[:, 1:] != sorted_key[:, :-1], (1, 0), value=True)
    rank = torch.cumsum(first, dim=1) - 1
    cloud = (sorted_key >> 3 * AXIS_BITS) & PAD_CLOUD  # invalid members land in the padding cloud's column
    counts = torch.zeros((num_levels, PAD_CLOUD + 1), dtype=torch.long, device=device)
    counts.scatter_add_(1, cloud, first.long())
    extent = grid_coord if valid is None else torch.where(valid[:, None], grid_coord, 0)
    extent = counts.new_zeros((PAD_CLOUD + 1, 3)).scatter_reduce_(0, batch[:, None].expand_as(extent), extent, "amax")
    stats = torch.cat((counts[:, :num_clouds].flatten(), extent[:num_clouds].flatten())).tolist()  # the sync
    per_cloud = np.array(stats[: num_levels * num_clouds], dtype=np.int64).reshape(num_levels, num_clouds)
    extents = np.array(stats[num_levels * num_clouds :], dtype=np.int64).reshape(num_clouds, 3)
    _check(per_cloud, extents, n, voxelize, grid_size)

    sizes = _Sizes(per_cloud, n if not voxelize else None, buckets, config.enc_patch_size, num_clouds)
    meta = _upload(sizes, extents, device)
    total = sizes.total_rows

    # Rows: each member's row at every level; keys, grid and cloud of every row; its lowest member.
    member_row = torch.empty_like(rank).scatter_(1, perm, rank + meta["base"][:, None])
    if not voxelize:
        member_row[0] = torch.arange(n, device=device)
    if valid is not None:
        member_row = torch.where(valid, member_row, total)  # the dump row past the last level
    row_level = torch.repeat_interleave(meta["level"], meta["rows"], output_size=total + 1)
    row_key = meta["pad_key"][row_level].scatter_(0, member_row.flatten(), key.flatten())[:total]
    row_grid, row_cloud = unpack_keys(row_key - MARGIN_KEY)
    rep = torch.zeros(total + 1, dtype=torch.long, device=device)
    rep.scatter_reduce_(
        0,
        member_row.flatten(),
        torch.arange(n, device=device).expand(num_levels, n).flatten(),
        "amin",
        include_self=False,
    )

    # Pooling: the row one level up of every row (padding rows: the next level's first padding row).
    is_pad = row_cloud == PAD_CLOUD
    up = (row_level[:total] + 1).clamp(max=num_levels - 1)
    parent = torch.where(is_pad, meta["pad_parent"][row_level[:total]], member_row[up, rep[:total]])
    parent = torch.where(row_level[:total] == num_levels - 1, total, parent)
    ancestors = member_row[:, rep[: sizes.capacity[0]]]  # (L, C_0): each level-0 row's row at every level
    ancestors = torch.where(is_pad[: sizes.capacity[0]], meta["pad_row"][:, None], ancestors)

    # Coordinates: level 0 the representatives', each coarser level the mean of its children's.
    children = torch.zeros(total + 1, device=device).index_add_(0, parent, torch.ones(total, device=device))
    weight = torch.cumprod(1 / children.clamp(min=1)[ancestors], dim=0)  # level 0 rows have no children: 1
    values = coord if origin_coord is None else torch.cat((coord, origin_coord), dim=1)
    values = values[rep[: sizes.capacity[0]]]
    row_values = values.new_zeros((total + 1, values.shape[1]))
    row_values.index_add_(0, ancestors.flatten(), (weight[..., None] * values).flatten(0, 1))

    neighbours = None
    if sparse_backend == "torch":
        neighbours = _neighbours(row_key, row_level[:total], meta, sorted_key[0] if not voxelize else None, perm[0])
    cloud_of_row = (row_level[:total] << BATCH_BITS) + row_cloud
    order = serialize(row_grid, cloud_of_row, num_levels << BATCH_BITS, config.order, meta["depth"]).order
    layouts = _layouts(order, meta, sizes, attention, total)

    parent_local = parent - meta["base"][up]
    split = sizes.capacity
    rows = [torch.split(t, split) for t in (row_values[:total], row_grid, row_cloud, parent_local)]
    tables = torch.split(neighbours, split) if neighbours is not None else [None] * num_levels
    pairs = _pairs(neighbours, sizes) if conv_pairs else [None] * num_levels
    offsets = meta["offset"].unbind(0)
    plan_levels = []
    for s in range(num_levels):
        level_values = rows[0][s]
        plan_levels.append(
            LevelPlan(
                num_voxels=sizes.voxels[s],
                capacity=sizes.capacity[s],
                counts=tuple(int(c) for c in per_cloud[s]),
                coord=level_values[:, :3],
                origin_coord=None if origin_coord is None else level_values[:, 3:],
                grid_coord=rows[1][s],
                batch=rows[2][s],
                offset=offsets[s],
                parent=rows[3][s - 1] if s else None,
                neighbours=tables[s],
                pairs=pairs[s],
                layouts=layouts[s],
                spatial_shape=tuple(int(v) for v in (extents.max(axis=0) >> s) + 1),
            )
        )
    voxel_of_member = member_row[0] if valid is None else torch.where(valid, member_row[0], -1)
    return FramePlan(
        levels=plan_levels,
        num_clouds=num_clouds,
        orders=tuple(config.order),
        attention=attention,
        sparse_backend=sparse_backend,
        voxel_of_member=voxel_of_member,
        representative=rep[: sizes.capacity[0]],
    )


def _check(per_cloud: np.ndarray, extents: np.ndarray, members: int, voxelize: bool, grid_size: float | None) -> None:
    too_big = np.flatnonzero(extents.max(axis=1) >= AXIS_LIMIT - 1)  # serialization's depth is at most 16
    if too_big.size:
        cloud = int(too_big[0])
        unit = f" of {grid_size:g}" if grid_size else ""
        raise ValueError(
            f"cloud {cloud} spans {int(extents[cloud].max()) + 1} voxels{unit} along an axis; at most "
            f"{AXIS_LIMIT - 1} fit: crop it or use a coarser grid"
        )
    empty = np.flatnonzero(per_cloud[0] == 0).tolist()
    if empty:
        raise EmptyCloudError(empty)
    if not voxelize and per_cloud[0].sum() != members:
        raise ValueError(f"the voxels of a cloud must be distinct cells: {members} rows, {per_cloud[0].sum()} cells")


class _Sizes:
    """Rows, capacities and attention patches of every level, from the per-cloud voxel counts (host side)."""

    def __init__(
        self, per_cloud: np.ndarray, members: int | None, buckets: SizeBuckets | None, patch_sizes, num_clouds: int
    ) -> None:
        self.per_cloud = per_cloud
        self.voxels = [int(c.sum()) for c in per_cloud]
        if members is not None:
            self.voxels[0] = members
        self.capacity = [buckets.capacity(m) if buckets else m for m in self.voxels]
        self.base = [int(b) for b in np.cumsum([0, *self.capacity[:-1]])]
        self.total_rows = int(sum(self.capacity))
        self.patches, self.length, self.masked, rows = [], [], [], []
        self.full, self.query_length = [], []
        for s, counts in enumerate(per_cloud):
            k = patch_sizes[s]
            length = min(k, self.capacity[s] if buckets else int(counts.max()))
            level = sorted(_patches(counts, k, length, self.base[s]), key=lambda p: _own_slots(p) < length)
            self.masked.append(buckets is not None or any(p[5] < length for p in level))
            if buckets:  # fixed shapes per bucket: every patch queried whole
                first_pad = self.base[s] + self.voxels[s]
                level += [(first_pad, first_pad, 0, length, 0, length)] * (
                    self.capacity[s] // length + num_clouds - len(level)
                )
                self.full.append(0)
                self.query_length.append(length)
            else:
                own = [_own_slots(p) for p in level]
                self.full.append(sum(o == length for o in own))
                self.query_length.append(max((o for o in own if o < length), default=0))
            self.patches.append(len(level))
            self.length.append(length)
            rows.append(np.array(level, dtype=np.int64).reshape(-1, 6))
        self.patch_rows = np.concatenate(rows)
        self.slots = [p * length for p, length in zip(self.patches, self.length, strict=True)]


def _patches(counts: np.ndarray, k: int, length: int, base: int) -> list[tuple[int, ...]]:
    """(start, last, index in cloud, stride, own count, key count) of each patch of one level's clouds:
    slot j of patch i reads curve position i * stride + j (minus stride past the cloud's end), is the
    own slot of that position when below the own count, and a key when j is below the key count."""
    out, start = [], base
    for n in counts.tolist():
        if n >= k:
            out += [(start, start + n - 1, i, k, n, k) for i in range(-(-n // k))]
        elif n:
            out.append((start, start + n - 1, 0, k, n, n))
        start += n
    return out


def _own_slots(patch: tuple[int, ...]) -> int:
    """How many of a patch's slots hold their own row (the others copy rows of the patch before)."""
    _, _, index, stride, own, _ = patch
    return max(0, min(stride, own - index * stride))


_PATCH_FIELDS = (
    "first_slot",
    "query_base",
    "start",
    "last",
    "index",
    "stride",
    "own",
    "keys",
    "slot_base",
    "packed_base",
    "row_base",
)


def _upload(sizes: _Sizes, extents: np.ndarray, device: torch.device) -> dict[str, Tensor]:
    """The sizes' per-level and per-patch numbers as device tensors (one host->device copy)."""
    num_levels = len(sizes.capacity)
    base = np.array(sizes.base, dtype=np.int64)
    padded = np.array(sizes.capacity) > np.array(sizes.voxels)
    pad_row = np.where(padded, base + np.array(sizes.voxels), sizes.total_rows)  # the dump row without padding
    patches = sizes.patch_rows
    level = np.repeat(np.arange(num_levels), sizes.patches)
    lengths = np.array(sizes.length)[level]
    level_first_patch = np.cumsum([0, *sizes.patches[:-1]])[level]
    level_first_slot = np.cumsum([0, *sizes.slots[:-1]])[level]
    position = np.arange(len(patches)) - level_first_patch
    slot_base = position * lengths
    full, query_length = np.array(sizes.full)[level], np.array(sizes.query_length)[level]
    query_base = np.where(position < full, slot_base, full * lengths + (position - full) * query_length)
    packed = patches[:, 5] * (patches[:, 4] > 0)  # real slots per sequence; spare patches none
    packed_base, cu_seqlens = np.zeros(len(patches), dtype=np.int64), []
    for s in range(num_levels):
        ends = np.cumsum(packed[level == s])
        packed_base[level == s] = ends - packed[level == s]
        cu_seqlens.append(np.concatenate([[0], ends]))
    per_patch = np.stack([level_first_slot + slot_base, query_base, *patches.T, slot_base, packed_base, base[level]])
    levels = np.arange(num_levels + 1, dtype=np.int64)
    pad_key = (levels << LEVEL_SHIFT) + (PAD_CLOUD << 3 * AXIS_BITS) + MARGIN_KEY
    depth = np.ones((num_levels, PAD_CLOUD + 1), dtype=np.int64)  # padding rows (all at 0): depth 1
    largest = extents.max(axis=1)[None, :] >> np.arange(num_levels)[:, None]  # (L, B) per cloud
    depth[:, : len(extents)] = np.frexp(largest + 1.0)[1]  # the bit length of largest + 1
    parts = {
        "pad_key": pad_key,
        "depth": depth,
        "base": base,
        "capacity": np.array(sizes.capacity),
        "rows": np.append(sizes.capacity, 1),
        "level": levels,
        "pad_row": pad_row,
        "pad_parent": np.append(pad_row[1:], sizes.total_rows),
        "offset": np.cumsum(sizes.per_cloud, axis=1),
        "patch": per_patch,
        "length": lengths,
        "cu_seqlens": np.concatenate(cu_seqlens),
    }
    flat = torch.from_numpy(np.concatenate([np.asarray(v, dtype=np.int64).ravel() for v in parts.values()]))
    if device.type == "cuda":
        flat = flat.pin_memory()
    chunks = torch.split(flat.to(device, non_blocking=True), [int(np.size(v)) for v in parts.values()])
    meta = dict(zip(parts, chunks, strict=True))
    meta["offset"] = meta["offset"].view(num_levels, -1)
    meta["patch"] = meta["patch"].view(len(per_patch), -1)
    return meta


def _neighbours(
    row_key: Tensor, row_level: Tensor, meta: dict[str, Tensor], level0_sorted: Tensor | None, level0_perm: Tensor
) -> Tensor:
    """(R, 27) level row of each row's neighbour at each kernel offset; the level's capacity where none.

    Only the 13 offsets before the centre are searched: b is a's neighbour at offset d exactly when a
    is b's at -d (kernel index 26 - k), so the other 13 columns are those hits written back mirrored.
    On a CPU the rows are searched in chunks: each (rows, 13) int64 temporary of a 100k-voxel frame is
    10 MB, and a process's allocator keeps such peaks resident; a GPU takes all rows at once."""
    total, device = row_key.shape[0], row_key.device
    search = row_key
    if level0_sorted is not None:  # level 0 kept the members' order: search their sorted keys
        search = torch.cat((level0_sorted, row_key[level0_sorted.shape[0] :]))
    rows = None
    if level0_sorted is not None:
        rows = torch.arange(total, device=device)
        rows[: level0_perm.shape[0]] = level0_perm
    table = torch.full((total + 1, 27), total, dtype=torch.long, device=device)  # global rows; R: none / dump
    half = _delta_keys(device)[:_CENTRE]
    step = _CPU_ROW_CHUNK if device.type == "cpu" else total
    for start in range(0, total, max(step, 1)):
        end = min(start + step, total)
        wanted = row_key[start:end, None] + half
        position = torch.searchsorted(search, wanted).clamp_(max=total - 1)
        miss = search[position] != wanted
        if rows is not None:
            position = rows[position]
        table[start:end, :_CENTRE] = position.masked_fill_(miss, total)
    own = torch.arange(total, device=device)
    table[:total, _CENTRE] = own
    mirrored = torch.arange(26, _CENTRE, -1, device=device).add(table[:total, :_CENTRE], alpha=27)  # miss: row R
    table.view(-1).scatter_(0, mirrored.flatten(), own[:, None].expand(total, _CENTRE).flatten())
    table = table[:total].sub_(meta["base"][row_level][:, None])  # level rows; a miss lies past its level's
    return table.clamp_(max=meta["capacity"][row_level][:, None])


_CPU_ROW_CHUNK = 8192
_CENTRE = 13  # the kernel offset (0, 0, 0): every row with itself, a plain matmul


def _pairs(neighbours: Tensor, sizes: _Sizes) -> list[ConvPairs]:
    """Every level's `ConvPairs`: each found non-centre neighbour once, grouped by offset, rows ascending
    (a CPU's own memory: `nonzero` per level and one read of the counts, no device to wait for)."""
    levels = []
    for base, capacity in zip(sizes.base, sizes.capacity, strict=True):
        table = neighbours[base : base + capacity]
        found = table < capacity
        found[:, _CENTRE] = False
        offset, row = found.T.nonzero(as_tuple=True)  # ordered by (offset, row)
        levels.append((table[row, offset], row, torch.searchsorted(offset, _GROUP_ENDS)))
    ends = torch.stack([level[2] for level in levels])
    counts = torch.diff(ends, dim=1, prepend=ends.new_zeros(len(levels), 1)).tolist()  # one read
    return [
        ConvPairs(source, target, level_ends.int(), tuple(level_counts))
        for (source, target, level_ends), level_counts in zip(levels, counts, strict=True)
    ]


_GROUP_ENDS = torch.arange(1, 28)  # a pair of offset k sorts before k + 1


_DELTAS: dict[torch.device, Tensor] = {}


def _delta_keys(device: torch.device) -> Tensor:
    """Key offsets of the 3x3x3 kernel, in the weight's (kx, ky, kz) order (built once per device)."""
    if device not in _DELTAS:
        _DELTAS[device] = offset_keys(kernel_offsets(KERNEL_SIZE, device))
    return _DELTAS[device]


def _layouts(
    order: Tensor, meta: dict[str, Tensor], sizes: _Sizes, attention: str, total_rows: int
) -> list[tuple[AttentionLayout, ...]]:
    """Attention layouts of every (level, order), computed for all of them at once over the flat slots."""
    num_slots = sum(sizes.slots)
    device = order.device
    owner = torch.repeat_interleave(
        torch.arange(meta["length"].shape[0], device=device), meta["length"], output_size=num_slots
    )
    slot = dict(zip(_PATCH_FIELDS, meta["patch"][:, owner].unbind(0), strict=True))
    j = torch.arange(num_slots, device=device) - slot["first_slot"]
    q = slot["index"] * slot["stride"] + j
    own = q < slot["own"]
    position = torch.clamp(torch.where(own, q, q - slot["stride"]) + slot["start"], slot["start"], slot["last"])
    rows = order[:, position]  # (K, S) global row of every slot along every curve
    index = rows - slot["row_base"]
    is_key = j < slot["keys"]
    if attention == "sdpa":
        target = slot["query_base"] + j
    else:
        target = slot["packed_base"] + j
        packed_slot = torch.where(is_key, slot["first_slot"] - slot["slot_base"] + target, num_slots)
        index = torch.zeros((len(order), num_slots + 1), dtype=torch.long, device=device).scatter_(
            1, packed_slot.expand_as(index), index
        )[:, :num_slots]
    inverse = torch.zeros((len(order), total_rows + 1), dtype=torch.long, device=device)
    inverse.scatter_(1, torch.where(own, rows, total_rows), target.expand_as(rows))
    indexes = torch.split(index, sizes.slots, dim=1)
    inverses = torch.split(inverse[:, :total_rows], sizes.capacity, dim=1)
    biases = torch.split(torch.where(is_key, 0.0, -torch.inf), sizes.slots) if attention == "sdpa" else None
    cu_seqlens = torch.split(meta["cu_seqlens"].int(), [p + 1 for p in sizes.patches]) if attention == "flash" else None
    out = []
    for s, (patches, length, full) in enumerate(zip(sizes.patches, sizes.length, sizes.full, strict=True)):
        bias = biases[s].view(patches, 1, 1, length)[full:] if biases is not None and sizes.masked[s] else None
        out.append(
            tuple(
                AttentionLayout(
                    kernel=attention,
                    index=level_index,
                    inverse=level_inverse,
                    num_patches=patches,
                    length=length,
                    full_patches=full,
                    query_length=sizes.query_length[s],
                    bias=bias,
                    cu_seqlens=None if cu_seqlens is None else cu_seqlens[s],
                )
                for level_index, level_inverse in zip(indexes[s].unbind(0), inverses[s].unbind(0), strict=True)
            )
        )
    return out
