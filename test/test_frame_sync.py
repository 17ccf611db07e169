"""FrameSync: the newest message of each input, a set taken when all are fresh or `timeout_s` after the
first fresh one (real threads and waits; bounded, no fixed sleeps)."""

from __future__ import annotations

import threading
import time

import pytest

from sonata_ros.frame_sync import FrameSync


def test_one_input_is_a_depth_one_mailbox():
    sync: FrameSync[str] = FrameSync(1, timeout_s=10.0)
    assert sync.put(0, "a") is False
    assert sync.put(0, "b") is True  # "a" was never taken: dropped
    assert sync.take(timeout=1.0) == ["b"]
    assert sync.take(timeout=0.05) is None  # nothing fresh


def test_a_set_is_taken_as_soon_as_every_input_is_fresh():
    sync: FrameSync[str] = FrameSync(3, timeout_s=30.0)
    for index, item in enumerate("abc"):
        sync.put(index, item)
    start = time.monotonic()
    assert sync.take(timeout=5.0) == ["a", "b", "c"]
    assert time.monotonic() - start < 1.0  # did not wait for the 30 s timeout


def test_a_silent_input_delays_the_others_by_the_timeout_only():
    sync: FrameSync[str] = FrameSync(2, timeout_s=0.3)
    start = time.monotonic()
    sync.put(0, "front")
    assert sync.take(timeout=10.0) == ["front", None]
    assert 0.3 <= time.monotonic() - start < 3.0


def test_the_set_completes_when_the_late_input_arrives_within_the_timeout():
    sync: FrameSync[str] = FrameSync(2, timeout_s=20.0)
    sync.put(0, "front")
    late = threading.Timer(0.1, sync.put, args=(1, "rear"))
    late.start()
    start = time.monotonic()
    assert sync.take(timeout=10.0) == ["front", "rear"]
    assert time.monotonic() - start < 5.0
    late.join()


def test_close_wakes_a_waiting_worker():
    sync: FrameSync[str] = FrameSync(2, timeout_s=20.0)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(sync.take()))
    worker.start()
    sync.close()
    worker.join(timeout=5.0)
    assert not worker.is_alive() and result == [None]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one input"):
        FrameSync(0, timeout_s=0.1)


def test_closing_hands_out_what_was_received_then_nothing():
    sync: FrameSync[str] = FrameSync(2, timeout_s=20.0)
    sync.put(0, "front")
    sync.close()
    assert sync.take(timeout=5.0) == ["front", None]  # received before the close: not lost
    assert sync.take(timeout=5.0) is None
