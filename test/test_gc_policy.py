"""Freezing the start-up objects: collections then walk only what was made after, until thawed."""

from __future__ import annotations

import gc

from sonata_ros.gc_policy import freeze_startup_objects, thaw


class Node:
    """A reference cycle, the kind only a collection frees."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_objects_are_not_collected_until_thawed():
    try:
        cycle = Node()
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000  # a test process holds many thousand objects
        assert not any(o is cycle for o in gc.get_objects())  # out of the generations a collection walks
        young = Node()
        assert any(o is young for o in gc.get_objects())  # new objects are walked as before
        del cycle, young
        gc.collect()
        thaw()
        assert gc.get_freeze_count() == 0
        assert gc.collect() >= 1  # the frozen cycle is garbage again once thawed
    finally:
        gc.unfreeze()
