"""Sinkhorn-Knopp centring of teacher scores into soft assignments (SwAV / DINOv2 / Sonata).

The assignment matrix Q (samples x prototypes) is scaled so that every prototype receives the same
total mass and every sample a unit mass: balanced clusters, no collapse. Sums are all-reduced across
processes so that several GPUs centre over the global batch, like one big batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _all_reduce(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """(n, K) scores -> (n, K) assignments whose rows sum to 1 (prototype mass balanced over the
    global batch). Scores are cosine similarities (|s| <= 1), so exp(s / temperature) stays finite."""
    q = torch.exp(scores.float() / temperature).t()  # (K, n)
    num_prototypes = q.shape[0]
    num_samples = _all_reduce(q.new_full((), float(q.shape[1])))  # filled on the device: no upload to wait for
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # every prototype: total 1 / K
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)  # every sample: total 1 / n
        q /= num_samples
    return (q * num_samples).t()
