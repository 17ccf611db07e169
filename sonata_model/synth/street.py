"""What stands along one side of the street: buildings, yards, fences and hedges, trees and bushes,
street lights and signs, pedestrians; placed as the scene's `Layout` style asks (urban: a wall of
facades close to the sidewalk; suburban: houses behind front yards; open: fields, tree lines and the
odd far building)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .classes import BUILDING, FENCE, PERSON, POLE, SIGN, TRUNK, VEGETATION
from .materials import DIFFUSE, RETRO

if TYPE_CHECKING:
    from .scene import Builder


def street_side(b: Builder, side: float, x0: float, x1: float) -> None:
    g, layout = b.ground, b.layout
    kerb = g.road_half_width + g.sidewalk_width  # |y| where the sidewalk ends
    front = kerb + layout.verge  # |y| of the property line
    _buildings(b, side, front, x0, x1)
    if layout.style != "open":
        _boundaries(b, side, front, x0, x1)
    _verge_vegetation(b, side, kerb, front, x0, x1)
    if layout.style != "urban":
        _yards_and_fields(b, side, front, x0, x1)
    _furniture(b, side, x0, x1)
    _pedestrians(b, side, x0, x1)


def _buildings(b: Builder, side: float, front: float, x0: float, x1: float) -> None:
    rng, layout = b.rng, b.layout
    low, high = {"urban": (6.0, 25.0), "suburban": (5.0, 12.0), "open": (3.0, 9.0)}[layout.style]
    gap = {"urban": (0.0, 6.0), "suburban": (2.0, 10.0), "open": (10.0, 60.0)}[layout.style]
    x = x0
    while x < x1:
        length = rng.uniform(8, 30 if layout.style == "urban" else 20)
        if b.free(x + length / 2, length / 2 + 2) and rng.random() < layout.building_chance:
            y_front = side * (front + rng.uniform(*layout.setback))
            _building(b, x + length / 2, y_front, side, length, rng.uniform(low, high))
        x += length + rng.uniform(*gap)
    if layout.style != "urban":  # a second row further back: far returns between the houses
        x = x0 + rng.uniform(0, 30)
        while x < x1:
            length = rng.uniform(10, 40)
            if rng.random() < 0.5:
                y_front = side * (front + layout.setback[1] + rng.uniform(15, 60))
                _building(b, x + length / 2, y_front, side, length, rng.uniform(4.0, 15.0))
            x += length + rng.uniform(5, 40)


def _building(b: Builder, xc: float, y_front: float, side: float, length: float, height: float) -> None:
    rng = b.rng
    depth = rng.uniform(8, 20)
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
            material=(float(np.clip(material[0] + rng.normal(0, 0.05), 0.03, 0.98)), material[1]),
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


def _boundaries(b: Builder, side: float, front: float, x0: float, x1: float) -> None:
    """Fences and low walls along the property line, hedges in front of them."""
    rng = b.rng
    x = x0
    while x < x1:
        length = rng.uniform(5, 25)
        xc = x + length / 2
        if b.free(xc, length / 2 + 1) and rng.random() < 0.45:
            low_wall = rng.random() < 0.4
            thick, height = (0.3, rng.uniform(0.5, 1.1)) if low_wall else (0.06, rng.uniform(1.0, 2.0))
            b.add("box", (xc, side * (front - 0.3), height / 2), (length / 2, thick / 2, height / 2), FENCE)
        elif b.free(xc, length / 2 + 1) and rng.random() < 0.6:
            height = rng.uniform(0.6, 2.2)
            b.add(
                "box",
                (xc, side * (front - 0.8), height / 2),
                (length / 2, rng.uniform(0.3, 0.8), height / 2),
                VEGETATION,
            )
        x += length + rng.uniform(0, 8)


def _verge_vegetation(b: Builder, side: float, kerb: float, front: float, x0: float, x1: float) -> None:
    """Trees (and, off town centres, bushes and hedge rows) on the strip between the sidewalk and the
    property line."""
    rng, layout = b.rng, b.layout
    verge = max(front - kerb, 0.0)
    if layout.style != "urban" and verge > 1.5:
        x = x0
        while x < x1:
            length = rng.uniform(4, 30)
            if b.free(x + length / 2, length / 2 + 1) and rng.random() < 0.6:
                height, depth = rng.uniform(0.4, 1.6), rng.uniform(0.5, 1.5)
                y = side * (kerb + rng.uniform(0.3, max(0.4, verge - depth)) + depth / 2)
                b.add("box", (x + length / 2, y, height / 2), (length / 2, depth / 2, height / 2), VEGETATION)
            x += length + rng.uniform(2, 15)
    x = x0 + rng.uniform(0, 8)
    while x < x1:
        if b.free(x, 3):
            y = side * (kerb + rng.uniform(0.5, max(0.6, verge - 0.5)))
            if layout.style == "urban" or rng.random() < 0.6:
                _tree(b, x, y)
            else:
                _bush(b, x, y)
        x += rng.uniform(*layout.tree_gap)


def _yards_and_fields(b: Builder, side: float, front: float, x0: float, x1: float) -> None:
    """Front yards (suburban) or open land (open): bushes, conifers and deciduous trees in clumps and lines."""
    rng, layout = b.rng, b.layout
    depth = layout.setback[1] + (5.0 if layout.style == "suburban" else 80.0)
    count = int((x1 - x0) * depth / (40.0 if layout.style == "suburban" else 150.0))
    xs = rng.uniform(x0, x1, count)
    ys = side * (front + 1.0 + rng.uniform(0, depth, count))
    kinds = rng.random(count)
    for x, y, kind in zip(xs, ys, kinds, strict=True):  # loop over plants, not points
        if not b.free(x, 2):
            continue
        if kind < 0.45:
            _bush(b, x, y)
        elif kind < 0.7:
            _conifer(b, x, y)
        else:
            _tree(b, x, y)
    if layout.style == "open":  # tree lines along field edges, far back
        for _ in range(int(rng.integers(1, 4))):
            y = side * (front + rng.uniform(20, 120))
            x = rng.uniform(x0, x1)
            for step in range(int(rng.integers(5, 25))):
                _tree(b, x + step * rng.uniform(4, 8), y + rng.normal(0, 1.0))


def _tree(b: Builder, x: float, y: float) -> None:
    rng = b.rng
    trunk_h, radius = rng.uniform(1.5, 4.0), rng.uniform(0.1, 0.35)
    b.add("cylinder", (x, y, trunk_h / 2), (radius, trunk_h / 2, 0.0), TRUNK)
    crown = rng.uniform(1.5, 4.5)
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


def _conifer(b: Builder, x: float, y: float) -> None:
    """A narrow cone of foliage down to near the ground, its trunk mostly hidden."""
    rng = b.rng
    height, width = rng.uniform(3.0, 14.0), rng.uniform(0.8, 2.5)
    b.add("cylinder", (x, y, 0.5), (rng.uniform(0.08, 0.25), 0.5, 0.0), TRUNK)
    material = b.material(VEGETATION, scale=0.8)
    layers = int(rng.integers(3, 6))
    for layer in range(layers):  # loop over a few foliage layers
        fraction = layer / layers
        radius = width * (1.0 - 0.8 * fraction)
        z = 0.6 + fraction * (height - 0.6) + radius * 0.6
        b.add("ellipsoid", (x, y, z), (radius, radius, radius * 0.9), VEGETATION, material=material)


def _bush(b: Builder, x: float, y: float) -> None:
    rng = b.rng
    material = b.material(VEGETATION)
    for _ in range(int(rng.integers(1, 4))):
        radii = rng.uniform(0.3, 1.2, 3) * np.array([1.0, 1.0, 0.7])
        b.add(
            "ellipsoid",
            (x + rng.normal(0, 0.6), y + rng.normal(0, 0.6), radii[2] * 0.6),
            radii,
            VEGETATION,
            material=material,
        )


def _furniture(b: Builder, side: float, x0: float, x1: float) -> None:
    """Street lights and signs at the kerb."""
    rng, g = b.rng, b.ground
    x = x0 + rng.uniform(0, 20)
    while x < x1:
        if b.free(x, 1):
            _street_light(b, x, side * (g.road_half_width + 0.5), side)
        x += rng.uniform(20, 40)
    for xc, half in g.cross_streets:
        for dx in (-half - 1.5, half + 1.5):
            if rng.random() < 0.7:
                _sign(b, xc + dx, side * (g.road_half_width + rng.uniform(0.4, 1.2)))
    x = x0 + rng.uniform(0, 30)
    while x < x1:
        if b.free(x, 1):
            _sign(b, x, side * (g.road_half_width + rng.uniform(0.4, 1.2)))
        x += rng.uniform(25, 70)


def _street_light(b: Builder, x: float, y: float, side: float) -> None:
    rng = b.rng
    height, radius = rng.uniform(5, 9), rng.uniform(0.07, 0.15)
    material = b.material(POLE)
    b.add("cylinder", (x, y, height / 2), (radius, height / 2, 0.0), POLE, material=material)
    arm = rng.uniform(1.0, 2.5)
    b.add("box", (x, y - side * arm / 2, height - 0.1), (0.08, arm / 2, 0.06), POLE, material=material)


def _sign(b: Builder, x: float, y: float) -> None:
    """A pole and a plate whose front face (retro-reflective) faces traffic from either direction."""
    rng = b.rng
    height = rng.uniform(2.0, 3.2)
    b.add("cylinder", (x, y, height / 2), (rng.uniform(0.03, 0.06), height / 2, 0.0), POLE)
    w, h = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.5)
    yaw = float(rng.uniform(-0.3, 0.3)) + (np.pi if rng.random() < 0.5 else 0.0)
    finish = RETRO if rng.random() < 0.4 else DIFFUSE  # not every sign face is retro-reflective
    b.add("box", (x, y, height + h * 0.8), (0.02, w, h), SIGN, yaw=yaw, finish=finish)


def _pedestrians(b: Builder, side: float, x0: float, x1: float) -> None:
    rng, g = b.rng, b.ground
    gap = {"urban": (4.0, 15.0), "suburban": (10.0, 40.0), "open": (40.0, 150.0)}[b.layout.style]
    x = x0 + rng.uniform(0, 10)
    while x < x1:
        y = side * (g.road_half_width + rng.uniform(0.4, max(0.5, g.sidewalk_width - 0.4)))
        speed = rng.uniform(0.8, 1.6) * rng.choice([-1, 1]) if rng.random() < 0.7 else 0.0
        _person(b, x, y, g.sidewalk_height, (speed, 0.0))
        x += rng.uniform(*gap)


def _person(b: Builder, x: float, y: float, z0: float, velocity) -> None:
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
