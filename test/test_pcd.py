"""PCD files: every encoding and field set round-trips, malformed files say what is wrong, the `pcd:`
source, and every real scan in ../shared/real/ decodes with its documented point count and fields."""

from __future__ import annotations

import runpy
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from sonata_model.io import lzf
from sonata_model.io.datasets import read_kitti_scan, read_nuscenes_scan
from sonata_model.io.pcd import PcdError, PcdSource, read_packed, read_pcd, read_points, write_pcd
from sonata_model.io.pointcloud2 import decode, pack_rgb, to_message, unpack_rgb
from sonata_model.io.sources import SkippingSource, open_source
from sonata_model.train.extract import main as extract_main

ROS2 = get_typestore(Stores.ROS2_JAZZY)

DATA = Path(__file__).parent / "data"
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
ENCODINGS = ("ascii", "binary", "binary_compressed")


def cloud_arrays(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Every PCD type and size, COUNT > 1, colour, normals; point 3 is NaN and point 4 all zero (invalid)."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0, 20, (n, 3)).astype(np.float32)
    xyz[3, 1] = np.nan
    xyz[4] = 0
    normal = rng.normal(size=(n, 3))
    return {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "intensity": rng.integers(0, 256, n).astype(np.uint8),
        "ring": rng.integers(0, 128, n).astype(np.uint16),
        "time": rng.uniform(0, 0.1, n).astype(np.float32),
        "rgb": pack_rgb(rng.integers(0, 256, (n, 3)).astype(np.uint8)),
        "normal_x": (normal[:, 0] / np.linalg.norm(normal, axis=1)).astype(np.float32),
        "normal_y": (normal[:, 1] / np.linalg.norm(normal, axis=1)).astype(np.float32),
        "normal_z": (normal[:, 2] / np.linalg.norm(normal, axis=1)).astype(np.float32),
        "descriptor": rng.normal(size=(n, 5)),  # F8, COUNT 5
        "i8": rng.integers(-128, 128, n).astype(np.int8),
        "i16": rng.integers(-(2**15), 2**15, n).astype(np.int16),
        "i32": rng.integers(-(2**31), 2**31, n).astype(np.int32),
        "i64": rng.integers(-(2**62), 2**62, n).astype(np.int64),
        "u32": rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32),
        "u64": np.array([2**64 - 1, *rng.integers(0, 2**63, n - 1)], dtype=np.uint64),
    }


