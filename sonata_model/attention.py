"""Serialized patch attention (PTv3): self-attention inside contiguous patches of a space-filling curve.

The patches themselves (which row each slot reads, the key mask, where each row reads its output) are
index arithmetic on the voxels only: `plan.AttentionLayout`, built once per frame for every level and
order by the frame plan. Here: the attention maths over such a layout, with torch's
scaled_dot_product_attention on fixed-shape padded patches ("sdpa") or flash_attn's varlen kernel
("flash", CUDA, half precision), and Utonia's 3D rotary embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .plan import ATTENTION_KERNELS, AttentionLayout

try:
    from flash_attn import flash_attn_varlen_qkvpacked_func
except ImportError:
    flash_attn_varlen_qkvpacked_func = None

ATTENTION_CHOICES = ("auto", *ATTENTION_KERNELS)


def resolve_attention(choice: str, device: torch.device, precision: str) -> str:
    """The kernel for an `attention` choice: "auto" takes flash_attn on CUDA in half precision when it is
    installed, sdpa otherwise; "flash" where it cannot run is an error naming why."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {choice!r}")
    usable = flash_attn_varlen_qkvpacked_func is not None and device.type == "cuda"
    if choice == "auto":
        return "flash" if usable and precision in ("fp16", "bf16") else "sdpa"
    if choice == "flash" and flash_attn_varlen_qkvpacked_func is None:
        raise ValueError("attention 'flash' needs the flash_attn package, which is not installed; use 'sdpa'")
    if choice == "flash" and device.type != "cuda":
        raise ValueError(f"attention 'flash' runs on CUDA only, the device is {device}; use 'sdpa'")
    return choice


