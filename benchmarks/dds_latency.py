"""One DDS hop of the node's clouds between two processes: the floor under its end-to-end latency.

    python benchmarks/dds_latency.py [--messages 60] [--name dds_latency] [--record]

`node_latency.py` measures header stamp -> segmentation received: two hops (the LiDAR's cloud to the
node, the node's labelled cloud to its subscriber) around the node's own work. This measures the hops
alone. A plain rclpy publisher process sends, at 10 Hz, either the node's input (the 120k-point
Velodyne-layout HDL-64 frame of `codec.py`, 22 bytes a point) or its output for that frame (built by
the node's `segmentation_cloud`, 24 bytes a point), stamped just before `publish()`; a plain rclpy
subscriber process in another process takes each one as a Python message, as the node and RViz's
Python peers do, and notes now - stamp (one clock: one machine). Reliable, keep last 1, as
`node_latency.py`'s client (`--reliability best_effort`: the node's input default). The first five
messages of each run are left out (discovery, first allocations).

Set-ups, given to both processes: Fast DDS's defaults; the shipped `config/fastdds_large_messages.xml`
(32 MiB shared-memory segment); and Fast DDS's `LARGE_DATA` builtin transports (UDP discovery, shared
memory + TCP for data). ROS's default discovery range (subnet) is kept: `ROS_AUTOMATIC_DISCOVERY_RANGE=
LOCALHOST` turns `LARGE_DATA`'s shared memory off (18.6 vs 8.4 ms for the input here); a random
domain id keeps other runs on the machine apart. "both_hops_median_ms" adds the input's and the
output's medians: what a node that took no time at all would still show as end-to-end latency (null
where a hop delivered nothing after the first five, as best effort over Fast DDS's defaults may).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from common import emit, summarize

if TYPE_CHECKING:
    from sensor_msgs.msg import PointCloud2

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_large_messages.xml"
SETUPS = {
    "fastdds_defaults": {},
    "shipped_profile": {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)},
    "large_data": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
}
MESSAGES = ("input", "output")
POINTS = 120_000
RATE_HZ = 10.0
SKIPPED = 5
TOPIC = "/dds_latency/cloud"


def cloud(kind: str) -> PointCloud2:
    """The node's input frame, or its segmentation output for that frame (labels of no model: the
    message's size and layout are what count here)."""
    from codec import velodyne_frame

    from sonata_model.io.pointcloud2 import structured_view, xyz_points
    from sonata_ros.messages import packed_palette, segmentation_cloud

    frame = velodyne_frame(POINTS)
    if kind == "input":
        return frame
    n = frame.width * frame.height
    palette = packed_palette(np.zeros((13, 3), np.uint8))
    xyz = xyz_points(structured_view(frame).reshape(-1))
    class_id = (np.arange(n) % 13).astype(np.uint8)
    return segmentation_cloud(frame.header, xyz, class_id, np.full(n, 0.9, np.float32), palette, frame.height)


def _qos(reliability: str):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy[reliability.upper()])


def publish(kind: str, count: int, reliability: str, match_timeout_s: float) -> None:
    """Publisher process: once the subscriber is matched, `count` messages at RATE_HZ."""
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_latency_publisher")
    publisher = node.create_publisher(PointCloud2, TOPIC, _qos(reliability))
    msg = cloud(kind)
    deadline = time.monotonic() + match_timeout_s
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"no subscriber matched within {match_timeout_s} s")
        rclpy.spin_once(node, timeout_sec=0.05)
    period, start = 1.0 / RATE_HZ, time.monotonic()
    for i in range(count):
        msg.header.frame_id = f"{i}/{count}"
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
        time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))  # the sensor's rate
    node.destroy_node()
    rclpy.try_shutdown()


def take(count: int, reliability: str, idle_timeout_s: float) -> None:
    """Subscriber process: prints the latency (ms) of every message it took, as JSON, once the last one
    arrived or none came for `idle_timeout_s`."""
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_latency_subscriber")
    latencies: dict[int, float] = {}
    sizes: list[int] = []

    def on_cloud(msg: PointCloud2) -> None:
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies[int(msg.header.frame_id.split("/")[0])] = (now - stamp) / 1e6
        sizes.append(len(msg.data))

    node.create_subscription(PointCloud2, TOPIC, on_cloud, _qos(reliability))
    last_seen = time.monotonic()
    while count - 1 not in latencies and time.monotonic() - last_seen < idle_timeout_s:
        seen = len(latencies)
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(latencies) > seen:
            last_seen = time.monotonic()
    print(json.dumps({"latency_ms": latencies, "bytes": sizes[0] if sizes else 0}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run(setup: dict[str, str], kind: str, count: int, reliability: str = "reliable") -> dict:
    """One publisher -> subscriber run under `setup`'s environment (both processes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTDDS_", "FASTRTPS_"))} | setup
    script = [sys.executable, str(Path(__file__).resolve()), "--messages", str(count), "--reliability", reliability]
    subscriber = subprocess.Popen([*script, "--role", "take"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        subprocess.run([*script, "--role", "publish", "--kind", kind], env=env, check=True)
        out, _ = subscriber.communicate(timeout=60)
    finally:
        subscriber.kill()
    answer = json.loads(out)
    kept = [ms for i, ms in answer["latency_ms"].items() if int(i) >= SKIPPED]
    hop = {"bytes": answer["bytes"], "received": len(answer["latency_ms"]), "sent": count}
    if not kept:  # best effort over Fast DDS's default 512 KiB segment: a large cloud may never arrive whole
        return hop | {"median_ms": None}
    return hop | summarize(kept) | {"p99_ms": round(float(np.percentile(kept, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60, help="per run (the first five are left out)")
    parser.add_argument(
        "--reliability",
        default="reliable",
        choices=["reliable", "best_effort"],
        help="both ends' QoS (node_latency's client: reliable; the node's input by default: best effort)",
    )
    parser.add_argument("--name", default="dds_latency", help="result name (benchmarks/results/<name>.json)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--role", choices=["publish", "take"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=MESSAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.messages <= SKIPPED:
        parser.error(f"--messages must be above {SKIPPED} (the first {SKIPPED} are left out)")
    if args.role == "publish":
        return publish(args.kind, args.messages, args.reliability, match_timeout_s=30.0)
    if args.role == "take":
        return take(args.messages, args.reliability, idle_timeout_s=10.0)
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 101))  # apart from other runs on the machine
    results = {}
    for name, setup in SETUPS.items():
        hops = {kind: run(setup, kind, args.messages, args.reliability) for kind in MESSAGES}
        medians = [hop["median_ms"] for hop in hops.values()]
        both = None if None in medians else round(sum(medians), 3)
        results[name] = {**hops, "both_hops_median_ms": both}
    emit(
        args.name,
        {
            "points": POINTS,
            "rate_hz": RATE_HZ,
            "qos": f"{args.reliability}, keep_last 1",
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
            "setups": results,
        },
        args.record,
    )


if __name__ == "__main__":
    main()