def assert_same_records(points: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    assert points.dtype.names == tuple(arrays)
    for name, values in arrays.items():
        np.testing.assert_array_equal(points[name], values, err_msg=name)  # NaN == NaN here


@pytest.mark.parametrize("data", ENCODINGS)
def test_every_encoding_round_trips_every_field_type(tmp_path, data):
    arrays = cloud_arrays()
    path = write_pcd(tmp_path / "cloud.pcd", arrays, data=data)
    header, points = read_points(path)
    assert (header.data, header.points, header.width, header.height) == (data, 64, 64, 1)
    stored = {**arrays, "rgb": arrays["rgb"].view(np.uint32)} if data == "ascii" else arrays  # PCL: U in ascii
    assert_same_records(points, stored)
    assert [(f.name, f.type, f.size, f.count) for f in header.fields][10:12] == [
        ("descriptor", "F", 8, 5),
        ("i8", "I", 1, 1),
    ]


@pytest.mark.parametrize("data", ENCODINGS)
def test_a_frame_follows_the_pointcloud2_rules(tmp_path, data):
    arrays = cloud_arrays()
    frame = read_pcd(write_pcd(tmp_path / "scan7.pcd", arrays, data=data))
    valid = np.ones(64, bool)
    valid[[3, 4]] = False  # NaN and all-zero points are dropped, as PointCloud2's decode drops them
    assert frame.name == "scan7" and frame.num_points == 62 and frame.pose is None
    np.testing.assert_array_equal(frame.coord, np.stack([arrays[a][valid] for a in "xyz"], axis=1))
    np.testing.assert_allclose(frame.strength, arrays["intensity"][valid] / 255, rtol=1e-6)  # u8 -> / 255
    np.testing.assert_array_equal(frame.color, unpack_rgb(arrays["rgb"][valid]))
    np.testing.assert_array_equal(frame.normal[:, 2], arrays["normal_z"][valid])
    assert frame.extra.keys() == {"ring", "time", "descriptor", "i8", "i16", "i32", "i64", "u32", "u64"}
    np.testing.assert_array_equal(frame.extra["ring"], arrays["ring"][valid])
    np.testing.assert_array_equal(frame.extra["time"], arrays["time"][valid])
    np.testing.assert_array_equal(frame.extra["descriptor"], arrays["descriptor"][valid])
    np.testing.assert_array_equal(frame.extra["u64"], arrays["u64"][valid])
    assert read_pcd(tmp_path / "scan7.pcd", intensity_scale=100.0).strength.max() == 1.0  # explicit scale, clipped


def test_organized_clouds_keep_their_grid_and_rows(tmp_path):
    arrays = {name: cloud_arrays(48)[name] for name in ("x", "y", "z", "intensity")}
    path = write_pcd(tmp_path / "organized.pcd", arrays, data="binary_compressed", height=4)
    header, points = read_points(path)
    assert (header.width, header.height, points.shape) == (12, 4, (48,))
    assert_same_records(points, arrays)
    assert read_pcd(path).num_points == 46


def test_binary_data_is_a_zero_copy_view_of_the_file(tmp_path):
    _, points = read_points(write_pcd(tmp_path / "c.pcd", cloud_arrays(), data="binary"))
    assert points.base is not None and not points.flags.writeable and not points.flags.owndata


def padded_file(path: Path, data: str, n: int = 5) -> tuple[Path, dict[str, np.ndarray]]:
    """A file as PCL writes aligned point types: `_` padding fields between and after the real ones."""
    x = np.arange(n, dtype=np.float32) + 1
    y, z, label = x * 2, -x, np.arange(n, dtype=np.uint32) * 7
    fields = "FIELDS x _ y z label _\nSIZE 4 1 4 4 4 4\nTYPE F U F F U F\nCOUNT 1 3 1 1 1 2\n"
    header = f"VERSION .7\n{fields}WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    if data == "binary":
        records = np.zeros(n, np.dtype({"names": ["x", "y", "z", "label"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                                        "offsets": [0, 7, 11, 15], "itemsize": 27}))  # fmt: skip
        records["x"], records["y"], records["z"], records["label"] = x, y, z, label
        records.view(np.uint8).reshape(n, 27)[:, 4:7] = 0xAB  # padding bytes hold garbage
        body = records.tobytes()
    elif data == "ascii":  # padding values are present in the text and skipped
        body = "".join(f"{a} 9 9 9 {b} {c} {d} 9 9\n" for a, b, c, d in zip(x, y, z, label, strict=True)).encode()
    else:  # binary_compressed leaves padding out of its planes
        planes = x.tobytes() + y.tobytes() + z.tobytes() + label.tobytes()
        stream = lzf.compress(planes)
        body = struct.pack("<II", len(stream), len(planes)) + stream
    path.write_bytes(header.encode() + body)
    return path, {"x": x, "y": y, "z": z, "label": label}


@pytest.mark.parametrize("data", ENCODINGS)
def test_padding_fields_are_skipped_in_every_encoding(tmp_path, data):
    path, arrays = padded_file(tmp_path / "padded.pcd", data)
    header, points = read_points(path)
    assert header.point_step == 27 and header.version == ".7"
    assert_same_records(points, arrays)
    assert read_pcd(path).extra["label"].tolist() == [0, 7, 14, 21, 28]


def test_a_file_becomes_the_pointcloud2_its_driver_published(tmp_path):
    path, arrays = padded_file(tmp_path / "padded.pcd", "binary")
    packed = read_packed(path)
    assert packed.data.size == 5 * 27
    assert [(f.name, f.offset, f.datatype, f.count) for f in packed.fields] == [
        ("x", 0, 7, 1),
        ("y", 7, 7, 1),
        ("z", 11, 7, 1),
        ("label", 15, 6, 1),
    ]
    assert (packed.point_step, packed.row_step, packed.height, packed.width) == (27, 135, 1, 5)
    types = ROS2.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    msg = to_message(packed, types["sensor_msgs/msg/PointCloud2"], types["sensor_msgs/msg/PointField"], header)
    np.testing.assert_array_equal(decode(msg).coord, np.stack([arrays[a] for a in "xyz"], axis=1))
    wide = write_pcd(tmp_path / "wide.pcd", {"x": np.zeros(2, np.float32), "stamp": np.zeros(2, np.uint64)})
    with pytest.raises(PcdError, match="field 'stamp' has dtype uint64, which PointCloud2 has no datatype for"):
        read_packed(wide)


def test_old_headers_default_like_pcl(tmp_path):
    """PCD v0.5: COLUMNS, no SIZE / TYPE / COUNT (float32), no WIDTH / HEIGHT / VIEWPOINT."""
    path = tmp_path / "v5.pcd"
    path.write_bytes(b"# .PCD v.5\nVERSION .5\nCOLUMNS x y z\nPOINTS 2\nDATA ascii\n1 2 3\n4.5 nan 6\n")
    header, points = read_points(path)
    assert (header.width, header.height, header.viewpoint) == (2, 1, (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0))
    assert points.dtype == np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    assert read_pcd(path).coord.tolist() == [[1, 2, 3]]


def test_the_viewpoint_puts_points_in_the_sensor_frame_and_becomes_the_pose(tmp_path):
    sensor = np.array([[10.0, 0, 0], [0, 5, 1], [1, 2, 3]], np.float32)
    normals = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    half = np.sqrt(0.5)  # yaw +90 degrees: sensor x -> file y
    rotation, translation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.array([100.0, -20.0, 2.0])
    world, world_normals = sensor @ rotation.T + translation, normals @ rotation.T
    arrays = {"x": world[:, 0], "y": world[:, 1], "z": world[:, 2]}
    arrays |= {f"normal_{a}": world_normals[:, k].astype(np.float32) for k, a in enumerate("xyz")}
    path = write_pcd(tmp_path / "map.pcd", arrays, viewpoint=(100, -20, 2, half, 0, 0, half))
    frame = read_pcd(path)
    np.testing.assert_allclose(frame.coord, sensor, atol=1e-5)
    np.testing.assert_allclose(frame.normal, normals, atol=1e-6)
    np.testing.assert_allclose(frame.pose[:3, :3], rotation, atol=1e-12)
    np.testing.assert_allclose(frame.coord @ frame.pose[:3, :3].T + frame.pose[:3, 3], world, atol=1e-4)


# ------------------------------------------------------------------------------------------------ LZF


def test_lzf_tokens_decode_as_liblzf_defines_them():
    literal_then_copy = bytes([2, *b"abc", 1 << 5, 2])  # literal "abc", copy 3 bytes from distance 3
    assert lzf.decompress(literal_then_copy, 6) == b"abcabc"
    run = bytes([0, *b"a", 7 << 5, 5, 0])  # long copy: 7 + 5 + 2 = 14 bytes from distance 1 (overlapping)
    assert lzf.decompress(run, 15) == b"a" * 15
    far = bytes([31, *range(32)]) * 10 + bytes([1 << 5 | 1, 63])  # distance (1 << 8 | 63) + 1 = 320
    assert lzf.decompress(far, 323)[-3:] == bytes([0, 1, 2])


@pytest.mark.parametrize(
    ("stream", "size", "problem"),
    [
        (bytes([5, *b"ab"]), 6, "literal run of 6 bytes at input byte 0 runs past the end"),
        (bytes([0, *b"a", 1 << 5, 4]), 4, "points 4 bytes before the start"),
        (bytes([0, *b"a", 7 << 5]), 10, "cut off"),
        (bytes([1, *b"ab"]), 3, "stream decodes to 2 bytes, 3 declared"),
        (bytes([1, *b"ab"]), 1, "output exceeds the declared 1 bytes"),
    ],
)
def test_corrupt_lzf_streams_raise(stream, size, problem):
    with pytest.raises(lzf.LzfError, match=problem):
        lzf.decompress(stream, size)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"ab",
        bytes(100_000),
        np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        np.random.default_rng(2).integers(0, 3, 50_000, dtype=np.uint8).tobytes(),
        np.tile(np.arange(7, dtype=np.float32), 9000).tobytes(),
    ],
)
def test_lzf_compression_round_trips(data):
    stream = lzf.compress(data)
    assert lzf.decompress(stream, len(data)) == data
    if len(data) == 100_000:
        assert len(stream) < 2000  # zeros: back-references of the longest length
    assert len(stream) <= len(data) + len(data) // 32 + 1  # at worst literal runs


