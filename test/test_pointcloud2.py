"""PointCloud2 codec: real driver layouts round-trip, odd layouts decode right, bad messages are refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from sonata_model.io.pointcloud2 import (
    DATATYPES,
    FLOAT32,
    FLOAT64,
    INT16,
    LAYOUT_POINT_STEP,
    LAYOUTS,
    UINT8,
    UINT16,
    UINT32,
    FieldSpec,
    PointCloudError,
    decode,
    encode,
    pack_rgb,
    structured_view,
    to_message,
    unpack_rgb,
)

TYPES = get_typestore(Stores.ROS2_JAZZY).types
ROSBAGS_CLOUD, ROSBAGS_FIELD = TYPES["sensor_msgs/msg/PointCloud2"], TYPES["sensor_msgs/msg/PointField"]
HEADER = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="lidar")


def rosbags_message(encoded):
    return to_message(encoded, ROSBAGS_CLOUD, ROSBAGS_FIELD, HEADER)


def lidar_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.uniform(-50, 50, n).astype(np.float32),
        "y": rng.uniform(-50, 50, n).astype(np.float32),
        "z": rng.uniform(-2, 5, n).astype(np.float32),
    }


@pytest.mark.parametrize("layout", ["velodyne", "livox", "hesai", "xyzi"])
def test_float_intensity_layouts_round_trip(layout):
    arrays = lidar_arrays(500)
    arrays["intensity"] = np.random.default_rng(1).uniform(0, 255, 500).astype(np.float32)
    msg = rosbags_message(encode(LAYOUTS[layout], arrays, point_step=LAYOUT_POINT_STEP[layout]))
    assert msg.point_step == LAYOUT_POINT_STEP[layout]
    cloud = decode(msg)
    np.testing.assert_array_equal(cloud.coord, np.stack([arrays[a] for a in "xyz"], 1))
    np.testing.assert_allclose(cloud.strength, arrays["intensity"] / 255, rtol=1e-6)
    assert cloud.valid.all() and cloud.num_input_points == 500 and cloud.color is None


def test_ouster_organized_cloud_masks_zero_returns():
    beams, columns = 16, 64
    arrays = lidar_arrays(beams * columns)
    arrays["intensity"] = np.full(beams * columns, 510.0, np.float32)  # above 255: clipped to 1
    arrays["ring"] = np.repeat(np.arange(beams), columns).astype(np.uint16)
    missing = np.random.default_rng(2).random(beams * columns) < 0.3
    for axis in "xyz":
        arrays[axis][missing] = 0.0
    msg = rosbags_message(encode(LAYOUTS["ouster"], arrays, height=beams, point_step=48))
    assert (msg.height, msg.width) == (beams, columns)
    assert structured_view(msg).shape == (beams, columns)
    cloud = decode(msg)
    assert np.array_equal(cloud.valid, ~missing)
    assert len(cloud.coord) == (~missing).sum() and np.all(cloud.strength == 1.0)
    np.testing.assert_array_equal(cloud.coord[:, 0], arrays["x"][~missing])


def test_autoware_u8_intensity_is_scaled_by_255():
    arrays = lidar_arrays(300)
    arrays["intensity"] = np.arange(300, dtype=np.uint8)
    arrays["channel"] = np.arange(300, dtype=np.uint16)
    cloud = decode(rosbags_message(encode(LAYOUTS["autoware_xyzirc"], arrays, point_step=16)))
    np.testing.assert_allclose(cloud.strength, np.arange(300, dtype=np.uint8) / 255.0, rtol=1e-6)
    explicit = decode(rosbags_message(encode(LAYOUTS["autoware_xyzirc"], arrays, point_step=16)), intensity_scale=100)
    np.testing.assert_allclose(explicit.strength, np.minimum(np.arange(300, dtype=np.uint8) / 100.0, 1), rtol=1e-6)


@pytest.mark.parametrize("rgb_type", [np.float32, np.uint32])
def test_rgbd_organized_with_nans_and_packed_colour(rgb_type):
    h, w = 8, 10
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (h * w, 3)).astype(np.uint8)
    packed = pack_rgb(colour)
    arrays = {
        "x": rng.normal(size=h * w).astype(np.float32),
        "y": rng.normal(size=h * w).astype(np.float32),
        "z": rng.uniform(0.5, 3, h * w).astype(np.float32),
        "rgb": packed.view(rgb_type),
    }
    arrays["z"][::7] = np.nan
    fields = [
        FieldSpec("x", 0, FLOAT32),
        FieldSpec("y", 4, FLOAT32),
        FieldSpec("z", 8, FLOAT32),
        FieldSpec("rgb", 16, FLOAT32 if rgb_type is np.float32 else UINT32),
    ]
    cloud = decode(rosbags_message(encode(fields, arrays, height=h, point_step=32)), need_color=True)
    keep = np.isfinite(arrays["z"])
    assert np.array_equal(cloud.valid, keep)
    np.testing.assert_array_equal(cloud.color, colour[keep])
    assert cloud.strength is None


def test_big_endian_equals_little_endian():
    arrays = lidar_arrays(200)
    arrays["intensity"] = np.linspace(0, 255, 200).astype(np.float32)
    arrays["ring"] = np.arange(200).astype(np.uint16)
    little = encode(LAYOUTS["velodyne"], arrays, point_step=22)
    dtype = structured_view(rosbags_message(little)).dtype.newbyteorder(">")
    big = np.zeros(200, dtype=dtype)
    for name in dtype.names:
        big[name] = structured_view(rosbags_message(little)).reshape(-1)[name]
    msg = rosbags_message(little)
    msg.is_bigendian, msg.data = True, big.view(np.uint8)
    a, b = decode(rosbags_message(little)), decode(msg)
    np.testing.assert_array_equal(a.coord, b.coord)
    np.testing.assert_array_equal(a.strength, b.strength)
    assert np.array_equal(structured_view(msg)["ring"].ravel(), np.arange(200))


def test_row_padding_count_and_every_datatype():
    rng = np.random.default_rng(4)
    fields, offset, arrays = (
        [FieldSpec("x", 0, FLOAT32), FieldSpec("y", 4, FLOAT32), FieldSpec("z", 8, FLOAT32)],
        12,
        {},
    )
    for datatype, dtype in DATATYPES.items():
        fields.append(FieldSpec(f"f{datatype}", offset, datatype, count=2))
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        arrays[f"f{datatype}"] = rng.uniform(max(info.min, -1e6), min(info.max, 1e6), (12, 2)).astype(dtype)
        offset += dtype.itemsize * 2
    arrays.update(lidar_arrays(12))
    encoded = encode(fields, arrays, height=3)
    width, step = 4, encoded.point_step
    padded = np.zeros((3, width * step + 5), np.uint8)  # 5 padding bytes at the end of every row
    padded[:, : width * step] = encoded.data.reshape(3, -1)
    msg = rosbags_message(encoded)
    msg.row_step, msg.data = width * step + 5, padded.ravel()
    view = structured_view(msg)
    for name, values in arrays.items():
        np.testing.assert_array_equal(view[name].reshape(values.shape), values)


def test_rclpy_message_builds_and_decodes():
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    arrays = lidar_arrays(1000)
    arrays["intensity"] = np.full(1000, 25.5, np.float32)
    msg = to_message(
        encode(LAYOUTS["velodyne"], arrays, point_step=22),
        PointCloud2,
        PointField,
        Header(stamp=Time(sec=3), frame_id="velodyne"),
    )
    assert msg.header.frame_id == "velodyne" and len(msg.data) == 22 * 1000
    cloud = decode(msg)
    np.testing.assert_array_equal(cloud.coord[:, 2], arrays["z"])
    np.testing.assert_allclose(cloud.strength, 0.1, rtol=1e-6)


def bare(fields, data, *, width=4, point_step=12, row_step=None, height=1):
    return SimpleNamespace(
        height=height,
        width=width,
        fields=fields,
        is_bigendian=False,
        point_step=point_step,
        row_step=row_step if row_step is not None else point_step * width,
        data=data,
    )


XYZ = [SimpleNamespace(name=n, offset=4 * i, datatype=FLOAT32, count=1) for i, n in enumerate("xyz")]


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (bare(XYZ, np.zeros(47, np.uint8)), "data has 47 bytes"),
        (
            bare([*XYZ, SimpleNamespace(name="i", offset=10, datatype=FLOAT32, count=1)], np.zeros(48, np.uint8)),
            "beyond point_step",
        ),
        (
            bare([*XYZ, SimpleNamespace(name="i", offset=0, datatype=9, count=1)], np.zeros(48, np.uint8)),
            "unknown datatype 9",
        ),
        (
            bare([*XYZ, SimpleNamespace(name="x", offset=0, datatype=FLOAT32, count=1)], np.zeros(48, np.uint8)),
            "duplicate field name 'x'",
        ),
        (bare(XYZ[:2], np.zeros(48, np.uint8)), "no z field"),
        (bare(XYZ, np.zeros(48, np.uint8), point_step=0, row_step=0), "beyond point_step 0"),
        (bare(XYZ, np.zeros(48, np.uint8), row_step=20), "row_step 20 is shorter"),
        (
            bare([*XYZ[:2], SimpleNamespace(name="z", offset=8, datatype=FLOAT32, count=0)], np.zeros(48, np.uint8)),
            "count 0",
        ),
    ],
)
def test_malformed_messages_raise_one_clear_error(msg, message):
    with pytest.raises(PointCloudError, match=message):
        decode(msg)


def test_missing_fields_the_model_needs():
    msg = bare(XYZ, np.zeros(48, np.uint8))
    with pytest.raises(PointCloudError, match="no intensity field"):
        decode(msg, need_strength=True)
    with pytest.raises(PointCloudError, match="no rgb"):
        decode(msg, need_color=True)
    empty = decode(bare(XYZ, np.zeros(0, np.uint8), width=0))
    assert empty.coord.shape == (0, 3) and empty.num_input_points == 0


def test_aligned_encoding_and_rgb_helpers():
    arrays = {"x": np.ones(3, np.float32), "flag": np.ones(3, np.uint8), "d": np.full(3, 2.0)}
    encoded = encode(None, arrays, packed=False)
    assert [(f.name, f.offset, f.datatype) for f in encoded.fields] == [
        ("x", 0, FLOAT32),
        ("flag", 4, UINT8),
        ("d", 8, FLOAT64),
    ]
    assert encoded.point_step == 16
    colour = np.array([[255, 0, 1], [1, 2, 3]], np.uint8)
    np.testing.assert_array_equal(unpack_rgb(pack_rgb(colour)), colour)
    assert pack_rgb(colour).view(np.uint32)[0] == 0xFF0001
    with pytest.raises(PointCloudError, match="not a PointCloud2 datatype"):
        encode(None, {"x": np.ones(2, np.complex64)})
    assert INT16 in DATATYPES and UINT16 in DATATYPES
