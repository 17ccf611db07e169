"""CPU side of the hot path: decode + mask + encode of a 120k-point Velodyne frame, and rclpy message building.

    python benchmarks/codec.py [--points 120000] [--repeats 50] [--record]

The frame is synthetic (64 rings x azimuth columns, ~2 % NaN returns) in the Velodyne layout
(x, y, z, intensity f32, ring u16, time f32; point_step 22, unaligned). The output is the node's
segmentation layout (x, y, z, class_id u8, probability f32, rgb f32) for every input point.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, summarize
from rosbags.typesys import Stores, get_typestore

from sonata_model.io.pointcloud2 import FLOAT32, LAYOUTS, UINT8, FieldSpec, decode, encode, pack_rgb, to_message

SEGMENTATION = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("class_id", 12, UINT8),
    FieldSpec("probability", 13, FLOAT32),
    FieldSpec("rgb", 17, FLOAT32),
]


def velodyne_frame(points: int):
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
    types = get_typestore(Stores.ROS2_JAZZY).types
    return to_message(
        encode(LAYOUTS["velodyne"], arrays, point_step=22),
        types["sensor_msgs/msg/PointCloud2"],
        types["sensor_msgs/msg/PointField"],
        types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="velodyne"),
    )


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
    labels = np.random.default_rng(1).integers(0, 13, n).astype(np.uint8)
    palette = np.random.default_rng(2).integers(0, 256, (256, 3)).astype(np.uint8)
    rgb_of_class = pack_rgb(palette)

    def round_trip():
        cloud = decode(msg, need_strength=True)
        xyz = np.full((n, 3), np.nan, np.float32)
        xyz[cloud.valid] = cloud.coord
        return encode(
            SEGMENTATION,
            {
                "x": xyz[:, 0],
                "y": xyz[:, 1],
                "z": xyz[:, 2],
                "class_id": labels,
                "probability": np.ones(n, np.float32),
                "rgb": rgb_of_class[labels],
            },
        )

    encoded = round_trip()
    result = {
        "points": n,
        "decode_mask_encode": summarize(time_ms(round_trip, args.repeats)),
        "decode_only": summarize(time_ms(lambda: decode(msg, need_strength=True), args.repeats)),
    }
    try:
        from sensor_msgs.msg import PointCloud2, PointField
        from std_msgs.msg import Header

        result["rclpy_message_build"] = summarize(
            time_ms(lambda: to_message(encoded, PointCloud2, PointField, Header()), args.repeats)
        )
    except ImportError:
        result["rclpy_message_build"] = "rclpy not installed"
    emit("codec", result, args.record)


if __name__ == "__main__":
    main()