def test_a_stream_compressed_by_liblzf_decodes_to_its_points():
    """The stream of test/data/liblzf_compressed.pcd was written by the real liblzf (see that folder)."""
    expected = runpy.run_path(str(DATA / "liblzf_compressed.py"))["arrays"]()
    header, points = read_points(DATA / "liblzf_compressed.pcd")
    assert header.data == "binary_compressed"
    assert_same_records(points, expected)
    frame = read_pcd(DATA / "liblzf_compressed.pcd")
    assert frame.num_points == 298 and frame.extra["time"][-1] == np.float32(299e-5)


def test_lzf_speed_on_a_full_vls128_sized_frame():
    """208,680 points of x, y, z: compress and decompress well within a second each (loops over tokens)."""
    xyz = np.random.default_rng(3).normal(0, 30, (208_680, 3)).astype(np.float32)
    planes = np.ascontiguousarray(xyz.T).tobytes()
    start = time.perf_counter()
    stream = lzf.compress(planes)
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    assert lzf.decompress(stream, len(planes)) == planes
    decompress_s = time.perf_counter() - start
    assert compress_s < 10 and decompress_s < 5, (compress_s, decompress_s)  # shared CPUs: generous bounds


# ----------------------------------------------------------------------------------------- malformed


def write(path: Path, header: str, body: bytes = b"") -> Path:
    path.write_bytes(header.encode() + body)
    return path


