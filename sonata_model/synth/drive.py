"""Drives: an ego vehicle moving down the street, one labelled LiDAR sweep per frame.

Points are given in the sensor frame at the start of each sweep, with the ego motion during the sweep
left in (as a driver publishes them without deskewing); `Frame.pose` is that sensor frame in the
world. Same seed, same drive; the world is generated once per drive.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..io.frame import Frame
from .raycast import sweep
from .scene import Scene, generate_scene
from .sensors import LidarModel, get_sensor

STAMP_BASE_NS = 1_700_000_000 * 10**9  # first frame's header stamp


def pose_matrix(position: np.ndarray, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = position
    return pose


def generate_drive(
    sensor: str | LidarModel = "hdl64", frames: int = 10, seed: int = 0, speed: float | None = None
) -> Iterator[Frame]:
    """`frames` consecutive sweeps of a drive through a world generated from `seed`."""
    model = get_sensor(sensor) if isinstance(sensor, str) else sensor
    rng = np.random.default_rng([seed, 1])
    speed = float(rng.uniform(5.0, 10.0)) if speed is None else speed
    length = frames * speed * model.period
    scene = generate_scene(seed, -model.max_range - 20.0, length + model.max_range + 20.0)
    lane_y = -scene.ground.lane_width / 2
    sway_phase, sway = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.4)
    for index in range(frames):
        time = index * model.period
        x = speed * time
        y = lane_y + sway * np.sin(0.15 * x + sway_phase)
        yaw = 0.15 * sway * np.cos(0.15 * x + sway_phase)  # heading follows the gentle weave
        position = np.array([x, y, model.mount_height])
        velocity = speed * np.array([np.cos(yaw), np.sin(yaw)])
        yield _frame(scene, model, position, yaw, velocity, time, index, np.random.default_rng([seed, 2, index]))


def _frame(
    scene: Scene,
    model: LidarModel,
    position: np.ndarray,
    yaw: float,
    velocity: np.ndarray,
    time: float,
    index: int,
    rng: np.random.Generator,
) -> Frame:
    result = sweep(scene, model, position, yaw, velocity, time, rng)
    valid = result.valid.reshape(-1)
    pose = pose_matrix(position, yaw)
    world = result.point.reshape(-1, 3)[valid]
    coord = (world - position) @ pose[:3, :3]  # world -> sensor frame at the start of the sweep
    ring = np.broadcast_to(np.arange(model.beams)[:, None], result.valid.shape).reshape(-1)[valid]
    column = np.broadcast_to(np.arange(model.columns)[None, :], result.valid.shape).reshape(-1)[valid]
    return Frame(
        coord=coord.astype(np.float32),
        strength=result.intensity.reshape(-1)[valid].astype(np.float32),
        segment=result.semantic.reshape(-1)[valid].astype(np.int32),
        instance=result.instance.reshape(-1)[valid].astype(np.int32),
        pose=pose,
        stamp_ns=STAMP_BASE_NS + round(time * 1e9),
        frame_id="lidar",
        name=f"{index:06d}",
        extra={
            "ring": ring.astype(np.uint16),
            "time": result.time.reshape(-1)[valid].astype(np.float32),
            "column": column.astype(np.int32),
        },
    )
