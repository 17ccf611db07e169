"""Timing and health of the perception node: what /diagnostics and the periodic log line report.

WARN when the mean processing time over the recent window exceeds the budget, ERROR after a run of
consecutive frames over budget; counts of processed, dropped (replaced before processing), rejected
(by reason) and failed frames. Written by the worker thread, read by the diagnostics timer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

STAGES = ("decode", "voxelize", "encoder", "head", "encode", "publish")


class Health:
    def __init__(self, budget_ms: float, late_frames_error: int, window: int = 100) -> None:
        self.budget_ms, self.late_frames_error = budget_ms, late_frames_error
        self._lock = threading.Lock()
        self._stages: deque[dict[str, float]] = deque(maxlen=window)
        self._totals: deque[float] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self._finished: deque[float] = deque(maxlen=window)
        self.processed = self.dropped = self.idle = 0
        self.rejected: Counter = Counter()
        self.consecutive_late = 0
        self.last_error = ""

    def frame_done(self, stages_ms: dict[str, float], latency_ms: float) -> None:
        total = sum(stages_ms.values())
        with self._lock:
            self.processed += 1
            self._stages.append(stages_ms)
            self._totals.append(total)
            self._latencies.append(latency_ms)
            self._finished.append(time.monotonic())
            self.consecutive_late = self.consecutive_late + 1 if total > self.budget_ms else 0

    def frame_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def frame_idle(self) -> None:
        """A frame nobody needed (no subscriber to any output): not processed, not an error."""
        with self._lock:
            self.idle += 1

    def frame_rejected(self, reason: str, detail: str = "") -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_error = f"{reason}: {detail}" if detail else reason

    def snapshot(self) -> dict[str, float | int | str]:
        with self._lock:
            stages = {s: float(np.mean([f.get(s, 0.0) for f in self._stages])) if self._stages else 0.0 for s in STAGES}
            finished = list(self._finished)
            rate = (
                (len(finished) - 1) / (finished[-1] - finished[0])
                if len(finished) > 1 and finished[-1] > finished[0]
                else 0.0
            )
            latency = np.asarray(self._latencies) if self._latencies else np.zeros(1)
            return {
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "frames_idle": self.idle,
                "frames_rejected": sum(self.rejected.values()),
                **{f"rejected_{reason}": n for reason, n in self.rejected.items()},
                "rate_hz": rate,
                "processing_ms_mean": float(np.mean(self._totals)) if self._totals else 0.0,
                "latency_ms_p50": float(np.percentile(latency, 50)),
                "latency_ms_max": float(latency.max()),
                **{f"{stage}_ms": value for stage, value in stages.items()},
                "consecutive_late_frames": self.consecutive_late,
                "last_error": self.last_error,
            }

    def level(self, snapshot: dict) -> tuple[bytes, str]:
        if self.late_frames_error and snapshot["consecutive_late_frames"] >= self.late_frames_error:
            return DiagnosticStatus.ERROR, f"{snapshot['consecutive_late_frames']} consecutive frames over budget"
        if snapshot["processing_ms_mean"] > self.budget_ms:
            return DiagnosticStatus.WARN, (
                f"mean processing {snapshot['processing_ms_mean']:.1f} ms over the {self.budget_ms:.0f} ms budget"
            )
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
