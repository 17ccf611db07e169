"""The simulated LiDAR: bad options end it at start with exit 1 and what is wrong, not a traceback; a
decimal option takes a whole number; a synthetic drive's labels arrive point for point with its clouds;
a bag is replayed as recorded, without labels."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile
from ros_helpers import NodeProcess, spin_until
from sensor_msgs.msg import PointCloud2

from sonata_model.io.bags import BagWriter, iter_bag_frames
from sonata_model.io.labels import load_label_set
from sonata_model.io.pointcloud2 import pack_rgb, structured_view
from sonata_model.synth.drive import generate_drive
from sonata_ros.sim_lidar import mounted_drive


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("rate_hz:=0.0", "rate_hz must be > 0 and frames >= 1, got 0.0"),
        ("frames:=-2", "rate_hz must be > 0 and frames >= 1, got 10.0 and -2"),
        ("reliability:=relaible", "reliability must be reliable or best_effort, got 'relaible'"),
        ("bag:=/nowhere/run.mcap", "/nowhere/run.mcap"),
        ("fov_deg:=wide", "parameter fov_deg must be a number, got 'wide'"),
    ],
)
def test_a_bad_option_is_a_clear_fatal_error(option, message):
    process = NodeProcess("sonata_ros.sim_lidar", ["-p", option, "-r", "__node:=bad_sim"])
    assert process.process.wait(timeout=60) == 1
    assert message in process.output and "Traceback" not in process.output


def test_a_decimal_option_takes_a_whole_number():
    process = NodeProcess("sonata_ros.sim_lidar", ["-p", "fov_deg:=180", "-p", "count:=1", "-r", "__node:=half_sim"])
    assert process.process.wait(timeout=60) == 0
    assert "published 1 clouds" in process.output and "Traceback" not in process.output


def collect(client, topics: dict[str, str], process: NodeProcess, enough) -> dict[str, list]:
    """Messages on `topics` (key -> topic) until `enough(received)` holds, with reliable subscriptions made
    before the simulator starts publishing."""
    received: dict[str, list] = {key: [] for key in topics}
    subscriptions = [
        client.create_subscription(PointCloud2, topic, received[key].append, QoSProfile(depth=50))
        for key, topic in topics.items()
    ]
    try:
        spin_until(client, lambda: enough(received), 60, f"messages on {list(topics.values())}")
    finally:
        for subscription in subscriptions:
            client.destroy_subscription(subscription)
        if process.process.poll() is None:
            process.stop(signal.SIGINT)
    assert "Traceback" not in process.output
    return received


def test_a_synthetic_drive_publishes_its_labels_point_for_point(client):
    """~/ground_truth holds, for every cloud on ~/points, the same points in the same order with the
    drive's class of each and its palette colour, under the same stamp and frame."""
    expected = mounted_drive("vlp16", 2, 3)
    palette = load_label_set("synthetic").palette()
    process = NodeProcess(
        "sonata_ros.sim_lidar",
        [
            *("-p", "sensor:=vlp16", "-p", "frames:=2", "-p", "seed:=3", "-p", "rate_hz:=20.0"),
            *("-p", "reliability:=reliable", "-p", "wait_for_subscribers:=1", "-p", "frame_id:=sim_gt"),
            *("-r", "__node:=gt_sim", "-r", "~/points:=/gt_sim/points", "-r", "~/ground_truth:=/gt_sim/truth"),
        ],
    )

    def pairs(received) -> dict:
        truth = {stamp(m): m for m in received["truth"]}
        return {stamp(m): (m, truth[stamp(m)]) for m in received["points"] if stamp(m) in truth}

    received = collect(
        client, {"points": "/gt_sim/points", "truth": "/gt_sim/truth"}, process, lambda r: len(pairs(r)) >= 3
    )
    matched = 0
    for cloud, truth in pairs(received).values():
        assert cloud.header.frame_id == truth.header.frame_id == "sim_gt"
        points, labels = structured_view(cloud).reshape(-1), structured_view(truth).reshape(-1)
        xyz = np.stack([points[a] for a in "xyz"], axis=1)
        assert np.array_equal(xyz, np.stack([labels[a] for a in "xyz"], axis=1))
        frame = next(f for f in expected if len(f.coord) == len(xyz) and np.array_equal(f.coord, xyz))
        np.testing.assert_array_equal(labels["class_id"], frame.segment.astype(np.uint8))
        np.testing.assert_array_equal(labels["rgb"], pack_rgb(palette[frame.segment.astype(np.uint8)]))
        matched += 1
    assert matched >= 3 and len({len(f.coord) for f in expected}) == 2  # both frames of the loop told apart


