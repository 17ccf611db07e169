"""PointCloud2 codec: real driver layouts round-trip, odd layouts decode right, bad messages are refused."""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import adversarial_clouds as adversarial
import numpy as np
import pytest
from adversarial_clouds import as_namespace
from adversarial_clouds import cases as adversarial_cases
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
    MissingFieldError,
    PointCloudError,
    decode,
    pack_points,
    pack_rgb,
    point_extras,
    structured_view,
    to_message,
    unpack_rgb,
    xyz_points,
)

TYPES = get_typestore(Stores.ROS2_JAZZY).types
ROSBAGS_CLOUD, ROSBAGS_FIELD = TYPES["sensor_msgs/msg/PointCloud2"], TYPES["sensor_msgs/msg/PointField"]
HEADER = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="lidar")


def rosbags_message(packed):
    return to_message(packed, ROSBAGS_CLOUD, ROSBAGS_FIELD, HEADER)


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
    msg = rosbags_message(pack_points(LAYOUTS[layout], arrays, point_step=LAYOUT_POINT_STEP[layout]))
    assert msg.point_step == LAYOUT_POINT_STEP[layout]
    cloud = decode(msg)
    np.testing.assert_array_equal(cloud.coord, np.stack([arrays[a] for a in "xyz"], 1))
    np.testing.assert_allclose(cloud.strength, arrays["intensity"] / 255, rtol=1e-6)
    assert cloud.valid.all() and cloud.num_input_points == 500 and cloud.color is None


def test_ouster_organized_cloud_masks_zero_returns():
    beams, columns = 16, 64
    arrays = lidar_arrays(beams * columns)
    arrays["reflectivity"] = np.random.default_rng(5).integers(0, 256, beams * columns).astype(np.uint16)
    arrays["ring"] = np.repeat(np.arange(beams), columns).astype(np.uint16)
    missing = np.random.default_rng(2).random(beams * columns) < 0.3
    for axis in "xyz":
        arrays[axis][missing] = 0.0
    msg = rosbags_message(pack_points(LAYOUTS["ouster"], arrays, height=beams, point_step=48))
    assert (msg.height, msg.width) == (beams, columns)
    assert structured_view(msg).shape == (beams, columns)
    cloud = decode(msg)
    assert np.array_equal(cloud.valid, ~missing)
    assert len(cloud.coord) == (~missing).sum()
    np.testing.assert_array_equal(cloud.coord[:, 0], arrays["x"][~missing])
    np.testing.assert_allclose(cloud.strength, arrays["reflectivity"][~missing] / 255, rtol=1e-6)


# What the drivers publish (ouster-ros os_point.h / sensor_point_types.h): the default point carries
# signal photons as float `intensity` (the sensor's 16-bit SIGNAL, thousands up close) and calibrated
# reflectivity 0-255 (RFL8) in a u16; the native RNG19_RFL8_SIG16_NIR16 point has `signal` u16 and
# `reflectivity` u16; the dual-return and FUSA points carry `reflectivity` as u8.
OUSTER_NATIVE = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("t", 16, UINT32),
    FieldSpec("ring", 20, UINT16),
    FieldSpec("range", 24, UINT32),
    FieldSpec("signal", 28, UINT16),
    FieldSpec("reflectivity", 30, UINT16),
    FieldSpec("near_ir", 32, UINT16),
]
OUSTER_DUAL = [*OUSTER_NATIVE[:7], FieldSpec("reflectivity", 30, UINT8), FieldSpec("near_ir", 32, UINT16)]


@pytest.mark.parametrize(("layout", "point_step"), [(LAYOUTS["ouster"], 48), (OUSTER_NATIVE, 48), (OUSTER_DUAL, 48)])
def test_ouster_strength_is_calibrated_reflectivity_not_signal_photons(layout, point_step):
    rng = np.random.default_rng(6)
    arrays = lidar_arrays(2000)
    reflectivity = rng.integers(0, 256, 2000)
    signal = rng.uniform(0, 65535, 2000)  # photon counts: far beyond 255, unrelated to the surface alone
    fields = {f.name: f for f in layout}
    arrays["reflectivity"] = reflectivity.astype(DATATYPES[fields["reflectivity"].datatype])
    if "intensity" in fields:
        arrays["intensity"] = signal.astype(np.float32)
    else:
        arrays["signal"] = signal.astype(np.uint16)
    cloud = decode(rosbags_message(pack_points(layout, arrays, point_step=point_step)), need_strength=True)
    assert cloud.strength_field == "reflectivity" and cloud.strength_clipped == 0
    np.testing.assert_allclose(cloud.strength, reflectivity / 255, rtol=1e-6)
    assert np.ptp(cloud.strength) > 0.9  # the whole 0-255 range is kept, nothing saturates


