"""Spinning LiDAR models: beam elevation tables, azimuth resolution, range limits and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LidarModel:
    name: str
    elevation_deg: tuple[float, ...]  # per ring (ring id = index)
    columns: int  # azimuth steps per revolution
    rate_hz: float = 10.0
    min_range: float = 0.9
    max_range: float = 100.0
    range_noise: float = 0.02  # metres, 1 sigma
    dropout: float = 0.01  # probability that a return is lost
    intensity_noise: float = 0.03
    mount_height: float = 1.8  # sensor above the road surface
    layout: str = "velodyne"  # PointCloud2 layout of its driver (sonata_model.io.pointcloud2.LAYOUTS)

    @property
    def beams(self) -> int:
        return len(self.elevation_deg)

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    def elevations(self) -> np.ndarray:
        return np.deg2rad(np.asarray(self.elevation_deg, dtype=np.float64))

    def azimuths(self) -> np.ndarray:
        """Column azimuths in firing order (counter-clockwise from +x)."""
        return np.arange(self.columns) * (2 * np.pi / self.columns)


def _uniform(low: float, high: float, beams: int) -> tuple[float, ...]:
    return tuple(np.round(np.linspace(low, high, beams), 4).tolist())


# HDL-64E: an upper block of 32 lasers (+2.0 .. -8.33 deg, ~1/3 deg apart) and a lower block of 32
# (-8.83 .. -24.33 deg, 1/2 deg apart).
_HDL64 = _uniform(2.0, -8.33, 32) + _uniform(-8.83, -24.33, 32)

SENSORS: dict[str, LidarModel] = {
    "vlp16": LidarModel(
        "vlp16", _uniform(-15.0, 15.0, 16), columns=1800, max_range=100.0, range_noise=0.03, mount_height=1.7
    ),
    "hdl32": LidarModel("hdl32", _uniform(-30.67, 10.67, 32), columns=1800, max_range=100.0, range_noise=0.02),
    "hdl64": LidarModel("hdl64", _HDL64, columns=2048, max_range=120.0, range_noise=0.02, mount_height=1.73),
    "os128": LidarModel(
        "os128", _uniform(-22.5, 22.5, 128), columns=1024, max_range=120.0, range_noise=0.015, layout="ouster"
    ),
}


def get_sensor(name: str) -> LidarModel:
    if name not in SENSORS:
        raise ValueError(f"unknown sensor {name!r}; available: {sorted(SENSORS)}")
    return SENSORS[name]
