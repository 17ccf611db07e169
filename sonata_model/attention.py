"""Serialized patch attention (PTv3): self-attention inside contiguous patches of a space-filling curve.

Points are taken in curve order and cut, cloud by cloud, into patches of K consecutive curve positions.
A cloud of n > K points whose n is not a multiple of K is padded to ceil(n / K) * K as the reference
does: its last patch is the cloud's last K points (the last r = n % K positions, then the K - r before
them), so every full patch has exactly K points and runs through one unmasked attention call. A cloud of
n <= K points is a single patch of n points (no padding, as the reference's flash path).

`PatchLayout` holds that arithmetic as index tensors, built once per (level, order) and shared by every
block using them. Its "slots" are the rows attention runs on: the F full patches (F * K slots) first,
then the points of the short clouds (0 < n < K), each a sequence of its own, in curve order. A point's
output is read from its own slot; padding copies are computed and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from flash_attn import flash_attn_varlen_qkvpacked_func
except ImportError:
    flash_attn_varlen_qkvpacked_func = None

ATTENTION_KERNELS = ("sdpa", "flash")


@dataclass
class PatchLayout:
    """Where every attention slot reads its point, and where every point reads its output.

    Built once per (level, order) and reused by every block of that level using that order.
    """

    patch_size: int  # K
    num_full_patches: int  # F: patches of exactly K slots, slots [0, F * K)
    index: Tensor  # (T,) int64 point row of every slot
    inverse: Tensor  # (N,) int64 slot holding each point's own (first) occurrence
    cu_seqlens: Tensor  # (F + S + 1,) int32 sequence boundaries over the slots (flash_attn varlen)
    max_seqlen: int  # longest sequence (flash_attn varlen)
    short_gather: Tensor  # (S, L) int64 short-cloud slot (from F * K) of each padded row; pads repeat
    short_valid: Tensor  # (S, L) bool, the rows that are real points (keys to attend to)
    short_scatter: Tensor  # (T - F * K,) int64 padded row (flattened S x L) of each short-cloud slot

    @property
    def num_points(self) -> int:
        return self.inverse.shape[0]

    @property
    def num_slots(self) -> int:
        return self.index.shape[0]

    @classmethod
    def build(cls, order: Tensor, offset: Tensor, patch_size: int) -> PatchLayout:
        """Patches along the curve `order` ((N,) point row at each curve position) for the clouds
        ending at `offset` ((B,) cumulative counts; cloud b holds rows and curve positions
        offset[b-1]:offset[b]).

        Vectorised over points and clouds. One host sync (sizing the outputs) happens here; none later.
        """
        if order.dim() != 1 or order.dtype.is_floating_point or order.dtype == torch.bool:
            raise ValueError(
                f"PatchLayout.build: order must be a 1-D integer tensor, got {tuple(order.shape)} {order.dtype}"
            )
        if offset.dim() != 1 or offset.numel() == 0 or offset.dtype.is_floating_point:
            raise ValueError(
                f"PatchLayout.build: offset must be a non-empty 1-D integer tensor, got "
                f"{tuple(offset.shape)} {offset.dtype}"
            )
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"PatchLayout.build: patch_size must be a positive int, got {patch_size!r}")
        if order.numel() == 0:
            raise ValueError("PatchLayout.build: order is empty (the batch has no points)")
        device = order.device
        k = patch_size
        order = order.long()
        offset = offset.to(device=device, dtype=torch.long)
        num_points = order.shape[0]
        clouds = torch.arange(offset.shape[0], device=device)

        counts = torch.diff(offset, prepend=offset.new_zeros(1))
        starts = offset - counts
        full_patches = torch.where(counts >= k, (counts + k - 1) // k, 0)
        is_short = (counts > 0) & (counts < k)
        short_counts = torch.where(is_short, counts, 0)

        # order must be a permutation of the rows: in range and hitting every row.
        seen = torch.zeros(num_points, dtype=torch.bool, device=device)
        seen[order.clamp(0, num_points - 1)] = True
        sizes = [full_patches.sum(), is_short.sum(), short_counts.max(), short_counts.sum(), offset[-1]]
        checks = [counts.min(), order.min(), order.max(), seen.all()]
        stats = torch.stack(sizes + checks).tolist()  # the one host sync
        num_full, num_short, short_len_max, num_short_points, total, min_count, lo, hi, covered = stats
        if min_count < 0:
            raise ValueError(f"PatchLayout.build: offset must be non-decreasing, got {offset.tolist()}")
        if total != num_points:
            raise ValueError(f"PatchLayout.build: offset[-1] = {total} but order has {num_points} entries")
        if lo < 0 or hi >= num_points or not covered:
            raise ValueError(
                f"PatchLayout.build: order must be a permutation of 0..{num_points - 1} "
                f"(min {lo}, max {hi}, every row present: {bool(covered)})"
            )

        # Full patches: padded position p of its cloud reads curve position p, or p - K past the end.
        patch_cloud = torch.repeat_interleave(clouds, full_patches, output_size=num_full)
        first_patch = torch.cumsum(full_patches, 0) - full_patches
        patch_in_cloud = torch.arange(num_full, device=device) - first_patch[patch_cloud]
        padded = patch_in_cloud[:, None] * k + torch.arange(k, device=device)
        padded = torch.where(padded < counts[patch_cloud, None], padded, padded - k)
        full_positions = (starts[patch_cloud, None] + padded).flatten()

        # Short clouds: their points in curve order, one sequence per cloud.
        short_cloud = torch.repeat_interleave(clouds, is_short.long(), output_size=num_short)
        short_first = torch.cumsum(short_counts, 0) - short_counts  # per cloud, from slot F * K
        seq_len = counts[short_cloud]
        seq_first = short_first[short_cloud]
        slot_seq = torch.repeat_interleave(
            torch.arange(num_short, device=device), seq_len, output_size=num_short_points
        )
        slot_in_seq = torch.arange(num_short_points, device=device) - seq_first[slot_seq]
        short_positions = starts[short_cloud][slot_seq] + slot_in_seq

        index = order[torch.cat([full_positions, short_positions])]

        # Each curve position's own slot; scattered through `order` to index by point row.
        position_cloud = torch.repeat_interleave(clouds, counts, output_size=num_points)
        cloud_base = torch.where(counts >= k, first_patch * k, num_full * k + short_first)
        position_in_cloud = torch.arange(num_points, device=device) - starts[position_cloud]
        position_slot = cloud_base[position_cloud] + position_in_cloud
        inverse = torch.empty_like(order)
        inverse[order] = position_slot

        rows = torch.arange(short_len_max, device=device)
        short_valid = rows < seq_len[:, None]
        short_gather = seq_first[:, None] + torch.where(short_valid, rows, 0)
        short_scatter = slot_seq * short_len_max + slot_in_seq

        seq_lens = torch.cat([full_patches.new_full((num_full,), k), seq_len])
        cu_seqlens = F.pad(torch.cumsum(seq_lens, 0), (1, 0)).to(torch.int32)
        return cls(
            patch_size=k,
            num_full_patches=num_full,
            index=index,
            inverse=inverse,
            cu_seqlens=cu_seqlens,
            max_seqlen=k if num_full else short_len_max,
            short_gather=short_gather,
            short_valid=short_valid,
            short_scatter=short_scatter,
        )


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
    """Multi-head self-attention within the patches of a `PatchLayout` (no RPE, no layer scale).

    Parameters `qkv` (Linear(C, 3C), output read as (3, H, C/H)) and `proj` (Linear(C, C)) carry the
    released checkpoints' names and shapes. With `rope_base` (Utonia), q and k are rotated by the
    points' coordinates (`RotaryEmbedding3D`, module `rope`) before attention. `kernel` picks torch's
    scaled_dot_product_attention ("sdpa") or flash_attn's varlen kernel ("flash": CUDA, fp16/bf16,
    flash_attn installed).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel: str = "sdpa",
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
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = None if rope_base is None else RotaryEmbedding3D(channels // num_heads, rope_base)
        self.kernel = kernel

    @property
    def kernel(self) -> str:
        return self._kernel

    @kernel.setter
    def kernel(self, kernel: str) -> None:
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"SerializedAttention: kernel must be one of {ATTENTION_KERNELS}, got {kernel!r}")
        if kernel == "flash" and flash_attn_varlen_qkvpacked_func is None:
            raise RuntimeError(
                "SerializedAttention: kernel 'flash' needs the flash_attn package, which is not installed; use 'sdpa'"
            )
        self._kernel = kernel

    def forward(self, feat: Tensor, layout: PatchLayout, coord: Tensor | None = None) -> Tensor:
        """(N, C) features in point order -> (N, C) attended features in point order.

        `coord` (N, 3): the points' model coordinates, which RoPE (when configured) rotates by.
        """
        if feat.dim() != 2 or feat.shape[1] != self.channels:
            raise ValueError(f"SerializedAttention: feat must be (N, {self.channels}), got {tuple(feat.shape)}")
        if feat.shape[0] != layout.num_points:
            raise ValueError(
                f"SerializedAttention: feat has {feat.shape[0]} rows but the patch layout "
                f"was built for {layout.num_points} points"
            )
        qkv = self.qkv(feat[layout.index])  # (T, 3C), gathering C channels rather than 3C
        if self.rope is not None:
            if coord is None:
                raise ValueError("SerializedAttention: RoPE attention needs the points' coordinates")
            qkv = self._rotate(qkv, coord[layout.index])
        attend = self._flash if self.kernel == "flash" else self._sdpa
        return self.proj_drop(self.proj(attend(qkv, layout)[layout.inverse]))

    def _rotate(self, qkv: Tensor, coord: Tensor) -> Tensor:
        """RoPE on the q and k of every slot; v unchanged."""
        slots = qkv.view(qkv.shape[0], 3, self.num_heads, -1)
        return torch.cat((self.rope(slots[:, :2], coord), slots[:, 2:]), dim=1).view_as(qkv)

    def _split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(P, L, 3C) -> q, k, v of shape (P, H, L, C/H), views of qkv."""
        patches, length, _ = qkv.shape
        q, k, v = qkv.view(patches, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _sdpa(self, qkv: Tensor, layout: PatchLayout) -> Tensor:
        """Full patches in one unmasked call; short clouds padded to one batch with a key mask."""
        dropout = self.attn_drop if self.training else 0.0
        full_slots = layout.num_full_patches * layout.patch_size
        parts = []
        if layout.num_full_patches:
            full = qkv[:full_slots].view(layout.num_full_patches, layout.patch_size, -1)
            out = F.scaled_dot_product_attention(*self._split_heads(full), dropout_p=dropout, scale=self.scale)
            parts.append(out.transpose(1, 2).reshape(full_slots, self.channels))
        if layout.short_scatter.numel():
            short = qkv[full_slots:][layout.short_gather]  # (S, L, 3C)
            mask = layout.short_valid[:, None, None, :]
            out = F.scaled_dot_product_attention(
                *self._split_heads(short), attn_mask=mask, dropout_p=dropout, scale=self.scale
            )
            parts.append(out.transpose(1, 2).reshape(-1, self.channels)[layout.short_scatter])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _flash(self, qkv: Tensor, layout: PatchLayout) -> Tensor:
        """flash_attn over the slots as variable-length sequences (half precision, CUDA only)."""
        if not qkv.is_cuda:
            raise RuntimeError("SerializedAttention: kernel 'flash' runs on CUDA tensors only; use 'sdpa'")
        packed = qkv.view(-1, 3, self.num_heads, self.channels // self.num_heads)
        if packed.dtype not in (torch.float16, torch.bfloat16):
            packed = packed.half()  # flash_attn computes in fp16/bf16 only, as the reference converts
        out = flash_attn_varlen_qkvpacked_func(
            packed,
            layout.cu_seqlens,
            layout.max_seqlen,
            dropout_p=self.attn_drop if self.training else 0.0,
            softmax_scale=self.scale,
        )
        return out.reshape(-1, self.channels).to(qkv.dtype)
