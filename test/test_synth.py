"""The synthetic LiDAR world: classes present, occlusion, sensor geometry, determinism, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from sonata_model.io.labels import load_label_set
from sonata_model.io.sources import open_source
from sonata_model.synth import CLASS_NAMES
from sonata_model.synth.classes import BUILDING, CAR, ROAD, SIDEWALK, VEGETATION
from sonata_model.synth.cli import main as synth_main
from sonata_model.synth.drive import generate_drive
from sonata_model.synth.raycast import sweep
from sonata_model.synth.render import Panel, pca_colors, render_bev
from sonata_model.synth.scene import Ground, Primitives, Scene
from sonata_model.synth.sensors import SENSORS, get_sensor


@pytest.fixture(scope="module")
def hdl64_frame():
    return next(iter(generate_drive("hdl64", frames=1, seed=11)))


def test_class_names_match_the_label_set():
    assert load_label_set("synthetic").names == CLASS_NAMES


def test_a_frame_covers_the_street_classes(hdl64_frame):
    frame = hdl64_frame
    assert 80_000 < frame.num_points < 135_000
    histogram = np.bincount(frame.segment, minlength=len(CLASS_NAMES))
    for cls in (ROAD, SIDEWALK, BUILDING, CAR):
        assert histogram[cls] > 50, CLASS_NAMES[cls]
    frames = list(generate_drive("vlp16", frames=1, seed=s) for s in range(4))
    seen = {int(c) for f in frames for c in np.unique(next(iter(f)).segment)}
    assert len(seen | set(np.flatnonzero(histogram))) >= 12  # nearly every class over a few scenes


def test_points_respect_the_sensor_model(hdl64_frame):
    frame, model = hdl64_frame, get_sensor("hdl64")
    distance = np.linalg.norm(frame.coord, axis=1)
    assert distance.min() >= model.min_range - 0.1 and distance.max() <= model.max_range + 0.5
    ring = frame.extra["ring"]
    assert set(np.unique(ring)) <= set(range(64)) and len(np.unique(ring)) > 50
    elevation = np.degrees(np.arcsin(frame.coord[:, 2] / distance))
    expected = np.asarray(model.elevation_deg)[ring]
    far = distance > 15  # the ego moves ~1 m during a sweep: near points' apparent elevation shifts more
    assert np.quantile(np.abs(elevation - expected)[far], 0.99) < 0.3
    time = frame.extra["time"]
    assert time.min() >= 0 and time.max() < model.period
    for r in (0, 31, 63):
        column = frame.extra["column"][ring == r]
        assert np.all(np.diff(time[ring == r][np.argsort(column)]) >= 0)
    assert frame.strength.min() >= 0 and frame.strength.max() <= 1


def test_labels_agree_with_geometry(hdl64_frame):
    frame = hdl64_frame
    height = frame.coord[:, 2] + get_sensor("hdl64").mount_height
    assert np.quantile(np.abs(height[frame.segment == ROAD]), 0.95) < 0.15
    assert np.median(height[frame.segment == BUILDING]) > 1.0
    sidewalk = np.median(height[frame.segment == SIDEWALK])
    assert 0.05 < sidewalk < 0.25  # raised kerb


def test_occluded_objects_return_nothing():
    ground = Ground(
        road_half_width=50,
        lane_width=3.5,
        driving_half_width=50,
        sidewalk_width=0.1,
        sidewalk_height=0.15,
        cross_streets=np.zeros((0, 2)),
    )

    def boxes(rows):
        n = len(rows)
        return Primitives(
            "box",
            np.array([r[0] for r in rows], float),
            np.array([r[1] for r in rows], float),
            np.zeros(n),
            np.array([r[2] for r in rows], np.int32),
            np.arange(n, dtype=np.int32),
            np.full((n, 2), [0.5, 0.0]),
            np.zeros(n),
            np.zeros((n, 2)),
        )

    car = ((20.0, 0.0, 0.8), (2.0, 1.0, 0.8), CAR)
    wall = ((10.0, 0.0, 2.5), (0.2, 6.0, 2.5), BUILDING)
    model = get_sensor("vlp16")
    position, still = np.array([0.0, 0.0, model.mount_height]), np.zeros(2)
    rng = np.random.default_rng(0)
    visible = sweep(Scene(ground, [boxes([car])]), model, position, 0.0, still, 0.0, rng)
    hidden = sweep(Scene(ground, [boxes([car, wall])]), model, position, 0.0, still, 0.0, rng)
    assert (visible.semantic == CAR).sum() > 20
    assert (hidden.semantic == CAR).sum() == 0 and (hidden.semantic == BUILDING).sum() > 20
    building_range = hidden.distance[hidden.semantic == BUILDING]
    assert building_range.max() < 12.0  # returns come from the wall's face, not from behind it


def test_drives_are_deterministic_by_seed_and_differ_across_seeds():
    a = next(iter(generate_drive("vlp16", frames=1, seed=5)))
    b = next(iter(generate_drive("vlp16", frames=1, seed=5)))
    c = next(iter(generate_drive("vlp16", frames=1, seed=6)))
    np.testing.assert_array_equal(a.coord, b.coord)
    np.testing.assert_array_equal(a.segment, b.segment)
    assert a.num_points != c.num_points or not np.array_equal(a.coord, c.coord)
    frames = list(generate_drive("vlp16", frames=3, seed=5))
    assert frames[2].pose[0, 3] > frames[0].pose[0, 3] + 0.5  # the ego moves forward
    assert frames[1].stamp_ns - frames[0].stamp_ns == 100_000_000


def test_bev_png_is_written(tmp_path, hdl64_frame):
    labels = load_label_set("synthetic")
    frame = hdl64_frame
    feat = np.c_[frame.coord, frame.strength]
    path = render_bev(
        [Panel("truth", frame.coord, labels.colors[frame.segment]), Panel("pca", frame.coord, pca_colors(feat))],
        tmp_path / "bev.png",
        legend=list(zip(labels.names, labels.colors, strict=True)),
    )
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] > image.shape[0]  # two panels side by side
    road = np.all(image == labels.colors[ROAD], axis=-1).sum()
    vegetation = np.all(image == labels.colors[VEGETATION], axis=-1).sum()
    assert road > 500 and vegetation >= 0


@pytest.mark.parametrize("fmt", ["frames", "mcap"])
def test_cli_writes_readable_drives(tmp_path, fmt, capsys):
    assert (
        synth_main(["--sensor", "vlp16", "--frames", "2", "--seed", "1", "--format", fmt, "--out", str(tmp_path)]) == 0
    )
    labels = open_source(f"frames:{tmp_path}" if fmt == "frames" else f"frames:{tmp_path}/labels")
    expected = list(generate_drive("vlp16", frames=2, seed=1))
    np.testing.assert_array_equal(labels[1].segment, expected[1].segment)
    if fmt == "mcap":
        bag = open_source(f"bag:{tmp_path}/drive:/points")
        np.testing.assert_array_equal(bag[0].coord, expected[0].coord)
    assert "wrote 2 frames" in capsys.readouterr().out
    assert set(SENSORS) == {"vlp16", "hdl32", "hdl64", "os128"}
