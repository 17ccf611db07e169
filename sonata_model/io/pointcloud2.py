"""sensor_msgs/PointCloud2 <-> numpy, without ROS.

Message objects from rclpy (`data` is an array.array) and from `rosbags` (`data` is a numpy uint8
array) have the same attributes, so one duck-typed codec serves both. Decoding builds a zero-copy
numpy structured view over the message buffer that honours each field's offset, datatype, count and
the message's endianness, point_step, row_step (row padding) and height (organized clouds); nothing
loops over points. Every malformed message raises `PointCloudError` with what is wrong.

Strength in [0, 1] (what the models were trained on: remission, a property of the surface) comes from
`reflectivity` when the cloud has it (Ouster: calibrated reflectivity 0-255 in a u16 or u8, 0-100 for
diffuse targets, 101-255 for retro-reflectors; its float `intensity` is signal photons, which fall with
range and reach the thousands), else from `intensity` / `i`. An explicit `intensity_scale` divides;
otherwise reflectivity / 255, UINT8 / 255, UINT16 / 65535 and floats / 255 (Velodyne, Hesai, Livox and
RoboSense publish 0-255 floats); then clipped, and the number of clipped values is reported so that a
saturating driver is noticed. Invalid points (NaN / inf coordinates, all-zero returns as Ouster sends
them) are masked.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import all_columns

INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
DATATYPES: dict[int, np.dtype] = {
    INT8: np.dtype("i1"),
    UINT8: np.dtype("u1"),
    INT16: np.dtype("i2"),
    UINT16: np.dtype("u2"),
    INT32: np.dtype("i4"),
    UINT32: np.dtype("u4"),
    FLOAT32: np.dtype("f4"),
    FLOAT64: np.dtype("f8"),
}
_DATATYPE_OF = {dtype: code for code, dtype in DATATYPES.items()}
STRENGTH_FIELDS = ("reflectivity", "intensity", "i")  # in order of preference
COORD_DATATYPES = (FLOAT32, FLOAT64)
MAX_POINT_STEP = 2**31 - 1  # numpy's largest item size
RGB_FIELDS = ("rgb", "rgba")
NORMAL_FIELDS = ("normal_x", "normal_y", "normal_z")
RING_FIELDS = ("ring", "channel")  # Velodyne / Ouster / Hesai, Autoware / Nebula
TIME_FIELDS = {"time": 1.0, "t": 1e-9, "time_stamp": 1e-9}  # name -> seconds per unit, in order of preference


class PointCloudError(ValueError):
    """A PointCloud2 message that cannot be decoded; the message says what is wrong."""


class MissingFieldError(PointCloudError):
    """A well-formed cloud without a field the caller needs (intensity, colour)."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    offset: int
    datatype: int
    count: int = 1


def _layout(*fields: tuple[str, int, int] | tuple[str, int, int, int]) -> list[FieldSpec]:
    return [FieldSpec(*f) for f in fields]


