"""Input domains: each family's transform against hand-computed values, and what LiDAR users rely on —
the sensor frame is kept, outliers under the road change no other point's label, Utonia runs outdoors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sonata_model as sm
from sonata_model.domains import OUTDOOR_RANGE, DomainError, InputTransform, reference_transform
from sonata_model.synth.drive import generate_drive

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
KITTI_SCAN = REAL / "semantickitti-spvnas-000000" / "velodyne" / "000000.bin"

# Four points (metres): the first two share a 5 cm outdoor voxel, one is far away.
POINTS = np.array(
    [[1.003, 2.003, -1.703], [1.013, 2.021, -1.701], [1.303, 2.003, -1.703], [-3.013, 4.003, 0.503]], np.float32
)


def segmenter_for(config_name: str, run_domain: str | None = None, seed: int = 0, **overrides) -> sm.Segmenter:
    """Random weights of `config_name` (fields replaced by `overrides`), run in `run_domain`."""
    torch.manual_seed(seed)
    encoder = sm.SonataEncoder(sm.get_config(config_name, **overrides))
    with torch.no_grad():  # non-zero biases and norms so that every input channel matters
        for name, param in encoder.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    head = sm.LinearHead(encoder.config.head_channels, 5)
    with torch.no_grad():
        head.seg_head.weight.normal_(0, 1.0)
    return sm.Segmenter(encoder, head, device="cpu", domain=run_domain)


def lidar_tiny(**overrides):
    return dict(in_channels=4, feature_keys=("coord", "strength"), domain="outdoor", **overrides)


def test_outdoor_keeps_the_sensor_frame_scaled_and_gridded():
    """sonata_lidar: x0.2, 5 cm voxels (1 cm in model units), no centre shift."""
    seg = segmenter_for("tiny", **lidar_tiny(grid_size=0.05, coord_scale=0.2))
    assert seg.transform == InputTransform("outdoor", 0.2, 0.05 * 0.2, "none", range_box=OUTDOOR_RANGE)
    strength = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    prepared = seg.prepare([sm.Cloud(POINTS, strength=strength)])
    point, inverse = prepared.point, prepared.voxel_of_point
    # floor(coord * 0.2 / 0.01) = floor(coord * 20), counted from the range box's corner
    # (-150, -150, -4) m = cell (-3000, -3000, -80), whatever else the scan holds:
    # x 20.06 20.26 26.06 -60.26 -> 3020 3020 3026 2939; y 40.06 40.42 40.06 80.06 -> 3040 3040 3040 3080;
    # z -34.06 -34.02 -34.06 10.06 -> 45 45 45 90
    assert sorted(map(tuple, point.grid_coord.tolist())) == [(2939, 3080, 90), (3020, 3040, 45), (3026, 3040, 45)]
    assert inverse[0] == inverse[1]  # the first two share a voxel ...
    kept = prepared.voxel_index.tolist()
    assert kept[inverse[1]] == 0  # ... represented by the lowest input index (deterministic)
    np.testing.assert_allclose(point.feat[:, :3].numpy(), POINTS[kept] * 0.2, rtol=1e-6)  # no centre shift
    np.testing.assert_array_equal(point.feat[:, 3].numpy(), strength[kept])


def test_indoor_reference_transform_centres_x_y_and_puts_z_on_the_floor():
    seg = segmenter_for("tiny")  # released-style config: the family's indoor transform
    assert seg.transform == InputTransform("indoor", 1.0, 0.02, "xyz")
    colour = np.full((4, 3), 255, np.uint8)
    prepared = seg.prepare([sm.Cloud(POINTS, color=colour, normal=np.zeros((4, 3), np.float32))])
    point = prepared.point
    # bbox x [-3.013, 1.303] -> centre -0.855; y [2.003, 4.003] -> 3.003; z minimum -1.703
    shifted = POINTS - np.array([-0.855, 3.003, -1.703], np.float32)
    np.testing.assert_allclose(point.coord.numpy(), shifted[prepared.voxel_index.numpy()], atol=1e-6)
    assert point.num_points == 4  # 2 cm voxels separate the first two points
    np.testing.assert_allclose(point.feat[:, 3:6].numpy(), 1.0)  # colour / 255


def test_utonia_domains_scale_before_a_one_centimetre_grid():
    indoor = sm.get_config("utonia").transform("indoor")
    assert (indoor.scale, indoor.grid, indoor.centre, indoor.voxel_size) == (0.5, 0.01, "xyz", 0.02)
    outdoor = sm.get_config("utonia").transform()  # Utonia's default domain in this LiDAR node
    assert (outdoor.domain, outdoor.scale, outdoor.grid, outdoor.centre) == ("outdoor", 0.2, 0.01, "none")
    assert outdoor.voxel_size == pytest.approx(0.05)
    assert sm.get_config("sonata").transform("outdoor") == reference_transform("sonata", "outdoor")


@pytest.mark.parametrize(
    ("config", "domain", "scale", "grid", "centre", "voxel_m"),
    [  # the README's domain table, by hand
        ("sonata", "indoor", 1.0, 0.02, "xyz", 0.02),
        ("sonata", "outdoor", 0.2, 0.01, "none", 0.05),
        ("sonata", "object", 1.0, 0.01, "xyz", 0.01),
        ("concerto_large", "outdoor", 0.2, 0.01, "none", 0.05),
        ("utonia", "indoor", 0.5, 0.01, "xyz", 0.02),
        ("utonia", "outdoor", 0.2, 0.01, "none", 0.05),
        ("utonia", "object", 1.0, 0.01, "xyz", 0.01),
    ],
)
def test_each_family_and_domain_has_the_documented_transform(config, domain, scale, grid, centre, voxel_m):
    transform = sm.get_config(config).transform(domain)
    assert (transform.domain, transform.scale, transform.grid, transform.centre) == (domain, scale, grid, centre)
    assert transform.voxel_size == pytest.approx(voxel_m)
    outdoor_box = (-150.0, -150.0, -4.0, 150.0, 150.0, 30.0)
    assert transform.range_box == (outdoor_box if domain == "outdoor" else None)
    assert transform.unit_sphere == (domain == "object")


def test_object_domain_normalises_into_the_unit_sphere():
    transform = reference_transform("utonia", "object")
    coord = torch.tensor([[10.0, 0.0, 0.0], [12.0, 0.0, 0.0], [11.0, 1.0, 0.0], [11.0, -1.0, 4.0]])
    model = transform.to_model(coord, torch.zeros(4, dtype=torch.long), 1)
    # centroid (11, 0, 1); radii: (1,0,-1) -> 1.414, (1,0,-1), (0,1,-1) -> 1.414, (0,-1,3) -> 3.162
    unit = (coord - torch.tensor([11.0, 0.0, 1.0])) / 10**0.5
    shift = torch.tensor([0.0, 0.0, unit[:, 2].min()])  # then CenterShift: x, y already centred
    torch.testing.assert_close(model, unit - shift)


def test_concerto_demo_recentring_after_grid_sampling_moves_coordinates_not_voxels():
    plain = segmenter_for("tiny", run_domain="outdoor")
    demo = sm.Segmenter(
        plain.encoder, plain.head, device="cpu", transform=plain.transform.replace(centre="xy_after_grid")
    )
    cloud = sm.Cloud(POINTS, color=np.zeros((4, 3), np.uint8), normal=np.zeros((4, 3), np.float32))
    a = plain.prepare([cloud]).point
    b = demo.prepare([cloud]).point
    assert torch.equal(a.grid_coord, b.grid_coord)
    # x, y of the sampled voxels' bounding box at 0 (x0.2): x [-0.6026, 0.2606] y [0.4006, 0.8006]; z kept
    torch.testing.assert_close(b.coord, a.coord - torch.tensor([-0.171, 0.6006, 0.0]))


def test_outdoor_fills_missing_colour_and_normals_with_zeros_indoor_does_not():
    outdoor = segmenter_for("tiny", run_domain="outdoor")
    point = outdoor.prepare([sm.Cloud(POINTS)]).point
    assert torch.count_nonzero(point.feat[:, 3:]) == 0
    with pytest.raises(ValueError, match="needs colour"):
        segmenter_for("tiny").prepare([sm.Cloud(POINTS)])


def test_unknown_domain_is_refused():
    with pytest.raises(DomainError, match="domain must be one of"):
        segmenter_for("tiny", run_domain="underwater")


@pytest.fixture(scope="module")
def street():
    return next(iter(generate_drive("hdl32", frames=1, seed=5)))


def test_outliers_under_the_road_change_no_other_label(street):
    """Multipath returns metres below the road (real scans have hundreds) are outside the outdoor range:
    they get no label and every other point keeps exactly its label. The old indoor transform (z
    minimum to 0) moved the whole frame by the outlier's depth."""
    coord, strength = street.coord, street.strength
    rng = np.random.default_rng(0)
    outliers = np.c_[rng.uniform(-20, 20, (6, 2)), rng.uniform(-27.6, -6, 6)].astype(np.float32)
    noisy, noisy_strength = np.concatenate([coord, outliers]), np.concatenate([strength, np.full(6, 0.1, np.float32)])
    outdoor = segmenter_for("tiny", **lidar_tiny(grid_size=0.1, coord_scale=0.2))
    clean = outdoor(coord, strength=strength).labels
    with_outliers = outdoor(noisy, strength=noisy_strength)
    assert np.array_equal(with_outliers.labels[: len(coord)], clean)
    assert (with_outliers.labels[len(coord) :] == -1).all() and (with_outliers.voxel_of_point[len(coord) :] == -1).all()
    assert (with_outliers.probability[len(coord) :] == 0).all()
    indoor = sm.Segmenter(outdoor.encoder, outdoor.head, device="cpu", domain="indoor")
    moved = indoor(noisy, strength=noisy_strength).labels[: len(coord)]
    assert np.mean(moved != indoor(coord, strength=strength).labels) > 0.05  # what the robust range fixed


