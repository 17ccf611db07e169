"""The node's input path without a node: decode, move to the base frame, crop (`sonata_ros.inputs`)."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from sonata_model.geometry import all_columns, quaternion_matrix, row_norms
from sonata_model.io.pointcloud2 import LAYOUT_POINT_STEP, LAYOUTS, pack_points, to_message
from sonata_ros.inputs import Crop, InputSpec, Needs, decode_input, merge

NEEDS = Needs(strength=True, reject_without_strength=False, colour=False)


class Logger:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str, **kwargs) -> None:
        self.warnings.append(text)


def velodyne_message(xyz: np.ndarray) -> PointCloud2:
    n = len(xyz)
    arrays = {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "intensity": np.full(n, 10, np.float32),
        "ring": np.zeros(n, np.uint16),
        "time": np.zeros(n, np.float32),
    }
    packed = pack_points(LAYOUTS["velodyne"], arrays, point_step=LAYOUT_POINT_STEP["velodyne"])
    return to_message(packed, PointCloud2, PointField, Header(frame_id="lidar"))


def scan(n: int = 5000, seed: int = 0) -> np.ndarray:
    xyz = np.random.default_rng(seed).uniform(-60, 60, (n, 3)).astype(np.float32)
    xyz[::97] = np.nan  # invalid returns: never selected
    return xyz


def test_ranges_in_the_sensor_frame_and_the_box_in_the_base_frame_select_exactly_their_points():
    xyz = scan()
    rotation = quaternion_matrix(0.0, 0.0, np.sin(np.pi / 8), np.cos(np.pi / 8)).astype(np.float32)  # 45 deg yaw
    spec = InputSpec("front", "t", rotation, np.array([1.5, -2.0, 0.8], np.float32))
    crop = Crop(min_range=5.0, max_range=50.0, box=np.array([-30, -40, -10, 40, 30, 20.0]), reach=1000.0)
    sensor = decode_input(velodyne_message(xyz), spec, NEEDS, crop, Logger())
    valid = xyz[np.isfinite(xyz).all(axis=1)]
    base = valid @ rotation.T + spec.translation
    distance = np.linalg.norm(valid, axis=1)
    inside = np.all((base >= crop.box[:3]) & (base <= crop.box[3:]), axis=1)
    expected = np.flatnonzero((distance >= 5.0) & (distance <= 50.0) & inside)
    assert 0 < len(expected) < len(valid)
    np.testing.assert_array_equal(sensor.selected, expected)
    np.testing.assert_allclose(sensor.base, base, rtol=1e-6, atol=1e-5)


def test_a_sensor_at_the_base_takes_its_points_as_they_are_and_far_points_stay_out():
    xyz = scan(seed=1)
    xyz[5] = (2500.0, 0.0, 1.0)  # beyond the grid's reach of this crop
    spec = InputSpec("", "t", np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    logger = Logger()
    sensor = decode_input(velodyne_message(xyz), spec, NEEDS, Crop(0.0, 0.0, np.zeros(6), 2000.0), logger)
    assert sensor.base is sensor.decoded.coord  # no transform, no copy
    assert spec.is_identity and not InputSpec("", "t", np.eye(3, dtype=np.float32), np.ones(3, np.float32)).is_identity
    far = int(np.flatnonzero(np.isfinite(xyz).all(axis=1)).tolist().index(5))
    assert far not in sensor.selected and len(sensor.selected) == len(sensor.base) - 1
    assert any("farther than 2000 m" in w for w in logger.warnings)
    merged = merge([sensor], 10**6, logger)
    assert merged.cloud.coord is sensor.base  # one input is not copied either


@pytest.mark.parametrize("columns", [1, 3, 4])
def test_the_row_helpers_equal_numpys_reductions(columns):
    rng = np.random.default_rng(columns)
    values = rng.normal(size=(1000, columns)).astype(np.float32) * 1e20
    values[::7, 0] = np.inf
    values[::11, -1] = np.nan
    mask = rng.random((1000, columns)) < 0.8
    before = mask.copy()
    np.testing.assert_array_equal(all_columns(mask), mask.all(axis=1))
    np.testing.assert_array_equal(mask, before)  # the input is not written
    np.testing.assert_array_equal(all_columns(np.isfinite(values)), np.isfinite(values).all(axis=1))
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_allclose(row_norms(values), np.linalg.norm(values, axis=1), rtol=1e-6)