LAYOUTS: dict[str, list[FieldSpec]] = {
    # Velodyne (velodyne_pointcloud): point_step 22
    "velodyne": _layout(
        ("x", 0, FLOAT32),
        ("y", 4, FLOAT32),
        ("z", 8, FLOAT32),
        ("intensity", 12, FLOAT32),
        ("ring", 16, UINT16),
        ("time", 18, FLOAT32),
    ),
    # Ouster (ouster-ros default): point_step 48, organized (height = beams)
    "ouster": _layout(
        ("x", 0, FLOAT32),
        ("y", 4, FLOAT32),
        ("z", 8, FLOAT32),
        ("intensity", 16, FLOAT32),
        ("t", 20, UINT32),
        ("reflectivity", 24, UINT16),
        ("ring", 26, UINT16),
        ("ambient", 28, UINT16),
        ("range", 32, UINT32),
    ),
    # Livox (livox_ros_driver2, PointXYZRTLT): point_step 26
    "livox": _layout(
        ("x", 0, FLOAT32),
        ("y", 4, FLOAT32),
        ("z", 8, FLOAT32),
        ("intensity", 12, FLOAT32),
        ("tag", 16, UINT8),
        ("line", 17, UINT8),
        ("timestamp", 18, FLOAT64),
    ),
    # Hesai (HesaiLidar_ROS_2.0): point_step 26
    "hesai": _layout(
        ("x", 0, FLOAT32),
        ("y", 4, FLOAT32),
        ("z", 8, FLOAT32),
        ("intensity", 12, FLOAT32),
        ("ring", 16, UINT16),
        ("timestamp", 18, FLOAT64),
    ),
    # Autoware / Nebula PointXYZIRC: point_step 16, intensity u8
    "autoware_xyzirc": _layout(
        ("x", 0, FLOAT32),
        ("y", 4, FLOAT32),
        ("z", 8, FLOAT32),
        ("intensity", 12, UINT8),
        ("return_type", 13, UINT8),
        ("channel", 14, UINT16),
    ),
    # RGB-D camera (depth_image_proc point_cloud_xyzrgb): organized, NaNs, packed rgb as float32
    "rgbd": _layout(("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("rgb", 16, FLOAT32)),
    # PCL PointXYZI
    "xyzi": _layout(("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 16, FLOAT32)),
}
LAYOUT_POINT_STEP = {
    "velodyne": 22,
    "ouster": 48,
    "livox": 26,
    "hesai": 26,
    "autoware_xyzirc": 16,
    "rgbd": 32,
    "xyzi": 32,
}


@dataclass
class DecodedCloud:
    coord: np.ndarray  # (N, 3) float32 of the valid points
    strength: np.ndarray | None  # (N,) float32 in [0, 1]
    strength_field: str | None  # the field strength came from
    strength_clipped: int  # valid points whose strength was above 1 before clipping (a scale too small)
    color: np.ndarray | None  # (N, 3) uint8
    normal: np.ndarray | None  # (N, 3) float32
    valid: np.ndarray  # (height * width,) bool, row-major
    num_input_points: int


@dataclass
class PackedPoints:
    fields: list[FieldSpec]
    point_step: int
    row_step: int
    height: int
    width: int
    is_bigendian: bool
    is_dense: bool
    data: np.ndarray  # uint8, contiguous, row_step * height bytes
    storage: array.array | None = None  # the array.array('B') that `data` views, when packed here


def _buffer(msg) -> np.ndarray:
    data = msg.data
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)  # array.array / bytes / memoryview: zero copy


def message_dtype(msg) -> np.dtype:
    """The numpy structured dtype of one point of `msg` (validated: known datatypes, counts >= 1, named,
    distinct, non-overlapping fields inside point_step)."""
    point_step = int(msg.point_step)
    if not 0 <= point_step <= MAX_POINT_STEP:
        raise PointCloudError(f"point_step {point_step} is outside 0..{MAX_POINT_STEP}")
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets, extents = [], [], [], []
    for field in msg.fields:
        name, offset, datatype, count = field.name, int(field.offset), int(field.datatype), int(field.count)
        if not isinstance(name, str) or not name:
            raise PointCloudError(f"a field at offset {offset} has no name")
        if datatype not in DATATYPES:
            raise PointCloudError(f"field {name!r} has unknown datatype {datatype} (expected 1-8)")
        if count < 1:
            raise PointCloudError(f"field {name!r} has count {count} (must be >= 1)")
        if name in names:
            raise PointCloudError(f"duplicate field name {name!r}")
        base = DATATYPES[datatype].newbyteorder(order)
        size = base.itemsize * count
        if offset < 0 or offset + size > point_step:
            raise PointCloudError(f"field {name!r} (offset {offset}, {size} bytes) lies beyond point_step {point_step}")
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
        extents.append((offset, offset + size, name))
    extents.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(extents):
        if start < end:
            raise PointCloudError(f"fields {first!r} and {second!r} overlap")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def structured_view(msg) -> np.ndarray:
    """Zero-copy (height, width) structured array over the message's bytes.

    Sizes are checked as Python integers before numpy sees them, so a message that declares more points
    than its data holds (or sizes that overflow 64 bits) is refused without allocating anything.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise PointCloudError(f"height {height} x width {width} is negative")
    dtype = message_dtype(msg)
    data = _buffer(msg)
    points = height * width
    if points and point_step <= 0:
        raise PointCloudError(f"point_step is {point_step} for {points} points")
    if row_step < point_step * width:
        raise PointCloudError(f"row_step {row_step} is shorter than width {width} x point_step {point_step}")
    needed = row_step * height
    if data.size != needed:
        raise PointCloudError(f"data has {data.size} bytes, row_step {row_step} x height {height} needs {needed}")
    if points == 0:
        return np.empty((height, width), dtype=dtype)
    return np.ndarray((height, width), dtype=dtype, buffer=data, offset=0, strides=(row_step, point_step))


def xyz_points(view: np.ndarray) -> np.ndarray:
    """(N, 3) float32 x, y, z of a flat structured view of points: a read-only view of the same bytes
    when they are three consecutive native float32 fields (every common driver's layout), else a copy.
    An output cloud that repeats the input's points then reads them once, while packing."""
    fields = view.dtype.fields
    start = fields["x"][1]
    if all(fields[a][0] == np.dtype(np.float32) and fields[a][1] == start + 4 * i for i, a in enumerate("xyz")):
        x = view["x"]
        return np.lib.stride_tricks.as_strided(x, shape=(len(x), 3), strides=(x.strides[0], 4), writeable=False)
    return np.stack([view[a].astype(np.float32) for a in "xyz"], axis=1)


def _field(view: np.ndarray, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in view.dtype.names), None)


def _as_float32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def decode(
    msg, *, intensity_scale: float | None = None, need_strength: bool = False, need_color: bool = False
) -> DecodedCloud:
    """Arrays of the valid points of `msg` (see the module docstring for scaling and validity)."""
    view = structured_view(msg).reshape(-1)
    return decode_points(view, intensity_scale=intensity_scale, need_strength=need_strength, need_color=need_color)


def decode_points(
    view: np.ndarray, *, intensity_scale: float | None = None, need_strength: bool = False, need_color: bool = False
) -> DecodedCloud:
    """`decode` of a flat structured array of points, whatever file or message it views (PCD too)."""
    if intensity_scale is not None and not (np.isfinite(intensity_scale) and intensity_scale > 0):
        raise ValueError(f"intensity_scale must be a positive number (or None: per field), got {intensity_scale}")
    names = view.dtype.names or ()
    for axis in "xyz":
        if axis not in names:
            raise PointCloudError(f"cloud has no {axis} field (fields: {list(names)})")
        if _datatype(view.dtype[axis]) not in COORD_DATATYPES or view.dtype[axis].shape:
            raise PointCloudError(f"field {axis!r} is {view.dtype[axis]}; coordinates must be one FLOAT32 or FLOAT64")
    rgb = _field(view, RGB_FIELDS)
    if rgb is not None and view.dtype[rgb].base.itemsize != 4:
        if need_color:
            raise PointCloudError(f"field {rgb!r} is {view.dtype[rgb]}; packed colour is FLOAT32, UINT32 or INT32")
        rgb = None  # an odd colour field the model does not need is ignored
    if need_color and rgb is None:
        raise MissingFieldError("cloud has no rgb/rgba field, the model needs colour")
    source = _field(view, STRENGTH_FIELDS)
    if need_strength and source is None:
        raise MissingFieldError(f"cloud has no {'/'.join(STRENGTH_FIELDS)} field, the model needs strength")

    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 becomes inf: an invalid point
        x, y, z = (view[axis].astype(np.float32, copy=False) for axis in "xyz")
        valid = np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & ((x != 0) | (y != 0) | (z != 0))
        coord = np.stack((x[valid], y[valid], z[valid]), axis=1)
        strength, clipped = None, 0
        if source is not None:
            strength, clipped = _strength(view[source][valid], source, view.dtype[source], intensity_scale)
        normal = None
        if all(n in names for n in NORMAL_FIELDS):
            normal = np.stack([_first_channel(view[n][valid]) for n in NORMAL_FIELDS], axis=1)
            normal[~all_columns(np.isfinite(normal))] = 0.0  # PCL marks normals it could not estimate with NaN
    return DecodedCloud(
        coord=coord,
        strength=strength,
        strength_field=source,
        strength_clipped=clipped,
        color=unpack_rgb(view[rgb][valid]) if rgb is not None else None,
        normal=normal,
        valid=valid,
        num_input_points=view.shape[0],
    )


def point_extras(view: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The per-point fields that `decode_points` does not turn into coord / strength / colour / normals.

    Of the valid points: "ring" (uint16) from ring / channel; "time" (float32 seconds, the point's
    offset in the sweep) from `time` (s, Velodyne), `t` (ns, Ouster) or `time_stamp` (ns, Nebula /
    Autoware); every other field under its own name and dtype (return_type, azimuth, reflectivity...).
    """
    names = view.dtype.names or ()
    used = {"x", "y", "z", _field(view, STRENGTH_FIELDS), _field(view, RGB_FIELDS)}
    if all(n in names for n in NORMAL_FIELDS):
        used.update(NORMAL_FIELDS)
    extra = {}
    ring = _field(view, RING_FIELDS)
    if ring is not None:
        extra["ring"] = view[ring][valid].astype(np.uint16)
        used.add(ring)
    time = _field(view, tuple(TIME_FIELDS))
    if time is not None:
        extra["time"] = (view[time][valid] * TIME_FIELDS[time]).astype(np.float32)
        used.add(time)
    for name in names:
        if name not in used and name not in extra:
            values = view[name][valid]
            extra[name] = values.astype(values.dtype.newbyteorder("="))
    return extra


def _datatype(dtype: np.dtype) -> int | None:
    """PointField datatype of a field's element type (either byte order)."""
    return _DATATYPE_OF.get(dtype.base.newbyteorder("="))


def _first_channel(values: np.ndarray) -> np.ndarray:
    return _as_float32(values[:, 0] if values.ndim > 1 else values)


def _strength(values: np.ndarray, name: str, dtype: np.dtype, scale: float | None) -> tuple[np.ndarray, int]:
    """(strength in [0, 1], how many values were above the scale); NaN becomes 0."""
    if scale is None:
        scale = 255.0 if name == "reflectivity" else {UINT8: 255.0, UINT16: 65535.0}.get(_datatype(dtype), 255.0)
    strength = _first_channel(values) / np.float32(scale)
    clipped = int(np.count_nonzero(strength > 1))
    return np.minimum(np.fmax(strength, 0.0), 1.0), clipped  # fmax: NaN becomes 0


def pack_rgb(color: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) float32 whose bits are 0x00RRGGBB (what RViz's RGB8 transformer reads)."""
    color = np.asarray(color, dtype=np.uint32)
    packed = (color[:, 0] << 16) | (color[:, 1] << 8) | color[:, 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) float32 or uint32 0x00RRGGBB (either endianness) -> (N, 3) uint8."""
    if packed.ndim > 1:
        packed = packed[:, 0]
    bits = packed.astype(packed.dtype.newbyteorder("="), copy=False).view(np.uint32)
    return np.stack(((bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF), axis=1).astype(np.uint8)


def _spec_dtype(spec: FieldSpec) -> np.dtype:
    base = DATATYPES[spec.datatype].newbyteorder("<")
    return base if spec.count == 1 else np.dtype((base, (spec.count,)))


def fields_for(arrays: Mapping[str, np.ndarray], packed: bool = True) -> list[FieldSpec]:
    """Field list for `arrays` in their order: numpy dtype -> datatype, (N, k) -> count k."""
    fields, offset = [], 0
    for name, values in arrays.items():
        values = np.asarray(values)
        dtype = values.dtype.newbyteorder("=")
        if dtype not in _DATATYPE_OF:
            raise PointCloudError(f"array {name!r} has dtype {values.dtype}, not a PointCloud2 datatype")
        count = 1 if values.ndim == 1 else int(np.prod(values.shape[1:]))
        if not packed:
            offset = -(-offset // dtype.itemsize) * dtype.itemsize
        fields.append(FieldSpec(name, offset, _DATATYPE_OF[dtype], count))
        offset += dtype.itemsize * count
    return fields


def fields_of(dtype: np.dtype) -> list[FieldSpec]:
    """Fields of a little-endian structured point dtype, offsets kept; a (k,) sub-array gives count k."""
    fields = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        code = _DATATYPE_OF.get(field_dtype.base.newbyteorder("="))
        if code is None:
            raise PointCloudError(f"field {name!r} has dtype {field_dtype.base}, which PointCloud2 has no datatype for")
        fields.append(FieldSpec(name, offset, code, int(np.prod(field_dtype.shape, dtype=np.int64))))
    return fields


def pack_points(
    fields: Sequence[FieldSpec] | None,
    arrays: Mapping[str, np.ndarray],
    *,
    height: int = 1,
    packed: bool = True,
    point_step: int | None = None,
) -> PackedPoints:
    """Little-endian PointCloud2 buffer holding `arrays` (name -> (N,) or (N, k)) in `fields`' layout.

    fields None derives them from the arrays (packed, or aligned like PCL with packed=False). Fields
    without an array are zero. One vectorised copy per field; no per-point Python.
    """
    if not arrays:
        raise PointCloudError("nothing to pack")
    fields = list(fields) if fields is not None else fields_for(arrays, packed)
    n = len(next(iter(arrays.values())))
    if n % height:
        raise PointCloudError(f"{n} points do not fill {height} rows")
    end = max(f.offset + _spec_dtype(f).itemsize for f in fields)
    step = point_step or (end if packed else -(-end // 4) * 4)
    if step < end:
        raise PointCloudError(f"point_step {step} is shorter than the fields ({end} bytes)")
    dtype = np.dtype(
        {
            "names": [f.name for f in fields],
            "formats": [_spec_dtype(f) for f in fields],
            "offsets": [f.offset for f in fields],
            "itemsize": step,
        }
    )
    storage = array.array("B", b"\0") * (n * step)  # zeros; an rclpy message takes it without a copy
    buffer = np.frombuffer(storage, dtype=np.uint8)
    points = buffer.view(dtype)
    for name, values in arrays.items():
        if name not in dtype.names:
            raise PointCloudError(f"array {name!r} has no field in the layout {list(dtype.names)}")
        if len(values) != n:
            raise PointCloudError(f"array {name!r} has {len(values)} rows, expected {n}")
        points[name] = np.asarray(values).reshape(points[name].shape)
    return PackedPoints(
        fields=fields,
        point_step=step,
        row_step=step * (n // height),
        height=height,
        width=n // height,
        is_bigendian=False,
        is_dense=False,
        data=buffer,
        storage=storage,
    )


def to_message(packed: PackedPoints, msg_cls, field_cls, header):
    """Build a PointCloud2 of `msg_cls` (rclpy's or a rosbags typestore class) from `packed`.

    rclpy messages take `data` fastest as array.array('B'); rosbags messages take the numpy array.
    """
    is_rosbags = hasattr(msg_cls, "__dataclass_fields__")
    if is_rosbags:
        fields = [field_cls(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in packed.fields]
        return msg_cls(
            header=header,
            height=packed.height,
            width=packed.width,
            fields=fields,
            is_bigendian=packed.is_bigendian,
            point_step=packed.point_step,
            row_step=packed.row_step,
            data=packed.data,
            is_dense=packed.is_dense,
        )
    # Jazzy's generated setters copy an array.array unless the message checks its fields; older ones
    # never copy it. Either way the packed storage becomes the message's data as it is.
    msg = msg_cls(check_fields=True) if "_check_fields" in getattr(msg_cls, "__slots__", ()) else msg_cls()
    msg.header = header
    msg.height, msg.width = int(packed.height), int(packed.width)  # a checking message refuses numpy ints
    msg.fields = [field_cls(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in packed.fields]
    msg.is_bigendian, msg.is_dense = bool(packed.is_bigendian), bool(packed.is_dense)
    msg.point_step, msg.row_step = int(packed.point_step), int(packed.row_step)
    data = packed.storage
    if data is None:  # packed elsewhere (a PCD file's points): one copy into an array.array
        data = array.array("B")
        data.frombytes(packed.data.data)
    msg.data = data
    return msg
