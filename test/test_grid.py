"""Grid sampling: voxels, representatives and the inverse map are right, batched and seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonata_model.grid import grid_sample, offset_to_batch


def cloud(n: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-scale, scale, (n, 3)).astype(np.float32))


def test_voxels_inverse_and_representatives_match_numpy():
    coord = cloud(5000, 0)
    out = grid_sample(coord, torch.tensor([5000]), 0.25)
    cell = np.floor(coord.numpy() / 0.25).astype(np.int64)
    grid = cell - cell.min(0)
    unique, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    assert out.grid_coord.shape[0] == len(unique) and out.offset.tolist() == [len(unique)]
    assert np.array_equal(out.grid_coord.numpy(), unique)  # ordered by (x, y, z)
    assert np.array_equal(out.inverse.numpy(), inverse.ravel())
    assert np.array_equal(out.index.numpy(), first)  # lowest input index per voxel
    assert np.array_equal(grid[out.index.numpy()], out.grid_coord.numpy())


def test_random_representatives_are_members_seeded_and_uniform():
    coord = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.03, 0.03, 0.03], [5.0, 5.0, 5.0]])
    offset = torch.tensor([4])
    picks = [int(grid_sample(coord, offset, 1.0, torch.Generator().manual_seed(s)).index[0]) for s in range(300)]
    counts = np.bincount(picks, minlength=3)
    assert set(picks) == {0, 1, 2} and counts.min() > 60  # each member ~100 times
    again = [int(grid_sample(coord, offset, 1.0, torch.Generator().manual_seed(s)).index[0]) for s in range(300)]
    assert picks == again
    out = grid_sample(coord, offset, 1.0, torch.Generator().manual_seed(1))
    assert int(out.index[1]) == 3 and out.inverse.tolist() == [0, 0, 0, 1]


def test_batch_equals_each_cloud_alone():
    a, b = cloud(800, 1), cloud(500, 2, scale=10.0) + 100
    both = grid_sample(torch.cat((a, b)), torch.tensor([800, 1300]), 0.5)
    alone_a = grid_sample(a, torch.tensor([800]), 0.5)
    alone_b = grid_sample(b, torch.tensor([500]), 0.5)
    m = int(both.offset[0])
    assert both.offset.tolist() == [m, m + alone_b.grid_coord.shape[0]]
    assert torch.equal(both.grid_coord[:m], alone_a.grid_coord)
    assert torch.equal(both.grid_coord[m:], alone_b.grid_coord)
    assert torch.equal(both.index[m:], alone_b.index + 800)
    assert torch.equal(both.inverse[800:], alone_b.inverse + m)
    assert offset_to_batch(torch.tensor([2, 2, 5])).tolist() == [0, 0, 2, 2, 2]


def test_clouds_too_large_for_the_grid_are_refused():
    coord = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [7000.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"cloud 1 spans 70001 voxels of 0\.1 along"):
        grid_sample(coord, torch.tensor([2, 4]), 0.1)


def test_a_fixed_origin_makes_a_voxels_grid_coordinate_independent_of_the_other_points():
    """With `origin`, a point's grid coordinate is floor(coord / g) - floor(origin / g) in every cloud,
    whatever else the cloud holds (without it, the cloud's minimum moves every coordinate)."""
    coord = torch.tensor([[0.26, 1.0, -0.05], [3.0, -2.0, 0.5], [-7.3, 0.4, 0.1]])
    origin = (-10.0, -10.0, -1.0)
    full = grid_sample(coord, torch.tensor([3]), 0.5, origin=origin)
    alone = grid_sample(coord[:2], torch.tensor([2]), 0.5, origin=origin)
    expected = torch.tensor([[20, 22, 1], [26, 16, 3]])  # floor(c / 0.5) - (-20, -20, -2)
    assert torch.equal(alone.grid_coord, expected)
    assert torch.equal(full.grid_coord[full.inverse[:2]], expected)
    moved = grid_sample(coord[:2], torch.tensor([2]), 0.5)
    assert not torch.equal(moved.grid_coord, expected)  # each cloud's minimum: (0, 6, 0), (6, 0, 2)
