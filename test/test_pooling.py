"""Grid pooling (parents and coordinates from the plan, features here) and the upcast against numpy."""

from __future__ import annotations

import numpy as np
import torch
from plans import distinct_cells, stage_config

from sonata_model.plan import build_plan
from sonata_model.pooling import GridPooling, linear_upcast, upcast


def random_clouds(counts, extent=12, seed=0):
    """Clouds of distinct voxels (as grid sampling produces) with coordinates inside their voxels."""
    rng = np.random.default_rng(seed)
    grid = np.concatenate([distinct_cells(n, extent, rng) for n in counts])
    coord = grid * 0.1 + rng.uniform(0, 0.1, size=grid.shape)
    batch = np.repeat(np.arange(len(counts)), counts)
    return torch.from_numpy(grid), torch.from_numpy(coord).float(), torch.from_numpy(batch)


def plan_of(counts, stages=3, extent=12, seed=0, origin=False):
    grid, coord, batch = random_clouds(counts, extent, seed)
    origin_coord = coord * 2 + 1 if origin else None
    config = stage_config(stages=stages)
    plan = build_plan(config, coord, grid, batch, len(counts), voxelize=False, origin_coord=origin_coord)
    return plan, grid, coord, batch


def test_pooled_levels_match_numpy_unique_and_means():
    plan, grid, coord, batch = plan_of([300, 7, 180], origin=True)
    level, pooled = plan.levels[0], plan.levels[1]
    parent = np.concatenate([batch.numpy()[:, None], grid.numpy() // 2], axis=1)
    rows, inverse = np.unique(parent, axis=0, return_inverse=True)  # lexicographic rows
    inverse = inverse.ravel()
    assert np.array_equal(pooled.batch.numpy(), rows[:, 0])
    assert np.array_equal(pooled.grid_coord.numpy(), rows[:, 1:])
    assert np.array_equal(pooled.parent.numpy(), inverse)
    assert pooled.offset.tolist() == np.cumsum(np.bincount(rows[:, 0])).tolist()
    assert pooled.counts == tuple(np.bincount(rows[:, 0]).tolist())
    sums = np.zeros((len(rows), 3))
    np.add.at(sums, inverse, coord.numpy())
    means = sums / np.bincount(inverse)[:, None]
    np.testing.assert_allclose(pooled.coord.numpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.origin_coord.numpy(), means * 2 + 1, rtol=1e-5, atol=1e-5)
    assert torch.equal(level.coord, coord) and torch.equal(level.grid_coord, grid)
    # one level further: the mean of the level-1 means (as the reference pools coordinates)
    coarse = plan.levels[2]
    inverse2 = coarse.parent.numpy()
    sums2 = np.zeros((coarse.num_voxels, 3))
    np.add.at(sums2, inverse2, means)
    np.testing.assert_allclose(coarse.coord.numpy(), sums2 / np.bincount(inverse2)[:, None], rtol=1e-5, atol=1e-6)
    assert torch.equal(coarse.grid_coord[coarse.parent], pooled.grid_coord // 2)


def test_grid_pooling_takes_the_max_of_the_projected_children():
    torch.manual_seed(0)
    plan, grid, _, _ = plan_of([300, 7, 180])
    pooled = plan.levels[1]
    feat = torch.randn(len(grid), 5)
    pool = GridPooling(5, 8)
    out = pool(feat, pooled.parent, pooled.capacity)
    with torch.no_grad():
        projected = pool.proj(feat).numpy()
        maxed = np.full((pooled.capacity, 8), -np.inf, dtype=np.float32)
        np.maximum.at(maxed, pooled.parent.numpy(), projected)
        expected = pool.act(pool.norm(torch.from_numpy(maxed))).numpy()
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pooling_keeps_clouds_apart_and_gradients_flow():
    grid, coord, _ = random_clouds([50], extent=4, seed=1)
    grid, coord = torch.cat((grid, grid)), torch.cat((coord, coord))  # the second cloud: the same voxels
    batch = torch.repeat_interleave(torch.arange(2), 50)
    plan = build_plan(stage_config(stages=2), coord, grid, batch, 2, voxelize=False)
    pooled = plan.levels[1]
    first = pooled.counts[0]
    assert torch.equal(pooled.grid_coord[:first], pooled.grid_coord[first:])
    feat = torch.randn(100, 5, requires_grad=True)
    GridPooling(5, 4)(feat, pooled.parent, pooled.capacity).sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0


def plan_levels(counts, channels):
    """Levels (Points) of a plan with random features of `channels` per level."""
    plan, _, _, _ = plan_of(counts, stages=len(channels))
    return plan.points([torch.randn(level.capacity, c) for level, c in zip(plan.levels, channels, strict=True)])


def test_upcast_concatenates_levels_finest_first_through_the_pooling_indices():
    torch.manual_seed(0)
    levels = plan_levels([200], (3, 4, 6))
    feat = upcast(levels)
    assert feat.shape == (200, 3 + 4 + 6)
    inv1 = levels[1].pooling_inverse
    inv2 = levels[2].pooling_inverse[inv1]
    assert torch.equal(feat[:, :3], levels[0].feat)
    assert torch.equal(feat[:, 3:7], levels[1].feat[inv1])
    assert torch.equal(feat[:, 7:], levels[2].feat[inv2])
    stage1 = upcast(levels, start=1)
    assert stage1.shape == (levels[1].num_points, 10)
    assert torch.equal(stage1[inv1], feat[:, 3:])


def test_upcast_of_rows_with_gradients_and_mixed_dtypes_equals_the_full_upcast():
    torch.manual_seed(2)
    levels = plan_levels([150, 90], (4, 8, 4))
    full = upcast(levels)
    rows = torch.tensor([0, 7, 7, 149, 200, 239])
    assert torch.equal(upcast(levels, rows=rows), full[rows])
    for level in levels:  # the autograd path (a cat of gathers) gives the same values
        level.feat.requires_grad_(True)
    with_grad = upcast(levels)
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), full)
    with_grad.square().sum().backward()
    assert all(level.feat.grad is not None for level in levels)
    levels[0].feat = levels[0].feat.detach().bfloat16()  # autocast leaves levels in several dtypes
    with torch.no_grad():
        mixed = upcast(levels)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed[:, 4:], full[:, 4:]) and torch.equal(mixed[:, :4], full[:, :4].bfloat16().float())


def test_linear_upcast_equals_a_linear_map_of_the_upcast():
    torch.manual_seed(1)
    levels = plan_levels([300, 120], (6, 8, 5))
    weight, bias = torch.randn(4, 6 + 8 + 5), torch.randn(4)
    expected = upcast(levels) @ weight.t() + bias
    torch.testing.assert_close(linear_upcast(levels, weight, bias), expected, rtol=1e-5, atol=1e-5)
