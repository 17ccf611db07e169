"""Headless matplotlib for the PNGs the tools write (BEV renders, confusion matrices, loss curves).

matplotlib is imported on first use only: the node and the model never pay for it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display needed, safe in worker processes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> Path:
    """Write `figure` as a PNG at `path` (parents created) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path
