"""Surface normals for clouds that carry none (the released Sonata weights expect normals).

PCA over the k nearest neighbours: the normal is the eigenvector of the smallest eigenvalue of the
neighbourhood covariance, flipped to face the sensor (the origin of the cloud's frame), which is how
RGB-D and LiDAR normals are conventionally oriented. Runs on the CPU (scipy's cKDTree); the
neighbour search and the eigen-solves are vectorised.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

NORMAL_MODES = ("estimate", "zeros")


def estimate_normals(coord: np.ndarray, k: int = 16, viewpoint: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) float32 unit normals of `coord` (N, 3), oriented towards `viewpoint` (default origin)."""
    coord = np.asarray(coord, dtype=np.float64)
    n = len(coord)
    if n < 3:
        return np.zeros((n, 3), dtype=np.float32)
    k = min(k, n)
    _, neighbours = cKDTree(coord).query(coord, k=k, workers=-1)
    local = coord[neighbours]  # (N, k, 3)
    local -= local.mean(axis=1, keepdims=True)
    covariance = np.einsum("nki,nkj->nij", local, local)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    normal = vectors[:, :, 0]
    view = np.zeros(3) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64)
    flip = np.einsum("ni,ni->n", normal, view - coord) < 0
    normal[flip] *= -1
    return normal.astype(np.float32)


def normals_for(coord: np.ndarray, mode: str) -> np.ndarray:
    """Normals for a cloud without them: "estimate" (PCA) or "zeros" (for colour/normal-dropout weights)."""
    if mode == "estimate":
        return estimate_normals(coord)
    if mode == "zeros":
        return np.zeros((len(coord), 3), dtype=np.float32)
    raise ValueError(f"normal mode must be one of {NORMAL_MODES}, got {mode!r}")
