"""PCD files (PCL's Point Cloud Data, v0.5-v0.7) to numpy and Frames, and back, without PCL.

The header (text lines up to `DATA`) declares FIELDS (or COLUMNS) with their SIZE, TYPE (I / U / F)
and COUNT; WIDTH x HEIGHT (HEIGHT > 1: organized) = POINTS; the VIEWPOINT (sensor pose tx ty tz qw qx
qy qz in the cloud's frame). Missing SIZE / TYPE / COUNT default to 4 / F / 1, as PCL reads old files.
Fields named `_` are padding: skipped in every encoding. The data is
  ascii              one point per line, whitespace-separated values (padding values skipped);
  binary             packed little-endian point records, read as a zero-copy numpy structured view;
  binary_compressed  uint32 compressed size, uint32 uncompressed size, then LZF (`lzf.py`) of the
                     records stored field by field (all x, then all y, ...), padding left out.
Every malformed file raises PcdError naming the file and what is wrong.

A Frame of a PCD file follows the PointCloud2 path exactly (`pointcloud2.decode_points`): the same
intensity scaling, colour unpacking, normals, extras (ring, time, other fields) and the same invalid
points dropped (NaN / inf / all-zero coordinates). Points are returned in the sensor frame: with a
non-identity VIEWPOINT they are moved into it and `Frame.pose` is the viewpoint (sensor -> file frame).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry import pose_matrix
from . import lzf
from .frame import Frame
from .labels import LabelSet
from .pointcloud2 import PackedPoints, PointCloudError, decode_points, fields_of, point_extras

DATA_KINDS = ("ascii", "binary", "binary_compressed")
PADDING = "_"
IDENTITY_VIEWPOINT = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # tx ty tz qw qx qy qz
_TYPES = {
    **{("I", size): np.dtype(f"<i{size}") for size in (1, 2, 4, 8)},
    **{("U", size): np.dtype(f"<u{size}") for size in (1, 2, 4, 8)},
    ("F", 4): np.dtype("<f4"),
    ("F", 8): np.dtype("<f8"),
}
_KIND_OF = {dtype.newbyteorder("="): key for key, dtype in _TYPES.items()}
_MAX_HEADER = 1 << 16


class PcdError(ValueError):
    """A PCD file that cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class PcdField:
    name: str
    size: int
    type: str  # I | U | F
    count: int = 1


@dataclass(frozen=True)
class PcdHeader:
    version: str
    fields: tuple[PcdField, ...]
    width: int
    height: int
    viewpoint: tuple[float, ...]  # tx ty tz qw qx qy qz
    points: int
    data: str  # one of DATA_KINDS
    data_offset: int  # where the data starts in the file

    @property
    def point_step(self) -> int:
        return sum(f.size * f.count for f in self.fields)

    @property
    def dtype(self) -> np.dtype:
        """Structured dtype of one packed point record (padding fields are gaps)."""
        names, formats, offsets, offset = [], [], [], 0
        for f in self.fields:
            if f.name != PADDING:
                base = _TYPES[(f.type, f.size)]
                names.append(f.name)
                formats.append(base if f.count == 1 else np.dtype((base, (f.count,))))
                offsets.append(offset)
            offset += f.size * f.count
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": offset})


_MAX_COUNT = 1 << 16  # values per field and point: far above any real field (a 308-bin descriptor), within numpy's


def read_header(raw: bytes, path: str | os.PathLike = "<bytes>") -> PcdHeader:
    """The header of the PCD file whose bytes are `raw`; PcdError naming `path` when it is malformed."""
    values: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = raw.find(b"\n", offset, _MAX_HEADER)
        if end < 0:
            raise PcdError(f"{path}: no DATA line in the first {min(len(raw), _MAX_HEADER)} bytes (not a PCD file?)")
        try:
            line = raw[offset:end].decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise PcdError(f"{path}: bad header: line at byte {offset} is not text") from exc
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        key = "FIELDS" if key == "COLUMNS" else key
        if key not in ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA"):
            raise PcdError(f"{path}: bad header: unknown line {line!r}")
        if key in values:
            raise PcdError(f"{path}: bad header: {key} given twice")
        values[key] = rest
        if key == "DATA":
            return _header(values, offset, path)


