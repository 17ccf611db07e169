"""The ScanNet v2 release read as it is downloaded, without Pointcept's preprocessing.

    <root>/scans/<scene>/<scene>_vh_clean_2.ply          mesh: vertex x y z red green blue (+ alpha)
    <root>/scans/<scene>/<scene>_vh_clean_2.labels.ply   the same vertices with `label` (NYU40 ids)

Every `*_vh_clean_2.ply` under the root is one frame (sorted by path; `scans_test` scenes have no
labels file). The points are the mesh's vertices, as in Pointcept's preprocessing; normals are the
area-weighted means of the adjacent triangles' normals (vertices in no triangle: zero). Labels map
NYU40 ids onto the label set (`scannet20` by default: ids outside its 20 classes are ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import DatasetError
from .frame import Frame
from .labels import LabelSet, load_label_set
from .ply import read_ply

MESH_SUFFIX = "_vh_clean_2.ply"
LABELS_SUFFIX = "_vh_clean_2.labels.ply"


class ScanNetScenes:
    """Random access to the scenes of a ScanNet v2 download under `root`."""

    def __init__(self, root: str | os.PathLike, label_set: LabelSet | None = None) -> None:
        self.root = Path(root)
        self.meshes = sorted(self.root.rglob(f"*{MESH_SUFFIX}"))
        if not self.meshes:
            raise DatasetError(f"{self.root}: no ScanNet mesh (scans/<scene>/<scene>{MESH_SUFFIX})")
        self.label_set = label_set or load_label_set("scannet20")

    def __len__(self) -> int:
        return len(self.meshes)

    def __getitem__(self, i: int) -> Frame:
        path = self.meshes[i]
        mesh = read_ply(path)
        missing = [key for key in ("x", "y", "z") if key not in mesh.vertex]
        if missing:
            raise DatasetError(f"{path}: vertices lack {missing}")
        coord = np.stack([mesh.vertex[key] for key in "xyz"], axis=1).astype(np.float32)
        color = None
        if all(key in mesh.vertex for key in ("red", "green", "blue")):
            color = np.stack([mesh.vertex[key] for key in ("red", "green", "blue")], axis=1).astype(np.uint8)
        normal = None if mesh.faces is None else vertex_normals(coord, mesh.faces, path)
        labels_path = path.with_name(path.name.removesuffix(MESH_SUFFIX) + LABELS_SUFFIX)
        segment = self._segment(labels_path, len(coord)) if labels_path.is_file() else None
        return Frame(coord=coord, color=color, normal=normal, segment=segment, name=path.parent.name)

    def _segment(self, path: Path, n: int) -> np.ndarray:
        vertex = read_ply(path).vertex
        if "label" not in vertex or len(vertex["label"]) != n:
            raise DatasetError(f"{path}: expected a `label` for each of the mesh's {n} vertices")
        return self.label_set.map_raw(vertex["label"].astype(np.int64))


def vertex_normals(coord: np.ndarray, faces: np.ndarray, path: Path) -> np.ndarray:
    """(V, 3) float32 unit normals: each vertex's sum of its triangles' cross products (area-weighted)."""
    if faces.size and (faces.min() < 0 or faces.max() >= len(coord)):
        raise DatasetError(f"{path}: a face names a vertex outside 0..{len(coord) - 1}")
    corners = coord.astype(np.float64)[faces]  # (F, 3 corners, 3)
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # |cross| = 2 x area
    owners = faces.reshape(-1)
    summed = np.stack(
        [np.bincount(owners, weights=np.repeat(cross[:, axis], 3), minlength=len(coord)) for axis in range(3)], axis=1
    )
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    return np.divide(summed, length, out=np.zeros_like(summed), where=length > 0).astype(np.float32)
