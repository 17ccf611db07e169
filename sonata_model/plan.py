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
level 0. The rows of all levels are stored one after the other in `FrameTensors` (one tensor per
field, whatever the number of levels and orders); a `LevelPlan`'s tensors are views of them, taken on
first use. So building a plan takes no per-level view, a forward replayed from a captured graph takes
none at all, and copying one frame's plan into a graph's inputs is a copy per field.

Attention patches follow the reference's rule: a cloud of n >= K voxels is cut into ceil(n / K)
patches of K consecutive curve positions, the last one completed with the K - n % K positions before
it (copies, whose outputs are dropped); a cloud of n < K voxels is one sequence of n. Here every level
has one patch length L (K, or the largest cloud when all are shorter; bucketed: K, or the capacity),
short clouds' patches are padded to L with masked keys, and (bucketed) spare patches complete a fixed
count. `AttentionLayout` holds it per (level, order) for the kernel chosen: "sdpa" (P x L slots, an
additive key mask when some slot is not a key, always when bucketed) or "flash" (flash_attn varlen: the
real slots packed, `cu_seqlens`). Unbucketed, a level's full patches (every slot its own row's) come
first; the others (a cloud's last patch, a short cloud) are queried at their first slots only, as
many as the largest of their own counts (their own rows come first), so a 1,214-voxel level of
1,024-patches attends 1,214 queries, not 2,048 (the copies stay keys).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
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
    level_keys,
    offset_keys,
    unpack_keys,
)
from .point import Point
from .serialization import serialize

ATTENTION_KERNELS = ("sdpa", "flash")
SPARSE_BACKENDS = ("torch", "spconv")
KERNEL_SIZE = 3
_INVALID = torch.iinfo(torch.long).max  # key of members that take no part (outside the domain's range)
_LEVEL_CLOUDS = 1 << (63 - 3 * AXIS_BITS)  # values of a key's (level, cloud) bits


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


class _view:  # lower case: a decorator, like functools.cached_property
    """A property computed once per instance, then an ordinary attribute: `functools.cached_property`
    without its lock (Python 3.11's), which `torch.compile` cannot enter."""

    def __init__(self, compute: Callable) -> None:
        self.compute, self.name = compute, compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclass
class AttentionLayout:
    """The slots attention runs on at one level along one curve, and where every row reads its output.

    sdpa: `index` (P * L,) level row of each slot, patch p at slots [p L, (p + 1) L); the first
    `full_patches` patches are queried at all L slots, the others at their first `query_length` slots
    (their own rows come first); the outputs are those queries in that order. `bias` (P - full_patches,
    1, 1, L) 0 / -inf on the keys of the partly queried patches (None when every slot is a key and the
    plan is not bucketed).
    flash: `index` (P * L,) level row of each packed slot, sequence p at [cu_seqlens[p], cu_seqlens[p + 1])
    (spare tail slots belong to none). `inverse` (C,) the output holding each row's own output
    (padding rows: 0 or a padding slot's output).
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


@dataclass(frozen=True)
class PatchShape:
    """The attention patches of one level (the same along every order): what the forward's shapes are."""

    num_patches: int
    length: int
    full_patches: int
    query_length: int
    masked: bool  # some slot of a partly queried patch is not a key: sdpa gets a bias


@dataclass
class ConvPairs:
    """A level's neighbours as (row, neighbour) pairs, for a CPU: the pairs of the 26 non-centre kernel
    offsets, grouped by offset, so that each group is multiplied by its own tap of the weight (each row
    at most once per group)."""

    source: Tensor  # (Q,) neighbour row of each pair
    target: Tensor  # (Q,) row it contributes to
    counts: tuple[int, ...]  # pairs per kernel offset (the centre's group is empty), host side


