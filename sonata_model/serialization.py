"""Space-filling-curve codes that order PTv3's attention patches: z-order and Hilbert, and "-trans".

Bit-exact with the reference implementation's codes:
- z-order: bit interleaving, x at bit 3i+2, y at 3i+1, z at 3i;
- Hilbert: Skilling's transform (Programming the Hilbert curve, 2004) with x the most significant axis,
  i.e. the index the reference computes with its bit-array version;
- "-trans": x and y swapped first.

Shaped for the GPU: a handful of int64 tensor ops on all points at once, no host sync, no branch on the
data. z-order spreads each 16-bit coordinate with one lookup in a table per (order, axis) of 2**16
entries, each already shifted to its axis's place (x and y swapped for "-trans"). Skilling's
transform is a finite-state machine over the octants of the z-order code, read from the top level
down (48 states: the axis permutation and reflections applied to the lower bits, and the parity the
final Gray decode carries); a table `(state, 4 levels of octants) -> (12 code bits, next state)` runs
it in 4 lookups for depth 16. A smaller depth d is the same walk over 16 - d leading zero octants
started from the state that those zeros lead back to the machine's start, which the first lookup's
table (indexed by depth) folds in.

One deliberate difference: the reference takes one depth for the whole batch (from the batch's largest
coordinate) and puts the cloud index at bit 3 * depth. Hilbert order depends on the depth, so here each
cloud uses its own depth and the cloud index sits at bit 48: a cloud is ordered exactly as it would be
alone, whatever else is in the batch. A single cloud gets the reference's codes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ORDERS: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16
BATCH_SHIFT = 3 * MAX_DEPTH
_STEP_LEVELS = 4  # octant levels per Hilbert table lookup
_STEP_BITS = 3 * _STEP_LEVELS
_STEP_MASK = (1 << _STEP_BITS) - 1
_CODE_SHIFT = 63 - _STEP_BITS  # a table entry: its 12 code bits at the top (the sign bit clear)...
_STATE_MASK = (1 << 6) - 1  # ... and the next state at the bottom (48 states)


def _octant_bits(octant: int) -> tuple[int, int, int]:
    return (octant >> 2) & 1, (octant >> 1) & 1, octant & 1


def _octant(bits: Sequence[int]) -> int:
    return bits[0] << 2 | bits[1] << 1 | bits[2]


def _skilling_level(bits: tuple[int, int, int]) -> tuple[int, ...]:
    """The map (as an 8-entry octant table) that one level of AxesToTranspose applies to the lower bits.

    For each axis i in turn: its bit at this level set -> invert axis 0's lower bits, else exchange the
    lower bits of axes 0 and i.
    """

    def apply(octant: int) -> int:
        lower = list(_octant_bits(octant))
        for i in range(3):
            if bits[i]:
                lower[0] ^= 1
            elif i:
                lower[0], lower[i] = lower[i], lower[0]
        return _octant(lower)

    return tuple(apply(o) for o in range(8))


@functools.cache
def _hilbert_machine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-level state machine: (next state (S, 8), 3 code bits (S, 8), start state for each depth 0..16).

    A state is (the octant map applied to this level's bits, the parity of all code bits above): the
    level's transformed bits t give code bits by the prefix xor from the top (Gray decode), and the
    state of the next level composes this level's `_skilling_level(t)` after the map.
    """
    identity = (tuple(range(8)), 0)
    index, states, moves = {identity: 0}, [identity], []
    while len(moves) < len(states):
        mapping, parity = states[len(moves)]
        row = []
        for octant in range(8):
            t = _octant_bits(mapping[octant])
            d2 = parity ^ t[0]
            d1 = d2 ^ t[1]
            d0 = d1 ^ t[2]
            level = _skilling_level(t)
            following = (tuple(level[mapping[o]] for o in range(8)), d0)
            if following not in index:
                index[following] = len(states)
                states.append(following)
            row.append((index[following], d2 << 2 | d1 << 1 | d0))
        moves.append(row)
    table = np.array(moves, dtype=np.int64)  # (S, 8, 2)
    successor, code = table[..., 0], table[..., 1]
    start = [_start_for_depth(successor, code, depth) for depth in range(MAX_DEPTH + 1)]
    return successor, code, np.array(start, dtype=np.int64)


def _start_for_depth(successor: np.ndarray, code: np.ndarray, depth: int) -> int:
    """The state from which MAX_DEPTH - depth zero octants emit zeros and end in the start state 0."""
    for state in range(len(successor)):
        current, silent = state, True
        for _ in range(MAX_DEPTH - depth):
            silent &= code[current, 0] == 0
            current = successor[current, 0]
        if silent and current == 0:
            return state
    raise AssertionError(f"no Hilbert start state for depth {depth}")  # the machine guarantees one


@dataclass(frozen=True)
class _Tables:
    spread: Tensor  # (6, 2**16) per (z-order kind, axis): bit i of the index at bit 3i + the axis's shift
    spread_rows: Tensor  # (2, 1, 3) the row of `spread` for each (plain / "-trans", axis)
    hilbert_step: Tensor  # (S, 4096) per state and 12 z-code bits: 12 code bits << 51 | next state
    hilbert_first: Tensor  # (17, 4096) the same from each depth's start state: the first lookup
    chunk_shifts: Tensor  # (4,) where each lookup's 12 z-code bits start, top first
    code_shifts: Tensor  # (4,) right shifts that move each lookup's code bits there (the state falls off)


