"""The PTv3 encoder as configured by Sonata (PT-v3m2, encoder only).

Module and parameter names reproduce the released checkpoints' state_dict keys
(`embedding.stem.linear`, `enc.enc{s}.down.proj`, `enc.enc{s}.block{i}.cpe.0`, ...), so released
weights load strictly. Blocks take `(feat, point)`: the feature tensor flows through the blocks while
the level's shared structures (orders, neighbour map, patch layouts) stay on the `Point`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from .attention import SerializedAttention
from .configs import EncoderConfig
from .onednn import without_onednn
from .point import Point
from .pooling import GridPooling
from .sparse_conv import SubMConv3d


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per point (rows of x), as the reference applies timm's DropPath to (N, C)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0], 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class MLP(nn.Module):
    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: sparse-conv positional encoding, patch attention, MLP."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        order_index: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_path: float = 0.0,
        rope_base: float | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.order_index = order_index
        self.drop_path = drop_path
        self.cpe = nn.ModuleList(
            [
                SubMConv3d(channels, channels, kernel_size=3, bias=True),
                nn.Linear(channels, channels),
                nn.LayerNorm(channels),
            ]
        )
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.attn = SerializedAttention(channels, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, rope_base=rope_base)
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio)))

    def forward(self, feat: Tensor, point: Point) -> Tensor:
        conv, linear, norm = self.cpe
        feat = feat + norm(linear(conv(feat, point.geometry)))
        layout = point.patch_layout(self.order_index, self.patch_size)
        attended = self.attn(self.norm1(feat), layout, point.rope_coord)
        feat = feat + drop_path(attended, self.drop_path, self.training)
        return feat + drop_path(self.mlp(self.norm2(feat)), self.drop_path, self.training)


class Embedding(nn.Module):
    """Linear stem (no sparse-conv stem in Sonata); masked points get the learned mask token."""

    def __init__(self, in_channels: int, channels: int, mask_token: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(linear=nn.Linear(in_channels, channels), norm=nn.LayerNorm(channels), act=nn.GELU())
        )
        self.mask_token = nn.Parameter(torch.zeros(1, channels)) if mask_token else None

    def forward(self, feat: Tensor, mask: Tensor | None = None) -> Tensor:
        feat = self.stem(feat)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this encoder has no mask token; it cannot take masked input")
            feat = torch.where(mask.unsqueeze(-1), self.mask_token.to(feat.dtype), feat)
        return feat


class Stage(nn.Module):
    def __init__(self, config: EncoderConfig, stage: int, drop_paths: list[float]) -> None:
        super().__init__()
        channels = config.enc_channels[stage]
        if stage > 0:
            self.down = GridPooling(config.enc_channels[stage - 1], channels, config.stride[stage - 1])
        self.depth = config.enc_depths[stage]
        for i in range(self.depth):
            block = Block(
                channels,
                config.enc_num_head[stage],
                config.enc_patch_size[stage],
                order_index=i % len(config.order),
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                qk_scale=config.qk_scale,
                drop_path=drop_paths[i],
                rope_base=config.rope_base,
            )
            self.add_module(f"block{i}", block)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.depth)]

    def forward(self, level: Point, orders: tuple[str, ...]) -> Point:
        """Pool (stages > 0), serialize along `orders`, run the blocks."""
        if hasattr(self, "down"):
            level = self.down(level)
        level.serialize(orders)
        feat = level.feat
        for block in self.blocks():
            feat = block(feat, level)
        level.feat = feat
        return level


class SonataEncoder(nn.Module):
    """PTv3 encoder: embedding, then stages of (grid pooling +) blocks.

    `forward` returns every level (finest first); `pooling.upcast` turns them into per-voxel features.
    Inference is deterministic: the serialization orders are shuffled only in training mode.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.sparse_backend: str | None = None  # None: chosen per device (sparse_conv.default_backend)
        self.shuffle_orders = True
        self.meta: dict = {}  # provenance stored with the checkpoint (label set, training run)
        self.embedding = Embedding(config.in_channels, config.enc_channels[0], config.mask_token)
        rates = torch.linspace(0, config.drop_path, sum(config.enc_depths), device="cpu").tolist()
        self.enc = nn.Module()
        for s in range(config.num_stages):
            first = sum(config.enc_depths[:s])
            self.enc.add_module(f"enc{s}", Stage(config, s, rates[first : first + config.enc_depths[s]]))
        self.apply(_init_weights)

    def stages(self) -> list[Stage]:
        return [getattr(self.enc, f"enc{s}") for s in range(self.config.num_stages)]

    def set_attention_kernel(self, kernel: str) -> None:
        """ "sdpa" (default) or "flash" (flash_attn, CUDA half precision) for every block."""
        for module in self.modules():
            if isinstance(module, SerializedAttention):
                module.kernel = kernel

    def forward(self, point: Point) -> list[Point]:
        with without_onednn(point.feat.device):
            return self._forward(point)

    def _forward(self, point: Point) -> list[Point]:
        level = Point(
            coord=point.coord,
            grid_coord=point.grid_coord,
            feat=self.embedding(point.feat, point.mask),
            offset=point.offset,
            origin_coord=point.origin_coord,
            rope_scale=self._rope_scale(point.coord),
            sparse_backend=self.sparse_backend,
        )
        levels = []
        for stage in self.stages():
            level = stage(level, self._orders_for(stage))
            levels.append(level)
        return levels

    def _rope_scale(self, coord: Tensor) -> Tensor | None:
        """Utonia's training augmentation of the RoPE coordinates only: a log-uniform factor per axis
        within [1/jitter, jitter] times a global one within [1/rescale, rescale]; none at inference."""
        jitter, rescale = self.config.jitter_coords, self.config.rescale_coords
        if not self.training or self.config.rope_base is None or not (jitter or rescale):
            return None
        log_scale = torch.zeros(3, device=coord.device)
        if jitter:
            log_scale += torch.empty(3, device=coord.device).uniform_(-1, 1) * math.log(jitter)
        if rescale:
            log_scale += torch.empty(1, device=coord.device).uniform_(-1, 1) * math.log(rescale)
        return log_scale.exp().to(coord.dtype)

    def _orders_for(self, stage: Stage) -> tuple[str, ...]:
        """The curves a stage's blocks use: block i takes order i % K; training shuffles the K orders."""
        orders = self.config.order
        if self.training and self.shuffle_orders:
            orders = tuple(orders[i] for i in torch.randperm(len(orders)).tolist())
        return orders[: min(stage.depth, len(orders))]


def _init_weights(module: nn.Module) -> None:
    """The reference's initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear | SubMConv3d):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
