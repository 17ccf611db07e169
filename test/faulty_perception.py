"""The perception node with a SIMULATED sticky device error (no GPU here): the first frame is segmented,
then every model call raises what PyTorch raises once a CUDA context is broken. Run as a script, in its
own process, by test_node_health.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from sonata_ros import perception_node


class StickyDeviceError:
    def __init__(self, segmenter) -> None:
        self._segmenter, self.calls = segmenter, 0

    def __getattr__(self, name):
        return getattr(self._segmenter, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return self._segmenter(*args, **kwargs)


class FaultyPerceptionNode(perception_node.PerceptionNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.segmenter = StickyDeviceError(self.segmenter)


if __name__ == "__main__":
    perception_node.PerceptionNode = FaultyPerceptionNode
    sys.exit(perception_node.main())
