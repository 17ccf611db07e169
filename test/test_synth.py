"""The synthetic LiDAR world: classes present, occlusion, sensor geometry and mounting, ground, intensity,
outliers, ego body, scene variety, determinism, outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sonata_model.io.bags import BAG_FORMATS
from sonata_model.io.frame import IGNORE_LABEL
from sonata_model.io.labels import load_label_set
from sonata_model.io.sources import open_source
from sonata_model.synth import CLASS_NAMES
from sonata_model.synth.classes import BUILDING, CAR, ROAD, SIDEWALK, TERRAIN, VEGETATION
from sonata_model.synth.cli import FORMATS
from sonata_model.synth.cli import main as synth_main
from sonata_model.synth.drive import drive_world, generate_drive
from sonata_model.synth.ego import body_box
from sonata_model.synth.ground import Ground
from sonata_model.synth.materials import DIFFUSE, GLASS, GLOSSY, RETRO
from sonata_model.synth.raycast import sweep
from sonata_model.synth.render import Panel, pca_colors, render_bev
from sonata_model.synth.returns import lost, strength
from sonata_model.synth.scene import STYLES, Primitives, Scene, generate_scene
from sonata_model.synth.sensors import SENSORS, get_sensor


@pytest.fixture(scope="module")
def hdl64_frame():
    return next(iter(generate_drive("hdl64", frames=1, seed=11)))


def flat_street(**overrides) -> Ground:
    """A flat two-lane road (markings at y = 0 and +-3.5) with 2 m sidewalks, no cross streets."""
    settings = {
        "road_half_width": 7.0,
        "lane_width": 3.5,
        "driving_half_width": 3.5,
        "sidewalk_width": 2.0,
        "sidewalk_height": 0.15,
        "cross_streets": np.zeros((0, 2)),
    }
    return Ground(**{**settings, **overrides})


def to_world(frame) -> np.ndarray:
    return frame.coord.astype(np.float64) @ frame.pose[:3, :3].T + frame.pose[:3, 3]


def cast(ground: Ground, sensor, primitives=(), seed: int = 0, y: float = -1.75):
    """One sweep of `sensor` standing still, level, at `y` (default: the right-hand lane)."""
    position = np.array([0.0, y, sensor.mount_height])
    scene = Scene(ground, list(primitives))
    return sweep(scene, sensor, position, np.eye(3), np.zeros(3), 0.0, np.random.default_rng(seed))


def test_class_names_match_the_label_set():
    assert load_label_set("synthetic").names == CLASS_NAMES


def test_a_frame_covers_the_street_classes(hdl64_frame):
    frame = hdl64_frame
    assert 80_000 < frame.num_points < 135_000
    labelled = frame.segment[frame.segment != IGNORE_LABEL]
    histogram = np.bincount(labelled, minlength=len(CLASS_NAMES))
    for cls in (ROAD, SIDEWALK, BUILDING, CAR, VEGETATION):
        assert histogram[cls] > 50, CLASS_NAMES[cls]
    frames = list(generate_drive("vlp16", frames=1, seed=s) for s in range(4))
    seen = {int(c) for f in frames for c in np.unique(next(iter(f)).segment) if c >= 0}
    assert len(seen | set(np.flatnonzero(histogram))) == len(CLASS_NAMES)  # every class over a few scenes


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
    np.testing.assert_allclose(frame.strength * 100, np.round(frame.strength * 100), atol=1e-3)  # KITTI: 0.01 steps


@pytest.mark.parametrize("name", sorted(SENSORS))
def test_the_mount_height_puts_the_road_at_minus_h_in_the_sensor_frame(name):
    sensor = dataclasses.replace(get_sensor(name), columns=400)
    frame = next(iter(generate_drive(sensor, frames=1, seed=3)))
    flat = np.hypot(frame.coord[:, 0], frame.coord[:, 1])
    road = (frame.segment == ROAD) & (flat > 4) & (flat < 10)
    assert road.sum() > 30
    assert abs(np.median(frame.coord[road, 2]) + sensor.mount_height) < 0.1


def test_mount_heights_are_those_of_the_real_cars():
    assert get_sensor("hdl64").mount_height == 1.73  # KITTI
    assert get_sensor("hdl32").mount_height == 1.84  # nuScenes
    assert get_sensor("hdl32").rate_hz == 20.0 and get_sensor("hdl32").columns == 1084  # nuScenes sweeps
    for sensor in SENSORS.values():
        assert 1.5 <= sensor.mount_height <= 2.1 and sensor.ego.height < sensor.mount_height


def test_labels_lie_on_the_ground_they_name_on_a_hilly_street():
    seed = 1  # a suburban street rising and falling by ~10 m over its length
    frame = next(iter(generate_drive("vlp16", frames=1, seed=seed)))
    ground = drive_world("vlp16", 1, seed)[1].ground
    assert np.ptp(ground.profile[:, 1]) > 3.0
    world = to_world(frame)
    above = world[:, 2] - ground.height(world[:, 0], world[:, 1])
    road, sidewalk = frame.segment == ROAD, frame.segment == SIDEWALK
    assert np.quantile(np.abs(above[road]), 0.99) < 0.12
    assert np.all((above[sidewalk] > -0.12) & (above[sidewalk] < ground.sidewalk_height + 0.12))
    assert np.quantile(np.abs(above[frame.segment == TERRAIN]), 0.95) < 0.2
    assert np.median(above[frame.segment == BUILDING]) > 1.0
    labelled = frame.segment != IGNORE_LABEL
    assert above[labelled].min() > -0.3  # nothing labelled lies under the ground
    # the vehicle pitches and rolls with the road: near the car the road is level in the sensor frame
    flat = np.hypot(frame.coord[:, 0], frame.coord[:, 1])
    near = road & (flat < 9)
    fit = np.linalg.lstsq(np.c_[frame.coord[near, :2], np.ones(near.sum())], frame.coord[near, 2], rcond=None)[0]
    assert np.degrees(np.arctan(np.hypot(*fit[:2]))) < 2.5
    assert abs(fit[2] + get_sensor("vlp16").mount_height) < 0.1
    # while far along the street it is not: the hills show up in the sensor frame
    far = road & (flat > 30)
    assert np.abs(frame.coord[far, 2] + get_sensor("vlp16").mount_height).max() > 0.5


def test_occluded_objects_return_nothing():
    ground = flat_street(road_half_width=50, driving_half_width=50, sidewalk_width=0.1)

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
    visible = cast(ground, model, [boxes([car])], y=0.0)
    hidden = cast(ground, model, [boxes([car, wall])], y=0.0)
    assert (visible.semantic == CAR).sum() > 20
    assert (hidden.semantic == CAR).sum() == 0 and (hidden.semantic == BUILDING).sum() > 20
    building_range = hidden.distance[hidden.semantic == BUILDING]
    assert building_range.max() < 12.0  # returns come from the wall's face, not from behind it


def test_multipath_outliers_fall_under_the_road_at_the_configured_rate_without_a_label():
    rate = 0.01
    sensor = dataclasses.replace(get_sensor("vlp16"), multipath=rate, dropout=0.0)
    result = cast(flat_street(), sensor, seed=4)
    valid = result.valid
    bounced = valid & (result.semantic == IGNORE_LABEL)
    assert 0.6 * rate < bounced.sum() / valid.sum() < 1.4 * rate
    z = result.point[..., 2]
    assert np.mean(z[bounced] < -0.1) > 0.9 and z[bounced].min() < -2.0  # under the road, some by metres
    assert z[valid & ~bounced].min() > -0.15  # everything else is on or above it
    assert np.median(result.intensity[bounced]) < np.median(result.intensity[valid & ~bounced])
    none = cast(flat_street(), dataclasses.replace(sensor, multipath=0.0), seed=4)
    assert (none.valid & (none.semantic == IGNORE_LABEL)).sum() == 0


def test_the_ego_body_blocks_the_lowest_beams_and_returns_nothing_from_inside(hdl64_frame):
    model = get_sensor("hdl64")
    low, high = body_box(model)
    coord = hdl64_frame.coord
    inside = np.all((coord > low + 0.01) & (coord < high - 0.01), axis=1)
    assert not inside.any()
    ring = hdl64_frame.extra["ring"]
    lowest = ring == int(np.argmin(model.elevation_deg))
    azimuth = np.degrees(np.arctan2(coord[:, 1], coord[:, 0]))
    assert (lowest & (np.abs(azimuth) < 10)).sum() == 0  # the bonnet hides the road straight ahead
    assert (lowest & (np.abs(np.abs(azimuth) - 90) < 10)).sum() > 50  # but not beside the car
    # a driver that keeps the roof's returns (nuScenes): on the body's surface, never labelled
    nuscenes = get_sensor("hdl32")
    frame = next(iter(generate_drive(nuscenes, frames=1, seed=2)))
    low, high = body_box(nuscenes)
    on_body = np.all((frame.coord > low - 0.1) & (frame.coord < high + 0.1), axis=1)
    assert on_body.sum() > 100 and np.all(frame.segment[on_body] == IGNORE_LABEL)
    assert not np.all((frame.coord > low + 0.05) & (frame.coord < high - 0.05), axis=1).any()


def test_road_markings_read_brighter_than_asphalt_on_each_intensity_scale():
    ground = flat_street()
    for name, road_range in (("hdl64", (0.15, 0.27)), ("hdl32", (4 / 255, 16 / 255))):
        sensor = get_sensor(name)
        result = cast(ground, sensor)
        point, valid = result.point.reshape(-1, 3), result.valid.reshape(-1)
        road = valid & (result.semantic.reshape(-1) == ROAD) & (np.hypot(point[:, 0], point[:, 1]) < 25)
        marking = road & ground.is_marking(point[:, 0], point[:, 1])
        asphalt = road & ~marking
        intensity = result.intensity.reshape(-1)
        assert marking.sum() > 30
        assert road_range[0] < np.median(intensity[asphalt]) < road_range[1], name  # KITTI 0.2; nuScenes ~10
        assert np.median(intensity[marking]) > 1.7 * np.median(intensity[asphalt]), name


def test_finishes_change_what_comes_back():
    rng = np.random.default_rng(0)
    n = 20_000
    distance, rho = np.full(n, 10.0), np.full(n, 0.3)
    kitti, velodyne = get_sensor("hdl64"), get_sensor("hdl32")
    for finish, low, high in ((DIFFUSE, 0.0, 0.05), (GLASS, 0.5, 0.7)):
        share = lost(kitti, distance, rho, np.full(n, finish), rng).mean()
        assert low <= share <= high
    assert np.mean(lost(kitti, np.full(n, 75.0), np.full(n, 0.02), np.full(n, DIFFUSE), rng)) > 0.9  # dark, far
    glossy = strength(kitti, distance, rho, np.full(n, GLOSSY), rng)
    assert 0.55 < np.mean(glossy == 0) < 0.75  # KITTI's cars read 0 more often than not
    for sensor in (kitti, velodyne):
        retro = strength(sensor, distance, rho, np.full(n, RETRO), rng)
        diffuse = strength(sensor, distance, rho, np.full(n, DIFFUSE), rng)
        assert retro.min() >= sensor.response.retro - 1e-6 and np.quantile(diffuse, 0.99) < sensor.response.retro


@pytest.mark.parametrize("name", ["vls128", "os128"])
def test_128_beam_sensors_return_on_all_128_rings(name):
    sensor = dataclasses.replace(get_sensor(name), columns=450)
    frame = next(iter(generate_drive(sensor, frames=1, seed=2)))
    assert sensor.beams == 128 and np.array_equal(np.unique(frame.extra["ring"]), np.arange(128))


def test_vls128_beams_are_dense_near_the_horizon():
    elevation = np.sort(get_sensor("vls128").elevation_deg)
    assert elevation[0] == -25.0 and elevation[-1] == 15.0
    spacing = np.diff(elevation)
    near_horizon = (elevation[:-1] > -5) & (elevation[:-1] < 4)
    assert np.allclose(spacing[near_horizon], 0.11, atol=0.006) and spacing.max() > 3


def test_streets_vary_across_seeds():
    scenes = [generate_scene(seed, -50.0, 150.0) for seed in range(16)]
    assert {s.layout.style for s in scenes} == set(STYLES)
    half_widths = [s.ground.road_half_width for s in scenes]
    assert max(half_widths) - min(half_widths) > 4.0
    relief = [np.ptp(s.ground.profile[:, 1]) for s in scenes]
    assert min(relief) < 1.0 and max(relief) > 5.0  # flat towns and hills
    assert any(len(s.ground.wet) for s in scenes) and not all(len(s.ground.wet) for s in scenes)
    vegetation = [sum((p.semantic == VEGETATION).sum() for p in s.primitives) for s in scenes]
    assert max(vegetation) > 5 * min(vegetation)


def test_drives_are_deterministic_by_seed_and_differ_across_seeds():
    a = next(iter(generate_drive("vlp16", frames=1, seed=5)))
    b = next(iter(generate_drive("vlp16", frames=1, seed=5)))
    c = next(iter(generate_drive("vlp16", frames=1, seed=6)))
    np.testing.assert_array_equal(a.coord, b.coord)
    np.testing.assert_array_equal(a.segment, b.segment)
    np.testing.assert_array_equal(a.strength, b.strength)
    assert a.num_points != c.num_points or not np.array_equal(a.coord, c.coord)
    frames = list(generate_drive("vlp16", frames=3, seed=5))
    assert frames[2].pose[0, 3] > frames[0].pose[0, 3] + 0.5  # the ego moves forward
    assert frames[1].stamp_ns - frames[0].stamp_ns == 100_000_000


def test_bev_png_is_written(tmp_path, hdl64_frame):
    labels = load_label_set("synthetic")
    frame = hdl64_frame
    feat = np.c_[frame.coord, frame.strength]
    palette = labels.palette()
    path = render_bev(
        [
            Panel("truth", frame.coord, palette[frame.segment.astype(np.uint8)]),
            Panel("pca", frame.coord, pca_colors(feat)),
        ],
        tmp_path / "bev.png",
        legend=list(zip(labels.names, labels.colors, strict=True)),
    )
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] > image.shape[0]  # two panels side by side
    first = image[:, : image.shape[1] // 2]
    road = np.all(first == labels.colors[ROAD], axis=-1)
    vegetation = np.all(first == labels.colors[VEGETATION], axis=-1)
    assert road.sum() > 500 and vegetation.sum() > 100
    # the street runs along x, drawn upwards: road pixels span the panel's height around its centre line
    rows, columns = np.nonzero(road)
    assert np.ptp(rows) > 0.7 * road.shape[0] and abs(np.median(columns) - road.shape[1] / 2) < road.shape[1] / 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_writes_readable_drives(tmp_path, fmt, capsys):
    """Every --format reads back as what was generated: bags (mcap, db3, bag1) in the sensor's driver
    layout with the labels as frame folders beside them, a SemanticKITTI sequence, frame folders."""
    assert (
        synth_main(["--sensor", "vlp16", "--frames", "2", "--seed", "1", "--format", fmt, "--out", str(tmp_path)]) == 0
    )
    expected = list(generate_drive("vlp16", frames=2, seed=1))
    labelled = {"frames": f"frames:{tmp_path}", "kitti": f"kitti:{tmp_path}"}.get(fmt, f"frames:{tmp_path}/labels")
    labels = open_source(labelled)
    assert len(labels) == 2
    np.testing.assert_array_equal(labels[1].segment, expected[1].segment)
    np.testing.assert_allclose(labels[1].coord, expected[1].coord, atol=1e-6)
    if fmt in BAG_FORMATS:
        bag = open_source(f"bag:{tmp_path}/{'drive.bag' if fmt == 'bag1' else 'drive'}:/points")
        assert len(bag) == 2
        np.testing.assert_array_equal(bag[0].coord, expected[0].coord)
        np.testing.assert_allclose(bag[1].strength, expected[1].strength, atol=1e-6)
    assert "wrote 2 frames" in capsys.readouterr().out
    assert set(SENSORS) == {"vlp16", "hdl32", "hdl64", "os128", "vls128"}
