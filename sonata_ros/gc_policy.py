"""The garbage collector in a real-time node: what exists once the node is configured is never scanned.

CPython's full collection walks every tracked object. A configured node holds ~170k of them (torch,
the model's modules, rclpy), so the full collection that per-frame garbage sets off every few dozen
frames stopped a frame for ~75 ms on the 2-core CPU (`benchmarks/gc_pauses.py`): a latency spike of
several frames' budget on a GPU. Freezing what is alive once the model is warmed up (`gc.freeze`) moves
it to a permanent generation, and collections then walk only what frames create. It is thawed before
the model is released, so that an old model's reference cycles can still be collected. The freeze is
process-wide: nodes sharing a process share it.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect, then exempt every object alive now from later collections; the number frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw() -> None:
    """Make the frozen objects collectable again (before releasing what they hold)."""
    gc.unfreeze()
