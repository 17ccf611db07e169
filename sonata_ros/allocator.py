"""Keep a perception node's resident memory flat without paying page faults on every frame (glibc malloc).

glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with a private mapping that is unmapped
on free, and returns the heap's free top to the OS beyond M_TRIM_THRESHOLD. Both are dynamic by
default: every freed mapping raises the mmap threshold to that block's size (up to 32 MiB), so blocks
allocated early as mappings later come from the heap, and a node whose frames vary in size (the frame
plan builds (voxels, 27) index tables of several MB per frame; a million-point cloud makes hundreds of
MB of temporaries) ratchets its heap up by tens of MB, by different amounts on every run.

Fixed thresholds turn that off. A low mmap threshold (1 MiB) keeps RSS at what the live tensors need,
but every frame then maps and faults in its buffers afresh: a 120k-point frame took 295k page faults
and 1.6x the time (benchmarks/malloc_policy.py). So: mappings only for blocks of 32 MiB and more (a
giant cloud's, returned when freed), and up to 256 MiB of free heap top kept for the next frame:
4.5k faults per frame. The heap then keeps the working set of the largest frame it has seen, so after
a frame far larger than the recent ones `OutsizedFrameTrim` hands the free pages back (malloc_trim).
"""

from __future__ import annotations

import ctypes
import statistics
from collections import deque

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def fix_malloc_thresholds(mmap_bytes: int = MMAP_THRESHOLD_BYTES, trim_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap and trim thresholds; False where the C library has no mallopt or refuses
    (non-glibc: the policy is then the C library's own)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1


class OutsizedFrameTrim:
    """Return the heap's free pages to the OS after a frame `factor` times larger than the median of the
    last `window` frames (a one-off million-point cloud), not after frames of the usual size, which
    reuse those pages without faulting them in again."""

    def __init__(self, window: int = 20, factor: float = 2.0) -> None:
        self.sizes: deque[int] = deque(maxlen=window)
        self.factor = factor
        self.trims = 0
        self._malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        if self._malloc_trim is not None:
            self._malloc_trim.argtypes, self._malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int

    def after_frame(self, size: int) -> bool:
        """Call once a frame's buffers are freed, with its size (input bytes); True if it trimmed."""
        outsized = bool(self.sizes) and size > self.factor * statistics.median(self.sizes)
        self.sizes.append(size)
        if not outsized or self._malloc_trim is None:
            return False
        self._malloc_trim(0)
        self.trims += 1
        return True
