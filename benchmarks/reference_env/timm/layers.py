"""`DropPath` (stochastic depth), as timm's: rows dropped with probability p, kept ones scaled by 1/(1-p)."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if self.scale_by_keep:
            keep = keep / keep_prob
        return x * keep