def test_float_intensity_beyond_255_saturates_visibly_and_an_explicit_scale_fixes_it():
    """Ouster's xyzi / xyzir points carry only `intensity` = signal photons: /255 saturates, and says so."""
    arrays = lidar_arrays(1000)
    arrays["intensity"] = np.random.default_rng(7).uniform(0, 4000, 1000).astype(np.float32)
    arrays["ring"] = np.zeros(1000, np.uint16)
    layout = [*LAYOUTS["xyzi"], FieldSpec("ring", 20, UINT16)]
    msg = rosbags_message(pack_points(layout, arrays, point_step=32))
    default = decode(msg)
    assert default.strength_field == "intensity"
    assert default.strength_clipped == np.count_nonzero(arrays["intensity"] > 255) > 900
    scaled = decode(msg, intensity_scale=4000)
    assert scaled.strength_clipped == 0
    np.testing.assert_allclose(scaled.strength, arrays["intensity"] / 4000, rtol=1e-6)
    for bad in (0.0, -255.0, float("nan")):  # not silently every strength 1 or 0
        with pytest.raises(ValueError, match="intensity_scale must be a positive number"):
            decode(msg, intensity_scale=bad)


@pytest.mark.parametrize(("layout", "top"), [("velodyne", 255.0), ("hesai", 255.0), ("livox", 255.0)])
def test_0_255_float_intensity_drivers_span_the_unit_interval(layout, top):
    arrays = lidar_arrays(256)
    arrays["intensity"] = np.arange(256, dtype=np.float32) * (top / 255)
    cloud = decode(rosbags_message(pack_points(LAYOUTS[layout], arrays, point_step=LAYOUT_POINT_STEP[layout])))
    assert cloud.strength_clipped == 0 and cloud.strength.min() == 0 and cloud.strength.max() == 1
    np.testing.assert_allclose(cloud.strength, np.arange(256) / 255, rtol=1e-6)


def test_u16_intensity_spans_65535_an_i_field_is_strength_and_nanosecond_stamps_become_seconds():
    """The per-field defaults of the module docstring: other u16 intensity / 65535; a field named `i` is
    the strength too; `time_stamp` (Nebula, u32 ns) and `t` (Ouster, ns) are converted to seconds."""
    arrays = lidar_arrays(100)
    arrays["intensity"] = np.linspace(0, 65535, 100).astype(np.uint16)
    arrays["time_stamp"] = np.arange(100, dtype=np.uint32) * 25_000  # 25 us apart
    fields = [*LAYOUTS["xyzi"][:3], FieldSpec("intensity", 12, UINT16), FieldSpec("time_stamp", 16, UINT32)]
    msg = rosbags_message(pack_points(fields, arrays, point_step=20))
    cloud = decode(msg)
    np.testing.assert_allclose(cloud.strength, arrays["intensity"] / 65535.0, rtol=1e-6)
    assert cloud.strength.max() == 1.0
    extras = point_extras(structured_view(msg).reshape(-1), cloud.valid)
    np.testing.assert_allclose(extras["time"], np.arange(100) * 25e-6, rtol=1e-5)
    renamed = {**arrays, "i": np.linspace(0, 255, 100).astype(np.float32)}
    del renamed["intensity"]
    fields = [*LAYOUTS["xyzi"][:3], FieldSpec("i", 12, FLOAT32), FieldSpec("time_stamp", 16, UINT32)]
    cloud = decode(rosbags_message(pack_points(fields, renamed, point_step=20)))
    assert cloud.strength_field == "i"
    np.testing.assert_allclose(cloud.strength, np.linspace(0, 1, 100), atol=1e-6)


def test_nan_intensity_is_zero_strength_and_nan_normals_are_zero():
    arrays = lidar_arrays(4)
    arrays["intensity"] = np.array([np.nan, 10, np.inf, -5], np.float32)
    arrays.update({n: np.array([np.nan, 0, 1, 0], np.float32) for n in ("normal_x", "normal_y", "normal_z")})
    cloud = decode(rosbags_message(pack_points(None, arrays)))
    np.testing.assert_allclose(cloud.strength, [0, 10 / 255, 1, 0], rtol=1e-6)
    assert cloud.strength_clipped == 1  # the inf
    np.testing.assert_array_equal(cloud.normal[0], [0, 0, 0])
    np.testing.assert_array_equal(cloud.normal[2], [1, 1, 1])


