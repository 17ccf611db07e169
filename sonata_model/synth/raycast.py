"""Vectorised ray casting of a spinning LiDAR sweep against a `Scene`.

Every ray of the sweep (beams x azimuth columns) is intersected with the analytic ground (exactly, see
`Ground.intersect`), with the ego vehicle's body and with the primitives it can reach: each primitive
is culled to the azimuth columns and beams its bounding cylinder covers as seen from the sensor (with
margins for the sensor's tilt), which leaves a few (ray, primitive) pairs per ray. The pairs are
intersected in vectorised chunks by primitive kind and the nearest hit of each ray wins
(`np.minimum.at`), so occlusion is exact. What the sensor then reports for each hit (loss, strength,
multipath) is `returns.py`'s job. No Python loop touches rays or points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.frame import IGNORE_LABEL
from . import returns
from .classes import ROAD, SIDEWALK, TERRAIN
from .ego import ego_distance
from .materials import DIFFUSE, GLASS, GLASS_REFLECTIVITY, GLOSSY, RETRO, WET
from .scene import Primitives, Scene
from .sensors import LidarModel

_EPS = 1e-6
_PAIR_CHUNK = 1 << 21
EGO_REFLECTIVITY = 0.25  # the ego car's roof and bonnet, when a driver keeps their returns


@dataclass
class Sweep:
    """One revolution: per-ray results on the (beams, columns) grid, NaN / -1 where nothing returned.

    Returns off the ego body and multipath returns are valid points with semantic IGNORE_LABEL (-1)."""

    point: np.ndarray  # (B, C, 3) world coordinates of the returns
    distance: np.ndarray  # (B, C) measured range
    intensity: np.ndarray  # (B, C) in [0, 1]
    semantic: np.ndarray  # (B, C) int32, -1 = no return or no label
    instance: np.ndarray  # (B, C) int32
    time: np.ndarray  # (B, C) seconds since the start of the sweep
    valid: np.ndarray  # (B, C) bool


def sensor_directions(sensor: LidarModel) -> np.ndarray:
    """(beams * columns, 3) unit ray directions in the sensor frame; ray index = beam * columns + column."""
    elevation, azimuth = sensor.elevations(), sensor.azimuths()
    return np.stack(
        np.broadcast_arrays(
            np.cos(elevation)[:, None] * np.cos(azimuth)[None, :],
            np.cos(elevation)[:, None] * np.sin(azimuth)[None, :],
            np.sin(elevation)[:, None],
        ),
        axis=-1,
    ).reshape(-1, 3)


def sweep(
    scene: Scene,
    sensor: LidarModel,
    position: np.ndarray,
    rotation: np.ndarray,
    velocity: np.ndarray,
    time: float,
    rng: np.random.Generator,
) -> Sweep:
    """Cast one sweep from a sensor at `position` (world, start of the sweep) with orientation `rotation`
    (3x3, sensor -> world), moving at `velocity` (x, y, z m/s) during the sweep; moving objects are
    placed at `time`."""
    beams, columns = sensor.beams, sensor.columns
    column_time = np.arange(columns) * (sensor.period / columns)
    origins = position[None, :] + np.asarray(velocity, np.float64)[None, :] * column_time[:, None]
    local = sensor_directions(sensor)
    direction = local @ rotation.T
    origin = np.broadcast_to(origins[None], (beams, columns, 3)).reshape(-1, 3)
    num_rays = beams * columns

    best, ground_label = scene.ground.intersect(origin, direction, sensor.max_range)
    best_kind = np.full(num_rays, -1, np.int64)
    best_index = np.full(num_rays, -1, np.int64)
    motion = float(np.linalg.norm(velocity) * sensor.period)
    placed = [(p, p.at(time, scene.ground)) for p in scene.primitives]
    for kind_id, (prims, centers) in enumerate(placed):
        for rays, index in _candidate_pairs(prims, centers, sensor, position, rotation, motion):
            t = _intersect(prims.kind, prims, centers, index, origin[rays], direction[rays])
            chunk_best = np.full(num_rays, np.inf)
            np.minimum.at(chunk_best, rays, t)
            better = chunk_best < best
            winner = better[rays] & (t == chunk_best[rays])
            best[better] = chunk_best[better]
            best_kind[rays[winner]] = kind_id
            best_index[rays[winner]] = index[winner]

    ego = ego_distance(sensor, local)
    blocked = ego < best
    hit = ~blocked & np.isfinite(best) & (best >= sensor.min_range) & (best <= sensor.max_range)
    semantic = np.where(hit, ground_label, IGNORE_LABEL).astype(np.int32)
    instance = np.zeros(num_rays, np.int32)
    reflectivity = np.zeros(num_rays)
    spread = np.zeros(num_rays)
    roughness = np.zeros(num_rays)
    finish = np.full(num_rays, DIFFUSE, np.int64)
    point = origin + direction * np.where(hit, best, 0)[:, None]
    normal = np.tile([0.0, 0.0, 1.0], (num_rays, 1))
    _ground_material(scene, point, semantic, hit & (best_kind < 0), reflectivity, spread, roughness, finish)
    for kind_id, (prims, centers) in enumerate(placed):
        rays = np.flatnonzero(hit & (best_kind == kind_id))
        index = best_index[rays]
        semantic[rays] = prims.semantic[index]
        instance[rays] = prims.instance[index]
        reflectivity[rays] = prims.reflectivity[index, 0]
        spread[rays] = prims.reflectivity[index, 1]
        roughness[rays] = prims.roughness[index]
        normal[rays] = _normal(prims, centers, index, point[rays], direction[rays])
        finish[rays] = _face_finish(prims, index, normal[rays])

    self_return = blocked & (ego >= sensor.min_range) & (rng.random(num_rays) < sensor.ego.self_return)
    reflectivity[self_return] = EGO_REFLECTIVITY
    best = np.where(self_return, ego, best)
    hit |= self_return
    reflectivity = np.where(finish == GLASS, GLASS_REFLECTIVITY, reflectivity)
    surface = np.clip(reflectivity + rng.normal(0, 1, num_rays) * spread, 0.01, 1.0)
    cos_incidence = np.abs(np.einsum("ij,ij->i", normal, direction))
    rho = returns.effective_reflectivity(sensor, surface, np.where(self_return, 1.0, cos_incidence))
    true_distance = np.where(hit, best, 1.0)
    extra = returns.multipath(sensor, finish, rng)
    distance = true_distance + rng.normal(0, sensor.range_noise, num_rays) + roughness * rng.random(num_rays) + extra
    strength = returns.strength(sensor, true_distance, rho, finish, rng)
    bounced = hit & (extra > 0)
    strength = np.where(bounced, strength * (0.0 if sensor.response.kind == "remission" else 0.3), strength)
    semantic = np.where(bounced | self_return, IGNORE_LABEL, semantic)
    instance = np.where(bounced | self_return, 0, instance)
    valid = hit & ~returns.lost(sensor, true_distance, rho, finish, rng) & (distance <= sensor.max_range)
    point = origin + direction * distance[:, None]
    grid = (beams, columns)
    return Sweep(
        point=np.where(valid[:, None], point, np.nan).reshape(*grid, 3),
        distance=np.where(valid, distance, np.nan).reshape(grid),
        intensity=np.where(valid, strength, np.nan).reshape(grid),
        semantic=np.where(valid, semantic, IGNORE_LABEL).reshape(grid),
        instance=np.where(valid, instance, 0).reshape(grid),
        time=np.broadcast_to(column_time[None, :], grid).copy(),
        valid=valid.reshape(grid),
    )


def _ground_material(
    scene: Scene,
    point: np.ndarray,
    semantic: np.ndarray,
    mask: np.ndarray,
    reflectivity: np.ndarray,
    spread: np.ndarray,
    roughness: np.ndarray,
    finish: np.ndarray,
) -> None:
    g = scene.ground
    road = mask & (semantic == ROAD)
    marking = road & g.is_marking(point[:, 0], point[:, 1])
    reflectivity[road] = g.road_reflectivity
    reflectivity[marking] = g.marking_reflectivity
    reflectivity[mask & (semantic == SIDEWALK)] = g.sidewalk_reflectivity
    terrain = mask & (semantic == TERRAIN)
    reflectivity[terrain] = g.terrain_reflectivity
    spread[mask] = 0.04
    spread[terrain] = 0.14
    roughness[terrain] = 0.03
    finish[road & g.is_wet(point[:, 0], point[:, 1])] = WET


def _face_finish(prims: Primitives, index: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Finish of the face hit: retro-reflective only on a primitive's front (+x) face, glass only on the
    sides of a cabin (its roof is glossy paint)."""
    finish = prims.finish[index]
    front = normal[:, 0] * np.cos(prims.yaw[index]) + normal[:, 1] * np.sin(prims.yaw[index]) > 0.5
    finish = np.where((finish == RETRO) & ~front, DIFFUSE, finish)
    return np.where((finish == GLASS) & (np.abs(normal[:, 2]) > 0.5), GLOSSY, finish)


