"""What a LiDAR reports for a ray that hit a surface: whether the return is lost, its strength, bounces.

- Detection: a return is lost with the sensor's base `dropout`, with its finish's dropout (glass, wet
  asphalt) and, smoothly, beyond the range at which the sensor still detects the surface: that range
  grows as the square root of the effective reflectivity, from `range_at_10pct` at 10 %. Dark surfaces
  at grazing incidence far away are the first to go, as in real scans.
- Strength: the sensor's `Response` of the effective reflectivity (reflectivity * incidence term,
  with a log-normal noise); retro-reflective faces read high; KITTI-style remission reads 0 on glossy
  paint and on weak far returns.
- Multipath: a few returns (many more off glass, wet or glossy surfaces) travel an extra bounce, so
  the point lands further along the beam, under the road for downward beams; they carry no label.
"""

from __future__ import annotations

import numpy as np

from .materials import FINISH_DROPOUT, FINISH_MULTIPATH, GLOSSY, RETRO
from .sensors import LidarModel


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def effective_reflectivity(sensor: LidarModel, reflectivity: np.ndarray, cos_incidence: np.ndarray) -> np.ndarray:
    """Reflectivity seen at this incidence: rough surfaces still scatter back at grazing angles."""
    weight = sensor.response.incidence
    return reflectivity * (1.0 - weight + weight * cos_incidence)


def lost(
    sensor: LidarModel, distance: np.ndarray, rho: np.ndarray, finish: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Which returns never reach the sensor (`rho`: effective reflectivity)."""
    reach = sensor.range_at_10pct * np.sqrt(np.maximum(rho, 1e-4) / 0.1) * np.where(finish == RETRO, 10.0, 1.0)
    p = sensor.dropout + _lookup(FINISH_DROPOUT, finish) + _sigmoid(np.log(distance / reach) / 0.08)
    return rng.random(len(distance)) < p


def strength(
    sensor: LidarModel, distance: np.ndarray, rho: np.ndarray, finish: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Strength in [0, 1] as the sensor's driver reports it, quantised to its step."""
    response = sensor.response
    noisy = rho * np.exp(response.noise * rng.standard_normal(len(rho)))  # log-normal: a long bright tail
    if response.kind == "remission":
        value = response.gain * np.sqrt(noisy)
        zero = rng.random(len(rho)) < np.where(finish == GLOSSY, response.glossy_zero, response.zero)
        if response.far_zero_range > 0:
            fade = response.far_zero_range * np.sqrt(np.maximum(rho, 1e-4) / 0.1)
            zero |= rng.random(len(rho)) < _sigmoid(np.log(distance / fade) / 0.15)
        value = np.where(zero, 0.0, value)
    elif response.kind == "calibrated":
        value = response.gain * noisy
    else:
        raise ValueError(f"sensor {sensor.name!r}: unknown intensity response {response.kind!r}")
    value = np.where(finish == RETRO, rng.uniform(response.retro, 1.0, len(rho)), value)
    return np.clip(np.round(value / response.step) * response.step, 0.0, 1.0)


def multipath(sensor: LidarModel, finish: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Extra path length (m) of each return: 0 for most, a few metres to tens of metres for bounces."""
    bounced = rng.random(len(finish)) < sensor.multipath * _lookup(FINISH_MULTIPATH, finish)
    return np.where(bounced, 2.0 + rng.exponential(12.0, len(finish)), 0.0)


def _lookup(table: dict[int, float], finish: np.ndarray) -> np.ndarray:
    values = np.zeros(max(table) + 1)
    values[list(table)] = list(table.values())
    return values[finish]
