"""Timing and health of the perception node: what /diagnostics and the periodic log line report.

Everything that judges health looks at a window of recent *time* (`window_s`), not a count of frames,
so a node that stopped working does not keep reporting its old rate and latency. The level, in the
order it is judged:

- ERROR: `exit_after` consecutive internal errors (the node is about to exit so that it is restarted);
- STALE: no input message arrived for `input_timeout_s` (the driver died, a remap is wrong, or
  best-effort DDS loses every large cloud; with several inputs: none of them sent anything);
- ERROR: a run of `late_frames_error` consecutive frames over budget, or every frame of the window
  was rejected;
- WARN: more than `rejected_warn_fraction` of the window's frames were rejected, an input of a
  multi-LiDAR node was skipped (missing, stale or rejected) in more than `skipped_warn_fraction` of
  them, or the mean processing time of the window exceeds the budget;
- OK.

Written by the worker thread and the subscription callback, read by the diagnostics timer (one lock).
The clock is injectable so that tests can move time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

STAGES = ("decode", "voxelize", "encoder", "head", "messages", "publish")
SKIPS = ("missing", "stale", "rejected")  # why an input of a multi-LiDAR node had no part in a frame
INTERNAL_ERROR = "internal_error"
REJECTION_REASONS = (  # why a frame was skipped; each has its rejected_<reason> count, 0 until it happens
    "malformed",
    "missing_field",
    "empty",
    "no_valid_points",
    "wrong_frame",
    "out_of_range",
    "out_of_memory",
    INTERNAL_ERROR,
)
MAX_RECORDS = 10_000  # a flood of rejected messages cannot grow the window's memory without bound


@dataclass(frozen=True)
class HealthLimits:
    budget_ms: float = 100.0
    late_frames_error: int = 10
    window_s: float = 5.0
    input_timeout_s: float = 2.0
    rejected_warn_fraction: float = 0.2
    skipped_warn_fraction: float = 0.2
    exit_after: int = 10  # consecutive internal errors; 0 never exits


@dataclass(frozen=True)
class _Outcome:
    time: float
    rejected: str | None = None  # reason, None for a processed frame
    stages_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return sum(self.stages_ms.values())


class Health:
    """`inputs`: the names of a multi-LiDAR node's inputs, each reported on its own (none for one input)."""

    def __init__(
        self, limits: HealthLimits, clock: Callable[[], float] = time.monotonic, inputs: tuple[str, ...] = ()
    ) -> None:
        self.limits, self._clock, self.inputs = limits, clock, inputs
        self._lock = threading.Lock()
        self._outcomes: deque[_Outcome] = deque(maxlen=MAX_RECORDS)
        self._idle: deque[float] = deque(maxlen=MAX_RECORDS)
        self._started = clock()
        self._last_input: float | None = None
        self._input_last: dict[str, float] = {}
        self._input_received: Counter = Counter()
        self._skipped: Counter = Counter()  # (input, why)
        self._skip_times: deque[tuple[float, str]] = deque(maxlen=MAX_RECORDS)
        self._last_skip: dict[str, str] = {}
        self.received = self.processed = self.dropped = self.idle = 0
        self.rejected: Counter = Counter(dict.fromkeys(REJECTION_REASONS, 0))  # every key from the start
        self.consecutive_late = 0
        self.consecutive_internal_errors = 0
        self.last_error = ""

    # -------------------------------------------------------------------------------------- events

    def input_received(self, name: str = "") -> None:
        with self._lock:
            self.received += 1
            self._last_input = self._input_last[name] = self._clock()
            self._input_received[name] += 1

    def input_skipped(self, name: str, why: str, detail: str = "") -> None:
        """Input `name` had no part in a frame: `why` is one of SKIPS; the others went on."""
        with self._lock:
            self._skipped[(name, why)] += 1
            self._skip_times.append((self._clock(), name))
            self._last_skip[name] = f"{why}: {detail}" if detail else why
            if detail:
                self.last_error = f"{why}: {detail}"

    def frame_done(self, stages_ms: dict[str, float], latency_ms: float) -> None:
        outcome = _Outcome(self._clock(), None, dict(stages_ms), latency_ms)
        with self._lock:
            self.processed += 1
            self._outcomes.append(outcome)
            self.consecutive_late = self.consecutive_late + 1 if outcome.total_ms > self.limits.budget_ms else 0
            self.consecutive_internal_errors = 0

    def frame_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def frame_idle(self) -> None:
        """A frame nobody needed (no subscriber to any output): not processed, not an error."""
        with self._lock:
            self.idle += 1
            self._idle.append(self._clock())

    def frame_rejected(self, reason: str, detail: str = "") -> None:
        """A frame skipped for `reason`; only internal errors count towards an exit (bad input does not)."""
        with self._lock:
            self.rejected[reason] += 1
            self._outcomes.append(_Outcome(self._clock(), reason))
            self.last_error = f"{reason}: {detail}" if detail else reason
            if reason == INTERNAL_ERROR:
                self.consecutive_internal_errors += 1

    @property
    def must_exit(self) -> bool:
        """True after `exit_after` consecutive internal errors (a sticky device error, say)."""
        return 0 < self.limits.exit_after <= self.consecutive_internal_errors

    # ------------------------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, float | int | str]:
        with self._lock:
            now = self._clock()
            since = now - self.limits.window_s
            while self._outcomes and self._outcomes[0].time < since:
                self._outcomes.popleft()
            while self._idle and self._idle[0] < since:
                self._idle.popleft()
            while self._skip_times and self._skip_times[0][0] < since:
                self._skip_times.popleft()
            done = [o for o in self._outcomes if o.rejected is None]
            rejected = len(self._outcomes) - len(done)
            span = min(self.limits.window_s, now - self._started)
            latency = np.asarray([o.latency_ms for o in done]) if done else np.zeros(1)
            return {
                "frames_received": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "frames_idle": self.idle,
                "frames_rejected": sum(self.rejected.values()),
                **{f"rejected_{reason}": n for reason, n in self.rejected.items()},
                "window_s": self.limits.window_s,
                "input_age_s": now - (self._last_input if self._last_input is not None else self._started),
                "window_frames": len(self._outcomes),
                "window_rejected": rejected,
                "window_idle": len(self._idle),
                "rejected_fraction": rejected / len(self._outcomes) if self._outcomes else 0.0,
                "rate_hz": len(done) / span if span > 0 else 0.0,
                "processing_ms_mean": float(np.mean([o.total_ms for o in done])) if done else 0.0,
                "latency_ms_p50": float(np.percentile(latency, 50)),
                "latency_ms_max": float(latency.max()),
                **{f"{s}_ms": float(np.mean([o.stages_ms.get(s, 0.0) for o in done])) if done else 0.0 for s in STAGES},
                **self._input_values(now),
                "consecutive_late_frames": self.consecutive_late,
                "consecutive_internal_errors": self.consecutive_internal_errors,
                "last_error": self.last_error,
            }

    def _input_values(self, now: float) -> dict[str, float | int | str]:
        """Per input of a multi-LiDAR node (lock held): counts, age, and the window's skipped fraction."""
        frames = len(self._outcomes)
        skipped = Counter(name for _, name in self._skip_times)
        values: dict[str, float | int | str] = {}
        for name in self.inputs:
            values[f"input_{name}_received"] = self._input_received[name]
            values[f"input_{name}_age_s"] = now - self._input_last.get(name, self._started)
            values.update({f"input_{name}_{why}": self._skipped[(name, why)] for why in SKIPS})
            values[f"input_{name}_skipped_fraction"] = skipped[name] / frames if frames else 0.0
            values[f"input_{name}_last_skip"] = self._last_skip.get(name, "")
        return values

    def level(self, s: dict) -> tuple[bytes, str]:
        limits = self.limits
        if 0 < limits.exit_after <= s["consecutive_internal_errors"]:
            return DiagnosticStatus.ERROR, (
                f"{s['consecutive_internal_errors']} consecutive internal errors, exiting: {s['last_error']}"
            )
        if s["input_age_s"] > limits.input_timeout_s:
            since = "since start" if not s["frames_received"] else f"for {s['input_age_s']:.1f} s"
            return DiagnosticStatus.STALE, f"no input {since} (timeout {limits.input_timeout_s:g} s)"
        if limits.late_frames_error and s["consecutive_late_frames"] >= limits.late_frames_error:
            return DiagnosticStatus.ERROR, f"{s['consecutive_late_frames']} consecutive frames over budget"
        window = f"in the last {limits.window_s:g} s"
        if s["window_frames"] and s["window_rejected"] == s["window_frames"]:
            return DiagnosticStatus.ERROR, f"all {s['window_frames']} frames rejected {window}; last: {s['last_error']}"
        if s["rejected_fraction"] > limits.rejected_warn_fraction:
            return DiagnosticStatus.WARN, (
                f"{s['window_rejected']} of {s['window_frames']} frames rejected {window}; last: {s['last_error']}"
            )
        for name in self.inputs:
            if s[f"input_{name}_skipped_fraction"] > limits.skipped_warn_fraction:
                skipped = round(s[f"input_{name}_skipped_fraction"] * s["window_frames"])
                return DiagnosticStatus.WARN, (
                    f"input {name} skipped in {skipped} of {s['window_frames']} frames {window}; "
                    f"last: {s[f'input_{name}_last_skip']}"
                )
        if s["processing_ms_mean"] > limits.budget_ms:
            return DiagnosticStatus.WARN, (
                f"mean processing {s['processing_ms_mean']:.1f} ms over the {limits.budget_ms:g} ms budget"
            )
        if not s["window_frames"] and s["window_idle"]:
            return DiagnosticStatus.OK, "idle: no subscriber to any output"
        return DiagnosticStatus.OK, "ok"

    def diagnostics(self, stamp, name: str, hardware_id: str, extra: dict[str, str]) -> DiagnosticArray:
        snapshot = self.snapshot()
        level, message = self.level(snapshot)
        values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in snapshot.items()]
        values += [KeyValue(key=k, value=v) for k, v in extra.items()]
        status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=values)
        return DiagnosticArray(header=_header(stamp), status=[status])


def _header(stamp):
    from std_msgs.msg import Header

    return Header(stamp=stamp)
