"""Dataset formats on disk: SemanticKITTI, nuScenes-lidarseg and the project's per-frame folders.

Per-frame folder (fast random access for training; what `sonata-extract` writes)::

    <root>/index.json                       {"frames": [names...], "label_set": name | null}
    <root>/<name>/coord.npy                 (N, 3) float32
    <root>/<name>/strength.npy              (N,) float32 in [0, 1]          (optional)
    <root>/<name>/color.npy normal.npy      (N, 3) uint8 / float32           (optional)
    <root>/<name>/segment.npy instance.npy  (N,) int32                       (optional)
    <root>/<name>/pose.npy                  (4, 4) float64                   (optional)

Frames are written to a temporary folder and renamed into place, so an interrupted write never
leaves half a frame, and a writer that finds a frame already present skips it (resumable).
Every reader checks sizes and shapes and names the file when something is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .frame import Frame
from .labels import LabelSet, load_label_set


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file."""


def _load_array(path: Path, dtype, shape_tail: tuple[int, ...], n: int | None, mmap: bool = True) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if array.dtype != np.dtype(dtype):
        raise DatasetError(f"{path}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.shape[1:] != shape_tail or (n is not None and array.shape[0] != n):
        expected = ("N" if n is None else str(n), *map(str, shape_tail))
        raise DatasetError(f"{path}: shape {array.shape}, expected ({', '.join(expected)})")
    return array


# --------------------------------------------------------------------------------------- frame folders

_OPTIONAL = {
    "strength": (np.float32, ()),
    "color": (np.uint8, (3,)),
    "normal": (np.float32, (3,)),
    "segment": (np.int32, ()),
    "instance": (np.int32, ()),
}


class FrameFolder:
    """Random-access reader of a per-frame folder dataset."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise DatasetError(f"{index}: missing (not a frame folder dataset)")
        try:
            meta = json.loads(index.read_text())
            self.names: list[str] = list(meta["frames"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{index}: malformed ({exc})") from exc
        self.label_set_name: str | None = meta.get("label_set")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Frame:
        name = self.names[i]
        folder = self.root / name
        coord = _load_array(folder / "coord.npy", np.float32, (3,), None)
        n = len(coord)
        arrays = {
            key: _load_array(folder / f"{key}.npy", dtype, tail, n)
            for key, (dtype, tail) in _OPTIONAL.items()
            if (folder / f"{key}.npy").is_file()
        }
        pose = _load_array(folder / "pose.npy", np.float64, (4,), 4) if (folder / "pose.npy").is_file() else None
        return Frame(coord=coord, pose=pose, name=name, **arrays)


class FrameFolderWriter:
    """Writes frames into a per-frame folder dataset; atomic per frame and resumable."""

    def __init__(self, root: str | os.PathLike, label_set: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.label_set = label_set

    def exists(self, name: str) -> bool:
        return (self.root / name / "coord.npy").is_file()

    def write(self, frame: Frame) -> bool:
        """Write one frame; False when it was already there (resume)."""
        if not frame.name or "/" in frame.name or frame.name.startswith("."):
            raise DatasetError(f"frame name {frame.name!r} cannot be a folder name")
        if self.exists(frame.name):
            return False
        staging = Path(tempfile.mkdtemp(prefix=f".{frame.name}.", dir=self.root))
        try:
            np.save(staging / "coord.npy", np.ascontiguousarray(frame.coord, np.float32))
            for key, (dtype, _) in _OPTIONAL.items():
                value = getattr(frame, key)
                if value is not None:
                    np.save(staging / f"{key}.npy", np.ascontiguousarray(value, dtype))
            if frame.pose is not None:
                np.save(staging / "pose.npy", np.asarray(frame.pose, np.float64))
            os.replace(staging, self.root / frame.name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return True

    def finish(self) -> Path:
        """Write index.json listing every complete frame (sorted by name)."""
        names = sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and (p / "coord.npy").is_file() and not p.name.startswith(".")
        )
        index = self.root / "index.json"
        tmp = index.with_suffix(".tmp")
        tmp.write_text(json.dumps({"frames": names, "label_set": self.label_set}, indent=1))
        os.replace(tmp, index)
        return index


# ------------------------------------------------------------------------------------- SemanticKITTI


class SemanticKitti:
    """SemanticKITTI `sequences/XX/{velodyne,labels}`; labels mapped to train ids by the label set."""

    def __init__(
        self, root: str | os.PathLike, sequences: list[str] | None = None, label_set: LabelSet | None = None
    ) -> None:
        self.root = Path(root)
        base = self.root / "sequences" if (self.root / "sequences").is_dir() else self.root
        if not base.is_dir():
            raise DatasetError(f"{self.root}: no SemanticKITTI sequences folder")
        available = sorted(p.name for p in base.iterdir() if (p / "velodyne").is_dir())
        chosen = available if sequences is None else [s.zfill(2) for s in sequences]
        missing = [s for s in chosen if s not in available]
        if missing:
            raise DatasetError(f"{base}: sequences {missing} not found (available: {available})")
        self.label_set = label_set or load_label_set("semantic_kitti")
        self.scans: list[tuple[str, Path]] = [
            (seq, scan) for seq in chosen for scan in sorted((base / seq / "velodyne").glob("*.bin"))
        ]
        self._poses = {seq: _kitti_poses(base / seq) for seq in chosen}

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, i: int) -> Frame:
        seq, scan = self.scans[i]
        raw = np.fromfile(scan, dtype=np.float32)
        if raw.size % 4:
            raise DatasetError(f"{scan}: {raw.size * 4} bytes is not a whole number of (x, y, z, remission) points")
        points = raw.reshape(-1, 4)
        segment = instance = None
        label_file = scan.parent.parent / "labels" / f"{scan.stem}.label"
        if label_file.is_file():
            labels = np.fromfile(label_file, dtype=np.uint32)
            if len(labels) != len(points):
                raise DatasetError(f"{label_file}: {len(labels)} labels for {len(points)} points")
            segment = self.label_set.map_raw(labels & 0xFFFF)
            instance = (labels >> 16).astype(np.int32)
        poses = self._poses[seq]
        pose = poses[int(scan.stem)] if poses is not None and int(scan.stem) < len(poses) else None
        return Frame(
            coord=np.ascontiguousarray(points[:, :3]),
            strength=np.clip(points[:, 3], 0, 1),
            segment=segment,
            instance=instance,
            pose=pose,
            name=f"{seq}/{scan.stem}",
            frame_id="velodyne",
        )


def _kitti_poses(sequence: Path) -> np.ndarray | None:
    """Velodyne -> world poses: poses.txt (camera frame) conjugated with calib.txt's Tr when present."""
    path = sequence / "poses.txt"
    if not path.is_file():
        return None
    values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if values.shape[1] != 12:
        raise DatasetError(f"{path}: rows have {values.shape[1]} numbers, expected 12 (3x4 matrices)")
    poses = np.tile(np.eye(4), (len(values), 1, 1))
    poses[:, :3, :4] = values.reshape(-1, 3, 4)
    calib = sequence / "calib.txt"
    if calib.is_file():
        rows = dict(line.split(":", 1) for line in calib.read_text().splitlines() if ":" in line)
        if "Tr" in rows:
            tr = np.eye(4)
            tr[:3, :4] = np.array(rows["Tr"].split(), dtype=np.float64).reshape(3, 4)
            poses = np.linalg.inv(tr) @ poses @ tr
    return poses


def write_kitti(root: str | os.PathLike, sequence: str, frames: Iterator[Frame], raw_ids: bool = True) -> int:
    """Write frames as a SemanticKITTI sequence (bin, label, poses.txt). Train ids are written as raw ids
    when `raw_ids` (the synthetic label set's learning map is the identity)."""
    folder = Path(root) / "sequences" / sequence
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    poses, count = [], 0
    for i, frame in enumerate(frames):
        strength = frame.strength if frame.strength is not None else np.zeros(frame.num_points, np.float32)
        np.c_[frame.coord, strength].astype(np.float32).tofile(folder / "velodyne" / f"{i:06d}.bin")
        if frame.segment is not None:
            semantic = np.where(frame.segment < 0, 0, frame.segment).astype(np.uint32) if raw_ids else frame.segment
            instance = np.zeros(frame.num_points, np.uint32) if frame.instance is None else frame.instance
            (semantic.astype(np.uint32) | (instance.astype(np.uint32) << 16)).tofile(
                folder / "labels" / f"{i:06d}.label"
            )
        poses.append((frame.pose if frame.pose is not None else np.eye(4))[:3].reshape(-1))
        count += 1
    np.savetxt(folder / "poses.txt", np.array(poses).reshape(-1, 12), fmt="%.9g")
    return count


# -------------------------------------------------------------------------------- nuScenes lidarseg


class NuScenesLidarSeg:
    """nuScenes lidarseg: `samples/LIDAR_TOP/*.pcd.bin` (N, 5) + `lidarseg/<version>/*_lidarseg.bin`.

    Pairs scans and labels through the devkit tables `<version>/lidarseg.json` (sample_data_token,
    filename) and `<version>/sample_data.json` (token, filename): only those two tables are read.
    Intensity (0-255) is scaled to [0, 1].
    """

    def __init__(self, root: str | os.PathLike, version: str = "v1.0-trainval", label_set: LabelSet | None = None):
        self.root = Path(root)
        tables = self.root / version
        try:
            lidarseg = json.loads((tables / "lidarseg.json").read_text())
            sample_data = json.loads((tables / "sample_data.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{tables}: cannot read lidarseg.json / sample_data.json ({exc})") from exc
        scan_of = {row["token"]: row["filename"] for row in sample_data}
        self.items = []
        for row in lidarseg:
            if row["sample_data_token"] not in scan_of:
                raise DatasetError(f"{tables / 'lidarseg.json'}: token {row['sample_data_token']} not in sample_data")
            self.items.append((self.root / scan_of[row["sample_data_token"]], self.root / row["filename"]))
        self.label_set = label_set or load_label_set("nuscenes")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Frame:
        scan, labels = self.items[i]
        raw = np.fromfile(scan, dtype=np.float32)
        if raw.size % 5:
            raise DatasetError(f"{scan}: {raw.size * 4} bytes is not a whole number of 5-float points")
        points = raw.reshape(-1, 5)
        label = np.fromfile(labels, dtype=np.uint8)
        if len(label) != len(points):
            raise DatasetError(f"{labels}: {len(label)} labels for {len(points)} points")
        return Frame(
            coord=np.ascontiguousarray(points[:, :3]),
            strength=np.clip(points[:, 3] / 255, 0, 1),
            segment=self.label_set.map_raw(label),
            name=scan.name,
            frame_id="LIDAR_TOP",
            extra={"ring": points[:, 4].astype(np.uint16)},
        )
