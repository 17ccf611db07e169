"""Vectorised ray casting of a spinning LiDAR sweep against a `Scene`.

Every ray of the sweep (beams x azimuth columns) is intersected with the analytic ground and with the
primitives it can reach: each primitive is culled to the azimuth columns and beams its bounding
cylinder covers as seen from the sensor, which leaves a few (ray, primitive) pairs per ray. The pairs
are intersected in vectorised chunks by primitive kind and the nearest hit of each ray wins
(`np.minimum.at`), so occlusion is exact. No Python loop touches rays or points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import ROAD, SIDEWALK, TERRAIN
from .scene import Primitives, Scene
from .sensors import LidarModel

_EPS = 1e-6
_PAIR_CHUNK = 1 << 21


@dataclass
class Sweep:
    """One revolution: per-ray results on the (beams, columns) grid, NaN / -1 where nothing returned."""

    point: np.ndarray  # (B, C, 3) world coordinates of the returns
    distance: np.ndarray  # (B, C) measured range
    intensity: np.ndarray  # (B, C) in [0, 1]
    semantic: np.ndarray  # (B, C) int32, -1 = no return
    instance: np.ndarray  # (B, C) int32
    time: np.ndarray  # (B, C) seconds since the start of the sweep
    valid: np.ndarray  # (B, C) bool


def sweep(
    scene: Scene,
    sensor: LidarModel,
    position: np.ndarray,
    yaw: float,
    velocity: np.ndarray,
    time: float,
    rng: np.random.Generator,
) -> Sweep:
    """Cast one sweep from a sensor at `position` (world, start of the sweep) heading `yaw`, moving at
    `velocity` (x, y m/s) during the sweep; moving objects are placed at `time`."""
    beams, columns = sensor.beams, sensor.columns
    elevation, azimuth = sensor.elevations(), sensor.azimuths()
    column_time = np.arange(columns) * (sensor.period / columns)
    origins = np.zeros((columns, 3))
    origins[:] = position
    origins[:, :2] += velocity[None, :] * column_time[:, None]
    world_azimuth = azimuth + yaw
    direction = np.stack(
        np.broadcast_arrays(
            np.cos(elevation)[:, None] * np.cos(world_azimuth)[None, :],
            np.cos(elevation)[:, None] * np.sin(world_azimuth)[None, :],
            np.sin(elevation)[:, None],
        ),
        axis=-1,
    ).reshape(-1, 3)  # ray index = beam * columns + column
    origin = np.broadcast_to(origins[None], (beams, columns, 3)).reshape(-1, 3)
    num_rays = beams * columns

    best = np.full(num_rays, np.inf)
    best_kind = np.full(num_rays, -1, np.int64)
    best_index = np.full(num_rays, -1, np.int64)
    ground_t, ground_label = _ground(scene, origin, direction)
    best[:] = ground_t
    motion = float(np.hypot(*velocity) * sensor.period)
    placed = [(p, p.at(time)) for p in scene.primitives]
    for kind_id, (prims, centers) in enumerate(placed):
        for rays, index in _candidate_pairs(prims, centers, sensor, position, yaw, motion):
            t = _intersect(prims.kind, prims, centers, index, origin[rays], direction[rays])
            chunk_best = np.full(num_rays, np.inf)
            np.minimum.at(chunk_best, rays, t)
            better = chunk_best < best
            winner = better[rays] & (t == chunk_best[rays])
            best[better] = chunk_best[better]
            best_kind[rays[winner]] = kind_id
            best_index[rays[winner]] = index[winner]

    hit = np.isfinite(best) & (best >= sensor.min_range) & (best <= sensor.max_range)
    semantic = np.where(hit, ground_label, -1).astype(np.int32)
    instance = np.zeros(num_rays, np.int32)
    reflectivity = np.zeros(num_rays)
    spread = np.zeros(num_rays)
    roughness = np.zeros(num_rays)
    point = origin + direction * np.where(hit, best, 0)[:, None]
    normal = np.tile([0.0, 0.0, 1.0], (num_rays, 1))
    _ground_material(scene, point, semantic, hit & (best_kind < 0), reflectivity, spread, roughness)
    for kind_id, (prims, centers) in enumerate(placed):
        rays = np.flatnonzero(hit & (best_kind == kind_id))
        index = best_index[rays]
        semantic[rays] = prims.semantic[index]
        instance[rays] = prims.instance[index]
        reflectivity[rays] = prims.reflectivity[index, 0]
        spread[rays] = prims.reflectivity[index, 1]
        roughness[rays] = prims.roughness[index]
        normal[rays] = _normal(prims, centers, index, point[rays], direction[rays])

    cos_incidence = np.abs(np.einsum("ij,ij->i", normal, direction))
    distance = np.where(hit, best, 0.0) + rng.normal(0, sensor.range_noise, num_rays) + roughness * rng.random(num_rays)
    surface = np.clip(reflectivity + rng.normal(0, 1, num_rays) * spread, 0.02, 1.0)
    falloff = 1.0 - 0.25 * np.clip(best / sensor.max_range, 0, 1)
    intensity = surface * (0.35 + 0.65 * cos_incidence) * falloff + rng.normal(0, sensor.intensity_noise, num_rays)
    dropout = sensor.dropout + 0.25 * (surface < 0.06) + 0.2 * (cos_incidence < 0.05)
    valid = hit & (rng.random(num_rays) >= dropout)
    point = origin + direction * distance[:, None]
    grid = (beams, columns)
    return Sweep(
        point=np.where(valid[:, None], point, np.nan).reshape(*grid, 3),
        distance=np.where(valid, distance, np.nan).reshape(grid),
        intensity=np.where(valid, np.clip(intensity, 0, 1), np.nan).reshape(grid),
        semantic=np.where(valid, semantic, -1).reshape(grid),
        instance=np.where(valid, instance, 0).reshape(grid),
        time=np.broadcast_to(column_time[None, :], grid).copy(),
        valid=valid.reshape(grid),
    )


def _ground(scene: Scene, origin: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hit distance and class on the ground: sidewalk tops at their height, road / terrain at z = 0."""
    g = scene.ground
    dz = direction[:, 2]
    down = dz < -_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = np.where(down, (g.sidewalk_height - origin[:, 2]) / dz, np.inf)
        t_floor = np.where(down, -origin[:, 2] / dz, np.inf)
    top = origin + direction * np.where(np.isfinite(t_top), t_top, 0)[:, None]
    on_top = np.isfinite(t_top) & g.is_sidewalk(top[:, 0], top[:, 1])
    floor = origin + direction * np.where(np.isfinite(t_floor), t_floor, 0)[:, None]
    floor_label = np.where(
        g.is_road(floor[:, 0], floor[:, 1]), ROAD, np.where(g.is_sidewalk(floor[:, 0], floor[:, 1]), SIDEWALK, TERRAIN)
    )
    return np.where(on_top, t_top, t_floor), np.where(on_top, SIDEWALK, floor_label).astype(np.int32)