def _header(values: dict[str, list[str]], data_offset: int, path) -> PcdHeader:
    names = values.get("FIELDS")
    if not names:
        raise PcdError(f"{path}: bad header: no FIELDS")

    def column(key: str, default, cast) -> list:
        row = values.get(key)
        if row is None:
            return [default] * len(names)
        if len(row) != len(names):
            raise PcdError(f"{path}: bad header: {key} has {len(row)} entries for {len(names)} FIELDS")
        return [_parse(cast, v, key, path) for v in row]

    sizes, types, counts = column("SIZE", 4, int), column("TYPE", "F", str), column("COUNT", 1, int)
    fields = tuple(PcdField(*spec) for spec in zip(names, sizes, types, counts, strict=True))
    for f in fields:
        if (f.type, f.size) not in _TYPES:
            raise PcdError(f"{path}: unknown type: field {f.name!r} is TYPE {f.type} SIZE {f.size}")
        if not 1 <= f.count <= _MAX_COUNT:
            raise PcdError(f"{path}: bad header: field {f.name!r} has COUNT {f.count} (1 to {_MAX_COUNT})")
    real = [f.name for f in fields if f.name != PADDING]
    if len(set(real)) != len(real):
        raise PcdError(f"{path}: bad header: duplicate field names in {real}")
    data = values["DATA"]
    if len(data) != 1 or data[0] not in DATA_KINDS:
        raise PcdError(f"{path}: bad header: DATA {' '.join(data)!r}, expected one of {DATA_KINDS}")
    width, height, points = (_scalar(values, key, path) for key in ("WIDTH", "HEIGHT", "POINTS"))
    if width is None and points is None:
        raise PcdError(f"{path}: bad header: neither WIDTH nor POINTS")
    height = 1 if height is None else height
    width = points // max(height, 1) if width is None else width
    points = width * height if points is None else points
    if width * height != points:
        raise PcdError(f"{path}: bad header: WIDTH {width} x HEIGHT {height} != POINTS {points}")
    viewpoint = tuple(float(_parse(float, v, "VIEWPOINT", path)) for v in values.get("VIEWPOINT", IDENTITY_VIEWPOINT))
    if len(viewpoint) != 7:
        raise PcdError(f"{path}: bad header: VIEWPOINT has {len(viewpoint)} values, expected tx ty tz qw qx qy qz")
    version = " ".join(values.get("VERSION", ["0.7"]))
    return PcdHeader(version, fields, width, height, viewpoint, points, data[0], data_offset)


def _parse(cast, value: str, key: str, path):
    try:
        parsed = cast(value)
    except ValueError:
        raise PcdError(f"{path}: bad header: {key} value {value!r} is not a {cast.__name__}") from None
    if cast is int and parsed < 0:
        raise PcdError(f"{path}: bad header: {key} value {value!r} is negative")
    return parsed


def _scalar(values: dict[str, list[str]], key: str, path) -> int | None:
    row = values.get(key)
    if row is None:
        return None
    if len(row) != 1:
        raise PcdError(f"{path}: bad header: {key} needs one value, got {row}")
    return _parse(int, row[0], key, path)