@dataclass(eq=False)
class FrameTensors:
    """The plan's device tensors, each over the rows (or attention slots) of all levels at once: level s
    owns rows [base_s, base_s + capacity_s). A `LevelPlan`'s tensors are views of these, so copying one
    frame's plan into another's (a captured graph's inputs) is one copy per field, not per level and order."""

    coord: Tensor  # (R, 3) float: level 0 the representatives', then means of the pooled rows
    origin_coord: Tensor | None  # (R, 3) the same for the members' pre-augmentation coordinates
    grid_coord: Tensor  # (R, 3) int64 (padding rows: 0)
    batch: Tensor  # (R,) int64 cloud of each row (padding rows: PAD_CLOUD)
    offset: Tensor  # (L * B,) int64 cumulative real voxel counts per cloud, level after level
    parent: Tensor  # (R,) row one level up of each row, counted within that level (last level: unused)
    neighbours: Tensor | None  # (R, 27) int64 level row at each kernel offset, the capacity where none
    index: Tensor  # (K, S) level row of each attention slot of every level, along each order
    inverse: Tensor  # (K, R) the attention output holding each row's own output, along each order
    bias: Tensor | None  # (S,) 0 / -inf: whether each slot is a key (sdpa)
    cu_seqlens: Tensor | None  # (P + L,) int32 sequence bounds of every level (flash)

    def tensors(self) -> list[Tensor]:
        """Every tensor, in a fixed order."""
        return [t for t in vars(self).values() if t is not None]


@dataclass(eq=False)
class LevelPlan:
    """One level: `capacity` rows of which the first `num_voxels` are real (see the module docstring).

    Its tensors are views of the frame's `FrameTensors`, taken on first use (a CPU plan's conv pairs
    excepted): a forward replayed from a captured graph never takes them again, and a plan whose
    levels are not all read (the node reads level 0 only) never takes the others."""

    num_voxels: int
    capacity: int
    counts: tuple[int, ...]  # real voxels per cloud
    spatial_shape: tuple[int, int, int]  # grid extent (spconv)
    patches: PatchShape
    pairs: ConvPairs | None  # the neighbours as pairs, instead of the table (torch conv on a CPU: cheaper)
    frame: FrameTensors = field(repr=False)
    stage: int
    rows: slice  # this level's rows of the frame's tensors
    finer_rows: slice | None  # the finer level's (levels >= 1)
    slots: slice  # this level's attention slots
    sequences: slice  # this level's entries of cu_seqlens (flash)
    kernel: str  # the attention kernel
    num_orders: int
    rulebook: dict = field(default_factory=dict, repr=False)  # spconv's pairs, built by the stage's first conv

    @_view
    def coord(self) -> Tensor:
        """(C, 3) float: level 0 the representatives', then means of the pooled rows."""
        return self.frame.coord[self.rows]

    @_view
    def origin_coord(self) -> Tensor | None:
        return None if self.frame.origin_coord is None else self.frame.origin_coord[self.rows]

    @_view
    def grid_coord(self) -> Tensor:
        """(C, 3) int64 (padding rows: 0)."""
        return self.frame.grid_coord[self.rows]

    @_view
    def batch(self) -> Tensor:
        """(C,) int64 cloud of each row (padding rows: PAD_CLOUD)."""
        return self.frame.batch[self.rows]

    @_view
    def offset(self) -> Tensor:
        """(B,) int64 cumulative real voxel counts."""
        clouds = len(self.counts)
        return self.frame.offset[self.stage * clouds : (self.stage + 1) * clouds]

    @_view
    def parent(self) -> Tensor | None:
        """(C of the finer level,) row here of each finer row (levels >= 1)."""
        return None if self.finer_rows is None else self.frame.parent[self.finer_rows]

    @_view
    def neighbours(self) -> Tensor | None:
        """(C, 27) int64 row at each kernel offset, C (a zero row) where none (torch conv)."""
        return None if self.frame.neighbours is None else self.frame.neighbours[self.rows]

    @_view
    def layouts(self) -> tuple[AttentionLayout, ...]:
        """One `AttentionLayout` per order of the plan."""
        shape, frame = self.patches, self.frame
        bias = None
        if frame.bias is not None and shape.masked:
            bias = frame.bias[self.slots].view(shape.num_patches, 1, 1, shape.length)[shape.full_patches :]
        cu_seqlens = None if frame.cu_seqlens is None else frame.cu_seqlens[self.sequences]
        indexes = frame.index[:, self.slots].unbind(0) if self.num_orders > 1 else (frame.index[0, self.slots],)
        inverses = frame.inverse[:, self.rows].unbind(0) if self.num_orders > 1 else (frame.inverse[0, self.rows],)
        return tuple(
            AttentionLayout(
                kernel=self.kernel,
                index=index,
                inverse=inverse,
                num_patches=shape.num_patches,
                length=shape.length,
                full_patches=shape.full_patches,
                query_length=shape.query_length,
                bias=bias,
                cu_seqlens=cu_seqlens,
            )
            for index, inverse in zip(indexes, inverses, strict=True)
        )


