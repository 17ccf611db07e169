"""Small synthetic indoor scenes for model tests: a room with boxes, coloured by surface."""

from __future__ import annotations

import numpy as np


def room(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    """Points on a floor, two walls and a few boxes, with colour (0-255), normals and surface labels."""
    rng = np.random.default_rng(seed)
    parts = []
    per = n // 6
    floor = np.c_[rng.uniform(0, 4, per), rng.uniform(0, 3, per), np.zeros(per)]
    parts.append((floor, [0, 0, 1], 0, (120, 100, 80)))
    wall_x = np.c_[np.zeros(per), rng.uniform(0, 3, per), rng.uniform(0, 2.5, per)]
    parts.append((wall_x, [1, 0, 0], 1, (200, 200, 190)))
    wall_y = np.c_[rng.uniform(0, 4, per), np.full(per, 3.0), rng.uniform(0, 2.5, per)]
    parts.append((wall_y, [0, -1, 0], 1, (190, 200, 200)))
    for k in range(3):
        centre = rng.uniform([0.8, 0.6, 0], [3.2, 2.4, 0])
        top = np.c_[
            rng.uniform(-0.3, 0.3, per) + centre[0],
            rng.uniform(-0.3, 0.3, per) + centre[1],
            np.full(per, 0.5 + 0.2 * k),
        ]
        parts.append((top, [0, 0, 1], 2, (40 + 60 * k, 80, 160)))
    coord = np.concatenate([p[0] for p in parts]).astype(np.float32)
    coord += rng.normal(0, 0.003, coord.shape).astype(np.float32)
    normal = np.concatenate([np.tile(p[1], (len(p[0]), 1)) for p in parts]).astype(np.float32)
    label = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    color = np.concatenate([np.tile(p[3], (len(p[0]), 1)) for p in parts])
    color = np.clip(color + rng.normal(0, 8, color.shape), 0, 255).astype(np.uint8)
    return {"coord": coord, "color": color, "normal": normal, "label": label}
