"""The node's memory stays flat over a long stream of ordinary clouds of varying size (issue: +1.3 GB).

The node runs in its own process over real DDS; the test publishes one cloud at a time, waits for its
answer, and reads the node's resident set size. Varying sizes matter: anything cached per tensor
shape (oneDNN's JIT kernels were) grows with every new voxel count.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import psutil
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import NodeProcess, node_parameters, spin_until, write_test_model
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

FRAMES = 1000
SETTLE = 100  # frames before the baseline: libraries, allocator pools and DDS buffers warm up
GROWTH_LIMIT_MB = 50
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
XYZI = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyzi")]
XYZI[3].name = "intensity"


def random_cloud(rng: np.random.Generator) -> PointCloud2:
    """A street-sized cloud of 1,000-4,000 points, x y z intensity float32 (a different size every time)."""
    n = int(rng.integers(1000, 4001))
    points = np.c_[rng.uniform(-25, 25, (n, 2)), rng.uniform(-2, 4, n), rng.uniform(0, 255, n)].astype(np.float32)
    return PointCloud2(
        height=1,
        width=n,
        fields=XYZI,
        is_bigendian=False,
        point_step=16,
        row_step=16 * n,
        data=points.tobytes(),
        is_dense=True,
    )


def test_node_rss_stays_flat_over_1000_varying_clouds(tmp_path, client):
    encoder, head = write_test_model(tmp_path)
    node = NodeProcess(
        "sonata_ros.perception_node",
        ["--params-file", "config/perception.yaml", *node_parameters(encoder, head), "-r", "~/input/pointcloud:=/mem"],
    )
    try:
        node.wait_for_line("ready:")
        answered: set[int] = set()
        client.create_subscription(
            PointCloud2,
            "/sonata_perception/output/segmentation",
            lambda m: answered.add(m.header.stamp.nanosec),
            RELIABLE,
        )
        publisher = client.create_publisher(PointCloud2, "/mem", RELIABLE)
        spin_until(client, lambda: publisher.get_subscription_count() > 0, 30, "the node's subscription")
        rng = np.random.default_rng(0)
        process = psutil.Process(node.process.pid)
        rss_mb = []
        for _ in range(FRAMES):
            msg = random_cloud(rng)
            deadline = time.monotonic() + 30
            while True:  # the first frames may precede discovery of the output; resend until answered
                msg.header = Header(stamp=client.get_clock().now().to_msg(), frame_id="lidar")
                publisher.publish(msg)
                resend = time.monotonic() + 2
                while msg.header.stamp.nanosec not in answered and time.monotonic() < resend:
                    rclpy.spin_once(client, timeout_sec=0.01)
                if msg.header.stamp.nanosec in answered:
                    break
                assert time.monotonic() < deadline and node.process.poll() is None, node.output
            rss_mb.append(process.memory_info().rss / 2**20)
        growth = max(rss_mb[SETTLE:]) - rss_mb[SETTLE]
        assert growth < GROWTH_LIMIT_MB, (
            f"RSS grew by {growth:.0f} MB after frame {SETTLE} "
            f"({rss_mb[0]:.0f} -> {rss_mb[SETTLE]:.0f} -> {rss_mb[-1]:.0f} MB)"
        )
    finally:
        if node.process.poll() is None:
            assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output
