"""The encoder and Segmenter end to end on a small config: transform, determinism, batching, labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scenes import room

import sonata_model as sm
from sonata_model.normals import estimate_normals
from sonata_model.pooling import upcast
from sonata_model.profiling import count_ops


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    encoder = sm.SonataEncoder(sm.get_config("tiny", grid_size=0.05))
    # Non-zero biases and norms so that every parameter influences the output.
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    head = sm.LinearHead(encoder.config.head_channels, 3)
    return sm.Segmenter(encoder, head, device="cpu")


def reference_transform(coord, color, normal, grid_size):
    """The reference inference transform in numpy (CenterShift, GridSample, NormalizeColor, Collect),
    keeping the first point of each voxel."""
    coord = coord.astype(np.float64)
    low, high = coord.min(0), coord.max(0)
    shifted = coord - np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
    grid = np.floor(shifted / grid_size).astype(np.int64)
    grid -= grid.min(0)
    _, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    feat = np.concatenate([shifted[first], color[first] / 255.0, normal[first]], axis=1)
    return grid[first], feat, first, inverse.ravel()


def test_input_transform_matches_the_reference(tiny):
    scene = room(2000)
    prepared = tiny.prepare([sm.Cloud(scene["coord"], scene["color"], scene["normal"])])
    point, index, inverse_map = prepared.point, prepared.voxel_index, prepared.voxel_of_point
    grid, feat, first, inverse = reference_transform(scene["coord"], scene["color"], scene["normal"], 0.05)
    order = np.lexsort(point.grid_coord.numpy().T[::-1])  # compare voxel sets independent of order
    ref_order = np.lexsort(grid.T[::-1])
    assert np.array_equal(point.grid_coord.numpy()[order], grid[ref_order])
    assert np.array_equal(index.numpy()[order], first[ref_order])
    np.testing.assert_allclose(point.feat.numpy()[order], feat[ref_order], rtol=0, atol=2e-6)
    # the inverse map sends each point to its own voxel
    assert np.array_equal(point.grid_coord.numpy()[inverse_map.numpy()], grid[inverse])


def test_levels_have_configured_channels_and_shrink(tiny):
    scene = room(3000)
    point = tiny.prepare([sm.Cloud(scene["coord"], scene["color"], scene["normal"])]).point
    with torch.inference_mode():
        levels = tiny.encoder(point)
    config = tiny.config
    assert [level.feat.shape[1] for level in levels] == list(config.enc_channels)
    counts = [level.num_points for level in levels]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    for fine, coarse in itertools.pairwise(levels):
        assert torch.equal(coarse.grid_coord[coarse.pooling_inverse], fine.grid_coord // 2)
    assert upcast(levels).shape == (counts[0], config.head_channels)


def test_every_input_point_gets_the_label_of_its_voxel(tiny):
    scene = room(3000, seed=1)
    out = tiny(scene["coord"], color=scene["color"], normal=scene["normal"])
    n = len(scene["coord"])
    assert out.labels.shape == (n,) and out.probability.shape == (n,)
    assert out.embedding.shape == (out.voxel_index.shape[0], tiny.config.head_channels)
    with torch.no_grad():
        logits = tiny.head(torch.from_numpy(out.embedding))
    probability, labels = torch.softmax(logits, 1).max(1)
    assert np.array_equal(out.labels, labels.numpy()[out.voxel_of_point])
    np.testing.assert_allclose(out.probability, probability.numpy()[out.voxel_of_point], rtol=1e-6)
    assert len(np.unique(out.labels)) > 1  # a random head still separates the surfaces somewhat
    assert set(out.timings_ms) == {"prepare", "voxelize", "encoder", "head"}


def test_a_result_copies_its_per_point_arrays_from_the_device_once(tiny):
    """Each copy from a GPU makes the host wait: labels, probabilities and the voxel maps are copied on
    first read and kept; the voxel count needs no copy."""
    scene = room(2000, seed=3)
    out = tiny(scene["coord"], color=scene["color"], normal=scene["normal"])
    names = ("labels", "probability", "voxel_of_point", "voxel_index")
    with count_ops() as reads:
        first = [getattr(out, name) for name in names]
        again = [getattr(out, name) for name in names]
        assert out.num_voxels == len(out.voxel_index)
    assert reads.syncs["copy_to_host"] == len(names)
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_the_most_likely_class_is_softmaxs_largest_entry_ties_to_the_first():
    logits = torch.randn(5000, 13, generator=torch.Generator().manual_seed(0)) * 8
    logits[:50, 4] = logits[:50, 9] = logits[:50].max(dim=1).values + 1  # ties: the first class wins
    logits[50:60] += 1e4  # large logits do not overflow
    for dtype in (torch.float32, torch.bfloat16):
        probability, label = sm.segmenter.most_likely(logits.to(dtype))
        expected_probability, expected_label = torch.softmax(logits.to(dtype).float(), dim=1).max(dim=1)
        assert torch.equal(label, expected_label) and (label[:50] == 4).all()
        torch.testing.assert_close(probability, expected_probability, rtol=1e-6, atol=0)


def test_inference_is_bit_identical_twice(tiny):
    scene = room(3000, seed=2)
    first = tiny(scene["coord"], color=scene["color"], normal=scene["normal"])
    second = tiny(scene["coord"], color=scene["color"], normal=scene["normal"])
    assert np.array_equal(first.embedding, second.embedding)
    assert np.array_equal(first.labels, second.labels)


def test_batch_of_two_clouds_equals_each_alone(tiny):
    a, b = room(2500, seed=3), room(1200, seed=4)
    b["coord"] = b["coord"] * 1.7 + 5  # different extent: different serialization depth
    clouds = [sm.Cloud(s["coord"], s["color"], s["normal"]) for s in (a, b)]
    together = tiny.segment_batch(clouds)
    for cloud, batched in zip(clouds, together, strict=True):
        alone = tiny.segment_batch([cloud])[0]
        np.testing.assert_allclose(batched.embedding, alone.embedding, rtol=1e-4, atol=1e-5)
        assert np.array_equal(batched.voxel_of_point, alone.voxel_of_point)
        assert np.mean(batched.labels == alone.labels) > 0.999


def test_embeddings_only_without_head_and_lidar_features():
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.1, coord_scale=0.2)
    seg = sm.Segmenter(sm.SonataEncoder(config), None, device="cpu")
    rng = np.random.default_rng(0)
    coord = rng.uniform(-20, 20, (4000, 3)).astype(np.float32)
    out = seg(coord, strength=rng.uniform(0, 1, 4000).astype(np.float32))
    assert out.labels is None and out.probability is None
    assert out.embedding.shape[1] == config.head_channels
    with pytest.raises(ValueError, match="needs strength"):
        seg(coord)


def test_bad_inputs_fail_with_clear_messages(tiny):
    scene = room(500)
    bad = scene["coord"].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny(bad, color=scene["color"], normal=scene["normal"])
    with pytest.raises(ValueError, match="needs colour"):
        tiny(scene["coord"], normal=scene["normal"])
    with pytest.raises(ValueError, match="empty"):
        tiny(np.zeros((0, 3), np.float32), color=np.zeros((0, 3)), normal=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="head reads"):
        sm.Segmenter(tiny.encoder, sm.LinearHead(10, 2), device="cpu")
    normal = scene["normal"].copy()
    normal[7] = np.nan  # PCL's mark for a normal it could not estimate: it would spread through attention
    with pytest.raises(ValueError, match="normal of 1 points is NaN or inf"):
        tiny(scene["coord"], color=scene["color"], normal=normal)
    with pytest.raises(ValueError, match=r"color must be \(\d+, 3\), got \(3, \d+\)"):  # not reshaped
        tiny(scene["coord"], color=scene["color"].T.copy(), normal=scene["normal"])
    with pytest.raises(ValueError, match=r"0-1 \(Open3D's scale\): x 255"):
        tiny(scene["coord"], color=scene["color"] / 255.0, normal=scene["normal"])
    tiny(scene["coord"], color=scene["color"].astype(np.float32), normal=scene["normal"])  # floats in 0-255: fine
    with pytest.raises(ValueError, match=r"viewpoint must be \(3,\) or \(\d+, 3\), got \(2, 3\)"):
        tiny(scene["coord"], color=scene["color"], viewpoint=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no cloud to segment"):
        tiny.segment_batch([])


def voxel_normals(coord: np.ndarray, grid: float, viewpoint) -> np.ndarray:
    """Normals estimated on the voxels of one cloud (as the Segmenter does), by voxel."""
    coord_t = torch.from_numpy(coord)
    grid_coord = torch.floor(coord_t / grid).long()
    grid_coord -= grid_coord.min(0).values
    batch = torch.zeros(len(coord), dtype=torch.long)
    viewpoints = torch.tensor([viewpoint], dtype=torch.float32).expand(len(coord), 3)
    return estimate_normals(coord_t, grid_coord, batch, viewpoints).numpy()


def test_estimated_normals_are_surface_normals_facing_the_sensor():
    rng = np.random.default_rng(0)
    ceiling = np.c_[rng.uniform(-1, 1, (3000, 2)), np.full(3000, 2.0)].astype(np.float32)
    normal = voxel_normals(ceiling, 0.05, [0, 0, 0])  # sensor below: normals point down
    np.testing.assert_allclose(normal, np.tile([0, 0, -1], (3000, 1)), atol=1e-3)
    # a sensor mounted above the ceiling (a non-identity extrinsic: viewpoint at its position) flips them
    np.testing.assert_allclose(voxel_normals(ceiling, 0.05, [0.3, -0.2, 5.0]), np.tile([0, 0, 1], (3000, 1)), atol=1e-3)
    direction = rng.normal(size=(20000, 3))
    sphere = (direction / np.linalg.norm(direction, axis=1, keepdims=True) * 3).astype(np.float32)
    normal = voxel_normals(sphere, 0.1, [0, 0, 0])
    cosine = np.einsum("ni,ni->n", normal, -sphere / 3)  # sensor at the centre: normals point inwards
    assert np.quantile(cosine, 0.01) > 0.97
    lonely = voxel_normals(np.array([[0, 0, 0], [5, 5, 5]], np.float32), 0.05, [0, 0, 1])
    assert not lonely.any()  # no neighbours: zero normals ("missing")


def test_segmenter_estimates_normals_on_voxels_facing_the_cloud_viewpoint(tiny):
    rng = np.random.default_rng(1)
    floor = np.c_[rng.uniform(0, 2, (4000, 2)), np.zeros(4000)].astype(np.float32)
    colour = np.full((4000, 3), 128, np.uint8)
    above = tiny.prepare([sm.Cloud(floor, colour, viewpoint=np.array([1.0, 1.0, 1.5]))]).point
    below = tiny.prepare([sm.Cloud(floor, colour, viewpoint=np.array([1.0, 1.0, -1.5]))]).point
    np.testing.assert_allclose(above.feat[:, 8].numpy(), 1.0, atol=1e-3)  # normal z, feature columns 6:9
    np.testing.assert_allclose(below.feat[:, 8].numpy(), -1.0, atol=1e-3)
    given = tiny.prepare(
        [sm.Cloud(floor, colour, normal=np.tile([0.0, 1.0, 0.0], (4000, 1))), sm.Cloud(floor, colour)]
    ).point
    first = given.offset[0]
    assert (given.feat[:first, 7] == 1).all()  # a cloud that brings normals keeps them ...
    np.testing.assert_allclose(given.feat[first:, 8].numpy(), 1.0, atol=1e-3)  # ... the other gets estimates


def test_merged_clouds_estimate_each_point_s_normal_facing_its_own_sensor(tiny):
    """A per-point (N, 3) viewpoint, as a multi-LiDAR node passes: each half of one floor faces its own
    sensor, one above and one below."""
    rng = np.random.default_rng(2)
    floor = np.c_[rng.uniform(0, 4, (6000, 2)), np.zeros(6000)].astype(np.float32)
    left = floor[:, 0] < 2
    viewpoint = np.where(left[:, None], [1.0, 2.0, 1.5], [3.0, 2.0, -1.5]).astype(np.float32)
    prepared = tiny.prepare([sm.Cloud(floor, np.full((6000, 3), 128, np.uint8), viewpoint=viewpoint)])
    normal_z = prepared.point.feat[:, 8].numpy()
    kept_left = left[prepared.voxel_index.numpy()]
    edge = np.abs(floor[prepared.voxel_index.numpy(), 0] - 2) < 0.1  # voxels whose neighbours mix the sensors
    np.testing.assert_allclose(normal_z[kept_left & ~edge], 1.0, atol=1e-3)
    np.testing.assert_allclose(normal_z[~kept_left & ~edge], -1.0, atol=1e-3)


def test_missing_normals_follow_the_normals_option(tiny):
    scene = room(6000, seed=5)
    estimated = tiny.prepare([sm.Cloud(scene["coord"], scene["color"])]).point
    length = np.linalg.norm(estimated.feat[:, 6:].numpy(), axis=1)
    assert np.mean(np.abs(length - 1) < 1e-3) > 0.95  # unit vectors, but for isolated voxels (zeros)
    zeros = sm.Segmenter(tiny.encoder, tiny.head, device="cpu", normals="zeros")
    point = zeros.prepare([sm.Cloud(scene["coord"], scene["color"])]).point
    assert not point.feat[:, 6:].any()


def test_train_mode_runs_with_gradients_to_every_parameter():
    torch.manual_seed(0)
    encoder = sm.SonataEncoder(sm.get_config("tiny", grid_size=0.05, drop_path=0.2)).train()
    seg = sm.Segmenter(encoder, None, device="cpu")
    scene = room(2000)
    point = seg.prepare([sm.Cloud(scene["coord"], scene["color"], scene["normal"])]).point
    encoder.train()
    point.mask = torch.rand(point.num_points) < 0.3
    upcast(encoder(point)).square().mean().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_projected_embeddings_and_rows_equal_the_full_upcast_without_building_it(tiny):
    scene = room(3000, seed=2)
    out = tiny(scene["coord"], color=scene["color"], normal=scene["normal"])
    weight, bias = torch.randn(8, tiny.config.head_channels), torch.randn(8)
    projected = out.project_embedding(weight, bias)
    rows = out.embedding_rows(torch.tensor([0, 5, 17]))
    assert out._features._full is None  # neither built the (M, C) upcast
    full = out.embedding_tensor
    torch.testing.assert_close(projected, full @ weight.T + bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows, full[[0, 5, 17]])


def test_the_mlp_runs_gelu_in_place_at_inference_only():
    """Inference applies GELU in place on fc1's own output (one buffer of rows x 4C fewer per block);
    with autograd the out-of-place GELU keeps fc1's output for the backward. Same values either way."""
    torch.manual_seed(0)
    mlp = sm.encoder.MLP(8, 32)
    x = torch.randn(50, 8)
    with torch.inference_mode(), count_ops() as inference:
        fast = mlp(x)
    with count_ops() as training:
        slow = mlp(x)
    assert inference.ops["aten.gelu_"] == 1 and "aten.gelu" not in inference.ops
    assert training.ops["aten.gelu"] == 1 and "aten.gelu_" not in training.ops
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    slow.sum().backward()
    assert mlp.fc1.weight.grad is not None and torch.isfinite(mlp.fc1.weight.grad).all()
