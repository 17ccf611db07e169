"""How real is the synthetic LiDAR world? Its drives against real scans of the same beam count, per sensor.

    python benchmarks/realism.py [--seeds 0 1 2 3 4 5] [--sensors hdl64 ...] [--real DIR] [--record]

Needs the real scans of `<repo>/../shared/real/` (or --real DIR) and stops with a clear message
without them. Each synthetic sensor (one frame from each seed: different streets) is compared with:

- vlp16: the nuScenes HDL-32E sweep, its rings nearest the VLP-16 beams (within 0.7 deg): the only real
  VLP-16 frame (Nebula) is an indoor lab; same vendor, same calibrated intensity scale.
- hdl32: the nuScenes LIDAR_TOP sweep (HDL-32E, intensity, ring): the only 32-beam outdoor scan here.
- hdl64: SemanticKITTI 000000 (labelled) and KITTI odometry 00/000000, 000001 (full 360 deg;
  kitti_000008 is cropped to the camera view, so left out).
- os128, vls128: the Nebula VLS-128 frame (x, y, z only): the only outdoor 128-beam scan here; the
  Hesai 128-beam frames are indoor.

The same estimators run on both sides. Distributions: range; z in the sensor frame (what an outdoor
model sees); height above the local ground (10th percentile of z per 2 m cell, 3x3 median filtered);
strength; points per ring (share per ring, rings ordered by elevation); local density (distance to the
nearest neighbour, per range band); outliers (share more than 1 m below the local ground, and below
z = -4 m). Points within 1 m of the sensor are left out of them all (the nuScenes sweep keeps its
no-return placeholders and roof returns there) and counted as `near_fraction`. Each distribution gets
quantiles and the Wasserstein-1 distance and KS statistic real vs synthetic; the mount height is
estimated as minus the median z of ground points (within 0.15 m of the local ground) 4-20 m away.
For hdl64 the labelled scan also gives per-class strength, the class mix and the road height near the car.
`--record` writes benchmarks/results/realism.json and docs/realism.png (histograms real vs synthetic;
values beyond a panel's range are counted in its edge bins).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import emit
from real_lidar import (
    REAL_ROOT,
    RealDataMissing,
    Scan,
    kitti_odometry,
    matched_vlp16_beams,
    nuscenes,
    semantic_kitti,
    vlp16_from_hdl32,
    vls128,
)
from scipy.spatial import cKDTree
from scipy.stats import ks_2samp, wasserstein_distance

from sonata_model.figures import pyplot, save_figure
from sonata_model.synth import CLASS_NAMES
from sonata_model.synth.classes import ROAD
from sonata_model.synth.drive import generate_drive
from sonata_model.synth.sensors import SENSORS, get_sensor

NEAR = 1.0  # m: closer points are left out of the distributions
GROUND_CELL = 2.0  # m
BELOW_GROUND = 1.0  # m under the local ground: an outlier
MULTIPATH_Z = -4.0  # m in the sensor frame
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
RANGE_BANDS = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 250.0)
DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass
class Comparison:
    sensor: str
    load: Callable[[Path], list[Scan]]
    why: str
    beams: np.ndarray | None = None  # synthetic rings kept (None: all)


def comparisons() -> list[Comparison]:
    vlp16 = np.asarray(get_sensor("vlp16").elevation_deg)
    vls128_scan = "the only outdoor 128-beam scan here (x, y, z only); the Hesai OT128 / QT128 frames are indoor"
    table = [
        Comparison(
            "vlp16",
            lambda root: [vlp16_from_hdl32(nuscenes(root), vlp16)],
            "no outdoor VLP-16 scan here (the Nebula VLP-16 frame is an indoor lab, 44 % of points within 1 m): "
            "the nuScenes HDL-32E rings nearest the VLP-16 beams, same vendor and intensity scale",
            beams=matched_vlp16_beams(vlp16),
        ),
        Comparison("hdl32", lambda root: [nuscenes(root)], "the only 32-beam outdoor scan here (nuScenes)"),
        Comparison(
            "hdl64",
            lambda root: [semantic_kitti(root), *kitti_odometry(root)],
            "full 360-degree KITTI scans; kitti_000008 is cropped to the camera view, so left out",
        ),
        Comparison("os128", lambda root: [vls128(root)], vls128_scan),
        Comparison("vls128", lambda root: [vls128(root)], vls128_scan),
    ]
    return [c for c in table if c.sensor in SENSORS]


# ------------------------------------------------------------------------------------------- per point


def local_ground(coord: np.ndarray, cell: float = GROUND_CELL, quantile: float = 0.1) -> np.ndarray:
    """Ground height under each point: the `quantile` of z in its cell, median over the 3x3 cells around.

    NaN where no cell around holds 3 points. Robust to the few multipath returns below the road and to
    cells covered by objects (their neighbours' ground wins the median).
    """
    ij = np.floor(coord[:, :2] / cell).astype(np.int64)
    ij -= ij.min(axis=0)
    shape = ij.max(axis=0) + 1
    flat = ij[:, 0] * shape[1] + ij[:, 1]
    order = np.lexsort((coord[:, 2], flat))
    cells, start, count = np.unique(flat[order], return_index=True, return_counts=True)
    enough = count >= 3
    pick = start + np.floor(quantile * (count - 1)).astype(np.int64)
    grid = np.full(int(shape.prod()), np.nan)
    grid[cells[enough]] = coord[order[pick[enough]], 2]
    padded = np.pad(grid.reshape(shape), 1, constant_values=np.nan)
    stack = np.stack([padded[i : i + shape[0], j : j + shape[1]] for i in range(3) for j in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods stay NaN
        smooth = np.nanmedian(stack, axis=0)
    return smooth.reshape(-1)[flat]


@dataclass
class Points:
    """Per-point quantities of a set of scans (pooled), points within NEAR left out."""

    range: np.ndarray
    z: np.ndarray
    height: np.ndarray  # above the local ground (NaN where unknown)
    strength: np.ndarray | None
    nearest: np.ndarray  # distance to the nearest other point
    ring: np.ndarray | None
    elevation: np.ndarray  # degrees
    segment: np.ndarray | None
    ground_near: np.ndarray  # z of ground points (within 0.15 m of the local ground) 4-20 m away horizontally
    near_fraction: float
    points_per_scan: float


POINT_ARRAYS = ("range", "z", "height", "strength", "nearest", "ring", "elevation", "segment", "ground_near")


def measure(scans: list[Scan]) -> Points:
    parts: dict[str, list[np.ndarray | None]] = {k: [] for k in POINT_ARRAYS}
    total = near = 0
    for scan in scans:
        distance = np.linalg.norm(scan.coord, axis=1)
        total, near = total + len(distance), near + int((distance < NEAR).sum())
        scan = scan.select(distance >= NEAR)
        distance = distance[distance >= NEAR]
        ground = local_ground(scan.coord)
        flat = np.hypot(scan.coord[:, 0], scan.coord[:, 1])
        parts["range"].append(distance)
        parts["z"].append(scan.coord[:, 2])
        parts["height"].append(scan.coord[:, 2] - ground)
        parts["strength"].append(scan.strength)
        parts["nearest"].append(cKDTree(scan.coord).query(scan.coord, k=2)[0][:, 1])
        parts["ring"].append(scan.ring)
        parts["elevation"].append(np.degrees(np.arcsin(scan.coord[:, 2] / distance)))
        parts["segment"].append(scan.segment)
        on_ground = (flat > 4) & (flat < 20) & (np.abs(scan.coord[:, 2] - ground) < 0.15)
        parts["ground_near"].append(scan.coord[on_ground, 2])

    def joined(key: str) -> np.ndarray | None:
        values = parts[key]
        return None if any(v is None for v in values) else np.concatenate(values)

    return Points(
        **{k: joined(k) for k in parts},
        near_fraction=near / max(total, 1),
        points_per_scan=total / max(len(scans), 1),
    )


def synthetic_scans(sensor: str, seeds: list[int], beams: np.ndarray | None) -> tuple[list[Scan], float]:
    """One frame of a drive per seed (a different street each), and the seconds each frame took."""
    scans, start = [], time.perf_counter()
    for seed in seeds:
        frame = next(iter(generate_drive(sensor, frames=1, seed=seed)))
        ring = frame.extra["ring"].astype(np.int64)
        scan = Scan(f"{sensor} seed {seed}", frame.coord.astype(np.float64), frame.strength, ring, frame.segment)
        scans.append(scan if beams is None else scan.select(np.isin(ring, beams)))
    return scans, (time.perf_counter() - start) / len(seeds)


# ------------------------------------------------------------------------------------------- statistics


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100):02d}": _round(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)}


def compare(real: np.ndarray | None, synthetic: np.ndarray | None) -> dict[str, Any] | None:
    if real is None or synthetic is None:
        return None
    real, synthetic = real[np.isfinite(real)], synthetic[np.isfinite(synthetic)]
    return {
        "real": quantiles(real),
        "synthetic": quantiles(synthetic),
        "wasserstein": _round(wasserstein_distance(real, synthetic)),
        "ks": _round(ks_2samp(real, synthetic).statistic),
    }


def ring_shares(points: Points, beams: int) -> np.ndarray:
    """Share of the points on each ring, rings ordered by elevation (lowest first)."""
    counts = np.bincount(points.ring, minlength=beams).astype(np.float64)
    medians = np.array([np.median(points.elevation[points.ring == r]) if c else np.inf for r, c in enumerate(counts)])
    return counts[np.argsort(medians, kind="stable")] / counts.sum()


def band_medians(points: Points) -> list[float | None]:
    """Median nearest-neighbour distance in each range band."""
    band = np.digitize(points.range, RANGE_BANDS) - 1
    return [
        _round(float(np.median(points.nearest[band == b]))) if (band == b).any() else None
        for b in range(len(RANGE_BANDS) - 1)
    ]


def outliers(points: Points, scans: int) -> dict[str, float]:
    known = np.isfinite(points.height)
    return {
        "below_ground_fraction": _round(float((points.height[known] < -BELOW_GROUND).mean())),
        "below_z_minus_4_fraction": _round(float((points.z < MULTIPATH_Z).mean())),
        "below_z_minus_4_per_scan": _round(float((points.z < MULTIPATH_Z).sum()) / scans),
    }


def per_class_strength(real: Points, synthetic: Points) -> dict[str, dict[str, float]]:
    out = {}
    for cls, name in enumerate(CLASS_NAMES):
        r, s = real.strength[real.segment == cls], synthetic.strength[synthetic.segment == cls]
        if len(r) >= 100 and len(s) >= 100:
            out[name] = {
                "real_median": _round(float(np.median(r))),
                "synthetic_median": _round(float(np.median(s))),
                "real_zero_fraction": _round(float((r == 0).mean())),
                "synthetic_zero_fraction": _round(float((s == 0).mean())),
                "wasserstein": _round(wasserstein_distance(r, s)),
            }
    return out


def class_shares(real: Points, synthetic: Points) -> dict[str, Any]:
    """Share of the labelled points per class (the scene mix), and the total variation between them."""
    shares = []
    for points in (real, synthetic):
        labelled = points.segment[points.segment >= 0]
        shares.append(np.bincount(labelled, minlength=len(CLASS_NAMES)) / max(len(labelled), 1))
    return {
        "real": {n: _round(float(v)) for n, v in zip(CLASS_NAMES, shares[0], strict=True)},
        "synthetic": {n: _round(float(v)) for n, v in zip(CLASS_NAMES, shares[1], strict=True)},
        "total_variation": _round(0.5 * float(np.abs(shares[0] - shares[1]).sum())),
    }


def road_height(points: Points) -> float | None:
    """Median z of road points 4-10 m away: minus the mount height on flat ground."""
    if points.segment is None:
        return None
    road = (points.segment == ROAD) & (points.range > 4) & (points.range < 10)
    return _round(float(np.median(points.z[road]))) if road.any() else None


DISTRIBUTIONS = ("range", "z", "height", "strength", "nearest")


def summary(comparison: Comparison, real_scans: list[Scan], seeds: list[int]) -> tuple[dict[str, Any], tuple]:
    model = get_sensor(comparison.sensor)
    synthetic_list, seconds = synthetic_scans(comparison.sensor, seeds, comparison.beams)
    real, synthetic = measure(real_scans), measure(synthetic_list)
    beams = model.beams
    shares = ring_shares(real, beams), ring_shares(synthetic, beams)
    if comparison.beams is not None:
        shares = tuple(s[: len(comparison.beams)] / s[: len(comparison.beams)].sum() for s in shares)
    result: dict[str, Any] = {
        "real_scans": [s.name for s in real_scans],
        "why": comparison.why,
        "synthetic": {"seeds": seeds, "seconds_per_frame": round(seconds, 3)},
        "points_per_scan": {"real": round(real.points_per_scan), "synthetic": round(synthetic.points_per_scan)},
        "near_fraction": {"real": _round(real.near_fraction), "synthetic": _round(synthetic.near_fraction)},
        "mount_height_estimate": {
            "real": _round(-float(np.nanmedian(real.ground_near))),
            "synthetic": _round(-float(np.nanmedian(synthetic.ground_near))),
            "synthetic_configured": model.mount_height,
        },
        "distributions": {k: compare(getattr(real, k), getattr(synthetic, k)) for k in DISTRIBUTIONS},
        "points_per_ring": {
            "rings": {"real": len(np.unique(real.ring)), "synthetic": len(np.unique(synthetic.ring))},
            "total_variation": _round(0.5 * float(np.abs(shares[0] - shares[1]).sum()))
            if len(shares[0]) == len(shares[1])
            else None,
        },
        "nearest_neighbour_median_by_range": {
            "bands_m": list(RANGE_BANDS),
            "real": band_medians(real),
            "synthetic": band_medians(synthetic),
        },
        "outliers": {"real": outliers(real, len(real_scans)), "synthetic": outliers(synthetic, len(seeds))},
    }
    labelled = [s for s in real_scans if s.segment is not None]
    if labelled:
        real_labelled = measure(labelled)
        result["labelled_real_scans"] = [s.name for s in labelled]
        if real_labelled.strength is not None:
            result["per_class_strength"] = per_class_strength(real_labelled, synthetic)
        result["road_z_4_to_10m"] = {"real": road_height(real_labelled), "synthetic": road_height(synthetic)}
        result["class_shares"] = class_shares(real_labelled, synthetic)
    return result, (real, synthetic, shares)


# ----------------------------------------------------------------------------------------------- figure


def plot(panels: dict[str, tuple], path: Path) -> Path:
    plt = pyplot()
    columns = (
        ("range", "range (m)", np.linspace(0, 120, 61)),
        ("z", "z, sensor frame (m)", np.linspace(-8, 8, 81)),
        ("height", "height above local ground (m)", np.linspace(-3, 12, 76)),
        ("strength", "strength", np.linspace(0, 1, 51)),
    )
    figure, axes = plt.subplots(len(panels), 6, figsize=(24, 3.1 * len(panels)), squeeze=False)
    for row, (sensor, (real, synthetic, shares)) in zip(axes, panels.items(), strict=True):
        for axis, (key, label, bins) in zip(row, columns, strict=False):
            for points, colour, name in ((real, "black", "real"), (synthetic, "tab:orange", "synthetic")):
                values = getattr(points, key)
                if values is None:
                    continue
                values = np.clip(values[np.isfinite(values)], bins[0], bins[-1])
                axis.hist(values, bins=bins, density=True, histtype="step", color=colour, label=name, linewidth=1.3)
            axis.set_yscale("log" if key != "strength" else "linear")
            axis.set_xlabel(label, fontsize=8)
            axis.set_title(f"{sensor}: {key}", fontsize=9)
        axis = row[4]
        for share, colour, name in ((shares[0], "black", "real"), (shares[1], "tab:orange", "synthetic")):
            axis.plot(np.arange(len(share)), share, color=colour, label=name, linewidth=1.3)
        axis.set_xlabel("ring (lowest elevation first)", fontsize=8)
        axis.set_title(f"{sensor}: points per ring (share)", fontsize=9)
        axis = row[5]
        centres = np.sqrt(np.asarray(RANGE_BANDS[:-1]) * np.asarray(RANGE_BANDS[1:]))
        for points, colour, name in ((real, "black", "real"), (synthetic, "tab:orange", "synthetic")):
            medians = [np.nan if m is None else m for m in band_medians(points)]
            axis.plot(centres, medians, "o-", color=colour, label=name, linewidth=1.3)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("range (m)", fontsize=8)
        axis.set_title(f"{sensor}: median nearest-neighbour distance (m)", fontsize=9)
        for axis in row:
            axis.tick_params(labelsize=7)
        row[0].legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--sensors", nargs="+", help="only these sensors (default: every one compared)")
    parser.add_argument("--real", type=Path, default=REAL_ROOT, help="folder of the real scans (shared/real)")
    parser.add_argument("--name", default="realism", help="result name (benchmarks/results/NAME.json, docs/NAME.png)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    results, panels = {}, {}
    for comparison in comparisons():
        if args.sensors and comparison.sensor not in args.sensors:
            continue
        try:
            real_scans = comparison.load(args.real)
        except RealDataMissing as exc:
            print(f"realism: {exc}", file=sys.stderr)
            return 2
        results[comparison.sensor], panels[comparison.sensor] = summary(comparison, real_scans, args.seeds)
    figure = None
    if args.record:
        figure = plot(panels, DOCS / f"{args.name}.png")
    emit(args.name, {"sensors": results, "figure": None if figure is None else f"docs/{figure.name}"}, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