@dataclass
class FramePlan:
    """The plan of one batch; `levels[s]` serves encoder stage s (see the module docstring)."""

    levels: list[LevelPlan]
    num_clouds: int
    orders: tuple[str, ...]
    attention: str
    sparse_backend: str
    frame: FrameTensors
    voxel_of_member: Tensor  # (N,) level-0 row of each member; -1 for members that took no part
    representative: Tensor  # (C_0,) member kept for each level-0 row: the lowest (padding rows: the last member)

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
                (level.capacity, None if level.pairs is None else level.pairs.counts, level.patches)
                for level in self.levels
            ),
        )

    def copy_(self, other: FramePlan) -> FramePlan:
        """Copy `other`'s tensors into this plan's (equal signatures), e.g. a captured graph's: one copy
        per field of `FrameTensors`; the views this plan's levels took see the new values."""
        if other.signature != self.signature:
            raise ValueError("FramePlan.copy_: the plans' signatures differ (different bucket or batch)")
        for mine, theirs in zip(self.frame.tensors(), other.frame.tensors(), strict=True):
            mine.copy_(theirs)
        for mine, theirs in zip(self.levels, other.levels, strict=True):
            mine.num_voxels, mine.counts = theirs.num_voxels, theirs.counts
            if mine.pairs is not None:
                for name in ("source", "target"):
                    getattr(mine.pairs, name).copy_(getattr(theirs.pairs, name))
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
        self.frame.coord.sub_(padded[self.frame.batch])  # in place: the levels' views see it


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
    search_chunk: int | None = None,
) -> FramePlan:
    """The plan of `num_clouds` clouds for an encoder shaped like `config`.

    Members: (N, 3) `coord` (model units) with (N, 3) int64 level-0 `grid_coord` (>= 0 per cloud) of
    cloud `batch` (N,). `voxelize`: level 0 is the distinct cells of the `valid` members, represented by
    their lowest member; otherwise the members are level 0's voxels (distinct cells), in their order.
    Raises ValueError naming the cloud when a cloud spans 2**16 voxels or more along an axis, and
    `EmptyCloudError` when a cloud has no valid member. One host sync. `conv_pairs` (CPU tensors only):
    every level's neighbours as `ConvPairs` instead of a table (a second read of the host's own memory,
    no device to wait for). `search_chunk`: rows per neighbour search call (None: 8192 on a CPU, whose
    allocator keeps a large temporary resident; all at once elsewhere).
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

    # Every member's key at every level, sorted per level: equal keys are one voxel.
    key = level_keys(grid_coord, batch, num_levels)  # (L, N)
    if valid is not None:
        key = torch.where(valid, key, _INVALID)
    sorted_key, perm = torch.sort(key, dim=1)
    # A new voxel starts where a key differs from the one before it, rolled over all levels: a level's
    # first key meets the last of the level before (another level's key) and level 0's the last level's.
    first = sorted_key != sorted_key.roll(1)
    if num_levels == 1:  # no other level's key to meet: a cloud within one voxel would start none
        first[:, 0] = True
    rank = torch.cumsum(first, dim=1)  # 1 + the member's voxel within its level
    # rank's largest value per (level, cloud) is the voxel count of that cloud and those before it
    # (keys' top bits: level << BATCH_BITS | cloud; the invalid members' all ones: the last slot).
    level_cloud = sorted_key >> 3 * AXIS_BITS
    stats = torch.zeros(_LEVEL_CLOUDS + (PAD_CLOUD + 1) * 3, dtype=torch.long, device=device)
    stats.scatter_reduce_(0, level_cloud.view(-1), rank.view(-1), "amax")  # the counts: its first slots
    cells = grid_coord if valid is None else torch.where(valid[:, None], grid_coord, 0)
    stats[_LEVEL_CLOUDS:].view(-1, 3).scatter_reduce_(0, batch[:, None].expand_as(cells), cells, "amax")
    host = _read_sizes(stats)  # the sync: voxels per level and cloud, each cloud's extent
    so_far = np.maximum.accumulate(host[:_LEVEL_CLOUDS].reshape(-1, PAD_CLOUD + 1)[:num_levels, :num_clouds], axis=1)
    per_cloud = np.diff(so_far, axis=1, prepend=0)
    extents = host[_LEVEL_CLOUDS:].reshape(-1, 3)[:num_clouds]
    _check(per_cloud, extents, n, voxelize, grid_size)

    sizes = _Sizes(per_cloud, n if not voxelize else None, buckets, config.enc_patch_size, num_clouds)
    meta = _upload(sizes, extents, device)
    total = sizes.total_rows

    # Rows: each member's row at every level, in an (L + 1, N + 1) table whose last column is a stand-in
    # member of the padding rows (each level's first padding row) and whose last row is the dump row (R),
    # so that "the row one level up" of padding and last-level rows needs no case of its own.
    member_row = meta["pad_row"][:, None].repeat(1, n + 1)  # the scatter below fills all but those rows
    rows = rank + meta["row_start"][:, None]  # (L, N) the row of each member in sorted order
    if not voxelize:
        rows[0] = perm[0]  # level 0 keeps the members' order
    if valid is not None:
        rows.masked_fill_(sorted_key == _INVALID, total)  # the dump row
    member_row.scatter_(1, perm, rows)
    # Every row's key (padding rows: their level's padding key), + the dump row's, which sorts after and
    # differs from every key searched for (level L's padding key, or the invalid members' all ones).
    keys_and_dump = torch.repeat_interleave(meta["pad_key"], meta["rows"], output_size=total + 1)
    keys_and_dump.index_put_((rows,), sorted_key)
    row_key = keys_and_dump[:total]
    row_level = row_key >> LEVEL_SHIFT
    unmargined = row_key - MARGIN_KEY
    row_grid, row_cloud = unpack_keys(unmargined)
    rep = torch.full((total + 1,), n, dtype=torch.long, device=device)  # padding rows: the stand-in
    rep.scatter_reduce_(0, rows.view(-1), perm.view(-1), "amin")  # the lowest member of each row

    # Pooling: the row one level up of every row (padding rows: the next level's first padding row).
    up = row_level + 1
    up_base = meta["base"][up]  # the first row of the level one up
    parent = member_row[up, rep[:total]]  # last level: the dump row
    level0_rep = rep[: sizes.capacity[0]]
    ancestors = member_row[:, level0_rep]  # (L + 1, C_0): each level-0 row's row at every level, and the dump row
    representative = level0_rep.clamp(max=n - 1)  # padding rows: the last member

    # Coordinates: level 0 the representatives', each coarser level the mean of its children's.
    # (R + 1, 1): a column, so that the weights below come out (L + 1, C_0, 1), ready to scale (C_0, 3) values
    children = torch.zeros(total + 1, 1, device=device).index_add_(0, parent, _constants(device).one.expand(total, 1))
    # level 0 rows have no children (weight 1); the dump row's sum is dropped
    weight = torch.cumprod(children.clamp(min=1)[ancestors].reciprocal(), dim=0)
    values = coord if origin_coord is None else torch.cat((coord, origin_coord), dim=1)
    values = values[representative]
    row_values = values.new_zeros((total + 1, values.shape[1]))
    row_values.index_add_(0, ancestors.flatten(), (weight * values).flatten(0, 1))

    neighbours, pairs = None, [None] * num_levels
    if sparse_backend == "torch":
        search, search_rows = _search_keys(keys_and_dump, sorted_key, perm, level0_kept_order=not voxelize)
        if conv_pairs:
            pairs = _pairs(row_key, sizes, search, search_rows, search_chunk)
        else:
            neighbours = _neighbours(row_key, row_level, up_base, meta, search, search_rows, search_chunk)
    cloud_of_row = unmargined >> 3 * AXIS_BITS  # (level, cloud) as one number
    order = serialize(row_grid, cloud_of_row, num_levels << BATCH_BITS, config.order, meta["depth"]).order
    index, inverse, bias, cu_seqlens = _layouts(order, meta, sizes, attention, total)
    frame = FrameTensors(
        coord=row_values[:total, :3],
        origin_coord=None if origin_coord is None else row_values[:total, 3:],
        grid_coord=row_grid,
        batch=row_cloud,
        offset=meta["offset"],
        parent=parent - up_base,
        neighbours=neighbours,
        index=index,
        inverse=inverse,
        bias=bias,
        cu_seqlens=cu_seqlens,
    )
    rows = [slice(base, base + capacity) for base, capacity in zip(sizes.base, sizes.capacity, strict=True)]
    slot_ends, sequence_ends = np.cumsum(sizes.slots), np.cumsum(np.array(sizes.patches) + 1)
    plan_levels = [
        LevelPlan(
            num_voxels=sizes.voxels[s],
            capacity=sizes.capacity[s],
            counts=tuple(int(c) for c in per_cloud[s]),
            spatial_shape=tuple(int(v) for v in (extents.max(axis=0) >> s) + 1),
            patches=PatchShape(
                sizes.patches[s],
                sizes.length[s],
                sizes.full[s],
                sizes.query_length[s],
                attention == "sdpa" and sizes.masked[s],
            ),
            pairs=pairs[s],
            frame=frame,
            stage=s,
            rows=rows[s],
            finer_rows=rows[s - 1] if s else None,
            slots=slice(int(slot_ends[s]) - sizes.slots[s], int(slot_ends[s])),
            sequences=slice(int(sequence_ends[s]) - sizes.patches[s] - 1, int(sequence_ends[s])),
            kernel=attention,
            num_orders=len(config.order),
        )
        for s in range(num_levels)
    ]
    voxel_of_member = member_row[0, :n] if valid is None else torch.where(valid, member_row[0, :n], -1)
    return FramePlan(
        levels=plan_levels,
        num_clouds=num_clouds,
        orders=tuple(config.order),
        attention=attention,
        sparse_backend=sparse_backend,
        frame=frame,
        voxel_of_member=voxel_of_member,
        representative=representative,
    )


def _read_sizes(stats: Tensor) -> np.ndarray:
    """The plan's one host read (`np.from_dlpack`: one op, where `.cpu().numpy()` dispatches five)."""
    return np.from_dlpack(stats.cpu())


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
            self.masked.append(buckets is not None or any(p[4] < length for p in level))
            if buckets:  # fixed shapes per bucket: every patch queried whole
                first_pad = self.base[s] + self.voxels[s]
                level += [(first_pad, 0, length, 0, length)] * (self.capacity[s] // length + num_clouds - len(level))
                self.full.append(0)
                self.query_length.append(length)
            else:
                own = [_own_slots(p) for p in level]
                self.full.append(sum(o == length for o in own))
                self.query_length.append(max((o for o in own if o < length), default=0))
            self.patches.append(len(level))
            self.length.append(length)
            rows.append(np.array(level, dtype=np.int64).reshape(-1, 5))
        self.patch_rows = np.concatenate(rows)
        self.slots = [p * length for p, length in zip(self.patches, self.length, strict=True)]


def _patches(counts: np.ndarray, k: int, length: int, base: int) -> list[tuple[int, ...]]:
    """(start, index in cloud, stride, own count, key count) of each patch of one level's clouds: slot j
    of patch i reads curve position i * stride + j (minus stride past the cloud's end; the cloud's start
    for a slot that would fall before it, which is no key), is the own slot of that position when below
    the own count, and a key when j is below the key count."""
    out, start = [], base
    for n in counts.tolist():
        if n >= k:
            out += [(start, i, k, n, k) for i in range(-(-n // k))]
        elif n:
            out.append((start, 0, k, n, n))
        start += n
    return out


def _own_slots(patch: tuple[int, ...]) -> int:
    """How many of a patch's slots hold their own row (the others copy rows of the patch before)."""
    _, index, stride, own, _ = patch
    return max(0, min(stride, own - index * stride))


_PATCH_FIELDS = (  # per patch, as the slot numbers s (over all levels) of its slots use them
    "own_end",  # s below it: the slot holds its own row, at curve position s + shift
    "shift",
    "copy_shift",  # the other slots: the position s + copy_shift, a row of the patch before...
    "start",  # ... or, below the cloud's first position, that one (slots that are no key)
    "row_base",  # the level's first row
    "key_end",  # s below it: the slot is a key
    "query_shift",  # sdpa: s + query_shift is the slot's output
    "packed_shift",  # flash: s + packed_shift is the slot's place among the level's packed slots...
    "packed_slot_shift",  # ... and s + packed_slot_shift among all levels'
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
    packed = patches[:, 4] * (patches[:, 3] > 0)  # real slots per sequence; spare patches none
    packed_base, cu_seqlens = np.zeros(len(patches), dtype=np.int64), []
    for s in range(num_levels):
        ends = np.cumsum(packed[level == s])
        packed_base[level == s] = ends - packed[level == s]
        cu_seqlens.append(np.concatenate([[0], ends]))
    start, index, stride, own, keys = patches.T
    first_slot = level_first_slot + slot_base
    shift = start + index * stride - first_slot
    per_patch = np.stack(
        [
            first_slot + own - index * stride,
            shift,
            shift - stride,
            start,
            base[level],
            first_slot + keys,
            query_base - first_slot,
            packed_base - first_slot,
            level_first_slot + packed_base - first_slot,
        ]
    )
    levels = np.arange(num_levels + 1, dtype=np.int64)
    pad_key = (levels << LEVEL_SHIFT) + (PAD_CLOUD << 3 * AXIS_BITS) + MARGIN_KEY
    depth = np.ones((num_levels, PAD_CLOUD + 1), dtype=np.int64)  # padding rows (all at 0): depth 1
    largest = extents.max(axis=1)[None, :] >> np.arange(num_levels)[:, None]  # (L, B) per cloud
    depth[:, : len(extents)] = np.frexp(largest + 1.0)[1]  # the bit length of largest + 1
    parts = {
        "pad_key": pad_key,
        "depth": depth,
        "base": np.append(base, sizes.total_rows),  # + the dump row's "level"
        "row_start": base - 1,
        "rows": np.append(sizes.capacity, 1),
        "pad_row": np.append(pad_row, sizes.total_rows),
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
    meta["patch"] = meta["patch"].view(len(per_patch), -1)
    return meta


def _search_keys(
    keys: Tensor, sorted_key: Tensor, perm: Tensor, level0_kept_order: bool
) -> tuple[Tensor, Tensor | None]:
    """The sorted keys that neighbours are searched in (every row's, then the dump row's) and, when level
    0 kept the members' order (its keys are searched in their sorted order, `sorted_key[0]`), the row of
    each searched position (None: the position)."""
    if not level0_kept_order:
        return keys, None
    search = torch.cat((sorted_key[0], keys[sorted_key.shape[1] :]))
    rows = torch.arange(keys.shape[0], device=keys.device)
    rows[: perm.shape[1]] = perm[0]
    return search, rows


def _search(
    search: Tensor, rows: Tensor | None, keys: Tensor, deltas: Tensor, missing: int | Tensor, chunk: int | None
) -> Tensor:
    """(K, D) position in `search` (or its row, `rows[position]`) of each key moved by each of the `deltas`
    (key offsets); `missing` (a number, or (K, 1): one per key) where there is none. `search` ends with a
    key above every key looked for (the next level's first or the dump row's), so no position runs past it.

    On a CPU the keys are searched in chunks: each (K, D) int64 temporary of a 100k-voxel frame is tens
    of MB, and a process's allocator keeps such peaks resident; a GPU takes all keys at once (`chunk`
    None), in one call."""
    step = chunk or (_CPU_ROW_CHUNK if keys.device.type == "cpu" else keys.shape[0])
    if step >= keys.shape[0]:
        return _search_chunk(search, rows, keys, deltas, missing)
    out = keys.new_empty((keys.shape[0], deltas.shape[0]))
    for start in range(0, keys.shape[0], max(step, 1)):
        part = slice(start, start + step)
        missing_here = missing if isinstance(missing, int) else missing[part]
        out[part] = _search_chunk(search, rows, keys[part], deltas, missing_here)
    return out


def _search_chunk(search: Tensor, rows: Tensor | None, keys: Tensor, deltas: Tensor, missing: int | Tensor) -> Tensor:
    wanted = keys[:, None] + deltas
    position = torch.searchsorted(search, wanted)
    found = search[position] == wanted
    if rows is not None:
        position = rows[position]
    return torch.where(found, position, missing)


def _neighbours(
    row_key: Tensor,
    row_level: Tensor,
    up_base: Tensor,
    meta: dict[str, Tensor],
    search: Tensor,
    rows: Tensor | None,
    chunk: int | None,
) -> Tensor:
    """(R, 27) level row of each row's neighbour at each kernel offset; the level's capacity where none.

    Keys carry their level, so one search over all levels' sorted keys finds every level's neighbours:
    a hit at global row p of level l is row p - base_l there; a miss becomes the first row of the level
    one up (`up_base`, base_l+1), which is row capacity_l there."""
    found = _search(search, rows, row_key, _constants(row_key.device).delta_keys, up_base[:, None], chunk)
    return found - meta["base"][row_level, None]


_CPU_ROW_CHUNK = 8192
_CENTRE = 13  # the kernel offset (0, 0, 0): every row with itself, a plain matmul


def _pairs(row_key: Tensor, sizes: _Sizes, search: Tensor, rows: Tensor | None, chunk: int | None) -> list[ConvPairs]:
    """Every level's `ConvPairs`, straight from the search (no table): each level's hits at the 13 offsets
    before the centre, grouped by offset, and the same hits swapped for the mirrored offsets 26 - k
    (a CPU's own memory: `nonzero` per level and one read of the counts, no device to wait for)."""
    levels = []
    before_centre = _constants(row_key.device).delta_keys[:_CENTRE]  # b is a's neighbour at d iff a is b's at -d
    for base, capacity in zip(sizes.base, sizes.capacity, strict=True):
        level = slice(base, base + capacity)  # searched within the level: its keys are a sorted run...
        ending = slice(base, base + capacity + 1)  # ... followed by a greater key (the next level's)
        level_rows = None if rows is None or base else rows[ending]  # only level 0 can keep an order
        found = _search(search[ending], level_rows, row_key[level], before_centre, capacity, chunk)  # C: none
        offset, row = (found < capacity).T.nonzero(as_tuple=True)  # ordered by (offset, row)
        levels.append((row, found[row, offset], torch.searchsorted(offset, _GROUP_ENDS)))
    ends = torch.stack([level[2] for level in levels])
    counts = torch.diff(ends, dim=1, prepend=ends.new_zeros(len(levels), 1)).tolist()  # one read
    out = []
    for (row, neighbour, _), half in zip(levels, counts, strict=True):
        mirrored = half[::-1]  # offset 14 mirrors offset 12, ..., 26 mirrors 0
        source = torch.cat((neighbour, *reversed(row.split(half))))
        target = torch.cat((row, *reversed(neighbour.split(half))))
        out.append(ConvPairs(source, target, (*half, 0, *mirrored)))
    return out


_GROUP_ENDS = torch.arange(1, _CENTRE + 1)  # a hit at offset k sorts before k + 1


@dataclass(frozen=True)
class _DeviceConstants:
    delta_keys: Tensor  # (27,) key offsets of the 3x3x3 kernel, in the weight's (kx, ky, kz) order
    one: Tensor  # a float 1, expanded as a count's source (no fill per frame)


@functools.cache
def _constants(device: torch.device) -> _DeviceConstants:
    """The plan's constant tensors, built once per device."""
    return _DeviceConstants(
        delta_keys=offset_keys(kernel_offsets(KERNEL_SIZE, device)),
        one=torch.ones((), device=device),
    )


def _layouts(
    order: Tensor, meta: dict[str, Tensor], sizes: _Sizes, attention: str, total_rows: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """`FrameTensors`' attention fields (index, inverse, bias, cu_seqlens) of every (level, order), computed
    for all of them at once over the flat slots."""
    num_slots = sum(sizes.slots)
    device = order.device
    per_slot = torch.repeat_interleave(meta["patch"], meta["length"], dim=1, output_size=num_slots)
    slot = dict(zip(_PATCH_FIELDS, per_slot.unbind(0), strict=True))
    s = torch.arange(num_slots, device=device)
    own = s < slot["own_end"]
    position = torch.maximum(s + torch.where(own, slot["shift"], slot["copy_shift"]), slot["start"])
    rows = order[:, position]  # (K, S) global row of every slot along every curve
    index = rows - slot["row_base"]
    is_key = s < slot["key_end"]
    if attention == "sdpa":
        target = s + slot["query_shift"]
    else:
        target = s + slot["packed_shift"]
        packed_slot = torch.where(is_key, s + slot["packed_slot_shift"], num_slots)
        index = torch.zeros((len(order), num_slots + 1), dtype=torch.long, device=device).scatter_(
            1, packed_slot.expand_as(index), index
        )[:, :num_slots]
    # A row's own slot has the smallest output of all slots holding it: the copies of a cloud's last
    # patch and the slots that are no key come after it. Padding rows: 0, or any padding slot's output.
    inverse = torch.zeros((len(order), total_rows), dtype=torch.long, device=device)
    inverse.scatter_reduce_(1, rows, target.expand_as(rows), "amin", include_self=False)
    bias = torch.where(is_key, 0.0, -torch.inf) if attention == "sdpa" and any(sizes.masked) else None
    cu_seqlens = meta["cu_seqlens"].int() if attention == "flash" else None
    return index, inverse, bias, cu_seqlens
