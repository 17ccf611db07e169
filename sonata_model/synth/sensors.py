"""Spinning LiDAR models: beam layouts, rates, ranges, mounting, ego body and how they report intensity.

Each model stands for a real sensor as a real car carries it (`benchmarks/realism.py` compares them with
real scans): the mount height puts the road at z = -mount_height in the sensor frame, the ego body
blocks the lowest beams, and `response` says how the driver's intensity maps to `strength` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EgoBody:
    """The vehicle under the sensor, as the box that casts the shadow real scans show around the car.

    `length` / `width` / `height` are the box's (height above the road); `sensor_x` is the sensor's
    position along it from its centre (forward positive). For a sensor close above a car roof the box
    is the roof; for one on a rack well above it, the bonnet-to-boot body, whose height sets how far
    ahead and behind the lowest beams are cut off. A blocked beam returns nothing, or with probability
    `self_return` a point on the box, labelled ignore (some drivers publish such returns).
    """

    length: float = 4.5
    width: float = 1.8
    height: float = 0.9
    sensor_x: float = 0.0
    self_return: float = 0.0


@dataclass(frozen=True)
class Response:
    """How the sensor turns a surface's diffuse reflectivity into the `strength` of a return.

    - "remission" (KITTI's HDL-64E): strength = gain * sqrt(reflectivity), quantised to 0.01; some
      returns read 0: a share `zero` of all, `glossy_zero` of those off glossy paint, and weak returns
      beyond about `far_zero_range` (for a 10 % surface; further for brighter ones).
    - "calibrated" (Velodyne / Ouster calibrated reflectivity, 0-100 diffuse, 101-255 retro-reflective,
      divided by 255 as drivers and the node do): strength = gain * reflectivity, quantised to 1/255.
    The reflectivity is the surface's times (1 - incidence + incidence * cos(angle of incidence)), times
    a log-normal noise exp(N(0, `noise`)). Retro-reflectors (signs, plates) read between `retro` and 1.
    """

    kind: str = "calibrated"
    gain: float = 100 / 255
    step: float = 1 / 255
    incidence: float = 0.7
    noise: float = 0.5
    zero: float = 0.0
    glossy_zero: float = 0.0
    retro: float = 101 / 255
    far_zero_range: float = 0.0


@dataclass(frozen=True)
class LidarModel:
    name: str
    elevation_deg: tuple[float, ...]  # per ring (ring id = index)
    columns: int  # azimuth steps per revolution
    rate_hz: float = 10.0
    min_range: float = 0.9
    max_range: float = 100.0
    range_noise: float = 0.02  # metres, 1 sigma
    range_at_10pct: float = 60.0  # metres at which a 10 % reflective surface is still detected (see returns.py)
    dropout: float = 0.01  # probability that any return is lost
    mount_height: float = 1.8  # sensor above the road surface
    mount_tilt_deg: float = 0.3  # 1 sigma of the mount's pitch and roll on the vehicle (drawn per drive)
    multipath: float = 2e-4  # share of returns whose range is lengthened by a bounce (ignore label)
    ego: EgoBody = field(default_factory=EgoBody)
    response: Response = field(default_factory=Response)
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

# VLS-128 (Alpha Prime): the 128 distinct laser elevations of the real frame in shared/real (its
# driver's calibration): 0.11 deg apart from -6.5 to +4.8 deg, wider towards -25 and +15 deg.
_VLS128 = (
    *(-25.0, -19.58, -16.04, -13.57, -13.56, -11.74, -10.35, -9.24, -8.35, -7.65, -7.15, -6.85, -6.65),
    *_uniform(-6.5, -5.51, 10),
    *_uniform(-5.29, 4.83, 93),
    *(4.98, 5.18, 5.43, 5.73, 6.08, 6.48, 6.98, 7.58, 8.43, 9.7, 11.75, 15.0),
)

# KITTI's remission: road ~0.2, sidewalk ~0.3, vegetation / terrain ~0.35 (SemanticKITTI medians).
KITTI_REMISSION = Response(
    "remission",
    gain=0.66,
    step=0.01,
    incidence=0.4,
    noise=0.3,
    zero=0.04,
    glossy_zero=0.65,
    retro=0.6,
    far_zero_range=38.0,
)

SENSORS: dict[str, LidarModel] = {
    # a VLP-16 on a car roof (the demo's sensor)
    "vlp16": LidarModel(
        "vlp16",
        _uniform(-15.0, 15.0, 16),
        columns=1800,
        max_range=100.0,
        range_at_10pct=50.0,
        range_noise=0.03,
        mount_height=1.7,
        ego=EgoBody(length=4.5, width=1.8, height=0.9),
    ),
    # nuScenes: HDL-32E at 20 Hz on a Renault Zoe roof, 1.84 m; the roof's returns are kept (from 0.3 m)
    "hdl32": LidarModel(
        "hdl32",
        _uniform(-30.67, 10.67, 32),
        columns=1084,
        rate_hz=20.0,
        min_range=0.3,
        max_range=100.0,
        range_at_10pct=70.0,
        range_noise=0.02,
        mount_height=1.84,
        multipath=1e-3,
        ego=EgoBody(length=2.0, width=1.2, height=1.43, self_return=0.5),
    ),
    # KITTI: HDL-64E at 1.73 m on a VW Passat wagon's roof rack; KITTI keeps returns within 80 m
    "hdl64": LidarModel(
        "hdl64",
        _HDL64,
        columns=2048,
        max_range=80.0,
        range_at_10pct=50.0,
        range_noise=0.02,
        mount_height=1.73,
        ego=EgoBody(length=5.0, width=1.8, height=0.81, sensor_x=0.1),
        response=KITTI_REMISSION,
    ),
    # an Ouster OS1-128 (uniform 45 deg field) on a car roof
    "os128": LidarModel(
        "os128",
        _uniform(-22.5, 22.5, 128),
        columns=1024,
        max_range=120.0,
        range_at_10pct=45.0,
        range_noise=0.015,
        mount_height=1.9,
        ego=EgoBody(length=4.7, width=1.85, height=0.9),
        layout="ouster",
    ),
    # a Velodyne VLS-128 (Alpha Prime) on a car roof, as in the real frame of shared/real
    "vls128": LidarModel(
        "vls128",
        _VLS128,
        columns=1800,
        max_range=200.0,
        range_at_10pct=150.0,
        range_noise=0.02,
        mount_height=1.85,
        multipath=5e-4,
        ego=EgoBody(length=4.7, width=1.9, height=0.9, self_return=0.8),
    ),
}


def get_sensor(name: str) -> LidarModel:
    if name not in SENSORS:
        raise ValueError(f"unknown sensor {name!r}; available: {sorted(SENSORS)}")
    return SENSORS[name]
