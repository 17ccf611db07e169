"""The ego vehicle's body around a roof-mounted LiDAR: the lowest beams hit it instead of the road.

Real scans show it as a hole around the car, widest ahead and behind, where the lowest rings return
nothing (KITTI) or return points on the roof and bonnet (nuScenes, the VLS-128 frame). The body is a
box in the sensor frame (its small tilt on the vehicle neglected): `EgoBody` gives its size and
where the sensor sits on it.
"""

from __future__ import annotations

import numpy as np

from .sensors import LidarModel

_EPS = 1e-9


def body_box(sensor: LidarModel) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners of the ego body in the sensor frame."""
    body = sensor.ego
    low = np.array([-body.sensor_x - body.length / 2, -body.width / 2, -sensor.mount_height])
    high = np.array([-body.sensor_x + body.length / 2, body.width / 2, body.height - sensor.mount_height])
    return low, high


def ego_distance(sensor: LidarModel, direction: np.ndarray) -> np.ndarray:
    """Distance along each unit ray from the sensor (sensor frame) to the ego body; inf where it misses."""
    if sensor.ego.height >= sensor.mount_height:
        raise ValueError(f"sensor {sensor.name!r}: ego body height {sensor.ego.height} m reaches the sensor")
    low, high = body_box(sensor)
    safe = np.where(np.abs(direction) < _EPS, _EPS, direction)
    t1, t2 = low / safe, high / safe
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    return np.where((far >= near) & (near > 0), near, np.inf)
