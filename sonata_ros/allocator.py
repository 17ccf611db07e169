"""Return a frame's large temporary buffers to the OS when they are freed (glibc malloc).

glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with a private mapping that is unmapped
on free, but the threshold is dynamic: every freed mapping raises it to that block's size (up to
32 MiB), and from then on blocks of that size come from the heap, where a freed block stays resident
unless it happens to sit at the heap's top. A perception node whose frames vary in size (the frame plan
builds (voxels, 27) index tables of several MB per frame; a million-point cloud makes hundreds of MB of
temporaries) ratchets the threshold up and keeps its peaks: its RSS drifts up by tens of MB, and by
different amounts on every run. A fixed threshold (which also turns the dynamic one off) keeps RSS at
what the live tensors need.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # <malloc.h>
LARGE_BUFFER_BYTES = 1 << 20


def return_large_buffers_to_the_os(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where the C library has no mallopt or
    refuses (non-glibc: the policy is then the C library's own)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
