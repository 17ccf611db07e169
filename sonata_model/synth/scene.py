"""Procedural street scenes built from analytic primitives that can be ray-cast fast.

A scene runs along the x axis: a road centred on y = 0 with lane markings, cross streets at
intersections, raised sidewalks with kerbs, grass strips, rows of buildings with varied setbacks,
heights and facade relief, fences and low walls, hedges, trees (trunk + irregular crown of blobs),
street lights, traffic signs, parked and moving cars and trucks, pedestrians and cyclists.

Primitives: boxes rotated about z, vertical cylinders and ellipsoids, each with a semantic class, an
instance id (things only), a material reflectivity (mean and spread, varied per instance so that no
class is separable by intensity alone), a surface roughness (extra range noise) and a velocity.
The ground (road, sidewalk, terrain) is analytic: see `Ground`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import BICYCLIST, BUILDING, CAR, FENCE, PERSON, POLE, SIGN, TERRAIN, TRUCK, TRUNK, VEGETATION

# Reflectivity (mean, spread between instances, spread within an instance) per class.
MATERIALS = {
    BUILDING: (0.35, 0.15, 0.06),
    FENCE: (0.40, 0.15, 0.08),
    VEGETATION: (0.40, 0.08, 0.12),
    TRUNK: (0.28, 0.05, 0.05),
    POLE: (0.45, 0.10, 0.05),
    SIGN: (0.85, 0.08, 0.05),
    CAR: (0.35, 0.25, 0.10),
    TRUCK: (0.40, 0.20, 0.08),
    PERSON: (0.30, 0.10, 0.06),
    BICYCLIST: (0.32, 0.10, 0.06),
    TERRAIN: (0.35, 0.05, 0.10),
}
ROUGHNESS = {VEGETATION: 0.15, TERRAIN: 0.03}  # extra range noise (m) of rough / porous surfaces
PARKING_WIDTH = 2.3  # parking strip between the driving lanes and the kerb


@dataclass
class Primitives:
    """Parameters of one primitive type, one row per primitive."""

    kind: str  # "box" | "cylinder" | "ellipsoid"
    center: np.ndarray  # (P, 3)
    size: np.ndarray  # box: half extents (P, 3); cylinder: (radius, half height, 0); ellipsoid: radii
    yaw: np.ndarray  # (P,) rotation about z (boxes)
    semantic: np.ndarray  # (P,) int32
    instance: np.ndarray  # (P,) int32
    reflectivity: np.ndarray  # (P, 2) mean, spread within the primitive
    roughness: np.ndarray  # (P,)
    velocity: np.ndarray  # (P, 2) m/s in x, y

    def __len__(self) -> int:
        return len(self.center)

    def at(self, time: float) -> np.ndarray:
        """Centres at `time` seconds (moving objects move)."""
        center = self.center.copy()
        center[:, :2] += self.velocity * time
        return center

    def bounding_radius(self) -> np.ndarray:
        """Radius of a vertical cylinder around each primitive (for culling)."""
        if self.kind == "box":
            return np.hypot(self.size[:, 0], self.size[:, 1])
        if self.kind == "cylinder":
            return self.size[:, 0]
        return np.maximum(self.size[:, 0], self.size[:, 1])

    def z_range(self) -> tuple[np.ndarray, np.ndarray]:
        half = self.size[:, 1] if self.kind == "cylinder" else self.size[:, 2]
        return self.center[:, 2] - half, self.center[:, 2] + half


@dataclass
class Ground:
    """Road along x (|y| < road_half_width) with lane markings, cross streets, raised sidewalks, grass.

    Everything is the plane z = 0 except sidewalks, whose top is at `sidewalk_height`.
    """

    road_half_width: float  # driving lanes plus parking strips
    lane_width: float
    driving_half_width: float  # |y| of the solid edge line between the lanes and the parking strip
    sidewalk_width: float
    sidewalk_height: float
    cross_streets: np.ndarray  # (K, 2): centre x, half width
    road_reflectivity: float = 0.18
    marking_reflectivity: float = 0.75
    sidewalk_reflectivity: float = 0.30
    terrain_reflectivity: float = 0.35

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


@dataclass
class Scene:
    ground: Ground
    primitives: list[Primitives] = field(default_factory=list)
    x_range: tuple[float, float] = (0.0, 0.0)


class _Builder:
    """Accumulates primitives of each kind; materials drawn per instance."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: dict[str, list[tuple]] = {"box": [], "cylinder": [], "ellipsoid": []}
        self.next_instance = 1

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def material(self, semantic: int) -> tuple[float, float]:
        mean, between, within = MATERIALS[semantic]
        return float(np.clip(self.rng.normal(mean, between), 0.03, 0.98)), within

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
    ) -> None:
        material = material or self.material(semantic)
        self.rows[kind].append(
            (center, size, yaw, semantic, instance, material, ROUGHNESS.get(semantic, 0.0), velocity)
        )

    def build(self) -> list[Primitives]:
        out = []
        for kind, rows in self.rows.items():
            if not rows:
                continue
            cols = list(zip(*rows, strict=True))
            out.append(
                Primitives(
                    kind=kind,
                    center=np.array(cols[0], np.float64),
                    size=np.array(cols[1], np.float64),
                    yaw=np.array(cols[2], np.float64),
                    semantic=np.array(cols[3], np.int32),
                    instance=np.array(cols[4], np.int32),
                    reflectivity=np.array(cols[5], np.float64),
                    roughness=np.array(cols[6], np.float64),
                    velocity=np.array(cols[7], np.float64),
                )
            )
        return out