def test_a_bag_is_replayed_in_a_loop_without_ground_truth(client, tmp_path):
    """bag:=... publishes the bag's clouds (x, y, z, intensity) in order, looped `count` times over, and
    nothing on ~/ground_truth (a bag has no labels)."""
    frames = list(generate_drive("vlp16", frames=2, seed=4))
    with BagWriter(tmp_path / "run", format="mcap", topic="/lidar", layout="velodyne") as writer:
        for frame in frames:
            writer.write(frame)
    process = NodeProcess(
        "sonata_ros.sim_lidar",
        [
            *("-p", f"bag:={tmp_path / 'run'}", "-p", "count:=4", "-p", "rate_hz:=20.0"),
            *("-p", "reliability:=reliable", "-p", "wait_for_subscribers:=1"),
            *("-r", "__node:=bag_sim", "-r", "~/points:=/bag_sim/points", "-r", "~/ground_truth:=/bag_sim/truth"),
        ],
    )
    received = collect(
        client, {"points": "/bag_sim/points", "truth": "/bag_sim/truth"}, process, lambda r: len(r["points"]) >= 4
    )
    assert process.process.wait(timeout=30) == 0 and "published 4 clouds" in process.output
    assert received["truth"] == []
    for k, cloud in enumerate(received["points"][:4]):
        view = structured_view(cloud).reshape(-1)
        frame = frames[k % 2]
        np.testing.assert_array_equal(np.stack([view[a] for a in "xyz"], axis=1), frame.coord)
        np.testing.assert_allclose(view["intensity"], frame.strength * 255, atol=1e-3)  # as a driver sends it


NEBULA_VLP16 = (
    Path(__file__).resolve().parents[1].parent / "shared" / "real" / "nebula-driver-frames" / "bags" / "vlp16"
)


@pytest.mark.skipif(not NEBULA_VLP16.is_dir(), reason=f"real packets not here: {NEBULA_VLP16} is absent")
def test_a_raw_packet_bag_is_replayed_as_the_clouds_it_decodes_to(client):
    """A real VelodyneScan recording plays into ROS as PointCloud2, one per revolution: no driver needed."""
    frames = list(iter_bag_frames(NEBULA_VLP16))
    process = NodeProcess(
        "sonata_ros.sim_lidar",
        [
            *("-p", f"bag:={NEBULA_VLP16}", "-p", "count:=3", "-p", "rate_hz:=20.0"),
            *("-p", "reliability:=reliable", "-p", "wait_for_subscribers:=1"),
            *("-r", "__node:=packet_sim", "-r", "~/points:=/packet_sim/points", "-r", "~/ground_truth:=/packet_sim/t"),
        ],
    )
    received = collect(
        client, {"points": "/packet_sim/points", "truth": "/packet_sim/t"}, process, lambda r: len(r["points"]) >= 3
    )
    assert process.process.wait(timeout=30) == 0 and "published 3 clouds" in process.output
    for cloud, frame in zip(received["points"][:3], frames, strict=True):
        view = structured_view(cloud).reshape(-1)
        np.testing.assert_array_equal(np.stack([view[a] for a in "xyz"], axis=1), frame.coord)


def stamp(message) -> tuple[int, int]:
    return message.header.stamp.sec, message.header.stamp.nanosec
