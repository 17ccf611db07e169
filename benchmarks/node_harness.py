"""The perception node in its own process and a client that asks it one frame at a time (real DDS).

Shared by the node benchmarks (latency, soak): a model (random weights of a named config, or a given
checkpoint), synthetic driver-layout messages, and `ask(msg)`, which stamps, publishes (resending
until discovery completes) and returns the latency of the node's answer; `ask_set(msgs)` does the same
for one cloud per input of a multi-LiDAR node.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import torch

import sonata_model as sm
from sonata_model.io.bags import frame_arrays
from sonata_model.io.pointcloud2 import LAYOUT_POINT_STEP, LAYOUTS, pack_points, to_message
from sonata_model.synth.drive import generate_drive

ROOT = Path(__file__).resolve().parents[1]
DDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3, 2
# one isolated domain for this benchmark's nodes and clients, chosen once
os.environ.update(ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
# The shipped Fast DDS profile for the client (the "driver") and the node, as the README asks of a
# deployment, unless the caller exported one: with Fast DDS's defaults the two hops of a 64-beam cloud
# take ~40 ms here, with the profile ~16 ms (benchmarks/dds_latency.py).
for _variable in DDS_PROFILE_VARIABLES:
    os.environ.setdefault(_variable, str(ROOT / "config" / "fastdds_large_messages.xml"))


def dds_profile() -> str:
    """The Fast DDS profile file the benchmark's processes run with (relative to the project when in it)."""
    path = Path(os.environ[DDS_PROFILE_VARIABLES[0]]).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def model_files(config_name: str, checkpoint: str | None, workdir: Path, **overrides) -> tuple[str, str]:
    """(encoder, head) paths: `checkpoint` without a head ("demo": the shipped model and head), or
    random weights of `config_name` (fields replaced by `overrides`) + a head."""
    if checkpoint == "demo":
        return "", ""  # the node's defaults: the shipped demo model and head
    if checkpoint:
        return checkpoint, "none"
    config = sm.get_config(config_name, **overrides)
    torch.manual_seed(0)
    encoder = sm.save_encoder(workdir / "encoder.pth", sm.SonataEncoder(config))
    head = sm.save_head(workdir / "head.pth", sm.LinearHead(config.head_channels, 13, label_set="synthetic"))
    return str(encoder), str(head)


def benchmark_parameters(encoder: str, head: str, device: str, precision: str, **extra) -> dict[str, object]:
    """The node parameters every benchmark sets: model files, device, precision, and reliable input (a
    benchmark counts every frame it sends)."""
    return {
        "checkpoint": encoder,
        "head": head,
        "device": device,
        "precision": precision,
        "input_reliability": "reliable",
        **extra,
    }


