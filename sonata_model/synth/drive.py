"""Drives: an ego vehicle moving down the street, one labelled LiDAR sweep per frame.

The vehicle follows the ground: it pitches with the road's grade and rolls with its crown, and the
sensor sits `mount_height` above the road on it, tilted by a small mounting error drawn per drive
(`LidarModel.mount_tilt_deg`), so that the road lies at about z = -mount_height in the sensor frame,
as in real scans. Points are given in the sensor frame at the start of each sweep, with the ego motion
during the sweep left in (as a driver publishes them without deskewing); `Frame.pose` is that sensor
frame in the world. Same seed, same drive; the world is generated once per drive.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..io.frame import Frame
from .raycast import sweep
from .scene import Scene, generate_scene
from .sensors import LidarModel, get_sensor

STAMP_BASE_NS = 1_700_000_000 * 10**9  # first frame's header stamp


def rotation_matrix(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll): body -> world; positive pitch lowers the nose (ROS convention)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def pose_matrix(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """4x4 pose from a position and a 3x3 rotation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = position
    return pose


def vehicle_attitude(scene: Scene, x: float, y: float, yaw: float) -> tuple[float, float]:
    """(pitch, roll) of a vehicle standing at (x, y) heading `yaw` on the ground."""
    dx, dy = scene.ground.gradient(x, y)
    along = dx * np.cos(yaw) + dy * np.sin(yaw)  # rise per metre ahead
    across = -dx * np.sin(yaw) + dy * np.cos(yaw)  # rise per metre to the left
    return float(-np.arctan(along)), float(np.arctan(across))


def drive_world(
    sensor: str | LidarModel, frames: int, seed: int, speed: float | None = None
) -> tuple[LidarModel, Scene, np.random.Generator, float]:
    """The sensor model, the world a drive runs through, the drive's random generator and its speed."""
    model = get_sensor(sensor) if isinstance(sensor, str) else sensor
    rng = np.random.default_rng([seed, 1])
    speed = float(rng.uniform(5.0, 10.0)) if speed is None else speed
    length = frames * speed * model.period
    return model, generate_scene(seed, -model.max_range - 20.0, length + model.max_range + 20.0), rng, speed


def generate_drive(
    sensor: str | LidarModel = "hdl64", frames: int = 10, seed: int = 0, speed: float | None = None
) -> Iterator[Frame]:
    """`frames` consecutive sweeps of a drive through a world generated from `seed`."""
    model, scene, rng, speed = drive_world(sensor, frames, seed, speed)
    lane_y = -scene.ground.lane_width / 2
    sway_phase, sway = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.4)
    mount = rotation_matrix(0.0, *np.deg2rad(rng.normal(0.0, model.mount_tilt_deg, 2)))
    for index in range(frames):
        time = index * model.period
        x = speed * time
        y = lane_y + sway * np.sin(0.15 * x + sway_phase)
        yaw = 0.15 * sway * np.cos(0.15 * x + sway_phase)  # heading follows the gentle weave
        body = rotation_matrix(yaw, *vehicle_attitude(scene, x, y, yaw))
        ground_point = np.array([x, y, float(scene.ground.height(np.array(x), np.array(y)))])
        position = ground_point + body @ np.array([0.0, 0.0, model.mount_height])
        velocity = speed * body[:, 0]
        rng_frame = np.random.default_rng([seed, 2, index])
        yield _frame(scene, model, position, body @ mount, velocity, time, index, rng_frame)


def _frame(
    scene: Scene,
    model: LidarModel,
    position: np.ndarray,
    rotation: np.ndarray,
    velocity: np.ndarray,
    time: float,
    index: int,
    rng: np.random.Generator,
) -> Frame:
    result = sweep(scene, model, position, rotation, velocity, time, rng)
    valid = result.valid.reshape(-1)
    pose = pose_matrix(position, rotation)
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
