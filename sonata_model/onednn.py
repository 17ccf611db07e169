"""Keep oneDNN out of the encoder's CPU forward: its kernels are compiled and cached per tensor shape.

On CPU, torch runs GELU (and a few other element-wise ops) as oneDNN JIT primitives. Each distinct
input shape compiles a new primitive, which oneDNN keeps in an LRU cache of 1024 entries. Every level
of a point cloud has a data-dependent number of voxels, so each frame of a varying-size stream
compiled about a dozen new kernels (costing time) and retained them (costing memory): the perception
node grew from ~450 MB to over 1.6 GB before the cache filled. torch's native kernels are
shape-agnostic, so the forward runs with oneDNN disabled.

The switch is process-wide in torch; nested and concurrent users are reference-counted so that the
caller's own setting is restored when the last forward leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_users = 0
_saved = True


@contextmanager
def without_onednn(device: torch.device) -> Iterator[None]:
    """Disable oneDNN while the block runs on a CPU device (no-op for CUDA)."""
    if device.type != "cpu":
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
