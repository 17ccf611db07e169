"""Submanifold 3x3x3 sparse convolution (PTv3's positional encoding) over a plan's level, two backends.

- "torch" (default): one gather of the 27 neighbours of every row through the plan's (C, 27)
  neighbour table (a missing neighbour reads an appended zero row) and one matmul with the weight
  flattened to (C_out, 27 C_in): three kernels (the zero row appended, the gather, the matmul), no
  host sync, fixed shapes. That computes all 27 taps
  where a surface voxel has 5 to 9 neighbours: free on a GPU, 3-5x the conv's work on a CPU core. So on
  a CPU the plan gives the found (row, neighbour) pairs instead of a table (`ConvPairs`, straight from
  the neighbour search), grouped by kernel offset: the centre tap is one
  matmul, then each other tap gathers its pairs' neighbours, multiplies them by its tap (read in place
  from the weight) and adds them into its rows (`index_add`, deterministic on a CPU). A tap's pairs
  are a few MB, so its three steps run in cache; all taps at once made frame-sized temporaries (36-51
  MB at the `sonata` stages 0-1 of a 41k-voxel room) that glibc maps and faults in afresh per call
  (the README's profile of a CPU frame).
- "spconv": spconv 2.x `SubMConv3d`. Its pairs ("rulebook") are built by the first conv of a stage and
  kept on the plan's level, which every later block of the stage reuses (spconv keeps them on the
  *output* tensor's `indice_dict`). On CPU tensors the CUDA build needs `ConvAlgo.Native`, asserts on
  a conv bias in eval mode (so the bias is added here), and has been seen to give wrong results with
  several torch threads (so the call runs single-threaded under a lock).

Precision: under autocast the torch backend gathers and multiplies in the autocast dtype. spconv's
autograd functions are declared `custom_fwd(cast_inputs=float16)`, which would silently run the conv
in fp16 on the un-normalised residual stream under bf16 autocast (overflow risk); the spconv call runs
with autocast off, in the weight's dtype (fp32).

Both use spconv's weight layout (C_out, 3, 3, 3, C_in) — the released checkpoints load unchanged.
"""

from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from .plan import SPARSE_BACKENDS, ConvPairs, LevelPlan

BACKEND_ENV = "SONATA_SPARSE_BACKEND"
_SPCONV_CPU_LOCK = threading.Lock()


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    """The torch conv (sync-free, graph-capturable, on every device); $SONATA_SPARSE_BACKEND may pick spconv."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        if forced not in SPARSE_BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r}; expected one of {SPARSE_BACKENDS}")
        if forced == "spconv" and not spconv_available():
            raise ValueError(f"{BACKEND_ENV}=spconv but spconv is not installed")
        return forced
    return "torch"


def compute_dtype(feat: Tensor) -> torch.dtype:
    """The dtype a matmul on `feat` runs in: the autocast dtype when autocast is on, else feat's."""
    device = feat.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return torch.get_autocast_dtype(device) if autocast else feat.dtype


class SubMConv3d(nn.Module):
    """Submanifold sparse conv; `weight` (C_out, k, k, k, C_in) and `bias` (C_out,) as in spconv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size != 3:
            raise ValueError(f"only 3x3x3 kernels are supported (the plan's neighbour table), got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        trunc_normal_(self.weight, std=0.02)
        # spconv modules (per device type) sharing `weight`; a plain dict keeps them out of state_dict
        self._spconv: dict[str, nn.Module] = {}

    def forward(self, feat: Tensor, level: LevelPlan, backend: str = "torch") -> Tensor:
        if feat.shape != (level.capacity, self.in_channels):
            raise ValueError(
                f"features {tuple(feat.shape)} do not fit {level.capacity} voxels x {self.in_channels} channels"
            )
        if backend == "spconv":
            out = self._spconv_forward(feat, level)
            return out if self.bias is None else out + self.bias.to(out.dtype)
        return self._torch_forward(feat, level)

    def _torch_forward(self, feat: Tensor, level: LevelPlan) -> Tensor:
        work = compute_dtype(feat)
        feat = feat if feat.dtype == work else feat.to(work)
        if level.pairs is not None:
            return self._pairs_forward(feat, level.pairs)
        padded = F.pad(feat, (0, 0, 0, 1))  # row C: zeros, for no neighbour
        columns = padded.index_select(0, level.neighbours.flatten()).view(level.capacity, -1)  # (C, 27 C_in)
        return F.linear(columns, self.weight.flatten(1), self.bias)  # autocast casts the weight, not fp32 data

    def _pairs_forward(self, feat: Tensor, pairs: ConvPairs) -> Tensor:
        """The centre tap as one matmul over all rows, then each other tap over its own pairs."""
        total = torch.promote_types(compute_dtype(feat), torch.float32)  # up to 27 terms: sum them in fp32
        out = F.linear(feat, self.weight[:, 1, 1, 1], self.bias).to(total)  # `out` is this call's own
        taps = self.weight.view(self.out_channels, 27, self.in_channels)
        groups = zip(pairs.source.split(pairs.counts), pairs.target.split(pairs.counts), strict=True)
        for k, (source, target) in enumerate(groups):
            if pairs.counts[k]:
                out.index_add_(0, target, F.linear(feat.index_select(0, source), taps[:, k]).to(total))
        return out

    def _spconv_forward(self, feat: Tensor, level: LevelPlan) -> Tensor:
        import spconv.pytorch as spconv

        device = feat.device.type
        conv = self._spconv_module(feat.device)
        conv.weight = self.weight
        if "tensor" not in level.rulebook:
            indices = torch.cat((level.batch[:, None], level.grid_coord), dim=1).int()
            shape = list(level.spatial_shape)
            level.rulebook["tensor"] = spconv.SparseConvTensor(feat, indices, shape, int(level.offset.shape[0]))
        tensor = level.rulebook["tensor"].replace_feature(feat.to(self.weight.dtype).contiguous())
        with torch.autocast(device, enabled=False):
            if feat.is_cuda:
                out = conv(tensor)
            else:
                with _SPCONV_CPU_LOCK:
                    threads = torch.get_num_threads()
                    torch.set_num_threads(1)
                    try:
                        out = conv(tensor)
                    finally:
                        torch.set_num_threads(threads)
        level.rulebook["tensor"].indice_dict = out.indice_dict  # the pairs, for the stage's next blocks
        return out.features

    def _spconv_module(self, device: torch.device) -> nn.Module:
        if device.type not in self._spconv:
            import spconv.pytorch as spconv

            kwargs = {"algo": spconv.ConvAlgo.Native} if device.type == "cpu" else {}
            self._spconv[device.type] = spconv.SubMConv3d(
                self.in_channels, self.out_channels, self.kernel_size, bias=False, indice_key="subm", **kwargs
            )
        return self._spconv[device.type]
