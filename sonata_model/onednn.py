"""oneDNN in the encoder's CPU forward: off in fp32, on (with capped caches) in bf16 / fp16.

oneDNN compiles its kernels per tensor shape and caches them, and every level of a point cloud has a
data-dependent number of voxels: a stream of ordinary clouds compiles new kernels every frame and,
with oneDNN's default caches (1,024 entries each), keeps them (the node grew from ~450 MB to over
1.6 GB in fp32; test/test_cpu_half_precision.py measures the bf16 case).

- fp32: torch runs GEMMs with MKL whether oneDNN is on or not, and its native element-wise kernels
  are shape-agnostic, so the forward runs with oneDNN off (on, a stream of varying frames ran slower:
  every new size compiles its element-wise kernels).
- bf16 / fp16 (CPU autocast): oneDNN is torch's only fast half-precision GEMM; without it torch falls
  back to a GEMM ~10x slower than fp32's (a `sonata` frame took 5.6x as long as in fp32). The forward
  keeps oneDNN on, and importing this module caps both of its caches (ideep's `LRU_CACHE_CAPACITY`
  and oneDNN's `ONEDNN_PRIMITIVE_CACHE_CAPACITY`; both are needed) at `CACHE_CAPACITY` entries, above
  the distinct shapes of one frame (so the blocks of a level share their kernels), far below the
  default. The caps are read when the process first runs a oneDNN kernel, so they hold when this
  package is imported before any; a value already in the environment is kept.

bf16 is fast where the CPU has AVX-512 BF16 or AMX; elsewhere oneDNN emulates it and it may run slower
than fp32 (`native_bf16`: the Segmenter warns).

The on/off switch is process-wide in torch; nested and concurrent fp32 forwards are
reference-counted so that the caller's own setting is restored when the last one leaves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CACHE_CAPACITY = 64
CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
for _name in CACHE_VARIABLES:
    os.environ.setdefault(_name, str(CACHE_CAPACITY))

_lock = threading.Lock()
_users = 0
_saved = True


@contextmanager
def forward_kernels(device: torch.device) -> Iterator[None]:
    """The CPU kernels an encoder forward on `device` should use: oneDNN off unless CPU autocast (bf16 /
    fp16) is active (see the module docstring); CUDA is left alone."""
    if device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        yield
        return
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                torch._C._set_mkldnn_enabled(_saved)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX tiles), as torch reports it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
