"""How many 64-beam clouds reach the perception node under its default best-effort input QoS.

    python benchmarks/dds_profile.py --clouds 50 --runs 3 --record

Another process (sonata_sim_lidar) publishes synthetic HDL-64 clouds (~2.8 MB) best effort at 10 Hz;
the node (no output subscriber, so it only counts arrivals) reports how many arrived in /diagnostics.
Three set-ups: no profile (Fast DDS defaults: 512 KiB shared-memory segment), the shipped
config/fastdds_large_messages.xml for the node only, and for both processes (what the README asks).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import emit

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_large_messages.xml"
SETUPS = {"no_profile": (False, False), "node_only": (True, False), "publisher_and_node": (True, True)}


def _env(with_profile: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DEFAULT_PROFILES_FILE")}
    if with_profile:
        env.update(FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE), FASTRTPS_DEFAULT_PROFILES_FILE=str(PROFILE))
    return env


def _ros(module: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def run_once(clouds: int, node_profile: bool, publisher_profile: bool, client, received: dict) -> int:
    import rclpy

    received.clear()
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    node = _ros(
        "sonata_ros.perception_node",
        [
            *("--params-file", "config/perception.yaml", "-p", "device:=cpu", "-p", "diagnostics_period_s:=0.2"),
            *("-r", "__node:=bench_transport", "-r", "~/input/pointcloud:=/bench/points"),
        ],
        _env(node_profile),
        logs / "dds_profile_node.log",
    )
    try:
        deadline = time.monotonic() + 120
        while "frames_received" not in received:  # the node is up and reporting
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not start; see dds_profile_node.log")
            rclpy.spin_once(client, timeout_sec=0.1)
        publisher = _ros(
            "sonata_ros.sim_lidar",
            [
                *("-p", "sensor:=hdl64", "-p", "frames:=4", "-p", f"count:={clouds}", "-p", "rate_hz:=10.0"),
                *("-p", "reliability:=best_effort", "-p", "wait_for_subscribers:=1"),
                *("-r", "__node:=bench_lidar", "-r", "~/points:=/bench/points"),
            ],
            _env(publisher_profile),
            logs / "dds_profile_publisher.log",
        )
        while publisher.poll() is None:
            rclpy.spin_once(client, timeout_sec=0.1)
        end = time.monotonic() + 5.0  # late arrivals
        while time.monotonic() < end and int(received["frames_received"]) < clouds:
            rclpy.spin_once(client, timeout_sec=0.1)
        return int(received["frames_received"])
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)


def first_cloud_bytes() -> int:
    """Size of the first cloud sim_lidar publishes (HDL-64, Velodyne layout: 22 bytes a point)."""
    from sonata_model.synth.drive import generate_drive

    return next(iter(generate_drive("hdl64", frames=4, seed=0))).num_points * 22


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clouds", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    rclpy.init()
    client = rclpy.create_node("dds_profile_client")
    received: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("bench_transport"):
                received.update({kv.key: kv.value for kv in status.values})

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    results = {
        name: [run_once(args.clouds, *profiles, client, received) for _ in range(args.runs)]
        for name, profiles in SETUPS.items()
    }
    client.destroy_node()
    rclpy.try_shutdown()
    emit(
        "dds_profile",
        {
            "clouds_per_run": args.clouds,
            "cloud_bytes": first_cloud_bytes(),
            "rate_hz": 10.0,
            "qos": "best_effort, keep_last 1",
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
            "arrived_per_run": results,
        },
        args.record,
    )


if __name__ == "__main__":
    main()
