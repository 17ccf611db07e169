"""Stand-in for `torch_scatter` in the reference benchmark's environment (benchmarks/vs_reference.py).

The reference implementation calls only `segment_csr` (grid pooling: max of features, mean of
coordinates); torch_scatter has no wheel for this machine, so it is computed with torch's own
`torch.segment_reduce` over the same CSR offsets. Never imported by sonata_model.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_csr(src: Tensor, indptr: Tensor, out: Tensor | None = None, reduce: str = "sum") -> Tensor:
    """Reduce rows src[indptr[i]:indptr[i + 1]] into row i ("sum", "mean", "min" or "max")."""
    if out is not None:
        raise NotImplementedError("segment_csr(out=...) is not used by the reference")
    return torch.segment_reduce(src, reduce, offsets=indptr, axis=0)