def test_autoware_u8_intensity_is_scaled_by_255():
    arrays = lidar_arrays(300)
    arrays["intensity"] = np.arange(300, dtype=np.uint8)
    arrays["channel"] = np.arange(300, dtype=np.uint16)
    cloud = decode(rosbags_message(pack_points(LAYOUTS["autoware_xyzirc"], arrays, point_step=16)))
    np.testing.assert_allclose(cloud.strength, np.arange(300, dtype=np.uint8) / 255.0, rtol=1e-6)
    explicit = decode(
        rosbags_message(pack_points(LAYOUTS["autoware_xyzirc"], arrays, point_step=16)), intensity_scale=100
    )
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
    cloud = decode(rosbags_message(pack_points(fields, arrays, height=h, point_step=32)), need_color=True)
    keep = np.isfinite(arrays["z"])
    assert np.array_equal(cloud.valid, keep)
    np.testing.assert_array_equal(cloud.color, colour[keep])
    assert cloud.strength is None


def test_big_endian_equals_little_endian():
    arrays = lidar_arrays(200)
    arrays["intensity"] = np.linspace(0, 255, 200).astype(np.float32)
    arrays["ring"] = np.arange(200).astype(np.uint16)
    little = pack_points(LAYOUTS["velodyne"], arrays, point_step=22)
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
    packed = pack_points(fields, arrays, height=3)
    width, step = 4, packed.point_step
    padded = np.zeros((3, width * step + 5), np.uint8)  # 5 padding bytes at the end of every row
    padded[:, : width * step] = packed.data.reshape(3, -1)
    msg = rosbags_message(packed)
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
        pack_points(LAYOUTS["velodyne"], arrays, point_step=22),
        PointCloud2,
        PointField,
        Header(stamp=Time(sec=3), frame_id="velodyne"),
    )
    assert msg.header.frame_id == "velodyne" and len(msg.data) == 22 * 1000
    cloud = decode(msg)
    np.testing.assert_array_equal(cloud.coord[:, 2], arrays["z"])
    np.testing.assert_allclose(cloud.strength, 0.1, rtol=1e-6)


@pytest.mark.parametrize(
    ("fields", "shared"),
    [
        (LAYOUTS["velodyne"], True),  # x, y, z consecutive float32: a view of the message
        ([FieldSpec("z", 0, FLOAT32), FieldSpec("y", 4, FLOAT32), FieldSpec("x", 8, FLOAT32)], False),
        ([FieldSpec("x", 0, FLOAT64), FieldSpec("y", 8, FLOAT64), FieldSpec("z", 16, FLOAT64)], False),
        ([FieldSpec("x", 0, FLOAT32), FieldSpec("y", 8, FLOAT32), FieldSpec("z", 4, FLOAT32)], False),
    ],
    ids=["velodyne", "reversed", "float64", "shuffled"],
)
def test_xyz_points_views_consecutive_float32_fields_and_copies_the_rest(fields, shared):
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    arrays = lidar_arrays(50)
    packed = pack_points(fields, arrays, point_step=24)
    xyz = xyz_points(structured_view(to_message(packed, PointCloud2, PointField, Header())).reshape(-1))
    expected = np.stack([arrays[a] for a in "xyz"], axis=1).astype(np.float32)
    np.testing.assert_array_equal(xyz, expected)
    assert xyz.dtype == np.float32 and np.shares_memory(xyz, packed.data) == shared
    assert not xyz.flags.writeable or not shared  # the message's bytes are not written through it


