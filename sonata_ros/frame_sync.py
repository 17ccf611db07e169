"""The newest message of each input, handed to the inference worker as one set.

Subscription callbacks only store a message in its input's depth-1 slot; a message replaced before the
worker took it is dropped (and counted by the caller), so nothing queues and latency stays bounded when
inference is slower than the sensors. A set is ready when every input has a fresh message, or
`timeout_s` after the first fresh one arrived: a silent input delays the others by at most that, never
forever. With one input a set is ready as soon as its message is there. Once closed, what is pending is
handed out at once (a message received is processed, not lost), then nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameSync(Generic[T]):
    def __init__(self, inputs: int, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if inputs < 1 or timeout_s < 0:
            raise ValueError(f"FrameSync needs at least one input and timeout_s >= 0, got {inputs}, {timeout_s}")
        self._fresh: list[T | None] = [None] * inputs
        self._first: float | None = None  # when the oldest fresh message arrived
        self._timeout_s, self._clock = timeout_s, clock
        self._closed = False
        self._changed = threading.Condition()

    def put(self, index: int, item: T) -> bool:
        """Store `item` as input `index`'s newest; True when it replaced one that was never taken."""
        with self._changed:
            replaced = self._fresh[index] is not None
            self._fresh[index] = item
            if self._first is None:
                self._first = self._clock()
            self._changed.notify()
            return replaced

    def take(self, timeout: float | None = None) -> list[T | None] | None:
        """The fresh message of each input (None where an input has none) once a set is ready, waiting up
        to `timeout`; None when timed out, or closed with nothing pending."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._changed:
            while True:
                wait = self._until_ready()
                if wait <= 0 or (self._closed and self._first is not None):
                    taken, self._fresh = self._fresh, [None] * len(self._fresh)
                    self._first = None
                    return taken
                if self._closed:
                    return None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = min(wait, left)
                self._changed.wait(None if wait == float("inf") else wait)

    def _until_ready(self) -> float:
        """Seconds until the current set is ready: 0 when it is, inf while nothing is fresh."""
        if self._first is None:
            return float("inf")
        if all(item is not None for item in self._fresh):
            return 0.0
        return self._first + self._timeout_s - self._clock()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
