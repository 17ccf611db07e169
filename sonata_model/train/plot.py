"""`sonata-plot`: loss and schedule curves of a pretraining run (its metrics.csv) as one PNG.

sonata-plot runs/lidar/metrics.csv --out runs/lidar/curves.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..figures import pyplot, save_figure

PANELS = (
    ("losses", ("loss", "mask_loss", "roll_mask_loss", "unmask_loss")),
    ("learning rate", ("lr",)),  # its own panel: ~1e-3, invisible on the [0, 1] scale of the others
    ("schedules", ("momentum", "teacher_temp", "mask_ratio")),
    ("matching", ("matched_fraction", "masked_fraction")),
    ("throughput (scenes/s)", ("scenes_per_s",)),
)


def plot_metrics(metrics: str | Path, out: str | Path) -> Path:
    plt = pyplot()

    with Path(metrics).open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{metrics}: no rows yet")
    steps = [int(r["step"]) for r in rows]
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4.5 * len(PANELS), 3.6))
    for axis, (title, keys) in zip(axes, PANELS, strict=True):
        for key in keys:
            axis.plot(steps, [float(r[key]) for r in rows], label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="metrics.csv of a sonata-pretrain run")
    parser.add_argument("--out", help="PNG to write (default: next to the CSV)")
    args = parser.parse_args(argv)
    out = plot_metrics(args.metrics, args.out or Path(args.metrics).with_name("curves.png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
