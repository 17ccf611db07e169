"""Output PointCloud2 layouts of the node, built from numpy with the shared codec."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from sonata_model.io.labels import UNKNOWN
from sonata_model.io.pointcloud2 import FLOAT32, UINT8, FieldSpec, pack_points, pack_rgb, to_message

# x, y, z, class_id (255 = unknown / filtered out), probability, rgb (0x00RRGGBB for RViz): aligned, 24 bytes
SEGMENTATION_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("class_id", 12, UINT8),
    FieldSpec("probability", 16, FLOAT32),
    FieldSpec("rgb", 20, FLOAT32),
]
RGB_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("rgb", 12, FLOAT32),
]


def segmentation_cloud(
    header, xyz: np.ndarray, class_id: np.ndarray, probability: np.ndarray, palette_rgb: np.ndarray, height: int
) -> PointCloud2:
    """Every input point (organized clouds keep their shape) with its class, probability and colour.

    `palette_rgb`: (256,) float32 packed colours of the uint8 class ids (255 -> grey).
    """
    arrays = {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "class_id": class_id,
        "probability": probability,
        "rgb": palette_rgb[class_id],
    }
    return to_message(
        pack_points(SEGMENTATION_FIELDS, arrays, height=height, point_step=24), PointCloud2, PointField, header
    )


def embedding_cloud(header, xyz: np.ndarray, embedding: np.ndarray) -> PointCloud2:
    """Voxel centres with an `embedding` float32 field of count D."""
    dim = embedding.shape[1]
    fields = [
        FieldSpec("x", 0, FLOAT32),
        FieldSpec("y", 4, FLOAT32),
        FieldSpec("z", 8, FLOAT32),
        FieldSpec("embedding", 12, FLOAT32, dim),
    ]
    arrays = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "embedding": embedding.astype(np.float32, copy=False)}
    return to_message(pack_points(fields, arrays), PointCloud2, PointField, header)


def rgb_cloud(header, xyz: np.ndarray, rgb: np.ndarray, height: int) -> PointCloud2:
    arrays = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "rgb": pack_rgb(rgb)}
    return to_message(pack_points(RGB_FIELDS, arrays, height=height, point_step=16), PointCloud2, PointField, header)


def packed_palette(colors: np.ndarray) -> np.ndarray:
    """(256,) float32 packed rgb of every uint8 class id: the label set's colours, grey elsewhere."""
    table = np.tile(np.array([128, 128, 128], np.uint8), (256, 1))
    table[: len(colors)] = colors
    table[UNKNOWN] = (128, 128, 128)
    return pack_rgb(table)
