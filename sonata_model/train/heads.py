"""Prototype heads of self-distillation ("online clustering"), as in Sonata / DINO.

MLP (C -> hidden -> embed), L2 normalisation, then a weight-normalised linear layer without bias whose
rows (prototypes) have their norm fixed to 1: the logits are cosine similarities to the prototypes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.init import trunc_normal_
from torch.nn.utils.parametrizations import weight_norm


class PrototypeHead(nn.Module):
    def __init__(
        self, in_channels: int, hidden_channels: int = 4096, embed_channels: int = 256, num_prototypes: int = 4096
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels), nn.GELU(), nn.Linear(hidden_channels, embed_channels)
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.prototype = weight_norm(nn.Linear(embed_channels, num_prototypes, bias=False))
        magnitude = self.prototype.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, feat: Tensor) -> Tensor:
        feat = self.mlp(feat)
        eps = 1e-6 if feat.dtype == torch.float16 else 1e-12
        return self.prototype(nn.functional.normalize(feat, dim=-1, eps=eps))