@functools.cache
def _tables(device: torch.device) -> _Tables:
    """The lookup tables, built once per device."""
    values = np.arange(1 << MAX_DEPTH, dtype=np.int64)
    spread = np.zeros_like(values)
    for bit in range(MAX_DEPTH):
        spread |= ((values >> bit) & 1) << (3 * bit)
    successor, code, start = _hilbert_machine()
    states = len(successor)
    state = np.repeat(np.arange(states, dtype=np.int64), 1 << _STEP_BITS)
    octants = np.tile(np.arange(1 << _STEP_BITS, dtype=np.int64), states)
    bits = np.zeros_like(state)
    for level in range(_STEP_LEVELS - 1, -1, -1):
        octant = (octants >> (3 * level)) & 7
        bits = (bits << 3) | code[state, octant]
        state = successor[state, octant]
    step = (bits << _CODE_SHIFT | state).reshape(states, 1 << _STEP_BITS)
    axis_shifts = np.array([2, 1, 0, 1, 2, 0])[:, None]  # (x, y, z) plain, then "-trans"
    return _Tables(
        spread=torch.from_numpy(spread << axis_shifts).to(device),
        spread_rows=torch.arange(6, device=device).view(2, 1, 3),
        hilbert_step=torch.from_numpy(step).to(device),
        hilbert_first=torch.from_numpy(step[start]).to(device),
        chunk_shifts=torch.arange(BATCH_SHIFT - _STEP_BITS, -1, -_STEP_BITS, device=device),
        code_shifts=_CODE_SHIFT - torch.arange(BATCH_SHIFT - _STEP_BITS, -1, -_STEP_BITS, device=device),
    )


def _hilbert(zcode: Tensor, depth: Tensor | int, tables: _Tables) -> Tensor:
    """Hilbert codes from z-order codes: the state machine, 4 levels per lookup, top level first."""
    chunks = ((zcode.unsqueeze(-1) >> tables.chunk_shifts) & _STEP_MASK).unbind(-1)
    if isinstance(depth, Tensor) and depth.dim() == 0:  # a 0-dim index tensor would be read on the host
        depth = depth.expand_as(chunks[0])
    entries = [tables.hilbert_first[depth, chunks[0]]]
    for chunk in chunks[1:]:
        entries.append(tables.hilbert_step[entries[-1] & _STATE_MASK, chunk])
    return (torch.stack(entries, dim=-1) >> tables.code_shifts).sum(dim=-1)


def encode_orders(grid_coord: Tensor, depth: int | Tensor, orders: Sequence[str]) -> Tensor:
    """(K, N) int64 codes of (N, 3) grid coordinates (0 <= c < 2**depth <= 2**16) along each curve.

    `depth` may be one int or an (N,) tensor (per point); it matters for Hilbert only.
    """
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise ValueError(f"unknown serialization order {unknown[0]!r}; expected one of {ORDERS}")
    tables = _tables(grid_coord.device)
    zcodes = tables.spread[tables.spread_rows, grid_coord].sum(dim=2)  # (2, N): z, z-trans
    if not any(o.startswith("hilbert") for o in orders):
        return zcodes[[ORDERS.index(o) for o in orders]]
    codes = torch.cat((zcodes, _hilbert(zcodes, depth, tables)))  # in ORDERS' order
    return codes if tuple(orders) == ORDERS else codes[[ORDERS.index(o) for o in orders]]


def encode(grid_coord: Tensor, depth: int | Tensor, order: str) -> Tensor:
    """(N,) int64 code of (N, 3) grid coordinates (0 <= c < 2**depth <= 2**16) along curve `order`."""
    return encode_orders(grid_coord, depth, (order,))[0]


def _depths(grid_coord: Tensor, cloud: Tensor, clouds: int) -> Tensor:
    """(clouds,) depth of each cloud: bit length of (its largest grid coordinate + 1), as the reference;
    checked without a host sync (a depth above 16 fails an asynchronous assert, on CUDA device-side)."""
    largest = grid_coord.long().amax(dim=1)
    cloud_max = torch.zeros(clouds, dtype=torch.long, device=grid_coord.device)
    cloud_max = cloud_max.scatter_reduce(0, cloud, largest, "amax")
    torch._assert_async(
        cloud_max.amax() < (1 << MAX_DEPTH) - 1,
        f"serialization: grid coordinates must be below {(1 << MAX_DEPTH) - 1} (depth <= {MAX_DEPTH}); "
        "use a coarser grid or crop the cloud",
    )
    powers = torch.pow(2, torch.arange(MAX_DEPTH + 1, device=grid_coord.device))
    return ((cloud_max + 1).unsqueeze(1) >= powers).sum(dim=1)


@dataclass
class Serialization:
    code: Tensor  # (K, N) int64: cloud << 48 | code
    order: Tensor  # (K, N) int64: row at each position along curve k
    depth: Tensor  # (clouds,) per-cloud depth


def serialize(
    grid_coord: Tensor, cloud: Tensor, num_clouds: int, orders: Sequence[str], depth: Tensor | None = None
) -> Serialization:
    """Codes and orders of rows along each curve in `orders`, cloud by cloud (no host sync).

    `cloud` (N,) int64 < num_clouds < 2**15 groups the rows: each group is encoded at its own depth and
    ordered as it would be alone, groups in increasing `cloud` along the order. `depth` (num_clouds,)
    when the caller knows it (the bit length of each cloud's largest coordinate + 1).
    """
    if depth is None:
        depth = _depths(grid_coord, cloud, num_clouds)
    code = (cloud << BATCH_SHIFT) | encode_orders(grid_coord, depth[cloud], orders)
    return Serialization(code=code, order=torch.argsort(code, dim=1), depth=depth)
