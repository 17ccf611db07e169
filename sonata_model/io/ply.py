"""PLY meshes (the ScanNet release's `*_vh_clean_2.ply`) to numpy: vertex properties and triangles.

The header (text lines up to `end_header`) names the format (`binary_little_endian` or
`binary_big_endian`; `ascii` PLY is refused) and the elements in file order, each with a count and
its properties: scalars (`property float x`) or lists (`property list uchar int vertex_indices`).
This reader returns every scalar property of the `vertex` element and, when a `face` element of
triangles follows, the (F, 3) vertex indices; an element after those is not read. Records are read
as numpy views (no loop over vertices or faces). Every malformed file raises PlyError naming the file
and the problem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_SCALARS = {
    **dict.fromkeys(("char", "int8"), "i1"),
    **dict.fromkeys(("uchar", "uint8"), "u1"),
    **dict.fromkeys(("short", "int16"), "i2"),
    **dict.fromkeys(("ushort", "uint16"), "u2"),
    **dict.fromkeys(("int", "int32"), "i4"),
    **dict.fromkeys(("uint", "uint32"), "u4"),
    **dict.fromkeys(("float", "float32"), "f4"),
    **dict.fromkeys(("double", "float64"), "f8"),
}
_MAX_HEADER = 1 << 16


class PlyError(ValueError):
    """A PLY file that cannot be read; the message names the file and the problem."""


@dataclass
class PlyMesh:
    vertex: dict[str, np.ndarray]  # every scalar property of the vertices, (V,) each
    faces: np.ndarray | None  # (F, 3) int64 vertex indices of the triangles, or None without faces


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str, str | None]]  # (name, type, list count type or None)


def read_ply(path: str | os.PathLike) -> PlyMesh:
    """The vertices (and triangles) of a PLY file (see the module docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlyError(f"{path}: cannot read ({exc})") from exc
    fmt, elements, start = _header(path, raw)
    vertex, faces, offset = None, None, start
    for element in elements:
        if element.name == "vertex":
            vertex, offset = _read_records(path, raw, offset, element, FORMATS[fmt])
        elif element.name == "face":
            faces, offset = _read_triangles(path, raw, offset, element, FORMATS[fmt])
        else:
            break  # its records may hold lists of any length: what follows is not read
    if vertex is None:
        raise PlyError(f"{path}: no vertex element before the first other one ({[e.name for e in elements]})")
    return PlyMesh(vertex=vertex, faces=faces)


def _header(path: Path, raw: bytes) -> tuple[str, list[_Element], int]:
    end = raw.find(b"end_header", 0, _MAX_HEADER)
    if not raw.startswith(b"ply") or end < 0:
        raise PlyError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    start = raw.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) < 2 or words[1] not in FORMATS:
                raise PlyError(f"{path}: format {line!r} not supported; expected one of {sorted(FORMATS)}")
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1].properties.append(_property(path, words))
        else:
            raise PlyError(f"{path}: malformed header line {line!r}")
    if fmt is None:
        raise PlyError(f"{path}: the header has no format line")
    return fmt, elements, start


def _property(path: Path, words: list[str]) -> tuple[str, str, str | None]:
    if len(words) == 5 and words[1] == "list" and words[2] in _SCALARS and words[3] in _SCALARS:
        return words[4], _SCALARS[words[3]], _SCALARS[words[2]]
    if len(words) == 3 and words[1] in _SCALARS:
        return words[2], _SCALARS[words[1]], None
    raise PlyError(f"{path}: unsupported property {' '.join(words)!r}")


def _records(path: Path, raw: bytes, offset: int, dtype: np.dtype, element: _Element) -> tuple[np.ndarray, int]:
    """The element's fixed-size records as a view of `raw`, and the offset after them."""
    end = offset + dtype.itemsize * element.count
    if end > len(raw):
        raise PlyError(f"{path}: truncated: {element.count} {element.name} records need {end} bytes, has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, count=element.count, offset=offset), end


def _read_records(path: Path, raw: bytes, offset: int, element: _Element, order: str):
    if any(count is not None for _, _, count in element.properties):
        raise PlyError(f"{path}: list properties in the {element.name} element are not supported")
    dtype = np.dtype([(name, order + kind) for name, kind, _ in element.properties])
    records, end = _records(path, raw, offset, dtype, element)
    return {name: records[name] for name in dtype.names}, end


def _read_triangles(path: Path, raw: bytes, offset: int, element: _Element, order: str):
    if len(element.properties) != 1 or element.properties[0][2] is None:
        raise PlyError(f"{path}: the face element must hold one list property (vertex indices)")
    _, kind, count_kind = element.properties[0]
    dtype = np.dtype([("n", order + count_kind), ("index", order + kind, (3,))])
    records, end = _records(path, raw, offset, dtype, element)  # as if every face were a triangle
    sides = records["n"]
    if (sides != 3).any():
        raise PlyError(f"{path}: faces must be triangles (face {int(np.argmax(sides != 3))} is not)")
    return records["index"].astype(np.int64), end
