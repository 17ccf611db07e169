"""Submanifold 3x3x3 sparse convolution (PTv3's positional encoding) with two backends.

- "spconv": spconv 2.x `SubMConv3d` (fast on CUDA). On CPU tensors the CUDA build needs
  `ConvAlgo.Native`, asserts on a conv bias in eval mode (so the bias is added here), and has been
  seen to give wrong results with several torch threads (so the call runs single-threaded under a lock).
- "torch": pure PyTorch. The neighbour map comes from sorted packed voxel keys (searchsorted per
  kernel offset), built once per level; the convolution is, per offset, a gather + matmul accumulated
  into the output. Each output row appears once per offset, so accumulation is race-free and
  deterministic on every device.

Both use spconv's weight layout (C_out, 3, 3, 3, C_in) — the released checkpoints load unchanged.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

BACKENDS = ("torch", "spconv")
BACKEND_ENV = "SONATA_SPARSE_BACKEND"
_BITS = 17  # per axis: grid coordinates < 2**16, shifted by one so that neighbours stay >= 0
_MASK = (1 << _BITS) - 1
_SPCONV_CPU_LOCK = threading.Lock()


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend(device: torch.device) -> str:
    """spconv on CUDA when it imports, the PyTorch implementation otherwise; $SONATA_SPARSE_BACKEND wins."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r}; expected one of {BACKENDS}")
        return forced
    return "spconv" if device.type == "cuda" and spconv_available() else "torch"


def pack_keys(grid: Tensor, batch: Tensor) -> Tensor:
    """int64 key of (batch, x, y, z), 17 bits per axis: grid coordinates + a margin below 2**17."""
    return (batch.long() << 3 * _BITS) | (grid[:, 0] << 2 * _BITS) | (grid[:, 1] << _BITS) | grid[:, 2]


def offset_keys(deltas: Tensor) -> Tensor:
    """What adding each (K, 3) signed grid offset does to a `pack_keys` key (no field may leave its range)."""
    return (deltas[:, 0] << 2 * _BITS) + (deltas[:, 1] << _BITS) + deltas[:, 2]


def kernel_offsets(kernel_size: int, device: torch.device) -> Tensor:
    """(K^3, 3) offsets in the order of the weight's (kx, ky, kz) axes."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    return torch.cartesian_prod(r, r, r)


@dataclass
class SparseGeometry:
    """Active voxels of one level; neighbour pairs (torch) or the spconv tensor, built once, shared."""

    grid_coord: Tensor
    batch: Tensor
    batch_size: int
    backend: str
    _pairs: dict[int, list[tuple[Tensor, Tensor]]] = field(default_factory=dict, repr=False)
    _spconv_tensor: object | None = field(default=None, repr=False)

    @classmethod
    def build(cls, grid_coord: Tensor, batch: Tensor, batch_size: int, backend: str | None = None) -> SparseGeometry:
        backend = backend or default_backend(grid_coord.device)
        if backend not in BACKENDS:
            raise ValueError(f"unknown sparse-conv backend {backend!r}; expected one of {BACKENDS}")
        if backend == "spconv" and not spconv_available():
            raise ValueError("sparse-conv backend 'spconv' requested but spconv is not installed")
        return cls(grid_coord.long(), batch.long(), batch_size, backend)

    @property
    def num_voxels(self) -> int:
        return self.grid_coord.shape[0]

    def pairs(self, kernel_size: int) -> list[tuple[Tensor, Tensor]]:
        """Per kernel offset: (output rows, input rows) of the voxel pairs that offset connects."""
        if kernel_size not in self._pairs:
            self._pairs[kernel_size] = self._build_pairs(kernel_size)
        return self._pairs[kernel_size]

    def _build_pairs(self, kernel_size: int) -> list[tuple[Tensor, Tensor]]:
        keys = pack_keys(self.grid_coord + 1, self.batch)
        sorted_keys, order = torch.sort(keys)
        delta_keys = offset_keys(kernel_offsets(kernel_size, keys.device))
        rows = torch.arange(len(keys), device=keys.device)
        pairs = []
        for delta in delta_keys:
            wanted = keys + delta
            position = torch.searchsorted(sorted_keys, wanted).clamp_(max=len(keys) - 1)
            found = sorted_keys[position] == wanted
            pairs.append((rows[found], order[position[found]]))
        return pairs

    def spconv_tensor(self, feat: Tensor):
        """spconv SparseConvTensor over these voxels with `feat`; indice pairs cached across blocks."""
        import spconv.pytorch as spconv

        if self._spconv_tensor is None:
            indices = torch.cat((self.batch.unsqueeze(1), self.grid_coord), dim=1).int().contiguous()
            shape = (self.grid_coord.max(dim=0).values + 1).tolist()
            self._spconv_tensor = spconv.SparseConvTensor(feat, indices, shape, self.batch_size)
        return self._spconv_tensor.replace_feature(feat)


class SubMConv3d(nn.Module):
    """Submanifold sparse conv; `weight` (C_out, k, k, k, C_in) and `bias` (C_out,) as in spconv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        trunc_normal_(self.weight, std=0.02)
        # spconv modules (per device type) sharing `weight`; a plain dict keeps them out of state_dict
        self._spconv: dict[str, nn.Module] = {}

    def forward(self, feat: Tensor, geometry: SparseGeometry) -> Tensor:
        if feat.shape != (geometry.num_voxels, self.in_channels):
            raise ValueError(
                f"features {tuple(feat.shape)} do not fit {geometry.num_voxels} voxels x {self.in_channels} channels"
            )
        out = (
            self._spconv_forward(feat, geometry)
            if geometry.backend == "spconv"
            else self._torch_forward(feat, geometry)
        )
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def _torch_forward(self, feat: Tensor, geometry: SparseGeometry) -> Tensor:
        weight = self.weight.to(feat.dtype).reshape(self.out_channels, -1, self.in_channels)
        centre = weight.shape[1] // 2
        out = feat @ weight[:, centre].t()  # the centre offset pairs every voxel with itself
        for k, (rows, cols) in enumerate(geometry.pairs(self.kernel_size)):
            if k == centre or rows.numel() == 0:
                continue
            out.index_add_(0, rows, feat[cols] @ weight[:, k].t())
        return out

    def _spconv_forward(self, feat: Tensor, geometry: SparseGeometry) -> Tensor:
        conv = self._spconv_module(feat.device)
        conv.weight = self.weight
        tensor = geometry.spconv_tensor(feat)
        if feat.is_cuda:
            return conv(tensor).features
        with _SPCONV_CPU_LOCK:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return conv(tensor).features
            finally:
                torch.set_num_threads(threads)

    def _spconv_module(self, device: torch.device) -> nn.Module:
        if device.type not in self._spconv:
            import spconv.pytorch as spconv

            kwargs = {"algo": spconv.ConvAlgo.Native} if device.type == "cpu" else {}
            self._spconv[device.type] = spconv.SubMConv3d(
                self.in_channels, self.out_channels, self.kernel_size, bias=False, indice_key="subm", **kwargs
            )
        return self._spconv[device.type]