def generate_scene(seed: int, x_start: float, x_end: float) -> Scene:
    """A street scene covering x in [x_start, x_end], fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    lanes_per_side = int(rng.integers(1, 3))
    lane_width = float(rng.uniform(3.0, 3.7))
    driving_half = lanes_per_side * lane_width
    road_half = driving_half + PARKING_WIDTH
    crosses, x = [], x_start + rng.uniform(20, 60)
    while x < x_end:
        crosses.append((x, rng.uniform(4.0, 7.0)))
        x += rng.uniform(70, 140)
    ground = Ground(
        road_half_width=road_half,
        lane_width=lane_width,
        driving_half_width=driving_half,
        sidewalk_width=float(rng.uniform(2.0, 4.5)),
        sidewalk_height=float(rng.uniform(0.10, 0.18)),
        cross_streets=np.array(crosses).reshape(-1, 2),
    )
    b = _Builder(rng)
    for side in (-1.0, 1.0):
        _street_side(b, ground, side, x_start, x_end)
    _traffic(b, ground, lanes_per_side, x_start, x_end)
    return Scene(ground=ground, primitives=b.build(), x_range=(x_start, x_end))


def _free(ground: Ground, x: float, margin: float) -> bool:
    """True when [x - margin, x + margin] crosses no cross street."""
    return not ground.in_cross_street(np.array([x - margin, x, x + margin])).any()


def _street_side(b: _Builder, ground: Ground, side: float, x0: float, x1: float) -> None:
    rng = b.rng
    kerb = ground.road_half_width + ground.sidewalk_width  # |y| where the sidewalk ends
    grass = rng.uniform(1.0, 6.0)
    front = kerb + grass  # |y| of the property line
    # buildings
    x = x0
    while x < x1:
        length = rng.uniform(8, 30)
        if _free(ground, x + length / 2, length / 2 + 2):
            _building(b, x + length / 2, side * (front + rng.uniform(0, 8)), side, length)
        x += length + rng.uniform(0, 6)
    # fences / low walls along the property line, hedges in front of them
    x = x0
    while x < x1:
        length = rng.uniform(5, 25)
        xc = x + length / 2
        if _free(ground, xc, length / 2 + 1) and rng.random() < 0.45:
            low_wall = rng.random() < 0.4
            thick, height = (0.3, rng.uniform(0.5, 1.1)) if low_wall else (0.06, rng.uniform(1.0, 2.0))
            b.add("box", (xc, side * (front - 0.3), height / 2), (length / 2, thick / 2, height / 2), FENCE)
        elif _free(ground, xc, length / 2 + 1) and rng.random() < 0.3:
            height = rng.uniform(0.6, 1.6)
            b.add(
                "box",
                (xc, side * (front - 0.8), height / 2),
                (length / 2, rng.uniform(0.3, 0.7), height / 2),
                VEGETATION,
            )
        x += length + rng.uniform(0, 8)
    # trees on the grass strip
    x = x0 + rng.uniform(0, 8)
    while x < x1:
        if _free(ground, x, 3):
            _tree(b, x, side * (kerb + rng.uniform(0.5, max(0.6, grass - 0.5))))
        x += rng.uniform(5, 16)
    # street lights and signs at the kerb
    x = x0 + rng.uniform(0, 20)
    while x < x1:
        if _free(ground, x, 1):
            _street_light(b, x, side * (ground.road_half_width + 0.5), side)
        x += rng.uniform(20, 40)
    for xc, half in ground.cross_streets:
        for dx in (-half - 1.5, half + 1.5):
            if rng.random() < 0.7:
                _sign(b, xc + dx, side * (ground.road_half_width + rng.uniform(0.4, 1.2)))
    x = x0 + rng.uniform(0, 30)
    while x < x1:
        if _free(ground, x, 1):
            _sign(b, x, side * (ground.road_half_width + rng.uniform(0.4, 1.2)))
        x += rng.uniform(25, 70)
    # pedestrians on the sidewalk
    x = x0 + rng.uniform(0, 10)
    while x < x1:
        y = side * (ground.road_half_width + rng.uniform(0.5, ground.sidewalk_width - 0.4))
        speed = rng.uniform(0.8, 1.6) * rng.choice([-1, 1]) if rng.random() < 0.7 else 0.0
        _person(b, x, y, ground.sidewalk_height, (speed, 0.0))
        x += rng.uniform(4, 25)


def _building(b: _Builder, xc: float, y_front: float, side: float, length: float) -> None:
    rng = b.rng
    depth, height = rng.uniform(8, 20), rng.uniform(4, 25)
    material = b.material(BUILDING)
    yc = y_front + side * depth / 2
    b.add("box", (xc, yc, height / 2), (length / 2, depth / 2, height / 2), BUILDING, material=material)
    # facade relief: pilasters, balconies, a porch; same material family, slightly varied
    for _ in range(int(rng.integers(0, 6))):
        w, out, h = rng.uniform(0.3, 3.0), rng.uniform(0.2, 1.2), rng.uniform(0.3, height)
        x = xc + rng.uniform(-length / 2 + w, length / 2 - w)
        z = rng.uniform(h / 2, max(h / 2, height - h / 2))
        b.add(
            "box",
            (x, y_front - side * out / 2, z),
            (w / 2, out / 2, h / 2),
            BUILDING,
            material=(float(np.clip(material[0] + rng.normal(0, 0.08), 0.03, 0.98)), material[1]),
        )
    if rng.random() < 0.4:  # a lower annex to one side
        w, h = rng.uniform(3, 8), rng.uniform(2.0, 4.0)
        b.add(
            "box",
            (xc + rng.choice([-1, 1]) * (length + w) / 2, yc, h / 2),
            (w / 2, depth / 3, h / 2),
            BUILDING,
            material=material,
        )


def _tree(b: _Builder, x: float, y: float) -> None:
    rng = b.rng
    trunk_h, radius = rng.uniform(1.5, 4.0), rng.uniform(0.1, 0.3)
    b.add("cylinder", (x, y, trunk_h / 2), (radius, trunk_h / 2, 0.0), TRUNK)
    crown = rng.uniform(1.2, 3.5)
    material = b.material(VEGETATION)
    for _ in range(int(rng.integers(3, 7))):
        offset = rng.normal(0, crown / 2.5, 3)
        radii = rng.uniform(0.5, 1.0, 3) * crown
        b.add(
            "ellipsoid",
            (x + offset[0], y + offset[1], trunk_h + crown * 0.8 + offset[2] * 0.6),
            radii,
            VEGETATION,
            material=material,
        )


def _street_light(b: _Builder, x: float, y: float, side: float) -> None:
    rng = b.rng
    height, radius = rng.uniform(5, 9), rng.uniform(0.07, 0.15)
    material = b.material(POLE)
    b.add("cylinder", (x, y, height / 2), (radius, height / 2, 0.0), POLE, material=material)
    arm = rng.uniform(1.0, 2.5)
    b.add("box", (x, y - side * arm / 2, height - 0.1), (0.08, arm / 2, 0.06), POLE, material=material)


def _sign(b: _Builder, x: float, y: float) -> None:
    rng = b.rng
    height = rng.uniform(2.0, 3.2)
    b.add("cylinder", (x, y, height / 2), (rng.uniform(0.03, 0.06), height / 2, 0.0), POLE)
    w, h = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.5)
    b.add("box", (x, y, height + h * 0.8), (0.02, w, h), SIGN, yaw=float(rng.uniform(-0.3, 0.3)))


def _person(b: _Builder, x: float, y: float, z0: float, velocity) -> None:
    rng = b.rng
    instance = b.instance()
    height = rng.uniform(1.5, 1.95)
    body = height - 0.25
    material = b.material(PERSON)
    b.add(
        "cylinder",
        (x, y, z0 + body / 2),
        (rng.uniform(0.18, 0.28), body / 2, 0.0),
        PERSON,
        instance=instance,
        material=material,
        velocity=velocity,
    )
    b.add(
        "ellipsoid",
        (x, y, z0 + body + 0.12),
        (0.11, 0.11, 0.13),
        PERSON,
        instance=instance,
        material=material,
        velocity=velocity,
    )


def _vehicle(b: _Builder, x: float, y: float, yaw: float, velocity, truck: bool) -> None:
    rng = b.rng
    instance = b.instance()
    semantic = TRUCK if truck else CAR
    material = b.material(semantic)
    c, s = np.cos(yaw), np.sin(yaw)
    if truck:
        length, width, height = rng.uniform(6, 11), rng.uniform(2.3, 2.6), rng.uniform(2.6, 3.8)
        cab = rng.uniform(1.8, 2.4)
        box_len = length - cab - 0.2
        cx = x - c * (cab + 0.2) / 2
        cy = y - s * (cab + 0.2) / 2
        b.add(
            "box",
            (cx, cy, 0.4 + height / 2),
            (box_len / 2, width / 2, height / 2),
            TRUCK,
            yaw=yaw,
            instance=instance,
            material=material,
            velocity=velocity,
        )
        fx, fy = x + c * (length / 2 - cab / 2), y + s * (length / 2 - cab / 2)
        cab_h = height * rng.uniform(0.7, 0.9)
        b.add(
            "box",
            (fx, fy, 0.4 + cab_h / 2),
            (cab / 2, width / 2, cab_h / 2),
            TRUCK,
            yaw=yaw,
            instance=instance,
            material=b.material(TRUCK),
            velocity=velocity,
        )
        return
    length, width = rng.uniform(3.8, 5.0), rng.uniform(1.7, 2.0)
    body_h, cabin_h = rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7)
    b.add(
        "box",
        (x, y, 0.3 + body_h / 2),
        (length / 2, width / 2, body_h / 2),
        CAR,
        yaw=yaw,
        instance=instance,
        material=material,
        velocity=velocity,
    )
    cabin_len = length * rng.uniform(0.45, 0.6)
    shift = rng.uniform(-0.3, 0.1) * length / 2
    b.add(
        "box",
        (x + c * shift, y + s * shift, 0.3 + body_h + cabin_h / 2),
        (cabin_len / 2, width / 2 - 0.08, cabin_h / 2),
        CAR,
        yaw=yaw,
        instance=instance,
        material=(material[0] * 0.5, material[1]),
        velocity=velocity,
    )


def _traffic(b: _Builder, ground: Ground, lanes: int, x0: float, x1: float) -> None:
    rng = b.rng
    # parked vehicles along both kerbs
    for side in (-1.0, 1.0):
        x = x0 + rng.uniform(0, 10)
        while x < x1:
            truck = rng.random() < 0.15
            length = 9 if truck else 5
            if _free(ground, x, length) and rng.random() < 0.6:
                y = side * (ground.road_half_width - PARKING_WIDTH / 2 - rng.uniform(-0.1, 0.2))
                _vehicle(b, x, y, float(rng.normal(0, 0.04)) + (np.pi if rng.random() < 0.5 else 0.0), (0, 0), truck)
            x += length + rng.uniform(1.0, 12.0)
    # moving vehicles in the lanes (both directions), cyclists near the kerb
    for side in (-1.0, 1.0):
        direction = 1.0 if side < 0 else -1.0
        x = x0 + rng.uniform(0, 30)
        while x < x1:
            lane = int(rng.integers(0, lanes))
            if side < 0 and lane == 0:  # the ego vehicle's lane (see drive.py): no traffic in it
                x += rng.uniform(15, 60)
                continue
            y = side * (lane + 0.5) * ground.lane_width
            speed = direction * rng.uniform(4, 12)
            _vehicle(b, x, y, 0.0 if direction > 0 else np.pi, (speed, 0.0), rng.random() < 0.15)
            x += rng.uniform(15, 60)
        x = x0 + rng.uniform(0, 40)
        while x < x1:
            _cyclist(b, x, side * (ground.driving_half_width - 0.7), direction * rng.uniform(3, 6))
            x += rng.uniform(30, 120)


def _cyclist(b: _Builder, x: float, y: float, speed: float) -> None:
    rng = b.rng
    instance = b.instance()
    material = b.material(BICYCLIST)
    velocity = (speed, 0.0)
    b.add("box", (x, y, 0.5), (0.85, 0.05, 0.45), BICYCLIST, instance=instance, material=material, velocity=velocity)
    torso = rng.uniform(0.6, 0.8)
    b.add(
        "cylinder",
        (x, y, 1.0 + torso / 2),
        (0.2, torso / 2, 0.0),
        BICYCLIST,
        instance=instance,
        material=material,
        velocity=velocity,
    )
    b.add(
        "ellipsoid",
        (x, y, 1.0 + torso + 0.13),
        (0.12, 0.12, 0.14),
        BICYCLIST,
        instance=instance,
        material=material,
        velocity=velocity,
    )
