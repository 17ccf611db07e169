"""`sonata_sim_lidar`: publishes a synthetic LiDAR drive (or replays a bag) at the sensor rate.

    python -m sonata_ros.sim_lidar --ros-args -p sensor:=vlp16 -p frames:=20
    python -m sonata_ros.sim_lidar --ros-args -p bag:=/data/run1.mcap -p bag_topic:=/points
    python -m sonata_ros.sim_lidar --ros-args -r __node:=rear -p "pose:=[-1.0, 0.0, 0.3, 0.0, 0.0, 1.0, 0.0]" \
        -p fov_deg:=180.0 -p frame_id:=rear_lidar          # one of several LiDARs on one vehicle

Clouds go to `~/points` in the sensor driver's layout, freshly stamped; for synthetic drives the labels
go to `~/ground_truth` (x, y, z, class_id, rgb), point for point in the same order, for comparison in
RViz and by the demo. Frames are prepared once at start and looped, forever or `count` times; with
`wait_for_subscribers` publishing starts only once that many subscriptions match `~/points`.

Several LiDARs on one vehicle: the drive's points are in the vehicle's (base) frame; each instance,
with its own `pose` (where it is mounted on the base) and `fov_deg`, publishes the same world in its own
sensor frame, the points it sees. Same seed and drive: the instances' clouds overlap where their fields
of view do.
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from sonata_model.geometry import pose_matrix
from sonata_model.io.bags import BagError, frame_arrays, iter_bag_frames
from sonata_model.io.frame import Frame
from sonata_model.io.labels import load_label_set
from sonata_model.io.pointcloud2 import (
    FLOAT32,
    LAYOUT_POINT_STEP,
    LAYOUTS,
    UINT8,
    FieldSpec,
    pack_points,
    pack_rgb,
    to_message,
)
from sonata_model.synth.drive import generate_drive
from sonata_model.synth.sensors import get_sensor

from . import typed_parameters
from .shutdown import init_ros, spin_until_stopped

GROUND_TRUTH_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("class_id", 12, UINT8),
    FieldSpec("rgb", 16, FLOAT32),
]
PARAMETERS = {
    "sensor": ("vlp16", "Synthetic sensor model: vlp16 | hdl32 | hdl64 | os128."),
    "seed": (0, "Seed of the synthetic world."),
    "frames": (20, "Frames of the synthetic drive, published in a loop."),
    "rate_hz": (10.0, "Publishing rate."),
    "bag": ("", "Replay this bag instead of a synthetic drive."),
    "bag_topic": (
        "",
        "PointCloud2 or VelodyneScan (raw packets: a cloud per revolution) topic of the bag (empty: its only one).",
    ),
    "frame_id": ("lidar", "header.frame_id of published clouds."),
    "reliability": ("reliable", "Output QoS reliability: reliable | best_effort."),
    "count": (0, "Publish this many clouds, then exit; 0 publishes forever."),
    "wait_for_subscribers": (0, "Start publishing once this many subscriptions match ~/points."),
    "pose": (
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "Mount of this sensor on the base [x, y, z, qx, qy, qz, qw]: the drive's (base-frame) points are "
        "published in this sensor's frame.",
    ),
    "fov_deg": (360.0, "Horizontal field of view around the sensor's +x axis; other points are not returned."),
    "layout": ("", "PointCloud2 layout of the clouds (see LAYOUTS); empty: the sensor driver's own."),
}
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


class SimLidar(Node):
    def __init__(self) -> None:
        super().__init__("sim_lidar")
        for name, (default, text) in PARAMETERS.items():
            typed_parameters.declare(self, name, default, text)
        p = {name: typed_parameters.value(self, name, default) for name, (default, _) in PARAMETERS.items()}
        self.frame_id = p["frame_id"]
        if p["reliability"] not in ("reliable", "best_effort"):
            raise ValueError(f"reliability must be reliable or best_effort, got {p['reliability']!r}")
        if not p["rate_hz"] > 0 or p["frames"] < 1:
            raise ValueError(f"rate_hz must be > 0 and frames >= 1, got {p['rate_hz']} and {p['frames']}")
        reliability = ReliabilityPolicy.RELIABLE if p["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability)
        self.points = self.create_publisher(PointCloud2, "~/points", qos)
        self.ground_truth = self.create_publisher(PointCloud2, "~/ground_truth", qos)
        if p["bag"]:
            self.messages = self._bag(p["bag"], p["bag_topic"])
        else:
            self.messages = self._drive(p["sensor"], p["frames"], p["seed"], p["pose"], p["fov_deg"], p["layout"])
        if not self.messages:
            raise ValueError("nothing to publish: the drive or bag has no frames")
        self.index = 0
        self.published = 0
        self.count, self.wait_for_subscribers = p["count"], p["wait_for_subscribers"]
        self.done = False
        self.create_timer(1.0 / p["rate_hz"], self._publish)
        self.get_logger().info(f"publishing {len(self.messages)} frames in a loop at {p['rate_hz']} Hz")

    def _drive(
        self, sensor: str, frames: int, seed: int, pose: list[float], fov_deg: float, layout: str
    ) -> list[tuple[PointCloud2, PointCloud2 | None]]:
        layout = layout or get_sensor(sensor).layout
        palette = load_label_set("synthetic").palette()  # unlabelled points (-1 -> 255): grey
        messages = []
        for frame in mounted_drive(sensor, frames, seed, pose, fov_deg):
            cloud, height = cloud_message(frame, layout)
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
                        pack_points(GROUND_TRUTH_FIELDS, truth, height=height, point_step=20),
                        PointCloud2,
                        PointField,
                        Header(),
                    ),
                )
            )
        return messages

    def _bag(self, path: str, topic: str) -> list[tuple[PointCloud2, None]]:
        return [(cloud_message(frame, "xyzi")[0], None) for frame in iter_bag_frames(path, topic or None)]

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


def mounted_drive(sensor: str, frames: int, seed: int, pose=IDENTITY_POSE, fov_deg: float = 360.0) -> list[Frame]:
    """The synthetic drive as seen by a sensor mounted at `pose` [x, y, z, qx, qy, qz, qw] on the base (the
    drive's own sensor frame), with a horizontal field of view of `fov_deg` around its +x axis."""
    if len(pose) != 7:
        raise ValueError(f"pose needs [x, y, z, qx, qy, qz, qw], got {list(pose)}")
    if not 0 < fov_deg <= 360:
        raise ValueError(f"fov_deg must be in (0, 360], got {fov_deg}")
    mount = pose_matrix(pose[:3], pose[3:])
    return [_seen_from(frame, mount, fov_deg) for frame in generate_drive(sensor, frames=frames, seed=seed)]


def _seen_from(frame: Frame, mount: np.ndarray, fov_deg: float) -> Frame:
    coord = ((frame.coord - mount[:3, 3]) @ mount[:3, :3]).astype(np.float32)  # base -> sensor: R^T (p - t)
    keep = np.abs(np.degrees(np.arctan2(coord[:, 1], coord[:, 0]))) <= fov_deg / 2
    per_point = {k: getattr(frame, k) for k in ("strength", "color", "normal", "segment", "instance")}
    return Frame(
        coord=coord[keep],
        **{k: None if v is None else v[keep] for k, v in per_point.items()},
        pose=None if frame.pose is None else frame.pose @ mount,
        stamp_ns=frame.stamp_ns,
        frame_id=frame.frame_id,
        name=frame.name,
        extra={k: v[keep] for k, v in frame.extra.items()},
    )


def cloud_message(frame: Frame, layout: str) -> tuple[PointCloud2, int]:
    """`frame` as its driver publishes it in `layout` (organized for Ouster), and its row count."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; available: {sorted(LAYOUTS)}")
    arrays, height = frame_arrays(frame, layout)
    packed = pack_points(LAYOUTS[layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[layout])
    return to_message(packed, PointCloud2, PointField, Header()), height


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
    except (ValueError, OSError, BagError, InvalidParameterTypeException) as exc:
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
