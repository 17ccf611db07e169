"""The node's malloc policy: fixed thresholds, and the heap handed back after an outsized frame only."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from sonata_ros.allocator import OutsizedFrameTrim


def test_only_frames_far_above_the_recent_median_trim_and_a_new_normal_stops_trimming():
    trim = OutsizedFrameTrim(window=20, factor=2.0)
    assert not trim.after_frame(10_000_000)  # nothing to compare with yet
    assert not any(trim.after_frame(size) for size in [1_000_000, 1_500_000] * 10)  # varying, all usual
    assert trim.after_frame(40_000_000)  # a million-point cloud among 1-1.5 MB frames
    assert not trim.after_frame(1_200_000)
    switched = [trim.after_frame(3_500_000) for _ in range(20)]  # the sensor now sends larger frames
    assert switched[0] and not any(switched[10:])  # the median moves up within half a window
    assert trim.trims == sum(switched) + 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds and malloc_trim are glibc's")
def test_after_an_outsized_frame_the_heap_pages_go_back_to_the_os():
    """In a fresh process with the node's thresholds: 300 MB of 1 MB blocks (heap, not mappings) freed
    stay resident until the outsized frame's trim."""
    script = textwrap.dedent(
        """
        import numpy as np, psutil
        from sonata_ros.allocator import OutsizedFrameTrim, fix_malloc_thresholds
        assert fix_malloc_thresholds()
        process, trim = psutil.Process(), OutsizedFrameTrim()
        trim.after_frame(1 << 20)
        blocks = [np.ones(1 << 17) for _ in range(300)]  # 300 x 1 MiB, below the mmap threshold
        del blocks[:-1]
        before = process.memory_info().rss
        assert trim.after_frame(300 << 20)
        print((before - process.memory_info().rss) / 2**20)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 200  # MB handed back