XYZ = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nHEIGHT 1\nPOINTS 2\n"


@pytest.mark.parametrize(
    ("header", "body", "problem"),
    [
        (XYZ + "DATA binary\n", bytes(20), r"truncated data: 2 points x 12 bytes need 24 bytes, the file holds 20"),
        (XYZ + "DATA ascii\n", b"1 2 3\n4 5\n", r"truncated data: ascii data holds 5 values, 2 points x 3"),
        (XYZ + "DATA ascii\n", b"1 2 3\n4 five 6\n", r"field 'y' holds a value that is not F4"),
        (XYZ + "DATA binary_compressed\n", b"\x05\x00", r"truncated data: binary_compressed needs 8 size bytes"),
        (XYZ + "DATA binary_compressed\n", struct.pack("<II", 50, 24) + bytes(10), "compressed size mismatch"),
        (XYZ + "DATA binary_compressed\n", struct.pack("<II", 2, 20) + bytes(2), r"size mismatch: 20 uncompressed"),
        (XYZ + "DATA binary_compressed\n", struct.pack("<II", 2, 24) + bytes([0, 1]), "corrupt binary_compressed"),
        (XYZ.replace("SIZE 4 4 4", "SIZE 4 4") + "DATA ascii\n", b"", "bad header: SIZE has 2 entries for 3 FIELDS"),
        (XYZ.replace("TYPE F F F", "TYPE F F X") + "DATA ascii\n", b"", "unknown type: field 'z' is TYPE X SIZE 4"),
        (XYZ.replace("SIZE 4 4 4", "SIZE 4 4 2") + "DATA ascii\n", b"", "unknown type: field 'z' is TYPE F SIZE 2"),
        (XYZ.replace("COUNT 1 1 1", "COUNT 1 0 1") + "DATA ascii\n", b"", "field 'y' has COUNT 0"),
        (XYZ.replace("COUNT 1 1 1", "COUNT 1 1 3000000000") + "DATA ascii\n", b"", "field 'z' has COUNT 3000000000"),
        (XYZ.replace("WIDTH 2", "WIDTH 3") + "DATA ascii\n", b"", r"WIDTH 3 x HEIGHT 1 != POINTS 2"),
        (XYZ.replace("POINTS 2", "POINTS two") + "DATA ascii\n", b"", "POINTS value 'two' is not a int"),
        (XYZ.replace("x y z", "x y y") + "DATA ascii\n", b"", "duplicate field names"),
        (XYZ + "DATA lzma\n", b"", "bad header: DATA 'lzma'"),
        (XYZ + "COLOUR red\nDATA ascii\n", b"", "bad header: unknown line 'COLOUR red'"),
        (XYZ, b"", "no DATA line"),
        (XYZ.replace("x y z", "x y q") + "DATA ascii\n", b"1 2 3\n4 5 6\n", "cloud has no z field"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path, header, body, problem):
    path = write(tmp_path / "bad.pcd", header, body)
    with pytest.raises(PcdError, match=problem) as raised:
        read_pcd(path)
    assert str(path) in str(raised.value)


def test_unwritable_arrays_are_refused(tmp_path):
    with pytest.raises(PcdError, match="array 'flag' has dtype bool"):
        write_pcd(tmp_path / "a.pcd", {"x": np.zeros(2, np.float32), "flag": np.zeros(2, bool)})
    with pytest.raises(PcdError, match="5 points do not fill 2 rows"):
        write_pcd(tmp_path / "a.pcd", {"x": np.zeros(5, np.float32)}, height=2)


# ------------------------------------------------------------------------------------------- sources


def pcd_folder(root: Path) -> list[dict[str, np.ndarray]]:
    root.mkdir()
    clouds = []
    for k, data in enumerate(("binary_compressed", "ascii", "binary")):
        arrays = {name: cloud_arrays(20 + k, seed=k)[name] for name in ("x", "y", "z", "intensity", "ring")}
        write_pcd(root / f"{k:06d}.pcd", arrays, data=data)
        clouds.append(arrays)
    (root / "notes.txt").write_text("not a cloud")
    return clouds


def test_a_pcd_folder_is_a_random_access_source(tmp_path):
    clouds = pcd_folder(tmp_path / "scans")
    source = open_source(f"pcd:{tmp_path / 'scans'}", label_set="semantic_kitti")
    assert isinstance(source, PcdSource) and len(source) == 3 and source.label_set.name == "semantic_kitti"
    for i in (2, 0, -1):
        frame = source[i]
        assert frame.name == f"{i % 3:06d}" and frame.num_points == 20 + i % 3 - 2
        valid = np.ones(len(clouds[i]["x"]), bool)
        valid[[3, 4]] = False
        np.testing.assert_array_equal(frame.coord[:, 0], clouds[i]["x"][valid])
    single = open_source(f"pcd:{tmp_path / 'scans' / '000001.pcd'}")
    assert len(single) == 1 and single[0].num_points == 19
    with pytest.raises(IndexError):
        source[3]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PcdError, match=r"folder holds no \.pcd file"):
        open_source(f"pcd:{tmp_path / 'empty'}")


def test_corrupt_pcd_files_are_skipped_in_training_and_extraction_copies_the_rest(tmp_path, capsys):
    clouds = pcd_folder(tmp_path / "scans")
    write(tmp_path / "scans" / "000001.pcd", XYZ + "DATA binary\n", bytes(3))
    skipping = SkippingSource(open_source(f"pcd:{tmp_path / 'scans'}"))
    assert [skipping[i] is None for i in range(3)] == [False, True, False]
    assert skipping.skipped == {"PcdError": 1}
    assert extract_main(["--data", f"pcd:{tmp_path / 'scans'}", "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "2 frames written, 0 already there, 1 unreadable" in capsys.readouterr().out
    extracted = open_source(f"frames:{tmp_path / 'out'}")
    assert len(extracted) == 2
    np.testing.assert_array_equal(extracted[1].strength, read_pcd(tmp_path / "scans" / "000002.pcd").strength)
    assert extracted[1].num_points == len(clouds[2]["x"]) - 2


# ----------------------------------------------------------------------------- real scans (shared/real)

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real scans not here: {REAL} is absent")

NEBULA = {  # file: points, fields, x / y / z extent (m) - all from nebula-driver-frames/PROVENANCE.md
    "vls128_1585897255376374245.pcd": (208_680, "x y z", (-202.2, 209.7, -214.6, 237.8, -6.1, 54.8)),
    "vlp16_1673400472138016708.pcd": (
        14_831,
        "x y z intensity return_type channel azimuth elevation distance time_stamp",
        (-8.1, 2.5, -12.6, 8.1, -0.7, 2.2),
    ),
    "vlp32_1713492677464078412.pcd": (26_216, "x y z", (-0.5, 23.5, -11.7, 7.6, -0.5, 2.6)),
    "xt32_1673400678101968885.pcd": (63_021, "x y z", (-8.1, 13.3, -11.0, 3.9, -0.8, 2.3)),
    "64_1673403880898440686.pcd": (93_591, "x y z", (-8.4, 11.3, -10.4, 4.7, -0.9, 2.3)),
    "ot128_1730271167863837186.pcd": (72_240, "x y z", (-36.9, 3.2, -7.0, 39.2, -9.2, 0.1)),
    "qt128_1730273789174759609.pcd": (73_560, "x y z", (-10.6, 8.3, -14.0, 8.3, -0.3, 2.7)),
    "xt16_1732848128093928016.pcd": (26_287, "x y z", (-9.4, 61.3, -5.4, 71.4, -1.0, 11.3)),
}


@needs_real
@pytest.mark.parametrize("name", sorted(NEBULA))
def test_every_nebula_driver_frame_decodes_with_its_points_and_fields(name):
    points_expected, fields, extent = NEBULA[name]
    path = REAL / "nebula-driver-frames" / "pcd" / name
    header, points = read_points(path)
    assert (header.data, header.points, points.dtype.names) == ("binary", points_expected, tuple(fields.split()))
    frame = read_pcd(path)
    assert frame.num_points == points_expected  # every point is finite and non-zero
    low, high = frame.coord.min(axis=0), frame.coord.max(axis=0)
    measured = (low[0], high[0], low[1], high[1], low[2], high[2])
    np.testing.assert_allclose(measured, extent, atol=0.051)
    if name.startswith("vlp16"):
        assert points.dtype["intensity"] == np.uint8 and points.dtype["channel"] == np.uint16
        assert frame.strength.max() == np.float32(119 / 255)  # intensity 0-119, u8 / 255
        assert (frame.extra["ring"].min(), frame.extra["ring"].max()) == (1, 15)  # channel 1-15
        assert frame.extra.keys() == {"ring", "time", "return_type", "azimuth", "elevation", "distance"}
        np.testing.assert_allclose(np.linalg.norm(frame.coord, axis=1), frame.extra["distance"], atol=2e-3)
    else:
        assert frame.strength is None and frame.extra == {}


@pytest.fixture
def kitti_root(tmp_path):
    """A SemanticKITTI root whose sequences are the real scan folders (links, nothing copied)."""

    def link(**sequences: Path) -> Path:
        (tmp_path / "sequences").mkdir()
        for seq, folder in sequences.items():
            (tmp_path / "sequences" / seq.removeprefix("s")).symlink_to(folder)
        return tmp_path

    return link


@needs_real
def test_the_semantickitti_scan_and_its_labels_decode(kitti_root):
    root = kitti_root(s08=REAL / "semantickitti-spvnas-000000")
    source = open_source(f"kitti:{root}")
    assert len(source) == 1 and source.label_set.name == "semantic_kitti"
    frame = source[0]
    raw = np.fromfile(REAL / "semantickitti-spvnas-000000" / "labels" / "000000.label", np.uint32)
    assert frame.num_points == len(frame.segment) == len(raw) == 123_389
    names = source.label_set.names
    counts = dict(
        zip(names, np.bincount(frame.segment[frame.segment >= 0], minlength=len(names)).tolist(), strict=True)
    )
    assert counts["road"] == 20_975 and counts["sidewalk"] == 30_092 and counts["car"] == 544 + 990  # PROVENANCE
    assert np.sum(frame.segment < 0) == 4458 + 5 + 809 + 1652  # unlabeled, outlier, other-structure, other-object
    assert len(np.unique(frame.instance)) == 12
    assert frame.coord[:, 2].min() == pytest.approx(-27.64, abs=0.01) and frame.strength.max() <= 0.99


@needs_real
def test_the_kitti_odometry_and_object_scans_decode(kitti_root):
    root = kitti_root(s00=REAL / "kitti-odometry-seq00-patchwork")
    source = open_source(f"kitti:{root}")
    assert [source[i].num_points for i in range(len(source))] == [124_668, 124_605]
    assert source[0].segment is None
    cropped = read_kitti_scan(REAL / "nuscenes-kitti-mmdet3d-demo" / "kitti_000008.bin")
    assert cropped.num_points == 17_238 and cropped.coord[:, 0].min() == pytest.approx(2.89, abs=0.01)


@needs_real
def test_the_nuscenes_sweep_decodes_with_its_rings():
    path = REAL / "nuscenes-kitti-mmdet3d-demo" / "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
    frame = read_nuscenes_scan(path)
    assert frame.num_points == 34_688 and np.isfinite(frame.coord).all()
    assert np.array_equal(np.unique(frame.extra["ring"]), np.arange(32))
    assert (frame.strength.min(), frame.strength.max()) == (0.0, 1.0)  # intensity 0-255