def test_an_rclpy_message_takes_the_packed_buffer_without_a_copy():
    """The node's output clouds (120k points, 2.9 MB each) are packed once: the message's data is the
    packed storage itself (rclpy's generated setter copies an array.array unless the message checks
    its fields), and padding bytes are zero."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    xyz = np.arange(18, dtype=np.float32).reshape(6, 3)
    arrays = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "class_id": np.arange(6, dtype=np.uint8)}
    fields = [*(FieldSpec(a, 4 * i, FLOAT32) for i, a in enumerate("xyz")), FieldSpec("class_id", 12, UINT8)]
    packed = pack_points(fields, arrays, point_step=16)
    msg = to_message(packed, PointCloud2, PointField, Header())
    assert msg.data is packed.storage
    numpy_sized = replace(packed, height=np.int64(2), width=np.int64(3), row_step=np.int64(48), is_dense=np.bool_(0))
    assert to_message(numpy_sized, PointCloud2, PointField, Header()).height == 2  # sizes given as numpy scalars
    data = np.frombuffer(msg.data, np.uint8).reshape(6, 16)
    assert not data[:, 13:].any() and data[:, 12].tolist() == list(range(6))
    np.testing.assert_array_equal(decode(msg).coord, xyz)


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
    with pytest.raises(PointCloudError, match="no reflectivity/intensity/i field"):
        decode(msg, need_strength=True)
    with pytest.raises(PointCloudError, match="no rgb"):
        decode(msg, need_color=True)
    empty = decode(bare(XYZ, np.zeros(0, np.uint8), width=0))
    assert empty.coord.shape == (0, 3) and empty.num_input_points == 0


def test_aligned_encoding_and_rgb_helpers():
    arrays = {"x": np.ones(3, np.float32), "flag": np.ones(3, np.uint8), "d": np.full(3, 2.0)}
    packed = pack_points(None, arrays, packed=False)
    assert [(f.name, f.offset, f.datatype) for f in packed.fields] == [
        ("x", 0, FLOAT32),
        ("flag", 4, UINT8),
        ("d", 8, FLOAT64),
    ]
    assert packed.point_step == 16
    colour = np.array([[255, 0, 1], [1, 2, 3]], np.uint8)
    np.testing.assert_array_equal(unpack_rgb(pack_rgb(colour)), colour)
    assert pack_rgb(colour).view(np.uint32)[0] == 0xFF0001
    with pytest.raises(PointCloudError, match="not a PointCloud2 datatype"):
        pack_points(None, {"x": np.ones(2, np.complex64)})
    assert INT16 in DATATYPES and UINT16 in DATATYPES


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (bare(XYZ, np.zeros(60, np.uint8)), "data has 60 bytes"),  # oversized
        (
            bare([*XYZ, SimpleNamespace(name="i", offset=6, datatype=UINT16, count=1)], np.zeros(48, np.uint8)),
            "overlap",
        ),
        (bare([*XYZ, SimpleNamespace(name="", offset=0, datatype=UINT8, count=1)], np.zeros(48, np.uint8)), "no name"),
        (
            bare(
                [XYZ[0], XYZ[1], SimpleNamespace(name="z", offset=8, datatype=INT16, count=1)], np.zeros(48, np.uint8)
            ),
            "coordinates must be one FLOAT32 or FLOAT64",
        ),
        (bare(XYZ, np.zeros(48, np.uint8), point_step=2**32 - 1), "point_step 4294967295 is outside"),
        (bare(XYZ, np.zeros(48, np.uint8), width=2**32 - 1, row_step=2**32 - 1), "row_step 4294967295 is shorter"),
    ],
)
def test_more_malformed_messages(msg, message):
    with pytest.raises(PointCloudError, match=message):
        decode(msg)


def test_packed_colour_of_the_wrong_size_is_refused_only_when_colour_is_needed():
    fields = [*XYZ, SimpleNamespace(name="rgb", offset=12, datatype=UINT8, count=1)]
    msg = bare(fields, np.zeros(4 * 16, np.uint8), point_step=16)
    assert decode(msg).color is None
    with pytest.raises(PointCloudError, match="packed colour"):
        decode(msg, need_color=True)


def test_adversarial_messages_decode_or_raise_point_cloud_error_only():
    """Thousands of broken messages: each is refused with PointCloudError (the right subclass) or decoded
    as its construction says; nothing else escapes (no numpy error, no MemoryError, no hang)."""
    reach = 1e4
    start = time.perf_counter()
    outcomes = Counter()
    for case in adversarial_cases(3000, seed=11, reach=reach):
        msg = as_namespace(case)
        try:
            cloud = decode(msg, need_strength=True)
        except MissingFieldError:
            outcome = "missing_field"
        except PointCloudError:
            outcome = "malformed"
        else:
            in_reach = (np.abs(cloud.coord).max(axis=1) <= reach).any() if len(cloud.coord) else False
            outcome = "empty" if cloud.num_input_points == 0 else "answer" if in_reach else "no_valid_points"
            assert cloud.strength is not None and np.all((cloud.strength >= 0) & (cloud.strength <= 1))
            assert cloud.valid.shape == (msg.height * msg.width,) and len(cloud.coord) == cloud.valid.sum()
        outcomes[case.expect, outcome] += 1
        if case.expect not in ("any", "wrong_frame"):  # the codec does not look at frame ids
            assert outcome == case.expect, (case.kind, outcome)
    assert time.perf_counter() - start < 30
    assert sum(n for (expect, _), n in outcomes.items() if expect == "malformed") > 1500


def test_huge_declared_sizes_allocate_nothing():
    base = adversarial.good(np.random.default_rng(0), 100)
    tracemalloc.start()
    try:
        for sizes in (
            {"width": 2**32 - 1, "height": 2**32 - 1, "row_step": 2**32 - 1, "point_step": 2**31 - 1},
            {"height": 2**32 - 1, "row_step": 2**32 - 1},
            {"width": 0, "height": 2**32 - 1, "row_step": 0},
        ):
            with pytest.raises(PointCloudError):
                decode(as_namespace(replace(base, **sizes)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