def read_points(path: str | os.PathLike) -> tuple[PcdHeader, np.ndarray]:
    """The header and the (POINTS,) structured array of a PCD file, row-major for organized clouds.

    For DATA binary the array is a zero-copy view over the file's bytes (read-only).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PcdError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    header = read_header(raw, path)
    body = memoryview(raw)[header.data_offset :]
    if header.data == "binary":
        return header, _binary(body, header, path)
    if header.data == "binary_compressed":
        return header, _compressed(body, header, path)
    return header, _ascii(bytes(body), header, path)


def _binary(body: memoryview, header: PcdHeader, path) -> np.ndarray:
    needed = header.points * header.point_step
    if len(body) < needed:
        raise PcdError(
            f"{path}: truncated data: {header.points} points x {header.point_step} bytes need {needed} bytes, "
            f"the file holds {len(body)} after the header"
        )
    return np.frombuffer(body, dtype=header.dtype, count=header.points)


def _compressed(body: memoryview, header: PcdHeader, path) -> np.ndarray:
    if len(body) < 8:
        raise PcdError(f"{path}: truncated data: binary_compressed needs 8 size bytes, the file holds {len(body)}")
    compressed, uncompressed = struct.unpack("<II", body[:8])
    if len(body) - 8 < compressed:
        raise PcdError(
            f"{path}: compressed size mismatch: the header says {compressed} bytes, the file holds {len(body) - 8}"
        )
    fields = [f for f in header.fields if f.name != PADDING]
    planes = [header.points * f.size * f.count for f in fields]
    if uncompressed != sum(planes):
        raise PcdError(
            f"{path}: size mismatch: {uncompressed} uncompressed bytes, but {header.points} points of "
            f"{[f.name for f in fields]} take {sum(planes)}"
        )
    try:
        buffer = lzf.decompress(body[8 : 8 + compressed], uncompressed)
    except lzf.LzfError as exc:
        raise PcdError(f"{path}: corrupt binary_compressed data: {exc}") from exc
    points = np.zeros(header.points, dtype=header.dtype)
    start = 0
    for f, size in zip(fields, planes, strict=True):
        plane = np.frombuffer(buffer, dtype=_TYPES[(f.type, f.size)], count=header.points * f.count, offset=start)
        points[f.name] = plane.reshape(points[f.name].shape)
        start += size
    return points


def _ascii(body: bytes, header: PcdHeader, path) -> np.ndarray:
    per_point = sum(f.count for f in header.fields)
    tokens = body.split()
    if len(tokens) != header.points * per_point:
        raise PcdError(
            f"{path}: truncated data: ascii data holds {len(tokens)} values, {header.points} points x "
            f"{per_point} values expected"
        )
    table = np.array(tokens, dtype=bytes).reshape(header.points, per_point)
    points = np.zeros(header.points, dtype=header.dtype)
    column = 0
    for f in header.fields:
        if f.name != PADDING:
            text = table[:, column : column + f.count].reshape(points[f.name].shape)
            try:
                points[f.name] = text.astype(_TYPES[(f.type, f.size)])
            except (ValueError, OverflowError) as exc:
                raise PcdError(f"{path}: field {f.name!r} holds a value that is not {f.type}{f.size}: {exc}") from None
        column += f.count
    return points


def read_pcd(path: str | os.PathLike, *, intensity_scale: float | None = None, name: str | None = None) -> Frame:
    """A Frame of a PCD file (see the module docstring); PcdError for a malformed file."""
    header, points = read_points(path)
    try:
        cloud = decode_points(points, intensity_scale=intensity_scale)
    except PointCloudError as exc:
        raise PcdError(f"{path}: {exc}") from exc
    coord, normal, pose = cloud.coord, cloud.normal, None
    if header.viewpoint != IDENTITY_VIEWPOINT:
        tx, ty, tz, qw, qx, qy, qz = header.viewpoint
        try:
            pose = pose_matrix((tx, ty, tz), (qx, qy, qz, qw))
        except ValueError as exc:
            raise PcdError(f"{path}: bad header: VIEWPOINT {exc}") from exc
        rotation = pose[:3, :3]
        coord = ((coord - pose[:3, 3]) @ rotation).astype(np.float32)  # R^T (p - t), row vectors
        normal = None if normal is None else (normal @ rotation).astype(np.float32)
    return Frame(
        coord=coord,
        strength=cloud.strength,
        color=cloud.color,
        normal=normal,
        pose=pose,
        name=Path(path).stem if name is None else name,
        extra=point_extras(points, cloud.valid),
    )


def read_packed(path: str | os.PathLike) -> PackedPoints:
    """A PCD file as a PointCloud2 buffer with the file's own fields, offsets and WIDTH x HEIGHT.

    What the driver that wrote the file published (`pointcloud2.to_message` makes the message);
    PcdError for a malformed file or for 64-bit integer fields, which PointCloud2 cannot hold.
    """
    header, points = read_points(path)
    try:
        fields = fields_of(points.dtype)
    except PointCloudError as exc:
        raise PcdError(f"{path}: {exc}") from exc
    return PackedPoints(
        fields=fields,
        point_step=header.point_step,
        row_step=header.point_step * header.width,
        height=header.height,
        width=header.width,
        is_bigendian=False,
        is_dense=False,
        data=np.ascontiguousarray(points).view(np.uint8).reshape(-1),
    )


def write_pcd(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    *,
    data: str = "binary",
    height: int = 1,
    viewpoint: Sequence[float] = IDENTITY_VIEWPOINT,
) -> Path:
    """Write `arrays` (field name -> (N,) or (N, k) of an int / uint / float dtype) as a PCD v0.7 file.

    Fields keep the arrays' order and dtypes; (N, k) gives COUNT k. In ascii, float32 rgb / rgba are
    written as their uint32 bits (TYPE U), as PCL does. `height` > 1 writes an organized cloud.
    """
    if data not in DATA_KINDS:
        raise PcdError(f"{path}: DATA {data!r}, expected one of {DATA_KINDS}")
    if not arrays:
        raise PcdError(f"{path}: no fields to write")
    columns = {name: np.asarray(values) for name, values in arrays.items()}
    n = len(next(iter(columns.values())))
    if data == "ascii":
        columns = {
            name: v.view(np.uint32) if name in ("rgb", "rgba") and v.dtype == np.float32 else v
            for name, v in columns.items()
        }
    fields = []
    for name, values in columns.items():
        key = _KIND_OF.get(values.dtype.newbyteorder("="))
        if key is None:
            raise PcdError(f"{path}: array {name!r} has dtype {values.dtype}, not a PCD type (I/U 1-8, F 4/8 bytes)")
        if len(values) != n:
            raise PcdError(f"{path}: array {name!r} has {len(values)} rows, expected {n}")
        fields.append(PcdField(name, key[1], key[0], int(np.prod(values.shape[1:], dtype=np.int64))))
    if height < 1 or n % height:
        raise PcdError(f"{path}: {n} points do not fill {height} rows")
    if len(viewpoint) != 7:
        raise PcdError(f"{path}: VIEWPOINT needs 7 values (tx ty tz qw qx qy qz), got {len(viewpoint)}")
    text = "\n".join(
        [
            "# .PCD v0.7 - Point Cloud Data file format",
            "VERSION 0.7",
            "FIELDS " + " ".join(f.name for f in fields),
            "SIZE " + " ".join(str(f.size) for f in fields),
            "TYPE " + " ".join(f.type for f in fields),
            "COUNT " + " ".join(str(f.count) for f in fields),
            f"WIDTH {n // height}",
            f"HEIGHT {height}",
            "VIEWPOINT " + " ".join(repr(float(v)) for v in viewpoint),
            f"POINTS {n}",
            f"DATA {data}",
            "",
        ]
    )
    header = read_header(text.encode(), path)
    if data == "ascii":
        body = _ascii_body(columns)
    elif data == "binary":
        points = np.zeros(n, dtype=header.dtype)
        for name, values in columns.items():
            points[name] = values.reshape(points[name].shape)
        body = points.tobytes()
    else:
        planes = b"".join(np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes() for v in columns.values())
        stream = lzf.compress(planes)
        body = struct.pack("<II", len(stream), len(planes)) + stream
    path = Path(path)
    path.write_bytes(text.encode() + body)
    return path


def _ascii_body(columns: Mapping[str, np.ndarray]) -> bytes:
    """One line per point: shortest round-trip text of each value (numpy's float repr), space-separated."""
    n = len(next(iter(columns.values())))
    if n == 0:
        return b""
    text = np.concatenate([v.reshape(n, -1).astype(str) for v in columns.values()], axis=1)
    return ("\n".join(map(" ".join, text.tolist())) + "\n").encode()


class PcdSource:
    """A FrameSource over one .pcd file or a folder of them (sorted by name; not recursive)."""

    def __init__(
        self, path: str | os.PathLike, *, intensity_scale: float | None = None, label_set: LabelSet | None = None
    ) -> None:
        root = Path(path)
        if root.is_dir():
            self.files = sorted(p for p in root.glob("*.pcd") if p.is_file())
            if not self.files:
                raise PcdError(f"{root}: folder holds no .pcd file")
        elif root.is_file():
            self.files = [root]
        else:
            raise PcdError(f"{root}: no such file or folder")
        self.name = f"pcd:{root}"
        self.label_set = label_set
        self.intensity_scale = intensity_scale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Frame:
        return read_pcd(self.files[i], intensity_scale=self.intensity_scale)
