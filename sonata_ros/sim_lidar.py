"""`sonata_sim_lidar`: publishes a synthetic LiDAR drive (or replays a bag) at the sensor rate.

    python -m sonata_ros.sim_lidar --ros-args -p sensor:=vlp16 -p frames:=20
    python -m sonata_ros.sim_lidar --ros-args -p bag:=/data/run1.mcap -p bag_topic:=/points

Clouds go to `~/points` in the sensor driver's layout, freshly stamped; for synthetic drives the labels
go to `~/ground_truth` (x, y, z, class_id, rgb), point for point in the same order, for comparison in
RViz and by the demo. Frames are prepared once at start and looped, forever or `count` times; with
`wait_for_subscribers` publishing starts only once that many subscriptions match `~/points`.
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from sonata_model.io.bags import frame_arrays, iter_bag_frames
from sonata_model.io.labels import load_label_set
from sonata_model.io.pointcloud2 import (
    FLOAT32,
    LAYOUT_POINT_STEP,
    LAYOUTS,
    UINT8,
    FieldSpec,
    encode,
    pack_rgb,
    to_message,
)
from sonata_model.synth.drive import generate_drive
from sonata_model.synth.sensors import get_sensor

from .shutdown import init_ros, spin_until_stopped

GROUND_TRUTH_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("class_id", 12, UINT8),
    FieldSpec("rgb", 16, FLOAT32),
]
PARAMETERS = {
    "sensor": ("vlp16", "Synthetic sensor model: vlp16 | hdl32 | hdl64 | os128 | vls128."),
    "seed": (0, "Seed of the synthetic world."),
    "frames": (20, "Frames of the synthetic drive, published in a loop."),
    "rate_hz": (10.0, "Publishing rate."),
    "bag": ("", "Replay this bag instead of a synthetic drive."),
    "bag_topic": ("", "PointCloud2 topic of the bag (empty: its only one)."),
    "frame_id": ("lidar", "header.frame_id of published clouds."),
    "reliability": ("reliable", "Output QoS reliability: reliable | best_effort."),
    "count": (0, "Publish this many clouds, then exit; 0 publishes forever."),
    "wait_for_subscribers": (0, "Start publishing once this many subscriptions match ~/points."),
}


class SimLidar(Node):
    def __init__(self) -> None:
        super().__init__("sim_lidar")
        p = {
            name: self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value
            for name, (default, text) in PARAMETERS.items()
        }
        self.frame_id = p["frame_id"]
        reliability = ReliabilityPolicy.RELIABLE if p["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability)
        self.points = self.create_publisher(PointCloud2, "~/points", qos)
        self.ground_truth = self.create_publisher(PointCloud2, "~/ground_truth", qos)
        self.messages = (
            self._bag(p["bag"], p["bag_topic"]) if p["bag"] else self._drive(p["sensor"], p["frames"], p["seed"])
        )
        if not self.messages:
            raise ValueError("nothing to publish: the drive or bag has no frames")
        self.index = 0
        self.published = 0
        self.count, self.wait_for_subscribers = p["count"], p["wait_for_subscribers"]
        self.done = False
        self.create_timer(1.0 / p["rate_hz"], self._publish)
        self.get_logger().info(f"publishing {len(self.messages)} frames in a loop at {p['rate_hz']} Hz")

    def _drive(self, sensor: str, frames: int, seed: int) -> list[tuple[PointCloud2, PointCloud2 | None]]:
        model = get_sensor(sensor)
        palette = load_label_set("synthetic").palette()  # unlabelled points (-1 -> 255): grey
        messages = []
        for frame in generate_drive(model, frames=frames, seed=seed):
            arrays, height = frame_arrays(frame, model.layout)
            cloud = to_message(
                encode(LAYOUTS[model.layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[model.layout]),
                PointCloud2,
                PointField,
                Header(),
            )
            class_id = frame.segment.astype(np.uint8)
            truth = {
                "x": frame.coord[:, 0],
                "y": frame.coord[:, 1],
                "z": frame.coord[:, 2],
                "class_id": class_id,
                "rgb": pack_rgb(palette[class_id]),
            }
            if height > 1:  # organized: labels follow the same (ring, column) grid, 255 where nothing returned
                truth = _organized_truth(frame, truth, height)
            messages.append(
                (
                    cloud,
                    to_message(
                        encode(GROUND_TRUTH_FIELDS, truth, height=height, point_step=20),
                        PointCloud2,
                        PointField,
                        Header(),
                    ),
                )
            )
        return messages

    def _bag(self, path: str, topic: str) -> list[tuple[PointCloud2, None]]:
        messages = []
        for frame in iter_bag_frames(path, topic or None):
            arrays, _ = frame_arrays(frame, "xyzi")
            messages.append(
                (
                    to_message(
                        encode(LAYOUTS["xyzi"], arrays, point_step=LAYOUT_POINT_STEP["xyzi"]),
                        PointCloud2,
                        PointField,
                        Header(),
                    ),
                    None,
                )
            )
        return messages

    def _publish(self) -> None:
        if 0 < self.count <= self.published:
            self.done = True  # one period after the last cloud, which has left by now
            return
        if self.points.get_subscription_count() < self.wait_for_subscribers:
            return
        cloud, truth = self.messages[self.index]
        self.index = (self.index + 1) % len(self.messages)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        if truth is not None:
            truth.header = header
            self.ground_truth.publish(truth)
        cloud.header = header
        self.points.publish(cloud)
        self.published += 1


def _organized_truth(frame, truth: dict, height: int) -> dict:
    columns = int(frame.extra["column"].max()) + 1
    cell = frame.extra["ring"].astype(np.int64) * columns + frame.extra["column"]
    organized = {}
    for name, values in truth.items():
        grid = np.full(height * columns, 255 if name == "class_id" else 0, values.dtype)
        grid[cell] = values
        organized[name] = grid
    return organized


def main(args: list[str] | None = None) -> int:
    stop = init_ros(args)
    try:
        node = SimLidar()
    except (ValueError, OSError) as exc:
        rclpy.logging.get_logger("sim_lidar").fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_stopped(executor, stop, until=lambda: node.done)
        if node.done:
            node.get_logger().info(f"published {node.published} clouds")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