def test_a_cropped_cloud_keeps_the_labels_of_what_remains(street):
    """Without a centre shift, and with the grid counted from the range box's corner, cropping the scan
    changes no point's coordinates or grid cell: what remains keeps nearly all its labels (attention
    patches next to the cut regroup, nothing more); with the indoor centre shift the whole remaining
    scan moves and many labels change."""
    coord, strength = street.coord, street.strength
    keep = coord[:, 0] < 10.0  # drop everything 10 m ahead
    outdoor = segmenter_for("tiny", **lidar_tiny(grid_size=0.1, coord_scale=0.2))
    indoor = sm.Segmenter(outdoor.encoder, outdoor.head, device="cpu", domain="indoor")
    same = {}
    for name, seg in (("outdoor", outdoor), ("indoor", indoor)):
        full = seg(coord, strength=strength).labels[keep]
        same[name] = np.mean(seg(coord[keep], strength=strength[keep]).labels == full)
    assert same["outdoor"] > 0.98  # 0.995 measured; 0.74 with the grid counted from the scan's minimum
    assert same["outdoor"] - same["indoor"] > 0.05


def test_utonia_tiny_runs_end_to_end_on_a_real_scan():
    """A Utonia-shaped encoder (RoPE attention, 9 input channels) on a real HDL-64E scan: coordinates only,
    colour and normals zeros, the outdoor transform; deterministic, one label per point in range."""
    if not KITTI_SCAN.is_file():
        pytest.skip(f"real scans not available ({KITTI_SCAN} absent; see shared/real/README.md)")
    scan = np.fromfile(KITTI_SCAN, np.float32).reshape(-1, 4)[:, :3]
    seg = segmenter_for(
        "utonia_tiny", enc_depths=(1, 1, 1, 1, 1), enc_patch_size=(128,) * 5
    )  # default domain of the family: outdoor
    assert seg.domain == "outdoor" and seg.config.family == "utonia"
    out = seg(scan)
    inside = seg.transform.inside(torch.from_numpy(scan)).numpy()
    assert inside.sum() > 0.99 * len(scan) and (~inside).sum() > 100  # KITTI's multipath points
    assert ((out.labels >= 0) == inside).all()
    assert out.embedding.shape[1] == 18 + 36 + 72 + 144 + 216
    assert np.array_equal(seg(scan).labels, out.labels)


