"""End-to-end latency of the perception node: publisher and node in separate processes, real DDS.

    python benchmarks/node_latency.py --config demo --frames 50 --device cpu --record
    python benchmarks/node_latency.py --config sonata_lidar --device cuda --precision bf16

Each frame of a 64-beam synthetic drive is published (reliable QoS), freshly stamped, and the next one
only after the node's answer arrived, so the figure is the node's latency, not queueing behind a slow
node. Latency = arrival time of the segmentation - header stamp (same clock, same machine). Per-stage
times are the node's own (from /diagnostics). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, summarize

import sonata_model as sm
from sonata_model.io.bags import frame_arrays
from sonata_model.io.pointcloud2 import LAYOUT_POINT_STEP, LAYOUTS, encode, to_message
from sonata_model.synth.drive import generate_drive

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", choices=sorted(sm.CONFIGS))
    parser.add_argument("--checkpoint", help="use this checkpoint instead of random weights of --config")
    parser.add_argument("--sensor", default="hdl64")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    workdir = Path(tempfile.mkdtemp(prefix="node_latency_"))
    checkpoint = args.checkpoint
    config = sm.get_config(args.config)
    if checkpoint is None:
        torch.manual_seed(0)
        encoder = sm.SonataEncoder(config)
        checkpoint = str(sm.save_encoder(workdir / "encoder.pth", encoder))
        head = str(sm.save_head(workdir / "head.pth", sm.LinearHead(config.head_channels, 13, label_set="synthetic")))
    else:
        head = "none"
    frames = list(generate_drive(args.sensor, frames=min(args.frames, 20), seed=0))
    messages = []
    for frame in frames:
        if "color" in config.feature_keys:
            frame.color = np.zeros((frame.num_points, 3), np.uint8)
        arrays, height = frame_arrays(frame, "velodyne")
        messages.append(
            to_message(
                encode(LAYOUTS["velodyne"], arrays, height=height, point_step=LAYOUT_POINT_STEP["velodyne"]),
                PointCloud2,
                PointField,
                Header(),
            )
        )
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sonata_ros.perception_node",
            "--ros-args",
            "--params-file",
            str(ROOT / "config" / "perception.yaml"),
            "-p",
            f"checkpoint:={checkpoint}",
            "-p",
            f"head:={head}",
            "-p",
            f"device:={args.device}",
            "-p",
            f"precision:={args.precision}",
            "-p",
            "input_reliability:=reliable",
            "-p",
            "diagnostics_period_s:=0.5",
            "-p",
            "normals:=zeros",
            "-r",
            "~/input/pointcloud:=/bench/points",
        ],
        cwd=ROOT,
        stdout=(workdir / "node.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    rclpy.init()
    client = rclpy.create_node("latency_client")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    answers: dict[tuple[int, int], int] = {}
    diagnostics: dict[str, str] = {}
    client.create_subscription(
        PointCloud2,
        "/sonata_perception/output/segmentation",
        lambda m: answers.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), time.time_ns()),
        qos,
    )

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith("sonata_perception"):
                diagnostics.update({kv.key: kv.value for kv in status.values})

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    publisher = client.create_publisher(PointCloud2, "/bench/points", qos)
    latencies = []
    try:
        for index in range(args.warmup + args.frames):
            msg = messages[index % len(messages)]
            deadline = time.monotonic() + 300
            while True:
                stamp_ns = time.time_ns()
                msg.header = Header(frame_id="lidar")
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                publisher.publish(msg)
                resend = time.monotonic() + 5
                while key not in answers and time.monotonic() < resend:
                    rclpy.spin_once(client, timeout_sec=0.01)
                if key in answers:
                    break
                if time.monotonic() > deadline or node.poll() is not None:
                    raise SystemExit(f"the node does not answer; see {workdir / 'node.log'}")
            if index >= args.warmup:
                latencies.append((answers[key] - stamp_ns) / 1e6)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            rclpy.spin_once(client, timeout_sec=0.05)
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
    stages = {
        k.removesuffix("_ms"): float(v)
        for k, v in diagnostics.items()
        if k.endswith("_ms") and not k.startswith(("latency", "processing"))
    }
    emit(
        f"node_latency_{args.config}_{args.device}",
        {
            "config": args.config,
            "sensor": args.sensor,
            "points_per_frame": int(np.mean([f.num_points for f in frames])),
            "device": args.device,
            "precision": args.precision,
            "frames": len(latencies),
            "latency_ms": {**summarize(latencies), "p99_ms": round(float(np.percentile(latencies, 99)), 3)},
            "stage_mean_ms": stages,
        },
        args.record,
    )


if __name__ == "__main__":
    main()
