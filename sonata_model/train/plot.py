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

    columns = _columns(Path(metrics), ("step", *(key for _, keys in PANELS for key in keys)))
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4.5 * len(PANELS), 3.6))
    for axis, (title, keys) in zip(axes, PANELS, strict=True):
        for key in keys:
            axis.plot(columns["step"], columns[key], label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, out)


def _columns(path: Path, names: tuple[str, ...]) -> dict[str, list[float]]:
    """The named columns of a metrics CSV as numbers; ValueError saying what is missing or where a value
    is not a number."""
    try:
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not rows:
        raise ValueError(f"{path}: no rows yet")
    missing = [name for name in names if name not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {missing} (not a sonata-pretrain metrics.csv?)")
    columns: dict[str, list[float]] = {name: [] for name in names}
    for line, row in enumerate(rows, start=2):
        for name in names:
            try:
                columns[name].append(float(row[name]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}, column {name}: {row[name]!r} is not a number") from None
    return columns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="metrics.csv of a sonata-pretrain run")
    parser.add_argument("--out", help="PNG to write (default: next to the CSV)")
    args = parser.parse_args(argv)
    try:
        out = plot_metrics(args.metrics, args.out or Path(args.metrics).with_name("curves.png"))
    except ValueError as exc:
        print(f"sonata-plot: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
