"""Malformed and adversarial PointCloud2 messages, each with the outcome the node must report.

Every case starts from a small, valid Velodyne-layout cloud and breaks one thing (sizes, fields,
datatypes, endianness, coordinates, names, bytes). `expect` is decided when the case is built, from
how it was broken, not by running the codec: "answer" (the node publishes a segmentation), or the
reason the node counts it under ("malformed", "missing_field", "empty", "no_valid_points",
"wrong_frame"), or "any" for fully random headers (the node must answer or count it, nothing else).
"""

from __future__ import annotations

import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np

FRAME_ID = "lidar"
U32_MAX = 2**32 - 1
# Velodyne layout, point_step 22: x y z intensity f32, ring u16, time f32
BASE_FIELDS = [
    ("x", 0, 7, 1),
    ("y", 4, 7, 1),
    ("z", 8, 7, 1),
    ("intensity", 12, 7, 1),
    ("ring", 16, 4, 1),
    ("time", 18, 7, 1),
]
BASE_STEP = 22
_FORMATS = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


@dataclass(frozen=True)
class Case:
    kind: str
    expect: str
    height: int
    width: int
    point_step: int
    row_step: int
    fields: tuple[tuple[str, int, int, int], ...]
    data: bytes
    is_bigendian: bool = False
    frame_id: str = FRAME_ID


def _dtype(fields, point_step: int, order: str = "<") -> np.dtype:
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [order + _FORMATS[f[2]] for f in fields],
            "offsets": [f[1] for f in fields],
            "itemsize": point_step,
        }
    )


