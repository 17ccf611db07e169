"""`make demo`, the README's main command: the synthetic drive through the real node to a listener that
reports rate, latency, the class histogram and agreement with the ground truth, and draws a picture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from ros_helpers import ROOT

from sonata_ros.demo import mean_iou, picture_frame


def test_mean_iou_counts_classes_present_in_the_ground_truth_and_unknown_predictions_as_misses():
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 255])  # class 2 predicted as unknown: IoU 0
    assert mean_iou([(truth, predicted)], classes=4) == np.mean([1 / 2, 2 / 3, 0.0])  # class 3 absent: left out
    assert mean_iou([(truth[:2], predicted[:2]), (truth[2:], predicted[2:])], classes=4) == mean_iou(
        [(truth, predicted)], classes=4
    )
    assert mean_iou([], classes=4) is None


def test_the_demo_reports_the_drive_it_segmented(tmp_path):
    env = {**os.environ, "DEMO_FRAMES": "10", "DEMO_OUTPUT": str(tmp_path), "DEMO_TIMEOUT_S": "240"}
    done = subprocess.run(
        [sys.executable, "-m", "sonata_ros.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["frames"] >= 10 and summary["rate_hz"] > 0
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    histogram = summary["class_histogram"]
    assert {"road", "building", "vegetation"} <= set(histogram) and sum(histogram.values()) > 10 * 10_000
    assert summary["miou_vs_ground_truth"] >= 0.25  # the shipped demo model: 0.38 on 50 frames
    assert any(line.startswith(f"rate {summary['rate_hz']} Hz") for line in lines)
    with Image.open(tmp_path / "demo.png") as picture:  # panels side by side, each ~0.9x as wide as tall:
        # predicted and ground truth, then the embedding's PCA colours when they arrived in time (the
        # listener asks for them near the end only, and stops waiting after 3x the frames)
        assert 1.5 < picture.width / picture.height < 3.0
    for log in ("sim_lidar.log", "perception_node.log"):
        assert "Traceback" not in (tmp_path / log).read_text()


def test_the_picture_keeps_the_newest_frame_whose_truth_arrived():
    xyz, labels = np.zeros((2, 3)), np.zeros(2, np.uint8)
    first, second = (xyz, labels, labels), (xyz + 1, labels, labels)
    without = (xyz + 2, labels, None)
    assert picture_frame(None, without) is without  # nothing better yet
    assert picture_frame(without, first) is first
    assert picture_frame(first, without) is first  # a lost truth does not drop the panel
    assert picture_frame(first, second) is second
