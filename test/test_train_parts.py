"""Each piece of the self-distillation recipe against its definition."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sonata_model.configs import get_config
from sonata_model.domains import OUTDOOR_RANGE, InputTransform
from sonata_model.io.frame import Frame
from sonata_model.profiling import count_ops
from sonata_model.train import augment
from sonata_model.train.distill import DistillConfig, SonataDistiller, cube_mask
from sonata_model.train.heads import PrototypeHead
from sonata_model.train.matching import match_points
from sonata_model.train.optim import layer_decay_groups
from sonata_model.train.schedules import CosineSchedule, warmup_then_constant
from sonata_model.train.sinkhorn import sinkhorn_knopp
from sonata_model.train.views import ViewConfig, make_views


def test_sinkhorn_balances_prototypes_and_normalises_samples():
    scores = torch.rand(500, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # cosine similarities
    q = sinkhorn_knopp(scores, temperature=0.05, iterations=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(500))  # every sample one unit of mass
    torch.testing.assert_close(q.sum(dim=0), torch.full((64,), 500 / 64), rtol=1e-3, atol=1e-3)  # balanced
    few = sinkhorn_knopp(scores, temperature=0.05, iterations=3)  # the recipe's 3 iterations: rows exact
    torch.testing.assert_close(few.sum(dim=1), torch.ones(500))
    assert (few >= 0).all()


def test_sinkhorn_on_a_device_makes_the_host_wait_for_nothing():
    """`meta` stands for a GPU here (shapes and devices only): mid-step, a blocking upload would stall
    the host until the device drained its queue."""
    with count_ops(forbid_syncs=True):
        q = sinkhorn_knopp(torch.empty(500, 64, device="meta"), temperature=0.05)
    assert q.device.type == "meta" and q.shape == (500, 64)


def test_matching_equals_brute_force_per_cloud_with_a_radius():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.rand(300, 3, generator=generator) * 4, torch.rand(250, 3, generator=generator) * 4
    q_offset, k_offset = torch.tensor([100, 300]), torch.tensor([120, 250])
    pairs = match_points(query, q_offset, key, k_offset, max_distance=0.3, key_cloud=[1, 0])
    expected = []
    for b, k in ((0, 1), (1, 0)):
        q0, q1 = (0, 100) if b == 0 else (100, 300)
        k0, k1 = (0, 120) if k == 0 else (120, 250)
        for i in range(q0, q1):
            d = [math.dist(query[i].tolist(), key[j].tolist()) for j in range(k0, k1)]
            j = int(np.argmin(d))
            if d[j] < 0.3:
                expected.append((i, k0 + j))
    assert [tuple(p) for p in pairs.tolist()] == expected


def test_schedules_hit_their_endpoints():
    warm = warmup_then_constant(0.04, 0.07, total_steps=100, warmup_ratio=0.05)
    assert warm(0) == pytest.approx(0.04) and warm(4) == pytest.approx(0.07) and warm(99) == pytest.approx(0.07)
    momentum = CosineSchedule(0.994, 1.0, total_steps=100)
    assert momentum(0) == pytest.approx(0.994) and momentum(100) == 1.0 and 0.994 < momentum(50) < 1.0
    assert momentum(50) == pytest.approx(0.997)
    assert all(momentum(i) <= momentum(i + 1) for i in range(99))


def test_layer_decay_gives_earlier_blocks_smaller_rates():
    config = get_config("tiny", enc_depths=(1, 1, 1, 2, 1))
    model = SonataDistiller(
        config, DistillConfig(head_hidden_channels=32, head_embed_channels=16, head_num_prototypes=16)
    ).student
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, depths=config.enc_depths)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate_of[id(named["backbone.enc.enc4.block0.attn.qkv.weight"])] == 1.0  # last block: full rate
    assert rate_of[id(named["backbone.enc.enc3.block0.attn.qkv.weight"])] == 0.25
    assert rate_of[id(named["backbone.enc.enc0.block0.attn.qkv.weight"])] == 0.5**5
    assert rate_of[id(named["backbone.embedding.stem.linear.weight"])] == 1.0
    assert rate_of[id(named["mask_head.mlp.0.weight"])] == 1.0


def test_teacher_is_an_ema_of_the_student():
    model = SonataDistiller(
        get_config("tiny"), DistillConfig(head_hidden_channels=32, head_embed_channels=16, head_num_prototypes=16)
    )
    student = model.student["backbone"].embedding.stem.linear.weight
    teacher = model.teacher["backbone"].embedding.stem.linear.weight
    assert torch.equal(student, teacher)
    assert model.teacher["backbone"].config.drop_path == 0.0
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        student.add_(1.0)
    before = teacher.clone()
    model.update_teacher(0.9)
    torch.testing.assert_close(teacher, 0.9 * before + 0.1 * student)


def test_prototype_head_outputs_cosine_similarities():
    head = PrototypeHead(10, hidden_channels=32, embed_channels=8, num_prototypes=12)
    scores = head(torch.randn(50, 10))
    assert scores.shape == (50, 12) and scores.abs().max() <= 1.0 + 1e-5
    weight = head.prototype.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(12))


def test_cube_mask_masks_the_configured_fraction_of_cubes():
    torch.manual_seed(0)
    coord = torch.rand(20000, 3) * 4
    offset = torch.tensor([10000, 20000])
    mask = cube_mask(coord, offset, size=0.5, ratio=0.3)
    cells = torch.div(coord, 0.5, rounding_mode="floor")
    # each cube is masked entirely or not at all: check a few cubes
    key = cells[:, 0] * 100 + cells[:, 1] * 10 + cells[:, 2] + 1000 * (torch.arange(20000) >= 10000)
    for value in key.unique()[:50]:
        members = mask[key == value]
        assert members.all() or not members.any()
    assert 0.2 < mask.float().mean() < 0.4


def test_views_follow_the_recipe():
    rng = np.random.default_rng(0)
    coord = rng.uniform(-20, 20, (30000, 3)).astype(np.float32)
    coord[:, 2] = rng.uniform(-2, 1, 30000)  # sensor frame: the road 2 m below the sensor
    coord[:5, 2] = -30.0  # multipath under the road: outside the outdoor range, never in a view
    frame = Frame(coord=coord, strength=rng.uniform(0, 1, 30000).astype(np.float32))
    transform = InputTransform("outdoor", scale=0.2, grid=0.04, centre="none", range_box=OUTDOOR_RANGE)
    config = ViewConfig.lidar(transform=transform, feature_keys=("coord", "strength"), max_size=8000)
    global_views, local_views = make_views(frame, config, np.random.default_rng(1))
    assert len(global_views) == 2 and len(local_views) == 4
    sampled = len(np.unique(np.floor(coord / 0.2).astype(np.int64), axis=0))
    for view in global_views + local_views:
        n = len(view["coord"])
        assert view["feat"].shape == (n, 4)
        assert len(np.unique(view["grid_coord"], axis=0)) == n  # one point per voxel
        np.testing.assert_array_equal(view["feat"][:, :3], view["coord"])  # model coordinates
        assert np.isin(view["origin_coord"][:, 0], coord[5:, 0]).all()  # original scene coordinates, in range
    assert max(len(v["coord"]) for v in global_views) <= min(sampled, 8000)
    assert all(len(v["coord"]) <= 0.4 * min(sampled, 8000) + 1 for v in local_views)
    first_global = {tuple(p) for p in global_views[0]["origin_coord"].round(4).tolist()}
    # local views are centred in the first global view: most of each overlaps it
    for view in local_views:
        inside = np.mean([tuple(p) in first_global for p in view["origin_coord"].round(4).tolist()])
        assert inside > 0.3
    again, _ = make_views(frame, config, np.random.default_rng(1))
    np.testing.assert_array_equal(again[0]["coord"], global_views[0]["coord"])
    # without augmentation a view is the domain transform of its points: sensor frame kept (no centre
    # shift, unlike indoor views), coordinates x0.2
    still = dataclasses.replace(config, rotate_z_p=0, tilt_p=0, flip_p=0, scale=(1, 1), jitter_sigma=0, elastic=())
    global_still, local_still = make_views(frame, still, np.random.default_rng(2))
    for view in global_still + local_still:
        np.testing.assert_allclose(view["coord"], view["origin_coord"] * 0.2, rtol=1e-6, atol=1e-6)


def test_augmentations_do_what_they_say():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3))
    rigid = augment.random_rigid(rng, z_p=1.0, tilt=0.05, tilt_p=1.0, flip_p=0.0, scale=(1.0, 1.0))
    moved = points @ rigid.T
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), np.linalg.norm(points, axis=1), rtol=1e-9)
    scaled = augment.random_rigid(rng, 0.0, 0.0, 0.0, 0.0, scale=(0.9, 1.1))
    assert 0.9 <= abs(np.linalg.det(scaled)) ** (1 / 3) <= 1.1
    flipped = augment.random_rigid(rng, 0.0, 0.0, 0.0, 1.0, scale=(1.0, 1.0))
    np.testing.assert_allclose(flipped, np.diag([-1.0, -1.0, 1.0]))
    jittered = augment.jitter(points, rng, sigma=0.01, clip=0.02)
    assert np.abs(jittered - points).max() <= 0.02 + 1e-12
    grid = rng.uniform(0, 10, (2000, 3))
    displaced = augment.elastic(grid, rng, ((1.0, 0.4),))
    shift = np.linalg.norm(displaced - grid, axis=1)
    assert 0 < shift.mean() < 0.4 and shift.max() < 2.0
    centred = augment.centre_shift(grid)
    assert centred[:, 2].min() == pytest.approx(0.0)
    assert (centred[:, 0].max() + centred[:, 0].min()) == pytest.approx(0.0)
    colour = augment.colour_jitter(rng.uniform(0, 255, (100, 3)), rng)
    assert colour.min() >= 0 and colour.max() <= 255
    strength = augment.strength_jitter(rng.uniform(0, 1, 100), rng, p=1.0)
    assert strength.min() >= 0 and strength.max() <= 1
