"""Point matching between views: each query point's nearest key point in the same cloud.

Self-distillation compares student and teacher features at the same place of the scene. Places are
compared by original (pre-augmentation) coordinates; pairs farther apart than `max_distance` are
dropped. Exact nearest neighbours by chunked distance matrices per cloud: clouds at the matching level
(stage 2) hold a few thousand points, so this is fast on GPU and fine on CPU, and needs no extension.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 24  # distance-matrix entries per chunk (64 MiB in float32)


@torch.no_grad()
def nearest_neighbours(query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """For each row of `query` (n, 3): index of the nearest row of `key` (m, 3) and the distance."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, key.shape[0]))
    index, distance = [], []
    for start in range(0, query.shape[0], rows):
        d = torch.cdist(query[start : start + rows].float(), key.float())
        best, arg = d.min(dim=1)
        index.append(arg)
        distance.append(best)
    return torch.cat(index), torch.cat(distance)


@torch.no_grad()
def match_points(
    query_coord: Tensor,
    query_offset: Tensor,
    key_coord: Tensor,
    key_offset: Tensor,
    max_distance: float,
    key_cloud: list[int] | None = None,
) -> Tensor:
    """(M, 2) pairs (query index, key index), global indices, of query points whose nearest point in
    the corresponding key cloud is closer than `max_distance`.

    Query cloud b is matched against key cloud `key_cloud[b]` (default b); clouds are given by
    cumulative offsets. The Sonata losses pair a masked view with the same view (mask loss), with the
    other global view of the scene (roll-mask loss) and local views with the first global view.
    """
    num_queries = len(query_offset)
    key_cloud = list(range(num_queries)) if key_cloud is None else key_cloud
    if len(key_cloud) != num_queries:
        raise ValueError(f"{num_queries} query clouds but {len(key_cloud)} key cloud indices")
    q_bounds = torch.cat((query_offset.new_zeros(1), query_offset)).tolist()
    k_bounds = torch.cat((key_offset.new_zeros(1), key_offset)).tolist()
    pairs = []
    for b, k in enumerate(key_cloud):
        q0, q1, k0, k1 = q_bounds[b], q_bounds[b + 1], k_bounds[k], k_bounds[k + 1]
        if q1 == q0 or k1 == k0:
            continue
        index, distance = nearest_neighbours(query_coord[q0:q1], key_coord[k0:k1])
        keep = distance < max_distance
        query_index = torch.arange(q0, q1, device=query_coord.device)[keep]
        pairs.append(torch.stack((query_index, index[keep] + k0), dim=1))
    if not pairs:
        return torch.empty((0, 2), dtype=torch.long, device=query_coord.device)
    return torch.cat(pairs)
