"""The perception node whose embedding outputs wait for a go-ahead: `_embedding_messages` starts only once
an std_msgs/Empty arrives on /<node name>/release (or after 60 s). Run as a script, in its own process,
by test_node.py: the labelled cloud of a frame must reach a subscriber while the embeddings are held."""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from std_msgs.msg import Empty

from sonata_ros import perception_node

HOLD_S = 60.0


class HeldEmbeddingsNode(perception_node.PerceptionNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.release = threading.Event()
        self.create_subscription(Empty, f"/{self.get_name()}/release", lambda _msg: self.release.set(), 10)

    def _embedding_messages(self, *args, **kwargs):
        self.release.wait(HOLD_S)  # the worker thread waits; the executor still takes the release
        yield from super()._embedding_messages(*args, **kwargs)


if __name__ == "__main__":
    perception_node.PerceptionNode = HeldEmbeddingsNode
    sys.exit(perception_node.main())
