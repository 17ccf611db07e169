"""`make demo`: synthetic LiDAR -> perception node -> a listener that reports what it sees.

Starts the synthetic publisher and the perception node as separate processes (real DDS between them,
on an isolated localhost domain), listens to the segmentation, the ground truth and (for the picture)
the embedding colours, and after DEMO_FRAMES segmented frames prints rate, latency percentiles,
dropped frames, the class histogram and agreement with the ground truth, writes outputs/demo.png
(predicted | ground truth | embedding PCA) and a one-line JSON summary, and stops everything.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from sonata_model.io.labels import UNKNOWN, load_label_set
from sonata_model.io.pointcloud2 import structured_view, unpack_rgb
from sonata_model.synth.render import Panel, render_bev

OUTPUT = Path(os.environ.get("DEMO_OUTPUT", "outputs"))
SENSOR = os.environ.get("DEMO_SENSOR", "vlp16")
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "300"))


Shown = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # xyz, predicted, ground truth (None: missed)


def picture_frame(shown: Shown | None, newest: Shown) -> Shown:
    """The frame the picture shows: the newest one whose ground truth arrived, else the newest one (a
    listener that falls behind on a loaded host loses some truth messages)."""
    if newest[2] is not None or shown is None or shown[2] is None:
        return newest
    return shown


class Listener(Node):
    def __init__(self, frames: int) -> None:
        super().__init__("demo_listener")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.frames = frames
        self.latencies: list[float] = []
        self.arrivals: list[float] = []
        self.truth: dict[tuple[int, int], np.ndarray] = {}
        self.histogram = np.zeros(256, np.int64)
        self.confusion: list[tuple[np.ndarray, np.ndarray]] = []
        self.last = None
        self.embedding_rgb = None
        self.diagnostics: dict[str, str] = {}
        self.create_subscription(PointCloud2, "/sonata_perception/output/segmentation", self._segmentation, qos)
        self.create_subscription(PointCloud2, "/sim_lidar/ground_truth", self._ground_truth, qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)
        self._rgb_subscription = None

    @property
    def done(self) -> bool:
        return len(self.latencies) >= self.frames and (
            self.embedding_rgb is not None or len(self.latencies) > 3 * self.frames
        )

    def _segmentation(self, msg: PointCloud2) -> None:
        now = self.get_clock().now().nanoseconds
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.latencies.append((now - (stamp[0] * 10**9 + stamp[1])) / 1e6)
        self.arrivals.append(time.monotonic())
        view = structured_view(msg).reshape(-1)
        predicted = view["class_id"].copy()
        self.histogram += np.bincount(predicted, minlength=256)
        truth = self.truth.pop(stamp, None)
        xyz = np.stack([view[a] for a in "xyz"], axis=1)
        if truth is not None and len(truth) != len(predicted):
            truth = None
        if truth is not None:
            self.confusion.append((truth, predicted))
        self.last = picture_frame(self.last, (xyz, predicted, truth))
        if len(self.latencies) >= self.frames - 3 and self._rgb_subscription is None:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self._rgb_subscription = self.create_subscription(
                PointCloud2, "/sonata_perception/output/embedding_rgb", self._embedding_rgb, qos
            )

    def _ground_truth(self, msg: PointCloud2) -> None:
        self.truth[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (
            structured_view(msg).reshape(-1)["class_id"].copy()
        )
        while len(self.truth) > 50:
            self.truth.pop(next(iter(self.truth)))

    def _embedding_rgb(self, msg: PointCloud2) -> None:
        view = structured_view(msg).reshape(-1)
        self.embedding_rgb = (np.stack([view[a] for a in "xyz"], axis=1), unpack_rgb(view["rgb"]))

    def _diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("sonata_perception"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}


def mean_iou(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int) -> float | None:
    if not pairs:
        return None
    truth = np.concatenate([t for t, _ in pairs]).astype(np.int64)
    predicted = np.concatenate([p for _, p in pairs]).astype(np.int64)
    keep = truth < classes
    confusion = np.bincount(truth[keep] * 256 + predicted[keep], minlength=classes * 256).reshape(classes, 256)
    intersection = np.diag(confusion[:, :classes])
    union = confusion.sum(1) + confusion[:, :classes].sum(0) - intersection
    present = confusion.sum(1) > 0
    return float(np.mean(intersection[present] / np.maximum(union[present], 1)))


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def main() -> int:
    frames = int(os.environ.get("DEMO_FRAMES", "50"))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(1, 101)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    config = Path(__file__).resolve().parents[1] / "config" / "perception.yaml"
    params = ["--params-file", str(config)] if config.is_file() else []
    children = [
        _start(
            ["sonata_ros.sim_lidar", "--ros-args", "-p", f"sensor:={SENSOR}", "-p", "frames:=30"],
            env,
            OUTPUT / "sim_lidar.log",
        ),
        _start(
            [
                "sonata_ros.perception_node",
                "--ros-args",
                *params,
                "-p",
                "input_reliability:=reliable",
                "-p",
                "pca_frames:=1",
                "-p",
                "device:=auto",
                "-r",
                "~/input/pointcloud:=/sim_lidar/points",
            ],
            env,
            OUTPUT / "perception_node.log",
        ),
    ]
    rclpy.init()
    listener = Listener(frames)
    labels = load_label_set("synthetic")
    print(f"demo: {SENSOR} drive -> sonata_perception -> listener, {frames} frames (logs in {OUTPUT}/)", flush=True)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not listener.done:
            rclpy.spin_once(listener, timeout_sec=0.2)
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                print(
                    f"demo failed: {len(listener.latencies)} frames after {TIMEOUT_S:.0f} s; see {OUTPUT}/*.log",
                    file=sys.stderr,
                )
                return 1
    finally:
        for child in children:
            child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    summary = _summary(listener, labels)
    _picture(listener, labels, OUTPUT / "demo.png")
    listener.destroy_node()
    rclpy.try_shutdown()
    print(json.dumps(summary))
    return 0


def _summary(listener: Listener, labels) -> dict:
    latency = np.asarray(listener.latencies)
    span = listener.arrivals[-1] - listener.arrivals[0]
    names = [*labels.names, *["?"] * (256 - len(labels.names))]
    names[UNKNOWN] = "unknown"
    histogram = {names[c]: int(n) for c, n in enumerate(listener.histogram) if n}
    summary = {
        "frames": len(latency),
        "rate_hz": round((len(latency) - 1) / span, 2) if span > 0 else 0.0,
        "latency_ms": {q: round(float(np.percentile(latency, int(q[1:]))), 1) for q in ("p50", "p90", "p99")},
        "dropped": int(listener.diagnostics.get("frames_dropped", 0)),
        "class_histogram": histogram,
        "miou_vs_ground_truth": None,
    }
    miou = mean_iou(listener.confusion, labels.num_classes)
    if miou is not None:
        summary["miou_vs_ground_truth"] = round(miou, 3)
    print(
        f"rate {summary['rate_hz']} Hz, latency p50/p90/p99 {summary['latency_ms']} ms, dropped "
        f"{summary['dropped']}, mIoU vs ground truth {summary['miou_vs_ground_truth']}",
        flush=True,
    )
    return summary


def _picture(listener: Listener, labels, path: Path) -> None:
    xyz, predicted, truth = listener.last
    colors = labels.palette()
    panels = [Panel("predicted", xyz, colors[predicted])]
    if truth is not None:
        panels.append(Panel("ground truth", xyz, colors[truth]))
    if listener.embedding_rgb is not None:
        panels.append(Panel("embedding PCA", *listener.embedding_rgb))
    render_bev(panels, path, legend=list(zip(labels.names, labels.colors, strict=True)))
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
