"""Grid pooling and upcast against plain numpy references."""

from __future__ import annotations

import numpy as np
import torch

from sonata_model.point import Point
from sonata_model.pooling import GridPooling, copy_down, linear_upcast, upcast


def random_level(counts, channels=5, extent=12, seed=0) -> Point:
    """Clouds of distinct voxels (as grid sampling produces), random features and coordinates."""
    rng = np.random.default_rng(seed)
    grids, coords = [], []
    for n in counts:
        cells = rng.choice(extent**3, size=n, replace=False)
        grid = np.stack(np.unravel_index(cells, (extent,) * 3), axis=1)
        grids.append(grid)
        coords.append(grid * 0.1 + rng.uniform(0, 0.1, size=grid.shape))
    grid = torch.as_tensor(np.concatenate(grids), dtype=torch.int64)
    return Point(
        coord=torch.as_tensor(np.concatenate(coords), dtype=torch.float32),
        grid_coord=grid,
        feat=torch.as_tensor(rng.normal(size=(len(grid), channels)), dtype=torch.float32),
        offset=torch.as_tensor(np.cumsum(counts)),
    )


def test_grid_pooling_matches_numpy_reference():
    torch.manual_seed(0)
    level = random_level([300, 7, 180])
    pool = GridPooling(5, 8)
    pooled = pool(level)

    batch = level.batch.numpy()
    parent = np.concatenate([batch[:, None], level.grid_coord.numpy() // 2], axis=1)
    expected_rows, expected_inverse = np.unique(parent, axis=0, return_inverse=True)  # lexicographic rows
    assert np.array_equal(pooled.batch.numpy(), expected_rows[:, 0])
    assert np.array_equal(pooled.grid_coord.numpy(), expected_rows[:, 1:])
    assert np.array_equal(pooled.pooling_inverse.numpy(), expected_inverse.ravel())
    assert pooled.offset.tolist() == np.cumsum(np.bincount(expected_rows[:, 0])).tolist()

    with torch.no_grad():
        projected = pool.proj(level.feat).numpy()
        maxed = np.full((len(expected_rows), 8), -np.inf, dtype=np.float32)
        np.maximum.at(maxed, expected_inverse.ravel(), projected)
        expected_feat = pool.act(pool.norm(torch.from_numpy(maxed))).numpy()
    np.testing.assert_allclose(pooled.feat.detach().numpy(), expected_feat, rtol=1e-5, atol=1e-6)

    sums = np.zeros((len(expected_rows), 3))
    np.add.at(sums, expected_inverse.ravel(), level.coord.numpy())
    means = sums / np.bincount(expected_inverse.ravel())[:, None]
    np.testing.assert_allclose(pooled.coord.numpy(), means, rtol=1e-5, atol=1e-6)


def test_pooling_keeps_clouds_apart_and_gradients_flow():
    level = random_level([50, 50], extent=4, seed=1)
    level.grid_coord[50:] = level.grid_coord[:50]  # second cloud occupies the same voxels
    level.feat.requires_grad_(True)
    pooled = GridPooling(5, 4)(level)
    first = int(pooled.offset[0])
    assert torch.equal(pooled.grid_coord[:first], pooled.grid_coord[first:])
    pooled.feat.sum().backward()
    assert level.feat.grad is not None and level.feat.grad.abs().sum() > 0


def test_upcast_concatenates_levels_finest_first_through_the_pooling_indices():
    torch.manual_seed(0)
    levels = [random_level([200], channels=3)]
    for channels in (4, 6):
        pooled = GridPooling(levels[-1].feat.shape[1], channels)(levels[-1])
        pooled.feat = pooled.feat.detach()
        levels.append(pooled)
    feat = upcast(levels)
    assert feat.shape == (200, 3 + 4 + 6)
    inv1 = levels[1].pooling_inverse
    inv2 = levels[2].pooling_inverse[inv1]
    assert torch.equal(feat[:, :3], levels[0].feat)
    assert torch.equal(feat[:, 3:7], levels[1].feat[inv1])
    assert torch.equal(feat[:, 7:], levels[2].feat[inv2])
    stage1 = upcast(levels, start=1)
    assert stage1.shape == (levels[1].num_points, 10)
    assert torch.equal(copy_down(stage1, levels, 1), feat[:, 3:])


def test_linear_upcast_equals_a_linear_map_of_the_upcast():
    torch.manual_seed(1)
    levels = [random_level([300, 120], channels=6)]
    for channels in (8, 5):
        pooled = GridPooling(levels[-1].feat.shape[1], channels)(levels[-1])
        pooled.feat = pooled.feat.detach()
        levels.append(pooled)
    weight, bias = torch.randn(4, 6 + 8 + 5), torch.randn(4)
    expected = upcast(levels) @ weight.t() + bias
    torch.testing.assert_close(linear_upcast(levels, weight, bias), expected, rtol=1e-5, atol=1e-5)
