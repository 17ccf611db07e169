"""The real LiDAR scans of `<repo>/../shared/real/` as plain arrays, for benchmarks (never for training).

Each loader returns a `Scan`: points in the sensor frame, strength in [0, 1] where the file has an
intensity (KITTI remission as it is; nuScenes / Velodyne calibrated reflectivity / 255), a ring per
point (from the file, or estimated: KITTI from the scan order, the VLS-128 from its discrete elevation
angles) and, for the SemanticKITTI scan, its ground truth mapped by class name onto the synthetic world's
classes. The files are non-commercial (see each folder's PROVENANCE.md): read in place, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonata_model.io.datasets import read_kitti_scan, read_nuscenes_scan
from sonata_model.io.labels import LabelSet, load_label_set
from sonata_model.io.pcd import read_pcd

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "real"  # <repo>/../shared/real

SEMANTIC_KITTI = "semantickitti-spvnas-000000"
KITTI_ODOMETRY = "kitti-odometry-seq00-patchwork"
NUSCENES = "nuscenes-kitti-mmdet3d-demo"
NEBULA = "nebula-driver-frames"
NUSCENES_SWEEP = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
VLS128_PCD = "vls128_1585897255376374245.pcd"
HDL32E_ELEVATION = -30.67 + 4 / 3 * np.arange(32)  # nuScenes ring r points at this elevation (deg)


class RealDataMissing(FileNotFoundError):
    """The real scans are not where the benchmark looks (a user's clone has none)."""


@dataclass
class Scan:
    name: str
    coord: np.ndarray  # (N, 3) float64, sensor frame, z up
    strength: np.ndarray | None  # (N,) in [0, 1]
    ring: np.ndarray | None  # (N,) int64, 0 = lowest beam
    segment: np.ndarray | None = None  # (N,) synthetic class ids, IGNORE_LABEL elsewhere

    def select(self, keep: np.ndarray) -> Scan:
        return Scan(
            self.name,
            self.coord[keep],
            None if self.strength is None else self.strength[keep],
            None if self.ring is None else self.ring[keep],
            None if self.segment is None else self.segment[keep],
        )


def require(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    if not path.is_file():
        raise RealDataMissing(
            f"{path}: missing. This benchmark compares against the real scans of shared/real/ (next to the "
            f"repository, see its README.md); pass --real DIR where they are."
        )
    return path


def _kitti_scan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(coord float64, remission) of a KITTI `.bin`, in the file's (laser by laser) order."""
    frame = read_kitti_scan(path)
    return frame.coord.astype(np.float64), frame.strength


def rings_from_scan_order(coord: np.ndarray, min_points: int = 100) -> np.ndarray:
    """Ring of each point of a KITTI scan, which is stored laser by laser, each sweeping the azimuth once.

    Every laser's sweep starts near azimuth 0 (straight ahead) and turns counter-clockwise, so a new
    laser starts where the azimuth steps from just below 0 to 0 or above; steps that would leave fewer
    than `min_points` points (jitter) are ignored. Rings are renumbered by median elevation, 0 = lowest.
    """
    azimuth = np.arctan2(coord[:, 1], coord[:, 0])
    steps = np.flatnonzero((azimuth[:-1] < 0) & (azimuth[1:] >= 0) & (azimuth[:-1] > -np.pi / 2)) + 1
    starts = [0]
    for step in steps:  # loop over the ~64 laser boundaries
        if step - starts[-1] >= min_points:
            starts.append(int(step))
    segment = np.zeros(len(coord), np.int64)
    segment[starts[1:]] = 1
    return _by_elevation(coord, np.cumsum(segment))


def rings_from_elevation(coord: np.ndarray, decimals: int = 2) -> np.ndarray:
    """Ring of each point of a calibrated driver cloud whose lasers have distinct fixed elevations."""
    elevation = np.round(np.degrees(np.arcsin(coord[:, 2] / np.linalg.norm(coord, axis=1))), decimals)
    _, ring = np.unique(elevation, return_inverse=True)
    return ring.astype(np.int64)


def _by_elevation(coord: np.ndarray, ring: np.ndarray) -> np.ndarray:
    elevation = np.degrees(np.arcsin(coord[:, 2] / np.maximum(np.linalg.norm(coord, axis=1), 1e-9)))
    medians = np.array([np.median(elevation[ring == r]) for r in range(ring.max() + 1)])  # loop over rings
    rank = np.empty(len(medians), np.int64)
    rank[np.argsort(medians)] = np.arange(len(medians))
    return rank[ring]


def semantic_kitti(root: Path = REAL_ROOT, labels: LabelSet | None = None) -> Scan:
    """The labelled HDL-64E scan, its classes mapped by name onto `labels` (default: the synthetic
    world's); classes `labels` lacks become its ignore index."""
    coord, remission = _kitti_scan(require(root, SEMANTIC_KITTI, "velodyne", "000000.bin"))
    raw = np.fromfile(require(root, SEMANTIC_KITTI, "labels", "000000.label"), np.uint32) & 0xFFFF
    if len(raw) != len(coord):
        raise ValueError(f"{SEMANTIC_KITTI}: {len(raw)} labels for {len(coord)} points")
    kitti = load_label_set("semantic_kitti")
    segment = kitti.translate(kitti.map_raw(raw), labels or load_label_set("synthetic"))
    return Scan(f"{SEMANTIC_KITTI}/000000", coord, remission, rings_from_scan_order(coord), segment)


def kitti_odometry(root: Path = REAL_ROOT) -> list[Scan]:
    scans = []
    for stem in ("000000", "000001"):
        coord, remission = _kitti_scan(require(root, KITTI_ODOMETRY, "velodyne", f"{stem}.bin"))
        scans.append(Scan(f"{KITTI_ODOMETRY}/{stem}", coord, remission, rings_from_scan_order(coord)))
    return scans


def nuscenes(root: Path = REAL_ROOT) -> Scan:
    """The nuScenes HDL-32E sweep, rotated from its x-right / y-forward frame to x-forward."""
    frame = read_nuscenes_scan(require(root, NUSCENES, NUSCENES_SWEEP))
    x, y, z = frame.coord.astype(np.float64).T
    return Scan(f"{NUSCENES}/LIDAR_TOP", np.c_[y, -x, z], frame.strength, frame.extra["ring"].astype(np.int64))


def vls128(root: Path = REAL_ROOT) -> Scan:
    """The outdoor Velodyne VLS-128 frame (x, y, z only: no intensity in the fixture)."""
    coord = read_pcd(require(root, NEBULA, "pcd", VLS128_PCD)).coord.astype(np.float64)
    return Scan(f"{NEBULA}/{VLS128_PCD}", coord, None, rings_from_elevation(coord))


def vlp16_from_hdl32(scan: Scan, vlp16_elevation: np.ndarray, tolerance: float = 0.7) -> Scan:
    """A VLP-16-like scan cut from the HDL-32E sweep: the ring nearest each VLP-16 beam, within `tolerance`
    degrees. Rings are renumbered 0.. in VLP-16 beam order; beams without a counterpart are absent."""
    beams = matched_vlp16_beams(vlp16_elevation, tolerance)
    beam_of_ring = np.full(len(HDL32E_ELEVATION), -1)
    beam_of_ring[np.abs(HDL32E_ELEVATION[None, :] - np.asarray(vlp16_elevation)[beams, None]).argmin(axis=1)] = beams
    keep = beam_of_ring[scan.ring] >= 0
    kept = scan.select(keep)
    kept.ring = beam_of_ring[kept.ring]
    kept.name = f"{scan.name} (VLP-16 beams)"
    return kept


def matched_vlp16_beams(vlp16_elevation: np.ndarray, tolerance: float = 0.7) -> np.ndarray:
    """Indices of the VLP-16 beams that `vlp16_from_hdl32` finds an HDL-32E ring for."""
    nearest = np.abs(HDL32E_ELEVATION[None, :] - np.asarray(vlp16_elevation)[:, None])
    return np.flatnonzero(nearest.min(axis=1) <= tolerance)
