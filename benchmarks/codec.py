"""CPU side of the hot path: decode + crop + the node's output message for a 120k-point Velodyne frame.

    python benchmarks/codec.py [--points 120000] [--repeats 50] [--record]

The frame is synthetic (64 rings x azimuth columns, ~2 % NaN returns) in the Velodyne layout
(x, y, z, intensity f32, ring u16, time f32; point_step 22, unaligned). The input is decoded and
cropped and the output built by the node's own code (`sonata_ros.inputs.decode_input` and `merge` with
the node's default crop; `sonata_ros.messages.segmentation_cloud`: every input point with class_id,
probability and rgb), so the figure is what the node spends outside the model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, summarize
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from sonata_model.io.pointcloud2 import LAYOUTS, decode, pack_points, structured_view, to_message, xyz_points
from sonata_ros.inputs import Crop, InputSpec, Needs, decode_input, merge
from sonata_ros.messages import packed_palette, segmentation_cloud
from sonata_ros.params import PARAMETERS

SPEC = InputSpec("", "~/input/pointcloud", np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
NEEDS = Needs(strength=True, reject_without_strength=False, colour=False)
CROP = Crop(min_range=0.0, max_range=0.0, box=np.zeros(6), reach=3000.0)  # the node's defaults: no crop
MAX_POINTS = next(p.default for p in PARAMETERS if p.name == "max_points")


class WarningCount:
    """The node's logger as the input path uses it: what it would warn about is counted and reported (a
    synthetic frame that makes the node warn is not the frame this benchmark means to time)."""

    def __init__(self) -> None:
        self.warnings: set[str] = set()

    def warning(self, text: str, **throttle) -> None:
        self.warnings.add(text)


def velodyne_frame(points: int) -> PointCloud2:
    rng = np.random.default_rng(0)
    columns = points // 64
    azimuth = np.tile(np.linspace(0, 2 * np.pi, columns, endpoint=False), 64)
    elevation = np.repeat(np.deg2rad(np.linspace(-24.9, 2.0, 64)), columns)
    distance = rng.uniform(2, 80, len(azimuth))
    arrays = {
        "x": (distance * np.cos(elevation) * np.cos(azimuth)).astype(np.float32),
        "y": (distance * np.cos(elevation) * np.sin(azimuth)).astype(np.float32),
        "z": (distance * np.sin(elevation)).astype(np.float32),
        "intensity": rng.uniform(0, 255, len(azimuth)).astype(np.float32),
        "ring": np.repeat(np.arange(64), columns).astype(np.uint16),
        "time": np.tile(np.linspace(0, 0.1, columns), 64).astype(np.float32),
    }
    arrays["x"][rng.random(len(azimuth)) < 0.02] = np.nan
    header = Header(frame_id="velodyne")
    return to_message(pack_points(LAYOUTS["velodyne"], arrays, point_step=22), PointCloud2, PointField, header)


def time_ms(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/codec.json")
    args = parser.parse_args()
    msg = velodyne_frame(args.points)
    n = msg.width * msg.height
    palette = packed_palette(np.random.default_rng(2).integers(0, 256, (13, 3)).astype(np.uint8))

    logger = WarningCount()

    def decode_and_answer() -> PointCloud2:
        """The node's path around the model: decode and crop, labels in, output message out."""
        sensor = decode_input(msg, SPEC, NEEDS, CROP, logger)
        merged = merge([sensor], MAX_POINTS, logger)
        class_id = np.full(n, 255, np.uint8)
        class_id[sensor.decoded.valid] = np.arange(len(merged.cloud.coord)) % 13  # stands in for the model's labels
        probability = np.zeros(n, np.float32)
        probability[sensor.decoded.valid] = 0.9
        xyz = xyz_points(structured_view(msg).reshape(-1))  # as the node's _input_points
        return segmentation_cloud(msg.header, xyz, class_id, probability, palette, msg.height)

    result = {
        "points": n,
        "decode_mask_output_message": summarize(time_ms(decode_and_answer, args.repeats)),
        "decode_only": summarize(time_ms(lambda: decode(msg, need_strength=True), args.repeats)),
        "node_warnings": sorted(logger.warnings),
    }
    emit("codec", result, args.record)


if __name__ == "__main__":
    main()
