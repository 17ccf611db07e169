"""The labelled cloud's PointCloud2 layout, shared by the node's output and the bags `sonata-segment` writes.

Every point keeps its position and gets a class id (255: not segmented, e.g. outside the model's range),
the winning class's probability and its class colour as packed `rgb`, which RViz's RGB8 transformer
shows as it is. Aligned fields, 24 bytes per point.
"""

from __future__ import annotations

import numpy as np

from .labels import UNKNOWN, palette_table
from .pointcloud2 import FLOAT32, UINT8, FieldSpec, PackedPoints, pack_points, pack_rgb

SEGMENTATION_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("class_id", 12, UINT8),
    FieldSpec("probability", 16, FLOAT32),
    FieldSpec("rgb", 20, FLOAT32),
]
SEGMENTATION_POINT_STEP = 24


def packed_palette(colors: np.ndarray) -> np.ndarray:
    """(256,) float32 packed rgb of every uint8 class id: `colors` (K, 3) for the classes, grey elsewhere."""
    return pack_rgb(palette_table(colors))


def class_ids(labels: np.ndarray) -> np.ndarray:
    """uint8 class id of every label; -1 (not segmented) becomes 255."""
    return np.where(labels >= 0, labels, UNKNOWN).astype(np.uint8)


def segmentation_points(
    xyz: np.ndarray, class_id: np.ndarray, probability: np.ndarray, palette_rgb: np.ndarray, height: int = 1
) -> PackedPoints:
    """Every point (organized clouds keep their `height` rows) with its class, probability and colour.

    `palette_rgb`: `packed_palette` of the label set's colours."""
    arrays = {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "class_id": class_id,
        "probability": probability,
        "rgb": palette_rgb[class_id],
    }
    return pack_points(SEGMENTATION_FIELDS, arrays, height=height, point_step=SEGMENTATION_POINT_STEP)
