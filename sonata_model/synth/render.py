"""Bird's-eye-view PNGs of labelled clouds: panels side by side (e.g. prediction | truth | PCA colours).

Points are splatted into a top-down raster (highest point per pixel wins, so roofs hide roads),
entirely in numpy; matplotlib only assembles the panels and the legend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..figures import pyplot, save_figure


@dataclass
class Panel:
    title: str
    coord: np.ndarray  # (N, 3)
    rgb: np.ndarray  # (N, 3) uint8


def raster(coord: np.ndarray, rgb: np.ndarray, extent: float, pixels: int) -> np.ndarray:
    """(pixels, pixels, 3) uint8 top view of the square |x|, |y| <= extent; +x up, +y left."""
    image = np.full((pixels, pixels, 3), 255, np.uint8)
    scale = pixels / (2 * extent)
    row = np.floor((extent - coord[:, 0]) * scale).astype(np.int64)
    col = np.floor((extent - coord[:, 1]) * scale).astype(np.int64)
    inside = (row >= 0) & (row < pixels) & (col >= 0) & (col < pixels)
    order = np.argsort(coord[inside, 2])  # later (higher) points overwrite lower ones
    rows, cols, colours = row[inside][order], col[inside][order], rgb[inside][order]
    flat = image.reshape(-1, 3)
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):  # 2x2 splats: sparse scans stay readable
        r, c = np.minimum(rows + dr, pixels - 1), np.minimum(cols + dc, pixels - 1)
        flat[r * pixels + c] = colours
    return image


def render_bev(
    panels: Sequence[Panel],
    path: str | os.PathLike,
    *,
    extent: float = 40.0,
    pixels: int = 600,
    legend: Sequence[tuple[str, Sequence[int]]] = (),
) -> Path:
    """Write the panels side by side to `path` (PNG), with an optional legend of (name, rgb) entries."""
    from matplotlib.patches import Patch

    plt = pyplot()

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6 if legend else 4.2), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        axis.imshow(raster(panel.coord, panel.rgb, extent, pixels), extent=(-extent, extent, -extent, extent))
        axis.set_title(panel.title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    if legend:
        handles = [Patch(color=np.asarray(color) / 255, label=name) for name, color in legend]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08 if legend else 0, 1, 1))
    return save_figure(figure, path)


def pca_colors(feat: np.ndarray, brightness: float = 1.2) -> np.ndarray:
    """(N, C) features -> (N, 3) uint8: the first three principal components as RGB (the paper's view)."""
    centred = feat - feat.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    projected = centred @ vt[:3].T
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-9) * brightness, 0, 1)
    return (scaled * 255).astype(np.uint8)
