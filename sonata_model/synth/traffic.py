"""Vehicles and cyclists: parked along the kerbs as densely as the `Layout` says, moving in the lanes
in both directions (never in the ego vehicle's lane), cyclists near the kerb.

A car is a glossy painted body, a cabin whose sides are glass (most beams pass through or are lost)
and retro-reflective number plates front and back; a truck a box body and a cab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .classes import BICYCLIST, CAR, TRUCK
from .materials import GLASS, RETRO

if TYPE_CHECKING:
    from .scene import Builder


def traffic(b: Builder, x0: float, x1: float) -> None:
    rng, g, layout = b.rng, b.ground, b.layout
    if layout.parking:
        strip = g.road_half_width - g.driving_half_width
        for side in (-1.0, 1.0):
            x = x0 + rng.uniform(0, 10)
            while x < x1:
                truck = rng.random() < 0.05
                length = 9 if truck else 5
                if b.free(x, length) and rng.random() < layout.parked_density:
                    y = side * (g.road_half_width - strip / 2 - rng.uniform(-0.1, 0.2))
                    yaw = float(rng.normal(0, 0.04)) + (np.pi if rng.random() < 0.5 else 0.0)
                    vehicle(b, x, y, yaw, (0, 0), truck)
                x += length + rng.uniform(1.0, 12.0)
    for side in (-1.0, 1.0):
        direction = 1.0 if side < 0 else -1.0
        x = x0 + rng.uniform(0, 30)
        while x < x1:
            lane = int(rng.integers(0, layout.lanes_per_side))
            if side < 0 and lane == 0:  # the ego vehicle's lane (see drive.py): no traffic in it
                x += rng.uniform(*layout.traffic_gap)
                continue
            y = side * (lane + 0.5) * g.lane_width
            speed = direction * rng.uniform(4, 12)
            vehicle(b, x, y, 0.0 if direction > 0 else np.pi, (speed, 0.0), rng.random() < 0.07)
            x += rng.uniform(*layout.traffic_gap)
        x = x0 + rng.uniform(0, 40)
        while x < x1:
            _cyclist(b, x, side * (g.driving_half_width - 0.7), direction * rng.uniform(3, 6))
            x += rng.uniform(30, 120) * (2.0 if layout.style == "open" else 1.0)


def vehicle(b: Builder, x: float, y: float, yaw: float, velocity, truck: bool) -> None:
    rng = b.rng
    instance = b.instance()
    semantic = TRUCK if truck else CAR
    material = b.material(semantic)
    c, s = np.cos(yaw), np.sin(yaw)
    common = {"yaw": yaw, "instance": instance, "velocity": velocity}
    if truck:
        length, width, height = rng.uniform(6, 11), rng.uniform(2.3, 2.6), rng.uniform(2.6, 3.8)
        cab = rng.uniform(1.8, 2.4)
        box_len = length - cab - 0.2
        cx, cy = x - c * (cab + 0.2) / 2, y - s * (cab + 0.2) / 2
        b.add(
            "box", (cx, cy, 0.4 + height / 2), (box_len / 2, width / 2, height / 2), TRUCK, material=material, **common
        )
        fx, fy = x + c * (length / 2 - cab / 2), y + s * (length / 2 - cab / 2)
        cab_h = height * rng.uniform(0.7, 0.9)
        b.add(
            "box",
            (fx, fy, 0.4 + cab_h / 2),
            (cab / 2, width / 2, cab_h / 2),
            TRUCK,
            material=b.material(TRUCK),
            **common,
        )
        return
    length, width = rng.uniform(3.8, 5.0), rng.uniform(1.7, 2.0)
    body_h, cabin_h = rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7)
    b.add("box", (x, y, 0.3 + body_h / 2), (length / 2, width / 2, body_h / 2), CAR, material=material, **common)
    cabin_len = length * rng.uniform(0.45, 0.6)
    shift = rng.uniform(-0.3, 0.1) * length / 2
    b.add(
        "box",
        (x + c * shift, y + s * shift, 0.3 + body_h + cabin_h / 2),
        (cabin_len / 2, width / 2 - 0.08, cabin_h / 2),
        CAR,
        material=material,
        finish=GLASS,
        **common,
    )
    plate = (0.01, 0.26, 0.06)
    for end in (1.0, -1.0):  # front and rear plates, their front (+x) faces outwards
        px, py = x + c * end * (length / 2 + 0.01), y + s * end * (length / 2 + 0.01)
        plate_yaw = yaw if end > 0 else yaw + np.pi
        b.add(
            "box",
            (px, py, 0.3 + body_h * 0.4),
            plate,
            CAR,
            material=(0.5, 0.05),
            finish=RETRO,
            **{**common, "yaw": plate_yaw},
        )


def _cyclist(b: Builder, x: float, y: float, speed: float) -> None:
    rng = b.rng
    instance = b.instance()
    material = b.material(BICYCLIST)
    common = {"instance": instance, "material": material, "velocity": (speed, 0.0)}
    b.add("box", (x, y, 0.5), (0.85, 0.05, 0.45), BICYCLIST, **common)
    torso = rng.uniform(0.6, 0.8)
    b.add("cylinder", (x, y, 1.0 + torso / 2), (0.2, torso / 2, 0.0), BICYCLIST, **common)
    b.add("ellipsoid", (x, y, 1.0 + torso + 0.13), (0.12, 0.12, 0.14), BICYCLIST, **common)
