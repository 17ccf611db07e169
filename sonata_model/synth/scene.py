"""Procedural street scenes built from analytic primitives that can be ray-cast fast.

A scene runs along the x axis on the ground of `ground.py` (hills, crowned road, banks): a road centred
on y = 0 with lane markings, cross streets, raised sidewalks with kerbs, terrain, and along it what
`street.py` (buildings, yards, vegetation, street furniture, pedestrians) and `traffic.py` (parked and
moving vehicles, cyclists) place. Each seed draws a `Layout`: an urban, suburban or open street with its
own widths, slopes, densities and setbacks, so that drives cover the variety of real streets.

Primitives: boxes rotated about z, vertical cylinders and ellipsoids, each with a semantic class, an
instance id (things only), a material reflectivity (mean and spread, varied per instance so that no
class is separable by intensity alone) and finish (`materials.py`), a surface roughness (extra range
noise) and a velocity. Objects stand on the ground: `Builder.build` lifts each onto the surface under
it and sinks the base of those that touch the ground into it, so that none floats on a slope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ground import Ground
from .materials import DIFFUSE, MATERIALS, ROUGHNESS
from .street import street_side
from .traffic import traffic

GROUNDED = 0.25  # m: a primitive whose base is at most this high stands on the ground (or a sidewalk)
FOOTING = 0.3  # m: how deep standing primitives reach below the lowest ground under them


@dataclass
class Primitives:
    """Parameters of one primitive type, one row per primitive."""

    kind: str  # "box" | "cylinder" | "ellipsoid"
    center: np.ndarray  # (P, 3)
    size: np.ndarray  # box: half extents (P, 3); cylinder: (radius, half height, 0); ellipsoid: radii
    yaw: np.ndarray  # (P,) rotation about z (boxes); +x of the rotated frame is the front face
    semantic: np.ndarray  # (P,) int32
    instance: np.ndarray  # (P,) int32
    reflectivity: np.ndarray  # (P, 2) mean, spread within the primitive
    roughness: np.ndarray  # (P,)
    velocity: np.ndarray  # (P, 2) m/s in x, y
    finish: np.ndarray | None = None  # (P,) int, materials.DIFFUSE ... RETRO; None: all diffuse

    def __post_init__(self) -> None:
        if self.finish is None:
            self.finish = np.full(len(self.center), DIFFUSE, np.int64)

    def __len__(self) -> int:
        return len(self.center)

    def at(self, time: float, ground: Ground | None = None) -> np.ndarray:
        """Centres at `time` seconds: moving objects move, following the ground's height when given."""
        center = self.center.copy()
        moving = np.flatnonzero(np.any(self.velocity != 0, axis=1))
        if len(moving):
            start = center[moving, :2].copy()
            center[moving, :2] += self.velocity[moving] * time
            if ground is not None:
                now, before = center[moving], start
                center[moving, 2] += ground.height(now[:, 0], now[:, 1]) - ground.height(before[:, 0], before[:, 1])
        return center

    def bounding_radius(self) -> np.ndarray:
        """Radius of a vertical cylinder around each primitive (for culling)."""
        if self.kind == "box":
            return np.hypot(self.size[:, 0], self.size[:, 1])
        if self.kind == "cylinder":
            return self.size[:, 0]
        return np.maximum(self.size[:, 0], self.size[:, 1])

    def half_height(self) -> np.ndarray:
        return self.size[:, 1] if self.kind == "cylinder" else self.size[:, 2]

    def z_range(self, centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        z = (self.center if centers is None else centers)[:, 2]
        return z - self.half_height(), z + self.half_height()


@dataclass
class Layout:
    """A street's style and the parameters drawn for it (see `draw_layout`)."""

    style: str  # "urban" | "suburban" | "open"
    lanes_per_side: int
    lane_width: float
    parking: bool  # parking strips (and parked vehicles) along both kerbs
    parked_density: float  # share of parking slots taken
    traffic_gap: tuple[float, float]  # metres between moving vehicles in a lane
    sidewalk_width: float
    verge: float  # terrain between the sidewalk and the property line
    setback: tuple[float, float]  # building front beyond the property line
    building_chance: float  # share of plots with a building
    tree_gap: tuple[float, float]
    max_grade: float  # of the longitudinal profile


STYLES = ("urban", "suburban", "open")
PARKING_WIDTH = 2.3  # parking strip between the driving lanes and the kerb


def draw_layout(rng: np.random.Generator) -> Layout:
    style = STYLES[int(rng.choice(3, p=(0.35, 0.45, 0.2)))]
    if style == "urban":
        return Layout(
            style,
            1 + int(rng.random() < 0.3),
            float(rng.uniform(3.0, 3.6)),
            parking=rng.random() < 0.6,
            parked_density=float(rng.uniform(0.2, 0.7)),
            traffic_gap=(15.0, 50.0),
            sidewalk_width=float(rng.uniform(2.5, 5.0)),
            verge=float(rng.uniform(0.0, 2.0)),
            setback=(0.0, 3.0),
            building_chance=0.9,
            tree_gap=(5.0, 12.0),
            max_grade=float(rng.uniform(0.0, 0.03)),
        )
    if style == "suburban":
        return Layout(
            style,
            1,
            float(rng.uniform(2.75, 3.2)),
            parking=rng.random() < 0.3,
            parked_density=float(rng.uniform(0.1, 0.4)),
            traffic_gap=(30.0, 100.0),
            sidewalk_width=float(rng.uniform(1.8, 4.0)),
            verge=float(rng.uniform(1.5, 6.0)),
            setback=(3.0, 10.0),
            building_chance=0.75,
            tree_gap=(3.0, 9.0),
            max_grade=float(rng.uniform(0.0, 0.05)),
        )
    return Layout(
        style,
        1,
        float(rng.uniform(2.8, 3.5)),
        parking=rng.random() < 0.1,
        parked_density=float(rng.uniform(0.0, 0.15)),
        traffic_gap=(40.0, 150.0),
        sidewalk_width=float(rng.uniform(1.2, 2.0)),
        verge=float(rng.uniform(5.0, 20.0)),
        setback=(10.0, 60.0),
        building_chance=0.15,
        tree_gap=(3.0, 10.0),
        max_grade=float(rng.uniform(0.0, 0.06)),
    )


def draw_ground(rng: np.random.Generator, layout: Layout, x_start: float, x_end: float) -> Ground:
    """The street's ground: widths from the layout, cross streets, hills, crown, banks, wet patches."""
    driving_half = layout.lanes_per_side * layout.lane_width
    road_half = driving_half + (PARKING_WIDTH if layout.parking else float(rng.uniform(0.3, 0.8)))
    crosses, x = [], x_start + rng.uniform(20, 60)
    while x < x_end:
        crosses.append((x, rng.uniform(4.0, 7.0)))
        x += rng.uniform(70, 140) * (2.0 if layout.style == "open" else 1.0)
    knots, grade, x = [(x_start - 1.0, 0.0)], float(rng.uniform(-1, 1) * layout.max_grade), x_start - 1.0
    while x < x_end + 1.0:
        length = float(rng.uniform(25.0, 70.0))
        grade = float(np.clip(grade + rng.normal(0, 0.015), -layout.max_grade, layout.max_grade))
        x += length
        knots.append((x, knots[-1][1] + grade * length))
    flat = layout.style == "urban"
    banks = np.stack([rng.uniform(-0.15, 0.25, 2) * (0.3 if flat else 1.0), rng.uniform(1.0, 10.0, 2)], axis=1)
    wet = np.zeros((0, 4))
    if rng.random() < 0.25:  # after rain: puddles and wet tracks on the road
        n = int(rng.integers(5, 20))
        x0 = rng.uniform(x_start, x_end, n)
        y0 = rng.uniform(-road_half, road_half, n)
        wet = np.stack([x0, x0 + rng.uniform(1, 6, n), y0, y0 + rng.uniform(0.5, 3, n)], axis=1)
    return Ground(
        road_half_width=road_half,
        lane_width=layout.lane_width,
        driving_half_width=driving_half,
        sidewalk_width=layout.sidewalk_width,
        sidewalk_height=float(rng.uniform(0.10, 0.18)),
        cross_streets=np.array(crosses).reshape(-1, 2),
        profile=np.array(knots),
        crown=float(rng.uniform(0.01, 0.03)),
        banks=banks,
        wet=wet,
        road_reflectivity=float(np.clip(rng.normal(0.15, 0.03), 0.06, 0.3)),
        sidewalk_reflectivity=float(np.clip(rng.normal(0.32, 0.05), 0.15, 0.5)),
        terrain_reflectivity=float(np.clip(rng.normal(0.40, 0.05), 0.2, 0.6)),
    )


@dataclass
class Scene:
    ground: Ground
    primitives: list[Primitives] = field(default_factory=list)
    x_range: tuple[float, float] = (0.0, 0.0)
    layout: Layout | None = None


class Builder:
    """Accumulates primitives of each kind; materials drawn per instance."""

    def __init__(self, rng: np.random.Generator, ground: Ground, layout: Layout) -> None:
        self.rng = rng
        self.ground = ground
        self.layout = layout
        self.rows: dict[str, list[tuple]] = {"box": [], "cylinder": [], "ellipsoid": []}
        self.next_instance = 1

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def material(self, semantic: int, scale: float = 1.0) -> tuple[float, float]:
        mean, between, within, _ = MATERIALS[semantic]
        return float(np.clip(self.rng.normal(mean, between) * scale, 0.02, 0.98)), within

    def free(self, x: float, margin: float) -> bool:
        """True when [x - margin, x + margin] crosses no cross street."""
        return not self.ground.in_cross_street(np.array([x - margin, x, x + margin])).any()

    def add(
        self,
        kind: str,
        center,
        size,
        semantic: int,
        *,
        yaw: float = 0.0,
        instance: int = 0,
        material: tuple[float, float] | None = None,
        velocity=(0.0, 0.0),
        finish: int | None = None,
    ) -> None:
        material = material or self.material(semantic)
        finish = MATERIALS[semantic][3] if finish is None else finish
        self.rows[kind].append(
            (center, size, yaw, semantic, instance, material, ROUGHNESS.get(semantic, 0.0), velocity, finish)
        )

    def build(self) -> list[Primitives]:
        out = []
        for kind, rows in self.rows.items():
            if not rows:
                continue
            cols = list(zip(*rows, strict=True))
            prims = Primitives(
                kind=kind,
                center=np.array(cols[0], np.float64),
                size=np.array(cols[1], np.float64),
                yaw=np.array(cols[2], np.float64),
                semantic=np.array(cols[3], np.int32),
                instance=np.array(cols[4], np.int32),
                reflectivity=np.array(cols[5], np.float64),
                roughness=np.array(cols[6], np.float64),
                velocity=np.array(cols[7], np.float64),
                finish=np.array(cols[8], np.int64),
            )
            _stand_on_ground(prims, self.ground)
            out.append(_split_long_boxes(prims) if kind == "box" else prims)
        return out


def _stand_on_ground(prims: Primitives, ground: Ground) -> None:
    """Lift primitives onto the ground under their centre; sink standing ones below their footprint."""
    x, y = prims.center[:, 0], prims.center[:, 1]
    base = ground.height(x, y)
    if prims.kind == "ellipsoid":  # crowns, heads, bushes keep their shape: lifted only
        prims.center[:, 2] += base
        return
    low, high = prims.z_range()
    under = base
    if prims.kind == "box":  # the lowest ground under the four corners
        c, s = np.cos(prims.yaw), np.sin(prims.yaw)
        ex, ey = prims.size[:, 0], prims.size[:, 1]
        corners = [
            ground.height(x + c * i * ex - s * j * ey, y + s * i * ex + c * j * ey) for i in (-1, 1) for j in (-1, 1)
        ]
        under = np.min(corners, axis=0)
    standing = low <= GROUNDED
    bottom = np.where(standing, np.minimum(under, base) + np.minimum(low, 0.0) - FOOTING, base + low)
    top = base + high
    prims.center[:, 2] = (bottom + top) / 2
    prims.size[:, 1 if prims.kind == "cylinder" else 2] = (top - bottom) / 2


def _split_long_boxes(prims: Primitives, longest: float = 4.0, thin: float = 1.0) -> Primitives:
    """Cut static thin boxes (fences, walls, hedges) longer than `longest` into pieces with the same
    surfaces: one next to the sensor is then culled piece by piece (a few rays each), not as one wide
    cylinder. (Cutting buildings would add hidden interior pieces: more work, not less.)"""
    thin_static = (prims.size[:, :2].min(axis=1) <= thin) & ~np.any(prims.velocity != 0, axis=1)
    pieces = np.where(thin_static[:, None], np.ceil(2 * prims.size[:, :2] / longest), 1).astype(np.int64)
    count = pieces[:, 0] * pieces[:, 1]
    if np.all(count == 1):
        return prims
    index = np.repeat(np.arange(len(prims)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    nx, ny = pieces[index, 0], pieces[index, 1]
    size = prims.size[index].copy()
    size[:, 0] /= nx
    size[:, 1] /= ny
    # piece centres along the box's own axes, then rotated by its yaw
    u = (2 * (within % nx) + 1 - nx) * size[:, 0]
    v = (2 * (within // nx) + 1 - ny) * size[:, 1]
    c, s = np.cos(prims.yaw[index]), np.sin(prims.yaw[index])
    center = prims.center[index].copy()
    center[:, 0] += c * u - s * v
    center[:, 1] += s * u + c * v
    return Primitives(
        kind=prims.kind,
        center=center,
        size=size,
        yaw=prims.yaw[index],
        semantic=prims.semantic[index],
        instance=prims.instance[index],
        reflectivity=prims.reflectivity[index],
        roughness=prims.roughness[index],
        velocity=prims.velocity[index],
        finish=prims.finish[index],
    )


def generate_scene(seed: int, x_start: float, x_end: float) -> Scene:
    """A street scene covering x in [x_start, x_end], fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    layout = draw_layout(rng)
    ground = draw_ground(rng, layout, x_start, x_end)
    b = Builder(rng, ground, layout)
    for side in (-1.0, 1.0):
        street_side(b, side, x_start, x_end)
    traffic(b, x_start, x_end)
    return Scene(ground=ground, primitives=b.build(), x_range=(x_start, x_end), layout=layout)
