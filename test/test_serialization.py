"""Serialization codes equal slow, obviously-correct references: bit interleaving and Skilling's Hilbert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonata_model.profiling import count_ops
from sonata_model.serialization import ORDERS, encode, encode_orders, serialize


def z_reference(x: int, y: int, z: int, depth: int) -> int:
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return code


def hilbert_reference(coords: tuple[int, int, int], depth: int) -> int:
    """Skilling (2004), 'Programming the Hilbert curve': AxesToTranspose, then the transpose read
    bit level by bit level (x most significant), in plain Python integers."""
    x = list(coords)
    m = 1 << (depth - 1)
    q = m
    while q > 1:  # inverse undo
        p = q - 1
        for i in range(3):
            if x[i] & q:
                x[0] ^= p
            else:
                t = (x[0] ^ x[i]) & p
                x[0] ^= t
                x[i] ^= t
        q >>= 1
    for i in range(1, 3):  # Gray encode
        x[i] ^= x[i - 1]
    t, q = 0, m
    while q > 1:
        if x[2] & q:
            t ^= q - 1
        q >>= 1
    x = [v ^ t for v in x]
    index = 0
    for level in range(depth - 1, -1, -1):
        for i in range(3):
            index = (index << 1) | ((x[i] >> level) & 1)
    return index


@pytest.mark.parametrize("depth", range(1, 17))
def test_codes_equal_the_references_at_every_depth(depth):
    rng = np.random.default_rng(depth)
    grid = rng.integers(0, 2**depth, size=(60, 3))
    tensor = torch.from_numpy(grid)
    for order in ORDERS:
        swapped = grid[:, [1, 0, 2]] if order.endswith("-trans") else grid
        reference = z_reference if order.startswith("z") else lambda x, y, z, d: hilbert_reference((x, y, z), d)
        expected = [reference(int(a), int(b), int(c), depth) for a, b, c in swapped]
        assert encode(tensor, depth, order).tolist() == expected, order
        assert encode(tensor, torch.tensor(depth), order).tolist() == expected, order  # one depth as a 0-dim tensor


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_visits_every_cell_once_through_face_neighbours(depth):
    side = 2**depth
    cells = torch.cartesian_prod(*(torch.arange(side),) * 3)
    for order in ("hilbert", "hilbert-trans"):
        code = encode(cells, depth, order)
        assert sorted(code.tolist()) == list(range(side**3))
        walk = cells[torch.argsort(code)]
        assert torch.all((walk[1:] - walk[:-1]).abs().sum(dim=1) == 1)


def test_batch_serializes_each_cloud_as_alone_and_orders_invert():
    rng = np.random.default_rng(0)

    def distinct_cells(count: int, side: int) -> torch.Tensor:  # voxels are unique, as after grid sampling
        cells = rng.choice(side**3, size=count, replace=False)
        return torch.from_numpy(np.stack(np.unravel_index(cells, (side,) * 3), axis=1))

    small = distinct_cells(200, 6)  # depth 3
    large = distinct_cells(300, 900)  # depth 10
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([200, 300]))
    both = serialize(torch.cat((small, large)), batch, 2, ORDERS)
    assert both.depth.tolist() == [3, 10]
    for k, order in enumerate(ORDERS):
        alone_small = encode(small, 3, order)
        alone_large = encode(large, 10, order)
        assert torch.equal(both.code[k, :200] & ((1 << 48) - 1), alone_small)
        assert torch.equal(both.code[k, 200:] & ((1 << 48) - 1), alone_large)
        assert torch.equal(both.order[k, :200], torch.argsort(alone_small))
        assert torch.equal(both.order[k, 200:], torch.argsort(alone_large) + 200)
        assert torch.all(torch.diff(both.code[k][both.order[k]]) > 0)


def test_per_point_depths_in_one_call_equal_the_references():
    rng = np.random.default_rng(7)
    depth = rng.integers(1, 17, size=300)
    grid = rng.integers(0, 2**16, size=(300, 3)) % (2**depth)[:, None]
    codes = encode_orders(torch.from_numpy(grid), torch.from_numpy(depth), ORDERS)
    for k, order in enumerate(ORDERS):
        swapped = grid[:, [1, 0, 2]] if order.endswith("-trans") else grid
        if order.startswith("z"):
            expected = [z_reference(*map(int, c), int(d)) for c, d in zip(swapped, depth, strict=True)]
        else:
            expected = [hilbert_reference(tuple(map(int, c)), int(d)) for c, d in zip(swapped, depth, strict=True)]
        assert codes[k].tolist() == expected, order


def test_serialization_is_a_few_dozen_ops_and_never_syncs():
    """A GPU pays a launch per op: 10k points along all four curves in < 80 aten ops (a Python loop over
    Hilbert levels and axes took ~1,400), and nothing that makes the host wait for the device."""
    rng = np.random.default_rng(1)
    grid = torch.from_numpy(rng.integers(0, 3000, size=(10_000, 3)))
    batch = (torch.arange(10_000) >= 4_000).long()
    serialize(grid, batch, 2, ORDERS)  # lookup tables are built on first use
    with count_ops(forbid_syncs=True) as counts:
        serialize(grid, batch, 2, ORDERS)
    assert counts.total <= 80, counts.ops
    with count_ops(forbid_syncs=True) as counts:
        encode(grid, 12, "hilbert")
    assert counts.total <= 45, counts.ops


def test_depth_follows_the_reference_rule_and_is_capped():
    def depths(grid, cloud):
        return serialize(torch.tensor(grid), torch.tensor(cloud), max(cloud) + 1, ("z",)).depth.tolist()

    grid = torch.tensor([[7, 0, 0], [0, 8, 0]])
    assert depths([[7, 0, 0], [0, 8, 0]], [0, 1]) == [4, 4]  # bit_length(max + 1)
    assert depths([[6, 0, 0]], [0]) == [3]
    assert depths([[1, 1, 1], [65534, 0, 0]], [0, 1]) == [2, 16]
    with pytest.raises(RuntimeError, match="grid coordinates must be below 65535"):
        depths([[1, 1, 1], [65535, 0, 0]], [0, 1])
    with pytest.raises(RuntimeError, match="grid coordinates must be below 65535"):
        serialize(torch.tensor([[1, 1, 1], [0, 0, 70000]]), torch.tensor([0, 1]), 2, ORDERS)
    with pytest.raises(ValueError, match="unknown serialization order"):
        encode(grid, 4, "peano")
