"""A fixed PCA basis for per-voxel embeddings: dimensionality reduction and the paper's RGB view.

The basis is either stored with the model (`encoder.meta["pca_mean"]`, `["pca_basis"]`) or fitted once
on the first frames a node sees and then kept, so that the projection (and the colours) stay stable
from frame to frame.
"""

from __future__ import annotations

import torch
from torch import Tensor


class EmbeddingPCA:
    def __init__(self, mean: Tensor, basis: Tensor) -> None:
        self.mean = mean.float()  # (C,)
        self.basis = basis.float()  # (C, K) orthonormal columns, by decreasing variance
        self._low = self._high = None

    @classmethod
    def fit(cls, feat: Tensor, components: int, max_samples: int = 50_000) -> EmbeddingPCA:
        """Principal axes of (N, C) features (an evenly strided subsample of at most `max_samples` rows)."""
        sample = feat[:: max(1, feat.shape[0] // max_samples)].float()
        mean = sample.mean(dim=0)
        _, _, vh = torch.linalg.svd(sample - mean, full_matrices=False)
        return cls(mean, vh[:components].t().contiguous())

    @classmethod
    def from_meta(cls, meta: dict) -> EmbeddingPCA | None:
        if "pca_mean" in meta and "pca_basis" in meta:
            return cls(torch.as_tensor(meta["pca_mean"]), torch.as_tensor(meta["pca_basis"]))
        return None

    def to(self, device: torch.device) -> EmbeddingPCA:
        """This basis on `device`, to be kept beside the model: projecting a frame then uploads nothing
        (a GPU waits for its queued work on every blocking upload)."""
        return EmbeddingPCA(self.mean.to(device), self.basis.to(device))

    @property
    def components(self) -> int:
        return self.basis.shape[1]

    def project(self, feat: Tensor, components: int | None = None) -> Tensor:
        basis = self.basis if components is None else self.basis[:, :components]
        return (feat.float() - self.mean.to(feat.device)) @ basis.to(feat.device)

    def linear(self, components: int) -> tuple[Tensor, Tensor]:
        """(weight (D, C), bias (D,)) with `feat @ weight.T + bias == project(feat, D)`: the projection as
        a linear map, which `SegmentationResult.project_embedding` applies without the full upcast."""
        basis = self.basis[:, :components]
        return basis.t().contiguous(), -(self.mean @ basis)

    def rgb(self, projected: Tensor) -> Tensor:
        """(N, 3) uint8 colours from the first three components (`projected`, (N, >= 3)), scaled by
        ranges fixed on first use."""
        projected = projected[:, :3].float()
        if self._low is None:
            self._low = torch.quantile(projected[:: max(1, len(projected) // 10000)], 0.01, dim=0)
            self._high = torch.quantile(projected[:: max(1, len(projected) // 10000)], 0.99, dim=0)
        scaled = (projected - self._low) / (self._high - self._low).clamp_min(1e-6)
        return (scaled.clamp(0, 1) * 255).to(torch.uint8)