def _points(coord: np.ndarray, rng: np.random.Generator, order: str = "<") -> bytes:
    n = len(coord)
    points = np.zeros(n, _dtype(BASE_FIELDS, BASE_STEP, order))
    points["x"], points["y"], points["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    points["intensity"] = rng.uniform(0, 255, n)
    points["ring"] = rng.integers(0, 16, n)
    points["time"] = rng.uniform(0, 0.1, n)
    return points.tobytes()


def _coords(rng: np.random.Generator, n: int) -> np.ndarray:
    coord = rng.uniform(-30, 30, (n, 3)).astype(np.float32)
    coord[:, 2] = rng.uniform(-2, 3, n)
    return coord


def good(rng: np.random.Generator, n: int | None = None, kind: str = "good") -> Case:
    n = int(rng.integers(50, 400)) if n is None else n
    data = _points(_coords(rng, n), rng)
    return Case(kind, "answer", 1, n, BASE_STEP, BASE_STEP * n, tuple(BASE_FIELDS), data)


def _with_fields(case: Case, kind: str, expect: str, change: Callable[[list], list]) -> Case:
    return replace(case, kind=kind, expect=expect, fields=tuple(change([list(f) for f in case.fields])))


def _set(fields: list, name: str, position: int, value) -> list:
    for field in fields:
        if field[0] == name:
            field[position] = value
    return [tuple(f) for f in fields]


# ------------------------------------------------------------------------------------------- breaking


def truncated(rng, base):
    return replace(base, kind="truncated", expect="malformed", data=base.data[: int(rng.integers(0, len(base.data)))])


def oversized(rng, base):
    return replace(base, kind="oversized", expect="malformed", data=base.data + rng.bytes(int(rng.integers(1, 4096))))


def row_step_short(rng, base):
    return replace(base, kind="row_step_short", expect="malformed", row_step=base.row_step - int(rng.integers(1, 22)))


def height_mismatch(rng, base):
    return replace(base, kind="height_mismatch", expect="malformed", height=int(rng.integers(2, 6)))


def width_overclaim(rng, base):
    return replace(base, kind="width_overclaim", expect="malformed", width=base.width + int(rng.integers(1, 10**6)))


def overflowing_sizes(rng, base):
    choices = [
        {"width": U32_MAX, "height": U32_MAX},
        {"point_step": U32_MAX},
        {"row_step": U32_MAX, "height": U32_MAX},
        {"width": 2**31, "point_step": 2**31, "row_step": U32_MAX},
        {"width": U32_MAX, "row_step": U32_MAX},
    ]
    return replace(base, kind="overflowing_sizes", expect="malformed", **choices[int(rng.integers(len(choices)))])


def field_past_point(rng, base):
    offset = int(rng.choice([19, 20, 21, 100, U32_MAX]))
    return _with_fields(base, "field_past_point", "malformed", lambda f: _set(f, "time", 1, offset))


def overlapping_fields(rng, base):
    offset = int(rng.integers(1, 12))  # intensity over x, y or z
    return _with_fields(base, "overlapping_fields", "malformed", lambda f: _set(f, "intensity", 1, offset))


def duplicate_field(rng, base):
    name = str(rng.choice(["x", "y", "z", "ring"]))
    return _with_fields(base, "duplicate_field", "malformed", lambda f: _set(f, "time", 0, name))


def unknown_datatype(rng, base):
    name = str(rng.choice(["x", "intensity", "ring"]))
    datatype = int(rng.choice([0, 9, 10, 100, 255]))
    return _with_fields(base, "unknown_datatype", "malformed", lambda f: _set(f, name, 2, datatype))


def zero_count(rng, base):
    name = str(rng.choice(["y", "intensity", "time"]))
    return _with_fields(base, "zero_count", "malformed", lambda f: _set(f, name, 3, 0))


def coordinate_type(rng, base):
    axis, datatype = str(rng.choice(["x", "y", "z"])), int(rng.choice([1, 2, 3, 4, 5, 6]))
    return _with_fields(base, "coordinate_type", "malformed", lambda f: _set(f, axis, 2, datatype))


def missing_axis(rng, base):
    axis = str(rng.choice(["x", "y", "z"]))
    return _with_fields(base, "missing_axis", "malformed", lambda f: [tuple(x) for x in f if x[0] != axis])


def empty_field_name(rng, base):
    name = str(rng.choice(["intensity", "ring", "time"]))
    return _with_fields(base, "empty_field_name", "malformed", lambda f: _set(f, name, 0, ""))


def big_endian(rng, base):
    """Correctly big-endian: a good cloud."""
    n = base.width
    return replace(base, kind="big_endian", expect="answer", is_bigendian=True, data=_points(_coords(rng, n), rng, ">"))


def flipped_endianness(rng, base):
    """Little-endian bytes flagged big-endian; each coordinate's low bytes are 0x7F 0x80, which read big-endian
    start an all-ones exponent: every point is inf or NaN."""
    points = np.frombuffer(bytearray(base.data), _dtype(BASE_FIELDS, BASE_STEP)).copy()
    for axis in "xyz":
        bits = points[axis].view(np.uint32)
        points[axis] = ((bits & 0xFFFF0000) | 0x807F).view(np.float32)
    return replace(base, kind="flipped_endianness", expect="no_valid_points", is_bigendian=True, data=points.tobytes())


def _with_coords(base: Case, kind: str, expect: str, change: Callable[[np.ndarray], None]) -> Case:
    points = np.frombuffer(bytearray(base.data), _dtype(BASE_FIELDS, BASE_STEP)).copy()
    coord = np.stack([points[a] for a in "xyz"], axis=1)
    change(coord)
    for i, axis in enumerate("xyz"):
        points[axis] = coord[:, i]
    return replace(base, kind=kind, expect=expect, data=points.tobytes())


def _some(rng, n: int) -> np.ndarray:
    return rng.random(n) < 0.5


def nan_inf_all(rng, base):
    values = np.array([np.nan, np.inf, -np.inf], np.float32)

    def change(coord):
        coord[:, int(rng.integers(3))] = rng.choice(values, len(coord))

    return _with_coords(base, "nan_inf_all", "no_valid_points", change)


def nan_inf_some(rng, base):
    def change(coord):
        coord[_some(rng, len(coord)), int(rng.integers(3))] = np.nan
        coord[0] = (1.0, 2.0, 0.5)  # at least one valid point

    return _with_coords(base, "nan_inf_some", "answer", change)


def huge_all(rng, base):
    def change(coord):
        coord[:] = np.sign(coord + 0.1) * rng.uniform(1e20, 3e38, coord.shape).astype(np.float32)

    return _with_coords(base, "huge_all", "no_valid_points", change)


def huge_some(rng, base):
    def change(coord):
        coord[_some(rng, len(coord)), 0] = np.float32(3e38)
        coord[0] = (1.0, 2.0, 0.5)

    return _with_coords(base, "huge_some", "answer", change)


def zeros_all(rng, base):
    return _with_coords(base, "zeros_all", "no_valid_points", lambda coord: coord.fill(0))


def empty(rng, base):
    return replace(base, kind="empty", expect="empty", width=0, row_step=0, data=b"")


def foreign_frame_id(rng, base):
    frame_id = str(rng.choice(["", "ライダー", "lidar\u200b", "Łidar", "lidar ", "velodyne"]))
    return replace(base, kind="foreign_frame_id", expect="wrong_frame", frame_id=frame_id)


def non_ascii_field_names(rng, base):
    name = str(rng.choice(["強度", "intensité", "інтенсивність"]))
    return _with_fields(base, "non_ascii_field_names", "missing_field", lambda f: _set(f, "intensity", 0, name))


def no_strength(rng, base):
    return _with_fields(base, "no_strength", "missing_field", lambda f: [tuple(x) for x in f if x[0] != "intensity"])


def random_bytes_misfit(rng, base):
    size = int(rng.integers(0, 2 * len(base.data)))
    size += size == len(base.data)
    return replace(base, kind="random_bytes_misfit", expect="malformed", data=rng.bytes(size))


def random_bytes(rng, base, reach: float):
    """Random bytes of the right size: random floats; the outcome follows from them."""
    data = rng.bytes(len(base.data))
    points = np.frombuffer(data, _dtype(BASE_FIELDS, BASE_STEP))
    coord = np.stack([points[a] for a in "xyz"], axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(coord).all(1) & coord.any(1) & (np.abs(coord).max(1) <= reach)
    return replace(base, kind="random_bytes", expect="answer" if ok.any() else "no_valid_points", data=data)


def tiny(rng, base):
    return good(rng, int(rng.integers(1, 4)), kind="tiny")


def random_header(rng, base):
    """Everything random: names, offsets, datatypes, counts, sizes and bytes."""
    names = ["x", "y", "z", "intensity", "ring", "", "é", "rgb"]
    fields = tuple(
        (str(rng.choice(names)), int(rng.integers(0, 40)), int(rng.integers(0, 11)), int(rng.integers(0, 4)))
        for _ in range(int(rng.integers(0, 7)))
    )
    height, width, step = int(rng.integers(0, 4)), int(rng.integers(0, 60)), int(rng.integers(0, 48))
    row_step = int(rng.choice([step * width, int(rng.integers(0, 3000))]))
    data = rng.bytes(int(rng.choice([row_step * height, int(rng.integers(0, 3000))])))
    return Case("random_header", "any", height, width, step, row_step, fields, data, bool(rng.integers(2)))


KINDS: tuple[Callable, ...] = (
    truncated,
    oversized,
    row_step_short,
    height_mismatch,
    width_overclaim,
    overflowing_sizes,
    field_past_point,
    overlapping_fields,
    duplicate_field,
    unknown_datatype,
    zero_count,
    coordinate_type,
    missing_axis,
    empty_field_name,
    big_endian,
    flipped_endianness,
    nan_inf_all,
    nan_inf_some,
    huge_all,
    huge_some,
    zeros_all,
    empty,
    foreign_frame_id,
    non_ascii_field_names,
    no_strength,
    random_bytes_misfit,
    random_bytes,
    tiny,
    random_header,
)


def cases(count: int, seed: int, reach: float) -> Iterator[Case]:
    """`count` cases, every kind in turn, each from a fresh small cloud."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        base = good(rng)
        yield kind(rng, base, reach) if kind is random_bytes else kind(rng, base)


def million_identical_points() -> Case:
    n = 1_000_000
    points = np.zeros(n, _dtype(BASE_FIELDS, BASE_STEP))
    points["x"], points["y"], points["z"], points["intensity"] = 4.0, -2.0, 0.5, 100.0
    return Case("million_identical", "answer", 1, n, BASE_STEP, BASE_STEP * n, tuple(BASE_FIELDS), points.tobytes())


def as_namespace(case: Case) -> SimpleNamespace:
    """What the codec sees (duck-typed like rclpy and rosbags messages)."""
    fields = [SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in case.fields]
    return SimpleNamespace(
        height=case.height,
        width=case.width,
        fields=fields,
        is_bigendian=case.is_bigendian,
        point_step=case.point_step,
        row_step=case.row_step,
        data=np.frombuffer(case.data, np.uint8),
        is_dense=False,
    )


def as_ros(case: Case, stamp):
    """An rclpy sensor_msgs/PointCloud2 of `case` stamped `stamp`."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    msg = PointCloud2()
    msg.header = Header(stamp=stamp, frame_id=case.frame_id)
    msg.height, msg.width = case.height, case.width
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in case.fields]
    msg.is_bigendian, msg.is_dense = case.is_bigendian, False
    msg.point_step, msg.row_step = case.point_step, case.row_step
    msg.data = array.array("B", case.data)
    return msg


def valid_points(case: Case, reach: float) -> np.ndarray:
    """(width,) bool: the points of a base-layout case the node must label (finite, not all zero, in reach)."""
    points = np.frombuffer(case.data, _dtype(BASE_FIELDS, BASE_STEP, ">" if case.is_bigendian else "<"))
    with np.errstate(invalid="ignore"):
        coord = np.stack([points[a] for a in "xyz"], axis=1).astype(np.float64)
        return np.isfinite(coord).all(1) & coord.any(1) & (np.abs(coord).max(1) <= reach)
