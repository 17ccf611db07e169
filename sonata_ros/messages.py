"""Output PointCloud2 layouts of the node, built from numpy with the shared codec."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from sonata_model.io.pointcloud2 import FLOAT32, FieldSpec, pack_points, pack_rgb, to_message
from sonata_model.io.segmentation_cloud import packed_palette, segmentation_points

__all__ = ["embedding_cloud", "packed_palette", "rgb_cloud", "segmentation_cloud"]

RGB_FIELDS = [
    FieldSpec("x", 0, FLOAT32),
    FieldSpec("y", 4, FLOAT32),
    FieldSpec("z", 8, FLOAT32),
    FieldSpec("rgb", 12, FLOAT32),
]


def segmentation_cloud(
    header, xyz: np.ndarray, class_id: np.ndarray, probability: np.ndarray, palette_rgb: np.ndarray, height: int
) -> PointCloud2:
    """Every input point (organized clouds keep their shape) with its class, probability and colour
    (`sonata_model.io.segmentation_cloud`'s layout); `palette_rgb`: `packed_palette` of the label set's colours."""
    packed = segmentation_points(xyz, class_id, probability, palette_rgb, height)
    return to_message(packed, PointCloud2, PointField, header)


def embedding_cloud(header, xyz: np.ndarray, embedding: np.ndarray) -> PointCloud2:
    """One point per voxel (`xyz`: its first input point) with an `embedding` float32 field of count D."""
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