class RotaryEmbedding3D(nn.Module):
    """Utonia's 3D rotary position embedding of queries and keys (parameter-free).

    Each head's D channels are three chunks of D / 3 (x, y, z). Within the chunk of axis a, channel j
    and channel j + D / 6 form a pair rotated by the angle coord_a * inv_freq[j], with
    inv_freq[j] = base^(-2j / (D / 3)) ("rotate half" within the chunk); every head alike. q . k then
    depends on coordinate differences only. `inv_freq` is a persistent buffer, as in the released
    state dicts (`attn.rope.inv_freq`).
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        if head_dim % 6:
            raise ValueError(f"RotaryEmbedding3D: head dim {head_dim} must be a multiple of 6 (3 axes x pairs)")
        chunk = head_dim // 3
        self.head_dim = head_dim
        self.register_buffer("inv_freq", base ** (-torch.arange(0, chunk, 2, dtype=torch.float32) / chunk))

    def forward(self, qk: Tensor, coord: Tensor) -> Tensor:
        """(T, 2, H, D) queries and keys at points `coord` (T, 3) -> rotated, same shape and dtype."""
        rows, pair, heads, _ = qk.shape
        half = self.inv_freq.shape[0]
        work = torch.promote_types(qk.dtype, torch.float32)  # rotate in fp32 under half precision
        angle = coord.to(work)[:, None, None, :, None] * self.inv_freq.to(work)  # (T, 1, 1, 3, D/6)
        cos, sin = angle.cos(), angle.sin()
        a, b = qk.to(work).view(rows, pair, heads, 3, 2, half).unbind(dim=4)
        rotated = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=4)
        return rotated.view(rows, pair, heads, self.head_dim).to(qk.dtype)


class SerializedAttention(nn.Module):
    """Multi-head self-attention within the patches of an `AttentionLayout` (no RPE, no layer scale).

    Parameters `qkv` (Linear(C, 3C), output read as (3, H, C/H)) and `proj` (Linear(C, C)) carry the
    released checkpoints' names and shapes. With `rope_base` (Utonia), q and k are rotated by the
    coordinates of the row each slot reads (`RotaryEmbedding3D`, module `rope`) before attention, so a
    padding copy carries the position of the point it copies. The layout's kernel decides the call.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rope_base: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"SerializedAttention: channels {channels} must split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.scale = qk_scale if qk_scale is not None else (channels // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = proj_drop
        self.rope = None if rope_base is None else RotaryEmbedding3D(channels // num_heads, rope_base)

    def forward(self, feat: Tensor, layout: AttentionLayout, coord: Tensor | None = None) -> Tensor:
        """(C_rows, C) features of a level's rows -> (C_rows, C) attended features.

        `coord` (C_rows, 3): the rows' coordinates, which RoPE (when configured) rotates by.
        """
        if feat.dim() != 2 or feat.shape[1] != self.channels:
            raise ValueError(f"SerializedAttention: feat must be (N, {self.channels}), got {tuple(feat.shape)}")
        if feat.shape[0] != layout.inverse.shape[0]:
            raise ValueError(
                f"SerializedAttention: feat has {feat.shape[0]} rows but the layout was built for "
                f"{layout.inverse.shape[0]}"
            )
        qkv = self._qkv_of_slots(feat, layout.index)
        if self.rope is not None:
            if coord is None:
                raise ValueError("SerializedAttention: RoPE attention needs the points' coordinates")
            qkv = self._rotate(qkv, coord.index_select(0, layout.index))
        attend = self._flash if layout.kernel == "flash" else self._sdpa
        out = self.proj(attend(qkv, layout).index_select(0, layout.inverse))
        return F.dropout(out, self.proj_drop, training=True) if self.training and self.proj_drop else out

    def _qkv_of_slots(self, feat: Tensor, index: Tensor) -> Tensor:
        """(S, 3C) qkv of every slot. Gathering C channels before the projection moves a third of the
        data, projecting before gathering computes each row once: a level whose last patch is mostly
        copies (a quarter more slots than rows) takes the latter."""
        if index.shape[0] * 4 > feat.shape[0] * 5:
            return self.qkv(feat).index_select(0, index)
        return self.qkv(feat.index_select(0, index))

    def _rotate(self, qkv: Tensor, coord: Tensor) -> Tensor:
        """RoPE on the q and k of every slot; v unchanged."""
        slots = qkv.view(qkv.shape[0], 3, self.num_heads, -1)
        return torch.cat((self.rope(slots[:, :2], coord), slots[:, 2:]), dim=1).view_as(qkv)

    def _sdpa(self, qkv: Tensor, layout: AttentionLayout) -> Tensor:
        """The full patches in one call, the partly own patches (queried at their own slots) in another."""
        full = layout.full_patches
        slots = qkv.view(layout.num_patches, layout.length, 3, self.num_heads, -1)
        parts = []
        if full:
            parts.append(self._attend(slots[:full], layout.length, None))
        if full < layout.num_patches:
            parts.append(self._attend(slots[full:], layout.query_length, layout.bias))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _attend(self, slots: Tensor, queries: int, mask: Tensor | None) -> Tensor:
        """(P, L, 3, H, C/H) patches -> (P * queries, C): attention of each patch's first `queries` slots."""
        q, k, v = slots.permute(2, 0, 3, 1, 4).unbind(0)  # (P, H, L, C/H) each
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q[:, :, :queries], k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale
        )
        return out.transpose(1, 2).reshape(-1, self.channels)

    def _flash(self, qkv: Tensor, layout: AttentionLayout) -> Tensor:
        """flash_attn over the packed slots as variable-length sequences (half precision, CUDA only)."""
        packed = qkv.view(-1, 3, self.num_heads, self.channels // self.num_heads)
        if packed.dtype not in (torch.float16, torch.bfloat16):
            packed = packed.half()  # flash_attn computes in fp16/bf16 only, as the reference converts
        out = flash_attn_varlen_qkvpacked_func(
            packed,
            layout.cu_seqlens,
            layout.length,
            dropout_p=self.attn_drop if self.training else 0.0,
            softmax_scale=self.scale,
        )
        return out.reshape(-1, self.channels).to(qkv.dtype)
