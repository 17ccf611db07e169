"""The PTv3 encoder as configured by Sonata (PT-v3m2, encoder only).

Module and parameter names reproduce the released checkpoints' state_dict keys
(`embedding.stem.linear`, `enc.enc{s}.down.proj`, `enc.enc{s}.block{i}.cpe.0`, ...), so released
weights load strictly. The forward runs over a `FramePlan` (`sonata_model.plan`): every index a block
needs (neighbour table, attention layout, pooling parents) is the plan's, so the forward is the maths
only: no host sync, no Python branch on the data, fixed shapes per plan signature.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from .attention import SerializedAttention
from .configs import EncoderConfig
from .onednn import forward_kernels
from .plan import AttentionLayout, FramePlan, LevelPlan, build_plan
from .point import Point
from .pooling import GridPooling
from .sparse_conv import SubMConv3d, default_backend


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
        hidden = self.fc1(x)
        if torch.is_grad_enabled():  # the backward reads fc1's output
            return self.fc2(self.act(hidden))
        # Inference: GELU in place on fc1's own output, the block's largest buffer (rows x 4C), instead
        # of a second one: on a CPU each fresh buffer of that size is faulted in page by page.
        return self.fc2(torch.ops.aten.gelu_(hidden))


class Block(nn.Module):
    """Pre-norm transformer block: sparse-conv positional encoding, patch attention, MLP."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_path: float = 0.0,
        rope_base: float | None = None,
    ) -> None:
        super().__init__()
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

    def forward(
        self, feat: Tensor, level: LevelPlan, layout: AttentionLayout, rope_coord: Tensor | None, backend: str
    ) -> Tensor:
        conv, linear, norm = self.cpe
        feat = feat + norm(linear(conv(feat, level, backend)))
        attended = self.attn(self.norm1(feat), layout, rope_coord)
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
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                qk_scale=config.qk_scale,
                drop_path=drop_paths[i],
                rope_base=config.rope_base,
            )
            self.add_module(f"block{i}", block)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.depth)]

    def forward(
        self, feat: Tensor, level: LevelPlan, orders: tuple[int, ...], rope_coord: Tensor | None, backend: str
    ) -> Tensor:
        """Pool (stages > 0), then the blocks; block i attends along the plan's order `orders[i % K]`."""
        if hasattr(self, "down"):
            feat = self.down(feat, level.parent, level.capacity)
        for i, block in enumerate(self.blocks()):
            feat = block(feat, level, level.layouts[orders[i % len(orders)]], rope_coord, backend)
        return feat


class SonataEncoder(nn.Module):
    """PTv3 encoder: embedding, then stages of (grid pooling +) blocks, over a `FramePlan`.

    `forward_plan(plan, feat)` returns every level's features (finest first, padding rows included);
    `forward(point)` plans a batch of voxels, runs it and returns every level as a `Point` (real rows);
    `pooling.upcast` turns levels into per-voxel features. Inference is deterministic: the serialization
    orders are shuffled only in training mode.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.sparse_backend: str | None = None  # None: sparse_conv.default_backend()
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

    def plan(self, point: Point, attention: str = "sdpa") -> FramePlan:
        """The plan of a batch of distinct voxels (their rows stay level 0's rows)."""
        backend = self.sparse_backend or default_backend()
        return build_plan(
            self.config,
            point.coord,
            point.grid_coord,
            point.batch,
            point.batch_size,
            voxelize=False,
            origin_coord=point.origin_coord,
            attention=attention,
            sparse_backend=backend,
            conv_pairs=backend == "torch" and point.grid_coord.device.type == "cpu",
        )

    def forward(self, point: Point, attention: str = "sdpa") -> list[Point]:
        plan = self.plan(point, attention)
        return plan.points(self.forward_plan(plan, point.feat, point.mask))

    def forward_plan(self, plan: FramePlan, feat: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """(C_0, in_channels) input features of level 0's rows (and the mask-token rows) -> the features
        of every level, (C_s, enc_channels[s]); padding rows' values are unspecified."""
        if torch.compiler.is_compiling():  # a compiled graph has fixed shapes: no oneDNN cache to outgrow
            return self._forward_plan(plan, feat, mask)
        with forward_kernels(feat.device):
            return self._forward_plan(plan, feat, mask)

    def _forward_plan(self, plan: FramePlan, feat: Tensor, mask: Tensor | None) -> list[Tensor]:
        if plan.orders != tuple(self.config.order):
            raise ValueError(f"the plan has orders {plan.orders}, the encoder {tuple(self.config.order)}")
        feat = self.embedding(feat, mask)
        rope_scale = self.rope_scale(feat.device)
        feats = []
        for stage, level in zip(self.stages(), plan.levels, strict=True):
            rope_coord = None
            if self.config.rope_base is not None:
                rope_coord = level.coord if rope_scale is None else level.coord * rope_scale
            feat = stage(feat, level, self._orders(), rope_coord, plan.sparse_backend)
            feats.append(feat)
        return feats

    def rope_scale(self, device: torch.device) -> Tensor | None:
        """Utonia's training augmentation of the RoPE coordinates only: a log-uniform factor per axis
        within [1/jitter, jitter] times a global one within [1/rescale, rescale]; none at inference."""
        jitter, rescale = self.config.jitter_coords, self.config.rescale_coords
        if not self.training or self.config.rope_base is None or not (jitter or rescale):
            return None
        log_scale = torch.zeros(3, device=device)
        if jitter:
            log_scale += torch.empty(3, device=device).uniform_(-1, 1) * math.log(jitter)
        if rescale:
            log_scale += torch.empty(1, device=device).uniform_(-1, 1) * math.log(rescale)
        return log_scale.exp()

    def _orders(self) -> tuple[int, ...]:
        """The plan's curves in the order a stage's blocks take them (block i: i % K); training shuffles."""
        count = len(self.config.order)
        if self.training and self.shuffle_orders:
            return tuple(torch.randperm(count).tolist())
        return tuple(range(count))


def _init_weights(module: nn.Module) -> None:
    """The reference's initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear | SubMConv3d):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