def drive_messages(sensor: str, frames: int, with_color: bool, seed: int = 0) -> list:
    """PointCloud2 messages of a synthetic drive: the Velodyne layout, or with colour (a model that reads
    colour: indoor configs) the RGB-D layout (x, y, z, rgb), since a LiDAR layout has no colour field."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    layout = "rgbd" if with_color else "velodyne"
    messages = []
    for frame in generate_drive(sensor, frames=frames, seed=seed):
        if with_color:
            frame.color = np.zeros((frame.num_points, 3), np.uint8)
        arrays, height = frame_arrays(frame, layout)
        packed = pack_points(LAYOUTS[layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[layout])
        messages.append(to_message(packed, PointCloud2, PointField, Header()))
    return messages


class NodeClient:
    """Publishes to the node under test and records when each stamped answer arrives."""

    def __init__(
        self,
        node_process: subprocess.Popen,
        log: Path,
        input_topics: tuple[str, ...],
        name: str,
        also_subscribe: tuple[str, ...] = (),
    ) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        self.rclpy, self.node_process, self.log = rclpy, node_process, log
        self.process = psutil.Process(node_process.pid)
        self.owns_context = not rclpy.ok()  # several nodes under test share this process's context
        if self.owns_context:
            rclpy.init()
        self.name = name
        self.client = rclpy.create_node(f"benchmark_client_{name}")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.answers: dict[tuple[int, int], int] = {}
        self.diagnostics: dict[str, str] = {}
        self.client.create_subscription(PointCloud2, f"/{name}/output/segmentation", self._on_answer, qos)
        self.client.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.also_received = dict.fromkeys(also_subscribe, 0)  # outputs the node builds only when subscribed
        for output in also_subscribe:
            self.client.create_subscription(
                PointCloud2, f"/{name}/output/{output}", lambda _msg, output=output: self._count(output), qos
            )
        self.publishers = [self.client.create_publisher(PointCloud2, topic, qos) for topic in input_topics]

    def _on_answer(self, msg) -> None:
        self.answers[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time_ns()

    def _count(self, output: str) -> None:
        self.also_received[output] += 1

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == f"{self.name}: segmentation":
                self.diagnostics.update({kv.key: kv.value for kv in status.values})

    def ask(self, msg, timeout_s: float = 300.0) -> float:
        """Publish `msg` freshly stamped until the node answers it; the latency in ms."""
        return self.ask_set([msg], timeout_s)

    def ask_set(self, msgs: list, timeout_s: float = 300.0) -> float:
        """Publish one cloud per input, stamped alike, until the node answers them (one merged answer
        for several inputs); the latency in ms."""
        from std_msgs.msg import Header

        deadline = time.monotonic() + timeout_s
        rejected = self.rejected()
        while True:
            stamp_ns = time.time_ns()
            for msg, publisher in zip(msgs, self.publishers, strict=True):
                msg.header = Header(frame_id="lidar")
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
                publisher.publish(msg)
            key = divmod(stamp_ns, 10**9)
            resend = time.monotonic() + 5
            while key not in self.answers and time.monotonic() < resend:
                self.rclpy.spin_once(self.client, timeout_sec=0.01)
            if key in self.answers:
                return (self.answers.pop(key) - stamp_ns) / 1e6
            if self.rejected() > rejected:  # the node skips these clouds: waiting would not change that
                raise SystemExit(f"the node rejects the clouds ({self.diagnostics.get('last_error')}); see {self.log}")
            if time.monotonic() > deadline or self.node_process.poll() is not None:
                raise SystemExit(f"the node does not answer; see {self.log}")

    def stream(self, msgs: list, rate_hz: float, timeout_s: float = 120.0) -> tuple[list[float], int]:
        """Publish `msgs` at `rate_hz` as a driver does (no waiting for answers), each freshly stamped;
        (latencies of the answered ones in ms, how many were never answered: dropped by the node's
        depth-1 input or lost on the way). The newest cloud is never dropped by the node: once it is
        answered, every earlier one has been answered or dropped."""
        from std_msgs.msg import Header

        period, start, sent = 1.0 / rate_hz, time.monotonic(), []
        for index, msg in enumerate(msgs):
            while time.monotonic() < start + index * period:  # spin between publishes: answers arrive meanwhile
                self.rclpy.spin_once(
                    self.client, timeout_sec=max(0.0, min(0.005, start + index * period - time.monotonic()))
                )
            stamp_ns = time.time_ns()
            msg.header = Header(frame_id="lidar")
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
            self.publishers[0].publish(msg)
            sent.append(stamp_ns)
        keys = [divmod(stamp, 10**9) for stamp in sent]
        end = time.monotonic() + timeout_s
        while keys[-1] not in self.answers and time.monotonic() < end:
            self.rclpy.spin_once(self.client, timeout_sec=0.05)
        latencies = [
            (self.answers.pop(k) - stamp) / 1e6 for k, stamp in zip(keys, sent, strict=True) if k in self.answers
        ]
        return latencies, len(sent) - len(latencies)

    def rejected(self) -> int:
        """Frames the node has rejected so far, by its last /diagnostics."""
        return int(self.diagnostics.get("frames_rejected", 0))

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.client, timeout_sec=0.05)

    def stage_means_ms(self) -> dict[str, float]:
        """The node's own mean time per stage, from its last /diagnostics."""
        return {
            key.removesuffix("_ms"): float(value)
            for key, value in self.diagnostics.items()
            if key.endswith("_ms") and not key.startswith(("latency", "processing"))
        }


@contextmanager
def running_node(
    workdir: Path,
    parameters: dict[str, object],
    input_topics: tuple[str, ...] = ("/bench/points",),
    name: str = "sonata_perception",
    also_subscribe: tuple[str, ...] = (),
) -> Iterator[NodeClient]:
    """Start the perception node `name` (params file + `parameters`, input on /bench/points) and a client
    that publishes to `input_topics` (a multi-LiDAR node's, given in `parameters` too) and subscribes to
    the segmentation and the outputs `also_subscribe` (e.g. "embedding_rgb", as RViz's config does)."""
    # an empty value cannot be passed as a ROS argument: such a parameter keeps the node's default
    args = [arg for key, value in parameters.items() if value != "" for arg in ("-p", f"{key}:={value}")]
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sonata_ros.perception_node",
            "--ros-args",
            "--params-file",
            str(ROOT / "config" / "perception.yaml"),
            *args,
            "-r",
            "~/input/pointcloud:=/bench/points",
            "-r",
            f"__node:={name}",
        ],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    client = None
    try:
        client = NodeClient(process, log, input_topics, name, also_subscribe)
        yield client
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        if client is not None:
            client.client.destroy_node()
            if client.owns_context:
                client.rclpy.try_shutdown()