def _candidate_pairs(
    prims: Primitives,
    centers: np.ndarray,
    sensor: LidarModel,
    position: np.ndarray,
    rotation: np.ndarray,
    motion: float,
):
    """Yield (ray index, primitive index) chunks: each primitive with the rays that can reach it.

    Culling works in the sensor frame: each primitive's vertical bounding cylinder, tilted there by the
    sensor's tilt, is bounded by a vertical one (wider by half its height times the tilt's sine, taller
    by its radius times it; both grown by the sensor's motion during the sweep), whose azimuth and
    elevation span gives the columns and beams."""
    columns = sensor.columns
    sin_tilt = float(np.sqrt(max(0.0, 1.0 - rotation[2, 2] ** 2)))
    local = (centers - position) @ rotation  # sensor frame
    half_height = prims.half_height()
    distance = np.hypot(local[:, 0], local[:, 1])
    radius = prims.bounding_radius() + half_height * sin_tilt + motion + 0.05
    near = distance - radius < sensor.max_range
    inside = distance <= radius
    half = np.where(inside, np.pi, np.arcsin(np.clip(radius / np.maximum(distance, _EPS), 0, 1)))
    step = 2 * np.pi / columns
    bearing = np.mod(np.arctan2(local[:, 1], local[:, 0]), 2 * np.pi)
    first_column = np.floor((bearing - half) / step).astype(np.int64)
    num_columns = np.minimum(np.ceil((bearing + half) / step).astype(np.int64) - first_column + 1, columns)

    reach = half_height + prims.bounding_radius() * sin_tilt + motion
    z_low, z_high = local[:, 2] - reach, local[:, 2] + reach
    d_near = np.maximum(distance - radius, 0.05)
    d_far = distance + radius
    e_low = np.minimum(np.arctan2(z_low, d_near), np.arctan2(z_low, d_far))
    e_high = np.maximum(np.arctan2(z_high, d_near), np.arctan2(z_high, d_far))
    beam_order = np.argsort(sensor.elevations())
    sorted_elevation = sensor.elevations()[beam_order]
    margin = np.deg2rad(0.05)
    first_beam = np.searchsorted(sorted_elevation, e_low - margin)
    num_beams = np.searchsorted(sorted_elevation, e_high + margin, side="right") - first_beam
    count = np.where(near, num_columns * num_beams, 0)

    selected = np.flatnonzero(count > 0)
    if selected.size == 0:
        return
    starts = np.cumsum(count[selected]) - count[selected]
    chunk_of = starts // _PAIR_CHUNK
    for group in np.split(selected, np.flatnonzero(np.diff(chunk_of)) + 1):
        n = count[group]
        index = np.repeat(group, n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        nb = num_beams[index]
        column = np.mod(first_column[index] + local // nb, columns)
        beam = beam_order[first_beam[index] + local % nb]
        yield beam * columns + column, index


def _intersect(
    kind: str, prims: Primitives, centers: np.ndarray, index: np.ndarray, origin: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """Distance along each ray to its paired primitive (inf when missed)."""
    center, size = centers[index], prims.size[index]
    if kind == "box":
        local_o, local_d = _to_box_frame(origin - center, direction, prims.yaw[index])
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / np.where(np.abs(local_d) < _EPS, _EPS, local_d)
            t1, t2 = (-size - local_o) * inverse, (size - local_o) * inverse
        near = np.minimum(t1, t2).max(axis=1)
        far = np.maximum(t1, t2).min(axis=1)
        return np.where((far >= near) & (near > _EPS), near, np.inf)
    if kind == "cylinder":
        o = origin[:, :2] - center[:, :2]
        d = direction[:, :2]
        a = np.maximum((d * d).sum(1), _EPS)
        b = 2 * (o * d).sum(1)
        c = (o * o).sum(1) - size[:, 0] ** 2
        t = _smaller_root(a, b, c)
        z = origin[:, 2] + t * direction[:, 2]
        inside = np.abs(z - center[:, 2]) <= size[:, 1]
        return np.where(inside, t, np.inf)
    o = (origin - center) / size
    d = direction / size
    return _smaller_root((d * d).sum(1), 2 * (o * d).sum(1), (o * o).sum(1) - 1.0)


def _smaller_root(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _to_box_frame(vector: np.ndarray, direction: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(yaw), np.sin(yaw)

    def rotate(v: np.ndarray) -> np.ndarray:
        return np.stack((c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1], v[:, 2]), axis=1)

    return rotate(vector), rotate(direction)


def _normal(
    prims: Primitives, centers: np.ndarray, index: np.ndarray, point: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """Unit surface normals at the hits (for the incidence angle)."""
    center, size = centers[index], prims.size[index]
    if prims.kind == "box":
        local, _ = _to_box_frame(point - center, direction, prims.yaw[index])
        axis = np.argmax(np.abs(local) / size, axis=1)
        normal_local = np.zeros_like(local)
        normal_local[np.arange(len(axis)), axis] = 1.0
        c, s = np.cos(prims.yaw[index]), np.sin(prims.yaw[index])
        return np.stack(
            (
                c * normal_local[:, 0] - s * normal_local[:, 1],
                s * normal_local[:, 0] + c * normal_local[:, 1],
                normal_local[:, 2],
            ),
            axis=1,
        )
    if prims.kind == "cylinder":
        radial = point - center
        radial[:, 2] = 0.0
    else:
        radial = (point - center) / size**2
    return radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), _EPS)
