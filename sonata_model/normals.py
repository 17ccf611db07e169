"""Surface normals for clouds that carry none (the released Sonata weights expect normals).

Estimated on the voxel representatives, on the model's device, after grid sampling: the neighbours of
a voxel are the occupied voxels within `radius` cells (found by sorted-key search, as the sparse
convolution finds its neighbours; no KD-tree, no host round trip), the normal is the eigenvector of
the smallest eigenvalue of their covariance, flipped to face the sensor that saw the voxel
(`viewpoint`, per voxel, in the cloud's frame: the sensor's position after any sensor -> base
transform; several LiDARs merged into one cloud each keep their own). A voxel with fewer than three
occupied voxels in its neighbourhood, itself included, gets a zero normal (what colour/normal-dropout
weights read as "missing").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .grid import offset_keys, pack_keys

NORMAL_MODES = ("estimate", "zeros")
MIN_NEIGHBOURS = 3


def estimate_normals(coord: Tensor, grid_coord: Tensor, batch: Tensor, viewpoint: Tensor, radius: int = 2) -> Tensor:
    """(M, 3) unit normals of voxels at `coord` (M, 3) with integer `grid_coord`, of cloud `batch` (M,),
    oriented towards `viewpoint` ((M, 3), same frame as `coord`)."""
    m = coord.shape[0]
    keys = pack_keys(grid_coord.long() + radius, batch)
    sorted_keys, order = torch.sort(keys)
    span = torch.arange(-radius, radius + 1, device=coord.device)
    deltas = offset_keys(torch.cartesian_prod(span, span, span))
    work = torch.float64 if coord.device.type == "cpu" else torch.float32
    centre = coord.to(work)
    count = torch.zeros(m, dtype=work, device=coord.device)
    first = torch.zeros((m, 3), dtype=work, device=coord.device)
    second = torch.zeros((m, 3, 3), dtype=work, device=coord.device)
    for delta in deltas:  # (2r+1)^3 vectorised searches over all voxels
        wanted = keys + delta
        position = torch.searchsorted(sorted_keys, wanted).clamp_(max=m - 1)
        found = (sorted_keys[position] == wanted).to(work)
        relative = (centre[order[position]] - centre) * found[:, None]  # small numbers: no cancellation
        count += found
        first += relative
        second += relative[:, :, None] * relative[:, None, :]
    mean = first / count.clamp_min(1)[:, None]
    covariance = second / count.clamp_min(1)[:, None, None] - mean[:, :, None] * mean[:, None, :]
    normal = torch.linalg.eigh(covariance).eigenvectors[:, :, 0]  # eigenvalues ascending
    facing = ((viewpoint.to(work) - centre) * normal).sum(dim=1) >= 0
    normal = torch.where(facing[:, None], normal, -normal)
    return torch.where((count >= MIN_NEIGHBOURS)[:, None], normal, 0.0).to(coord.dtype)
