"""Grid sampling (the frame plan's level 0): voxels, representatives and the inverse map are right,
batched, and only the valid points take part; voxel keys sort like (level, cloud, x, y, z)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plans import stage_config

from sonata_model.grid import offset_to_batch, pack_keys, unpack_keys, voxel_grid
from sonata_model.plan import EmptyCloudError, build_plan
from sonata_model.train.views import grid_sample_numpy


def cloud(n: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-scale, scale, (n, 3)).astype(np.float32))


def sample(coord: torch.Tensor, counts: list[int], grid_size: float, valid: torch.Tensor | None = None):
    """(level 0 of the plan, voxel of every point) of clouds of `counts` points."""
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    grid = voxel_grid(coord, batch, len(counts), grid_size, valid)
    plan = build_plan(stage_config(), coord, grid, batch, len(counts), voxelize=True, valid=valid, grid_size=grid_size)
    return plan, plan.levels[0]


def test_voxels_inverse_and_representatives_match_numpy():
    coord = cloud(5000, 0)
    plan, level = sample(coord, [5000], 0.25)
    cell = np.floor(coord.numpy() / 0.25).astype(np.int64)
    grid = cell - cell.min(0)
    unique, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    assert level.num_voxels == level.capacity == len(unique) and level.offset.tolist() == [len(unique)]
    assert np.array_equal(level.grid_coord.numpy(), unique)  # ordered by (x, y, z)
    assert np.array_equal(plan.voxel_of_member.numpy(), inverse.ravel())
    assert np.array_equal(plan.representative.numpy(), first)  # lowest input index per voxel
    assert torch.equal(level.coord, coord[plan.representative])


def millimetre_cloud() -> tuple[np.ndarray, np.ndarray]:
    """Millimetre-precision data and its 2 cm cells by the reference's GridSample arithmetic (float64):
    a twentieth of the coordinates lie on cell boundaries, where a float32 division puts points in the
    neighbouring cell."""
    millimetres = np.random.default_rng(4).integers(-3000, 3000, (20000, 3))
    coord = (millimetres * 0.001).astype(np.float32)
    cell = np.floor(coord / np.array(0.02)).astype(np.int64)
    assert (np.floor(coord / np.float32(0.02)).astype(np.int64) != cell).any()  # float32 would fail the tests
    return coord, cell - cell.min(axis=0)


def test_points_on_cell_boundaries_fall_in_the_references_cells():
    coord, expected = millimetre_cloud()
    grid = voxel_grid(torch.from_numpy(coord), torch.zeros(len(coord), dtype=torch.long), 1, 0.02)
    assert np.array_equal(grid.numpy(), expected)


def test_pretraining_grid_sampling_uses_the_references_cells():
    coord, expected = millimetre_cloud()
    index, grid = grid_sample_numpy(coord, 0.02, np.random.default_rng(0))
    assert np.array_equal(grid, expected[index])
    assert len(index) == len(np.unique(expected, axis=0))  # one point per cell


def test_batch_equals_each_cloud_alone():
    a, b = cloud(800, 1), cloud(500, 2, scale=10.0) + 100
    both, level = sample(torch.cat((a, b)), [800, 500], 0.5)
    _, level_a = sample(a, [800], 0.5)
    alone_b, level_b = sample(b, [500], 0.5)
    m = level.counts[0]
    assert level.counts == (level_a.num_voxels, level_b.num_voxels)
    assert level.offset.tolist() == [m, m + level_b.num_voxels]
    assert torch.equal(level.grid_coord[:m], level_a.grid_coord)
    assert torch.equal(level.grid_coord[m:], level_b.grid_coord)
    assert torch.equal(both.representative[m:], alone_b.representative + 800)
    assert torch.equal(both.voxel_of_member[800:], alone_b.voxel_of_member + m)
    assert level.batch.tolist() == [0] * m + [1] * level_b.num_voxels


def test_invalid_points_take_no_part():
    coord = cloud(3000, 3)
    valid = coord[:, 2] > -1.0
    coord[~valid] -= 1000  # far below: they would move the grid's minimum if they took part
    plan, level = sample(coord, [3000], 0.25, valid)
    expected, expected_level = sample(coord[valid], [int(valid.sum())], 0.25)
    assert torch.equal(level.grid_coord, expected_level.grid_coord)
    assert (plan.voxel_of_member[~valid] == -1).all()
    assert torch.equal(plan.voxel_of_member[valid], expected.voxel_of_member)
    assert torch.equal(plan.representative, torch.nonzero(valid).squeeze(1)[expected.representative])
    with pytest.raises(EmptyCloudError) as error:
        sample(coord[:10], [5, 5], 0.25, torch.tensor([True] * 5 + [False] * 5))
    assert error.value.clouds == [1]
    for emptied in ([1], [0, 2]):  # counted per cloud after the empty ones too
        keep = torch.ones(15, dtype=torch.bool)
        for c in emptied:
            keep[5 * c : 5 * c + 5] = False
        with pytest.raises(EmptyCloudError) as error:
            sample(coord[:15], [5, 5, 5], 0.25, keep)
        assert error.value.clouds == emptied
    partly = torch.tensor([True] * 5 + [False] * 3 + [True] * 7)
    _, level = sample(coord[:15], [5, 5, 5], 0.25, partly)
    cells = np.floor(coord[:15].numpy() / 0.25)
    kept = [cells[c * 5 : c * 5 + 5][partly[c * 5 : c * 5 + 5].numpy()] for c in range(3)]
    assert level.counts == tuple(len(np.unique(k, axis=0)) for k in kept) == (5, 2, 5)


def test_clouds_too_large_for_the_grid_are_refused():
    coord = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [7000.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"cloud 1 spans 70001 voxels of 0\.1 along"):
        sample(coord, [2, 2], 0.1)


def test_keys_sort_like_level_cloud_and_coordinates_and_unpack():
    rng = np.random.default_rng(4)
    grid = torch.from_numpy(rng.integers(0, 2**16, (500, 3)))
    cloud_of = torch.from_numpy(rng.integers(0, 400, 500))
    level = torch.from_numpy(rng.integers(0, 7, 500))
    keys = pack_keys(grid, cloud_of, level)
    rows = np.c_[level.numpy(), cloud_of.numpy(), grid.numpy()]
    assert np.array_equal(np.argsort(keys.numpy(), kind="stable"), np.lexsort(rows.T[::-1]))
    unpacked_grid, unpacked_cloud = unpack_keys(keys)
    assert torch.equal(unpacked_grid, grid) and torch.equal(unpacked_cloud, cloud_of)
    assert offset_to_batch(torch.tensor([2, 2, 5])).tolist() == [0, 0, 2, 2, 2]


def test_a_fixed_origin_makes_a_voxels_grid_coordinate_independent_of_the_other_points():
    """With `origin`, a point's grid coordinate is floor(coord / g) - floor(origin / g) in every cloud,
    whatever else the cloud holds (without it, the cloud's minimum moves every coordinate)."""
    coord = torch.tensor([[0.26, 1.0, -0.05], [3.0, -2.0, 0.5], [-7.3, 0.4, 0.1]])
    origin = (-10.0, -10.0, -1.0)
    expected = torch.tensor([[20, 22, 1], [26, 16, 3]])  # floor(c / 0.5) - (-20, -20, -2)
    for rows in (3, 2):  # with and without the third point
        batch = torch.zeros(rows, dtype=torch.long)
        assert torch.equal(voxel_grid(coord[:rows], batch, 1, 0.5, origin=origin)[:2], expected)
    moved = voxel_grid(coord[:2], torch.zeros(2, dtype=torch.long), 1, 0.5)
    assert not torch.equal(moved, expected)  # each cloud's minimum: (0, 6, 0), (6, 0, 2)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_a_cloud_within_one_voxel_is_one_voxel_at_every_level(stages):
    """A level's first key starts a voxel even when every key of the level is equal (one voxel) and the
    plan has no other level to compare it with."""
    coord = torch.tensor([[0.01, 0.02, 0.03], [0.02, 0.01, 0.04], [0.03, 0.03, 0.01]])  # one 0.1 cell
    batch = torch.zeros(3, dtype=torch.long)
    grid = voxel_grid(coord, batch, 1, 0.1)
    plan = build_plan(stage_config(stages=stages), coord, grid, batch, 1, voxelize=True, grid_size=0.1)
    assert [level.num_voxels for level in plan.levels] == [1] * stages
    assert plan.voxel_of_member.tolist() == [0, 0, 0] and plan.representative.tolist() == [0]
    assert torch.allclose(plan.levels[-1].coord, coord[:1])
