"""A depth-1 mailbox between the subscription callback and the inference worker.

The callback only stores the newest message; a message replaced before the worker took it is dropped
and counted, so the queue never grows and latency stays bounded when inference is slower than the
sensor.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._ready = threading.Condition()

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one that was never taken."""
        with self._ready:
            replaced = self._item is not None
            self._item = item
            self._ready.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (waiting up to `timeout`), or None when closed or timed out."""
        with self._ready:
            self._ready.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
