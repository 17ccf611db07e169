"""Health logic of the perception node on a moved-by-hand clock: windows by time, STALE, WARN, ERROR, exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus

from sonata_ros.health import INTERNAL_ERROR, MAX_RECORDS, REJECTION_REASONS, Health, HealthLimits

OK, WARN, ERROR, STALE = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR, DiagnosticStatus.STALE
FAST = {"decode": 2.0, "encoder": 10.0}  # 12 ms: within the 100 ms budget
SLOW = {"decode": 2.0, "encoder": 200.0}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def health(clock: Clock, **limits) -> Health:
    return Health(HealthLimits(**{"window_s": 5.0, "input_timeout_s": 2.0, **limits}), clock=clock)


def level(h: Health) -> tuple[bytes, str]:
    return h.level(h.snapshot())


def frames(h: Health, clock: Clock, n: int, *, rejected: str | None = None, stages=FAST, period=0.1) -> None:
    """`n` frames at 1 / period Hz, each received and then processed (or rejected for `rejected`)."""
    for _ in range(n):
        clock.t += period
        h.input_received()
        if rejected:
            h.frame_rejected(rejected, "detail")
        else:
            h.frame_done(stages, latency_ms=30.0)


def test_stale_until_the_first_input_and_again_after_the_timeout(clock):
    h = health(clock)
    assert level(h)[0] == OK  # just started: no verdict yet
    clock.t += 2.5
    assert level(h) == (STALE, "no input since start (timeout 2 s)")
    frames(h, clock, 3)
    assert level(h) == (OK, "ok")
    clock.t += 1.9
    assert level(h)[0] == OK
    clock.t += 0.2
    state, message = level(h)
    assert state == STALE and message.startswith("no input for 2.1 s")
    clock.t += 3.0  # the processed frames have left the window
    h.input_received()  # an idle frame (no subscriber) is input too
    h.frame_idle()
    assert level(h) == (OK, "idle: no subscriber to any output")


def test_rate_latency_and_processing_time_age_out_with_the_window(clock):
    h = health(clock, input_timeout_s=60.0)
    frames(h, clock, 30, stages=FAST)  # 3 s at 10 Hz
    s = h.snapshot()
    assert s["rate_hz"] == pytest.approx(30 / 3.0)  # the node has run 3 s: rate over what it has seen
    assert s["window_frames"] == 30 and s["processing_ms_mean"] == pytest.approx(12.0)
    assert s["latency_ms_max"] == 30.0 and s["encoder_ms"] == pytest.approx(10.0)
    clock.t += 4.0  # the first 20 frames (older than 5 s) leave the window
    s = h.snapshot()
    assert s["window_frames"] == 10 and s["rate_hz"] == pytest.approx(10 / 5.0)
    clock.t += 1.5
    s = h.snapshot()
    assert (s["rate_hz"], s["window_frames"], s["processing_ms_mean"], s["latency_ms_max"]) == (0.0, 0, 0.0, 0.0)
    assert s["frames_processed"] == 30  # totals never age


def test_warn_when_the_rejected_fraction_exceeds_the_threshold(clock):
    h = health(clock, rejected_warn_fraction=0.2)
    frames(h, clock, 8)
    frames(h, clock, 2, rejected="wrong_frame")
    assert level(h)[0] == OK  # 2 of 10 is not more than 20 %
    frames(h, clock, 1, rejected="malformed")
    state, message = level(h)
    assert state == WARN and message.startswith("3 of 11 frames rejected in the last 5 s; last: malformed: detail")
    assert h.snapshot()["rejected_fraction"] == pytest.approx(3 / 11)


def test_error_when_every_frame_of_the_window_was_rejected_and_recovery(clock):
    h = health(clock)
    frames(h, clock, 10)
    frames(h, clock, 40, rejected="out_of_memory", period=0.1)  # 4 s: the good frames are still in the window
    assert level(h)[0] == WARN
    frames(h, clock, 20, rejected="out_of_memory")  # now the window holds only rejections
    state, message = level(h)
    assert state == ERROR and message.startswith("all 50 frames rejected in the last 5 s; last: out_of_memory")
    frames(h, clock, 60)  # six seconds of good frames
    assert level(h) == (OK, "ok")


def test_processing_time_warn_and_error_after_consecutive_late_frames(clock):
    h = health(clock, budget_ms=100.0, late_frames_error=3)
    frames(h, clock, 2, stages=FAST)
    frames(h, clock, 2, stages=SLOW)  # mean (2 * 12 + 2 * 202) / 4 = 107 ms
    state, message = level(h)
    assert state == WARN and "mean processing" in message and "100 ms budget" in message
    frames(h, clock, 1, stages=SLOW)
    assert level(h) == (ERROR, "3 consecutive frames over budget")
    frames(h, clock, 1, stages=FAST)
    assert h.snapshot()["consecutive_late_frames"] == 0 and level(h)[0] == WARN  # the window mean is still high


def test_exit_after_consecutive_internal_errors_only(clock):
    h = health(clock, exit_after=3)
    frames(h, clock, 2, rejected=INTERNAL_ERROR)
    frames(h, clock, 5, rejected="malformed")  # bad input says nothing about the model: neither counts nor resets
    assert not h.must_exit and h.consecutive_internal_errors == 2
    frames(h, clock, 1)  # a frame that worked resets the run
    frames(h, clock, 2, rejected=INTERNAL_ERROR)
    assert not h.must_exit
    frames(h, clock, 1, rejected=INTERNAL_ERROR)
    assert h.must_exit
    state, message = level(h)
    assert state == ERROR and message.startswith("3 consecutive internal errors, exiting: internal_error: detail")
    never = health(clock, exit_after=0)
    frames(never, clock, 100, rejected=INTERNAL_ERROR)
    assert not never.must_exit


def test_a_flood_of_rejections_keeps_memory_bounded(clock):
    h = health(clock)
    frames(h, clock, MAX_RECORDS + 500, rejected="malformed", period=1e-5)
    s = h.snapshot()
    assert s["window_frames"] == MAX_RECORDS and s["frames_rejected"] == MAX_RECORDS + 500
    assert level(h)[0] == ERROR


def test_diagnostics_message_keeps_its_keys(clock):
    h = health(clock)
    frames(h, clock, 3)
    frames(h, clock, 1, rejected="wrong_frame")
    msg = h.diagnostics(Time(sec=5), "sonata_perception: segmentation", "/sonata_perception", {"device": "cpu"})
    status = msg.status[0]
    values = {kv.key: kv.value for kv in status.values}
    for key in (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "frames_rejected",
        "rejected_wrong_frame",
        "rate_hz",
        "processing_ms_mean",
        "latency_ms_p50",
        "latency_ms_max",
        "decode_ms",
        "consecutive_late_frames",
        "consecutive_internal_errors",
        "rejected_fraction",
        "input_age_s",
        "last_error",
        "device",
    ):
        assert key in values, key
    assert values["frames_received"] == "4" and values["rejected_wrong_frame"] == "1"
    assert status.level == WARN and msg.header.stamp.sec == 5
    # every reason's count is there from the start (a monitor can read rejected_malformed: 0), as the README lists
    assert {k: v for k, v in values.items() if k.startswith("rejected_")} == {
        **{f"rejected_{reason}": "0" for reason in REJECTION_REASONS},
        "rejected_wrong_frame": "1",
        "rejected_fraction": values["rejected_fraction"],
    }
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = ", ".join(f"`{reason}`" for reason in REJECTION_REASONS)
    assert f"`rejected_<reason>` ({listed};" in " ".join(readme.split())


def test_a_multi_lidar_input_skipped_too_often_warns_and_is_reported_on_its_own(clock):
    h = Health(HealthLimits(window_s=5.0, input_timeout_s=2.0, skipped_warn_fraction=0.2), clock, ("front", "rear"))
    for _ in range(10):  # ten frames with both inputs, then ten where the rear is missing
        clock.t += 0.1
        h.input_received("front")
        h.input_received("rear")
        h.frame_done(FAST, latency_ms=30.0)
    assert level(h) == (OK, "ok")
    for _ in range(10):
        clock.t += 0.1
        h.input_received("front")
        h.input_skipped("rear", "missing")
        h.frame_done(FAST, latency_ms=30.0)
    s = h.snapshot()
    assert (s["input_front_received"], s["input_rear_received"], s["input_rear_missing"]) == (20, 10, 10)
    assert s["input_rear_skipped_fraction"] == 0.5 and s["input_front_skipped_fraction"] == 0.0
    assert s["input_rear_age_s"] == pytest.approx(1.0) and s["input_front_age_s"] == 0.0
    assert level(h) == (WARN, "input rear skipped in 10 of 20 frames in the last 5 s; last: missing")
    h.input_skipped("rear", "stale", "input rear: stamped 900 ms before the newest")
    assert h.snapshot()["input_rear_stale"] == 1
    assert h.snapshot()["last_error"] == "stale: input rear: stamped 900 ms before the newest"
    clock.t += 5.1  # the skips leave the window with the frames; the front alone keeps it from STALE
    h.input_received("front")
    assert level(h) == (OK, "ok")


def test_one_input_reports_no_per_input_keys(clock):
    h = health(clock)
    frames(h, clock, 2)
    assert not [k for k in h.snapshot() if k.startswith("input_") and k != "input_age_s"]