def test_rope_coordinates_matter_and_are_augmented_only_in_training():
    """Training scales the coordinates RoPE sees (and nothing else): a training forward equals an eval
    forward on coordinates scaled by the drawn factors; inference draws none."""
    seg = segmenter_for("utonia_tiny", enc_depths=(1, 1, 1, 1, 1), enc_patch_size=(64,) * 5, drop_path=0.0)
    encoder = seg.encoder
    with torch.no_grad():  # sharper attention than the initialisation's, so that positions matter
        for name, param in encoder.named_parameters():
            if name.endswith("attn.qkv.weight"):
                param.mul_(30)
    scene = np.random.default_rng(1).uniform(-10, 10, (3000, 3)).astype(np.float32)
    scene[:, 2] = np.abs(scene[:, 2]) * 0.2 - 1.7
    point = seg.prepare([sm.Cloud(scene)]).point
    assert encoder.rope_scale(point.coord.device) is None
    with torch.inference_mode():
        base = sm.upcast(encoder(point))
        encoder.train()
        encoder.shuffle_orders = False
        try:
            torch.manual_seed(0)
            scale = encoder.rope_scale(point.coord.device)
            torch.manual_seed(0)
            trained = sm.upcast(encoder(point))
        finally:
            encoder.eval()
            encoder.shuffle_orders = True
        assert not torch.allclose(scale, torch.ones(3)) and torch.all((scale > 1 / 1.32) & (scale < 1.32))
        scaled = sm.Point(point.coord * scale, point.grid_coord, point.feat, point.offset)
        torch.testing.assert_close(trained, sm.upcast(encoder(scaled)), rtol=1e-3, atol=1e-3)
        assert (trained - base).abs().max() > 0.05, (
            (trained - base).abs().max()
        )  # the scaled coordinates change the output