def _ground_material(
    scene: Scene,
    point: np.ndarray,
    semantic: np.ndarray,
    mask: np.ndarray,
    reflectivity: np.ndarray,
    spread: np.ndarray,
    roughness: np.ndarray,
) -> None:
    g = scene.ground
    road = mask & (semantic == ROAD)
    marking = road & g.is_marking(point[:, 0], point[:, 1])
    reflectivity[road] = g.road_reflectivity
    reflectivity[marking] = g.marking_reflectivity
    reflectivity[mask & (semantic == SIDEWALK)] = g.sidewalk_reflectivity
    terrain = mask & (semantic == TERRAIN)
    reflectivity[terrain] = g.terrain_reflectivity
    spread[mask] = 0.05
    spread[terrain] = 0.12
    roughness[terrain] = 0.03


def _candidate_pairs(
    prims: Primitives, centers: np.ndarray, sensor: LidarModel, position: np.ndarray, yaw: float, motion: float
):
    """Yield (ray index, primitive index) chunks: each primitive with the rays that can reach it."""
    columns = sensor.columns
    relative = centers[:, :2] - position[:2]
    distance = np.hypot(relative[:, 0], relative[:, 1])
    radius = prims.bounding_radius() + motion + 0.05
    near = distance - radius < sensor.max_range
    inside = distance <= radius
    half = np.where(inside, np.pi, np.arcsin(np.clip(radius / np.maximum(distance, _EPS), 0, 1)))
    step = 2 * np.pi / columns
    bearing = np.mod(np.arctan2(relative[:, 1], relative[:, 0]) - yaw, 2 * np.pi)
    first_column = np.floor((bearing - half) / step).astype(np.int64)
    num_columns = np.minimum(np.ceil((bearing + half) / step).astype(np.int64) - first_column + 1, columns)

    z_low, z_high = prims.z_range()
    z_low = z_low - position[2]
    z_high = z_high - position[2]
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
