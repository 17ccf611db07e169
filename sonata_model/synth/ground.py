"""The analytic ground of a street: road, raised sidewalks and terrain on a gently varying surface.

The height is H(x, y) = G(x) + C(y). G is the street's longitudinal profile: piecewise linear, its
grade changing every few tens of metres (hills, dips). C is its cross-section: the road's crown
falling towards the kerbs, flat under the sidewalks, the terrain at sidewalk level beyond them, then a
bank rising or falling on each side. Sidewalk tops lie `sidewalk_height` above H. Both parts being
piecewise linear, the height along a ray is linear between the points where the ray crosses a knot,
so the first hit is found exactly from those crossings (no marching, no iteration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import ROAD, SIDEWALK, TERRAIN

KERB_RAMP = 0.02  # m over which the terrain steps up to sidewalk level beyond the sidewalk
_CHUNK = 8192  # rays per vectorised block of the ground intersection


@dataclass
class Ground:
    """Road along x (|y| < road_half_width) with lane markings, cross streets, raised sidewalks, terrain.

    Defaults give the flat world: z = 0 everywhere, sidewalk tops at `sidewalk_height`.
    """

    road_half_width: float  # driving lanes plus parking strips
    lane_width: float
    driving_half_width: float  # |y| of the solid edge line between the lanes and the parking strip
    sidewalk_width: float
    sidewalk_height: float
    cross_streets: np.ndarray  # (K, 2): centre x, half width
    profile: np.ndarray = field(default_factory=lambda: np.array([[-1e5, 0.0], [1e5, 0.0]]))  # (P, 2) x, G(x)
    crown: float = 0.0  # the road falls this much per metre from the centre line to the kerbs
    banks: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))  # (side -y, side +y) x (slope, width)
    wet: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (W, 4) wet road patches: x0, x1, y0, y1
    road_reflectivity: float = 0.15
    marking_reflectivity: float = 0.6
    sidewalk_reflectivity: float = 0.32
    terrain_reflectivity: float = 0.4

    # ------------------------------------------------------------------------------------- regions

    def in_cross_street(self, x: np.ndarray) -> np.ndarray:
        if len(self.cross_streets) == 0:
            return np.zeros(np.shape(x), bool)
        return (np.abs(x[..., None] - self.cross_streets[:, 0]) < self.cross_streets[:, 1]).any(axis=-1)

    def is_road(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (np.abs(y) < self.road_half_width) | self.in_cross_street(x)

    def is_sidewalk(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ay = np.abs(y)
        return (
            (ay >= self.road_half_width) & (ay < self.road_half_width + self.sidewalk_width) & ~self.in_cross_street(x)
        )

    def is_marking(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Dashed lane lines (3 m on, 6 m off) and solid edge lines, 15 cm wide."""
        lines = np.round(y / self.lane_width) * self.lane_width
        dashed = (np.abs(y - lines) < 0.075) & (np.mod(x, 9.0) < 3.0) & (np.abs(y) < self.driving_half_width - 0.5)
        edge = np.abs(np.abs(y) - self.driving_half_width) < 0.075
        return (dashed | edge) & ~self.in_cross_street(x)

    def is_wet(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if len(self.wet) == 0:
            return np.zeros(np.shape(x), bool)
        w = self.wet
        inside = (x[..., None] >= w[:, 0]) & (x[..., None] < w[:, 1]) & (y[..., None] >= w[:, 2])
        return (inside & (y[..., None] < w[:, 3])).any(axis=-1)

    def label(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Class of the ground at (x, y) (sidewalk where a ray met a kerb face)."""
        return np.where(self.is_road(x, y), ROAD, np.where(self.is_sidewalk(x, y), SIDEWALK, TERRAIN)).astype(np.int32)

    # -------------------------------------------------------------------------------------- height

    def cross_section(self) -> tuple[np.ndarray, np.ndarray]:
        """Knots (y ascending) and values of C(y)."""
        edge, outer = self.road_half_width, self.road_half_width + self.sidewalk_width
        kerb = -self.crown * edge
        terrain = kerb + self.sidewalk_height
        (slope_neg, width_neg), (slope_pos, width_pos) = self.banks
        y = [-(outer + KERB_RAMP + width_neg), -(outer + KERB_RAMP), -outer, -edge, 0.0]
        y += [edge, outer, outer + KERB_RAMP, outer + KERB_RAMP + width_pos]
        c = [
            terrain + slope_neg * width_neg,
            terrain,
            kerb,
            kerb,
            0.0,
            kerb,
            kerb,
            terrain,
            terrain + slope_pos * width_pos,
        ]
        return np.array(y), np.array(c)

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """H(x, y): the road / terrain surface (sidewalk tops are `sidewalk_height` higher)."""
        knots, values = self.cross_section()
        return np.interp(x, self.profile[:, 0], self.profile[:, 1]) + np.interp(y, knots, values)

    def gradient(self, x: float, y: float) -> tuple[float, float]:
        """(dH/dx, dH/dy) at a point (the slope of the segment it lies on)."""
        return _slope(self.profile[:, 0], self.profile[:, 1], x), _slope(*self.cross_section(), y)

    # --------------------------------------------------------------------------------- ray casting

    def intersect(self, origin: np.ndarray, direction: np.ndarray, t_max: float) -> tuple[np.ndarray, np.ndarray]:
        """Distance along each ray to its first ground hit (inf: none within t_max), and the class there.

        The clearance f(t) = z(t) - H(x(t), y(t)) is linear between the ray's knot crossings: it is
        evaluated at the sorted crossings, and the first drop below 0 (floor) or below the sidewalk
        height (sidewalk top, kept only where the hit lies on a sidewalk) is interpolated linearly.
        Only the stretch of each ray between the highest and the lowest ground in reach is searched.
        """
        t_hit = np.full(len(origin), np.inf)
        label = np.full(len(origin), TERRAIN, np.int32)
        reach = (origin[:, 0].min() - t_max, origin[:, 0].max() + t_max)
        knots_x = self.profile[(self.profile[:, 0] > reach[0]) & (self.profile[:, 0] < reach[1]), 0]
        lowest, highest = self._height_bounds(reach)
        ceiling = highest + self.sidewalk_height + 0.01
        # a ray that stays above every ground point in reach cannot hit it
        rays = np.flatnonzero(np.minimum(origin[:, 2], origin[:, 2] + t_max * direction[:, 2]) <= ceiling)
        for chunk in np.array_split(rays, max(1, len(rays) // _CHUNK)):  # loop over ~10k-ray chunks (cache)
            t_hit[chunk], label[chunk] = self._first_hit(
                origin[chunk], direction[chunk], t_max, knots_x, lowest, ceiling
            )
        return t_hit, label

    def _first_hit(
        self, o: np.ndarray, d: np.ndarray, t_max: float, knots_x: np.ndarray, lowest: float, ceiling: float
    ) -> tuple[np.ndarray, np.ndarray]:
        knots_y, _ = self.cross_section()
        descending = d[:, 2] < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            crossings = np.concatenate(
                [(knots_x[None, :] - o[:, :1]) / d[:, :1], (knots_y[None, :] - o[:, 1:2]) / d[:, 1:2]], 1
            )
            # above the highest ground the ray cannot have hit it yet; below the lowest it has
            start = np.where(descending, np.maximum((o[:, 2] - ceiling) / -d[:, 2], 0.0), 0.0)
            end = np.where(descending, (o[:, 2] - lowest) / -d[:, 2], t_max)
        start, end = np.minimum(start, t_max)[:, None], np.minimum(end, t_max)[:, None] + 1e-6
        crossings = np.where((crossings > start) & (crossings < end), crossings, end)
        crossings.sort(axis=1)
        crossings = crossings[:, : int((crossings < end).sum(axis=1).max(initial=0))]  # drop all-`end` columns
        t = np.concatenate([start, crossings, end], axis=1)
        x, y = o[:, :1] + t * d[:, :1], o[:, 1:2] + t * d[:, 1:2]
        clearance = o[:, 2:3] + t * d[:, 2:3] - self.height(x, y)
        floor = _first_crossing(t, clearance, 0.0)
        top = _first_crossing(t, clearance, self.sidewalk_height)
        top_point = o + d * np.where(np.isfinite(top), top, 0)[:, None]
        on_top = np.isfinite(top) & self.is_sidewalk(top_point[:, 0], top_point[:, 1])
        floor_point = o + d * np.where(np.isfinite(floor), floor, 0)[:, None]
        hit = np.where(on_top, top, floor)
        label = np.where(on_top, SIDEWALK, self.label(floor_point[:, 0], floor_point[:, 1]))
        return np.where(hit <= t_max, hit, np.inf), label

    def _height_bounds(self, reach: tuple[float, float]) -> tuple[float, float]:
        """Lowest and highest H for x in `reach` (extremes of a piecewise-linear H are at its knots)."""
        x = np.concatenate([self.profile[:, 0], reach])
        g = np.interp(x[(x >= reach[0]) & (x <= reach[1])], self.profile[:, 0], self.profile[:, 1])
        _, c = self.cross_section()
        return float(g.min() + c.min()), float(g.max() + c.max())


def _first_crossing(t: np.ndarray, clearance: np.ndarray, level: float) -> np.ndarray:
    """Per row, the first t where the piecewise-linear clearance falls to `level` (inf: never, or the
    ray starts below it)."""
    below = clearance <= level
    index = np.argmax(below, axis=1)
    found = below.any(axis=1) & (index > 0)
    rows = np.arange(len(t))
    before = np.maximum(index - 1, 0)
    t0, t1 = t[rows, before], t[rows, index]
    f0, f1 = clearance[rows, before], clearance[rows, index]
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = t0 + (f0 - level) * (t1 - t0) / (f0 - f1)
    return np.where(found, hit, np.inf)


def _slope(knots: np.ndarray, values: np.ndarray, at: float) -> float:
    segment = int(np.clip(np.searchsorted(knots, at, side="right") - 1, 0, len(knots) - 2))
    return float((values[segment + 1] - values[segment]) / (knots[segment + 1] - knots[segment]))
