"""Dataset formats on disk: SemanticKITTI, nuScenes-lidarseg and the project's per-frame folders.

Per-frame folder (fast random access for training; what bag extraction writes)::

    <root>/index.json                       {"frames": [names...], "label_set": name | null}
    <root>/<name>/coord.npy                 (N, 3) float32
    <root>/<name>/strength.npy              (N,) float32 in [0, 1]          (optional)
    <root>/<name>/color.npy normal.npy      (N, 3) uint8 / float32           (optional)
    <root>/<name>/segment.npy instance.npy  (N,) int32                       (optional)
    <root>/<name>/pose.npy                  (4, 4) float64                   (optional)
    <root>/<name>/meta.json                 {"stamp_ns": int, "frame_id": str} (optional)

A frame is written into a hidden staging folder and renamed into place, so an interrupted write
never leaves half a frame, and a writer that finds a frame already present skips it (resumable).
Every reader checks sizes, dtypes and shapes and names the file when something is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .frame import Frame
from .labels import LabelSet, LabelSetError, load_label_set


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file."""


def load_array(path: Path, dtype, shape_tail: tuple[int, ...], n: int | None) -> np.ndarray:
    """A memory-mapped .npy checked to be `dtype` (None: any) and (n or any, *shape_tail)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise DatasetError(f"{path}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail or (n is not None and len(array) != n):
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
STAGING_PREFIX = ".staging-"


class FrameFolder:
    """Random-access reader of a per-frame folder dataset; arrays are memory-mapped, not loaded."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise DatasetError(f"{index}: missing (not a frame folder dataset)")
        try:
            meta = json.loads(index.read_text())
            self.names: list[str] = [str(name) for name in meta["frames"]]
            self.label_set_name: str | None = meta.get("label_set")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{index}: malformed ({type(exc).__name__}: {exc})") from exc

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Frame:
        name = self.names[i]
        folder = self.root / name
        if not (folder / "coord.npy").is_file():
            raise DatasetError(f"{folder / 'coord.npy'}: missing (frame {name!r} is listed in index.json)")
        coord = load_array(folder / "coord.npy", np.float32, (3,), None)
        n = len(coord)
        arrays = {
            key: load_array(folder / f"{key}.npy", dtype, tail, n)
            for key, (dtype, tail) in _OPTIONAL.items()
            if (folder / f"{key}.npy").is_file()
        }
        pose = load_array(folder / "pose.npy", np.float64, (4,), 4) if (folder / "pose.npy").is_file() else None
        stamp_ns, frame_id = _read_meta(folder / "meta.json")
        return Frame(coord=coord, pose=pose, name=name, stamp_ns=stamp_ns, frame_id=frame_id, **arrays)


def _read_meta(path: Path) -> tuple[int, str]:
    if not path.is_file():
        return 0, ""
    try:
        meta = json.loads(path.read_text())
        return int(meta["stamp_ns"]), str(meta["frame_id"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc


def _check_frame_name(name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise DatasetError(f"frame name {name!r} cannot be a relative folder path (no empty, '.'-leading parts)")


class FrameFolderWriter:
    """Writes frames into a per-frame folder dataset; atomic per frame and resumable.

    Names may contain '/' (e.g. "00/000123"): frames then sit in sub-folders. One writer per root:
    leftovers of an interrupted writer (hidden staging folders) are removed on opening.
    """

    def __init__(self, root: str | os.PathLike, label_set: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.label_set = label_set
        for stale in self.root.glob(f"{STAGING_PREFIX}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return (self.root / name / "coord.npy").is_file()

    def source_of(self, name: str) -> str | None:
        """Where the frame `name` was read from, as `write_frame_folder` recorded it (None: not recorded)."""
        try:
            return json.loads((self.root / name / "meta.json").read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            return None

    def write(self, frame: Frame) -> bool:
        """Write one frame; False when it was already there (resume)."""
        return write_frame_folder(self.root, frame)

    def finish(self) -> Path:
        """Write index.json listing every complete frame (sorted by name); returns its path."""
        names = sorted(
            coord.parent.relative_to(self.root).as_posix()
            for coord in self.root.rglob("coord.npy")
            if not any(part.startswith(".") for part in coord.relative_to(self.root).parts)
        )
        index = self.root / "index.json"
        staging = self.root / f"{STAGING_PREFIX}index.json"
        staging.write_text(json.dumps({"frames": names, "label_set": self.label_set}, indent=1))
        os.replace(staging, index)
        return index


def write_frame_folder(root: Path, frame: Frame, source: str | None = None) -> bool:
    """Write one frame into `root` atomically (staging folder, then rename); False when already there.
    `source`: where it was read from, kept in its meta.json (`FrameFolderWriter.source_of`).

    Safe to call from several processes at once on one root (extraction workers); the staging
    leftovers of interrupted runs are cleaned by `FrameFolderWriter`, opened once per run.
    """
    _check_frame_name(frame.name)
    if (root / frame.name / "coord.npy").is_file():
        return False
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        np.save(staging / "coord.npy", np.ascontiguousarray(frame.coord, np.float32))
        for key, (dtype, _) in _OPTIONAL.items():
            value = getattr(frame, key)
            if value is not None:
                np.save(staging / f"{key}.npy", np.ascontiguousarray(value, dtype))
        if frame.pose is not None:
            np.save(staging / "pose.npy", np.asarray(frame.pose, np.float64))
        meta = {"stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id, **({"source": source} if source else {})}
        (staging / "meta.json").write_text(json.dumps(meta))
        target = root / frame.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a damaged frame (no coord.npy): replace it whole
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


# ------------------------------------------------------------------------------------- SemanticKITTI

KITTI_LABEL_SET_FILE = "label_set.txt"  # this project's addition: names the label set of written ids


def _read_bin(path: Path, dtype, columns: int, what: str) -> np.ndarray:
    """(N, columns) array of a raw binary file, checked to hold whole rows."""
    try:
        flat = np.fromfile(path, dtype=dtype)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if flat.size % columns:
        size = flat.size * np.dtype(dtype).itemsize
        raise DatasetError(f"{path}: {size} bytes is not a whole number of {what} points")
    return flat.reshape(-1, columns)


def read_kitti_scan(path: str | os.PathLike) -> Frame:
    """One KITTI `.bin` scan (float32 x, y, z, remission in [0, 1]) as an unlabelled Frame named by its stem."""
    path = Path(path)
    points = _read_bin(path, np.float32, 4, "(x, y, z, remission)")
    return Frame(
        coord=np.ascontiguousarray(points[:, :3]),
        strength=np.clip(points[:, 3], 0, 1),
        name=path.stem,
        frame_id="velodyne",
    )


class SemanticKitti:
    """SemanticKITTI `sequences/XX/{velodyne,labels}`; labels mapped to train ids by the label set.

    The label set is `label_set` if given, else the one named in `<root>/label_set.txt` (written by
    `write_kitti`), else "semantic_kitti". Poses: `poses.txt` holds one 3x4 matrix per scan in the
    left *camera* frame of KITTI odometry; with `calib.txt` the velodyne -> world pose
    inv(Tr) @ P @ Tr is returned, without it the rows are taken as velodyne poses as they are.
    Scans without a label file (test split) have no segment.
    """

    def __init__(
        self, root: str | os.PathLike, sequences: list[str] | None = None, label_set: LabelSet | None = None
    ) -> None:
        self.root = Path(root)
        base = self.root / "sequences"
        if not base.is_dir():
            raise DatasetError(f"{base}: missing (not a SemanticKITTI root)")
        available = sorted(p.name for p in base.iterdir() if (p / "velodyne").is_dir())
        chosen = available if sequences is None else [s.zfill(2) for s in sequences]
        missing = [s for s in chosen if s not in available]
        if missing:
            raise DatasetError(f"{base}: sequences {missing} not found (available: {available})")
        named = self.root / KITTI_LABEL_SET_FILE
        try:
            own = load_label_set(named.read_text().strip()) if named.is_file() and label_set is None else None
        except LabelSetError as exc:
            raise DatasetError(f"{named}: {exc}") from exc
        self.label_set = label_set or own or load_label_set("semantic_kitti")
        self.scans: list[tuple[str, Path]] = [
            (seq, scan) for seq in chosen for scan in sorted((base / seq / "velodyne").glob("*.bin"))
        ]
        self._poses = {seq: _kitti_poses(base / seq) for seq in chosen}

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, i: int) -> Frame:
        seq, scan = self.scans[i]
        frame = read_kitti_scan(scan)
        segment = instance = None
        label_file = scan.parent.parent / "labels" / f"{scan.stem}.label"
        if label_file.is_file():
            labels = _read_bin(label_file, np.uint32, 1, "uint32 label")[:, 0]
            if len(labels) != frame.num_points:
                raise DatasetError(f"{label_file}: {len(labels)} labels for {frame.num_points} points in {scan.name}")
            segment = self.label_set.map_raw(labels & 0xFFFF)
            instance = (labels >> 16).astype(np.int32)
        poses = self._poses[seq]
        pose = None
        if poses is not None:
            if not scan.stem.isdigit() or int(scan.stem) >= len(poses):
                raise DatasetError(
                    f"{scan.parent.parent / 'poses.txt'}: {len(poses)} poses, none for {scan.name} (poses are "
                    "numbered by the scans' file names, 000000.bin ...)"
                )
            pose = poses[int(scan.stem)]
        return dataclasses.replace(frame, segment=segment, instance=instance, pose=pose, name=f"{seq}/{scan.stem}")


def _kitti_poses(sequence: Path) -> np.ndarray | None:
    """(S, 4, 4) velodyne -> world poses of a sequence, or None without poses.txt (see SemanticKitti)."""
    path = sequence / "poses.txt"
    if not path.is_file():
        return None
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path}: not a table of numbers ({exc})") from exc
    if values.shape[1] != 12:
        raise DatasetError(f"{path}: rows have {values.shape[1]} numbers, expected 12 (3x4 matrices)")
    poses = np.tile(np.eye(4), (len(values), 1, 1))
    poses[:, :3, :4] = values.reshape(-1, 3, 4)
    calib = sequence / "calib.txt"
    rows = dict(line.split(":", 1) for line in calib.read_text().splitlines() if ":" in line) if calib.is_file() else {}
    if "Tr" in rows:
        tr = np.eye(4)
        try:
            tr[:3, :4] = np.array(rows["Tr"].split(), dtype=np.float64).reshape(3, 4)
        except ValueError as exc:
            raise DatasetError(f"{calib}: Tr is not 12 numbers ({exc})") from exc
        poses = np.linalg.inv(tr) @ poses @ tr
    return poses


def write_kitti(
    root: str | os.PathLike, sequence: str, frames: Iterable[Frame], label_set: LabelSet | str = "synthetic"
) -> int:
    """Write frames as SemanticKITTI sequence `sequence`: velodyne/*.bin, labels/*.label, poses.txt.

    Train ids become raw ids through `label_set` (the synthetic world's by default, whose raw ids
    are its train ids), and `<root>/label_set.txt` names the set so that `SemanticKitti` maps them
    back. Poses are written as velodyne poses (no calib.txt). Returns the number of frames.
    """
    labels = load_label_set(label_set) if isinstance(label_set, str) else label_set
    folder = Path(root) / "sequences" / sequence
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    (Path(root) / KITTI_LABEL_SET_FILE).write_text(labels.name + "\n")
    poses = []
    for i, frame in enumerate(frames):
        strength = frame.strength if frame.strength is not None else np.zeros(frame.num_points, np.float32)
        np.c_[frame.coord, strength].astype(np.float32).tofile(folder / "velodyne" / f"{i:06d}.bin")
        if frame.segment is not None:
            instance = np.zeros(frame.num_points, np.int64) if frame.instance is None else frame.instance
            if instance.size and not 0 <= instance.min() <= instance.max() < 1 << 16:
                raise DatasetError(f"frame {frame.name!r}: instance ids must fit in 16 bits for a .label file")
            raw = labels.raw_ids(frame.segment) | (instance.astype(np.uint32) << 16)
            raw.astype(np.uint32).tofile(folder / "labels" / f"{i:06d}.label")
        poses.append((frame.pose if frame.pose is not None else np.eye(4))[:3].reshape(-1))
    np.savetxt(folder / "poses.txt", np.array(poses).reshape(-1, 12), fmt="%.17g")
    return len(poses)


# -------------------------------------------------------------------------------- nuScenes lidarseg


def read_nuscenes_scan(path: str | os.PathLike) -> Frame:
    """One nuScenes `.pcd.bin` sweep (float32 x, y, z, intensity 0-255, ring) as an unlabelled Frame.

    Intensity is scaled to [0, 1]; the ring goes to extra["ring"]; the name is the file name.
    """
    path = Path(path)
    points = _read_bin(path, np.float32, 5, "(x, y, z, intensity, ring)")
    return Frame(
        coord=np.ascontiguousarray(points[:, :3]),
        strength=np.clip(points[:, 3] / 255, 0, 1),
        name=path.name,
        frame_id="LIDAR_TOP",
        extra={"ring": points[:, 4].astype(np.uint16)},
    )


class NuScenesLidarSeg:
    """nuScenes lidarseg: `samples/LIDAR_TOP/*.pcd.bin` (N, 5) + `lidarseg/<version>/*_lidarseg.bin`.

    Scans and labels are paired through two devkit tables, read directly (no devkit needed):
    `<version>/lidarseg.json` (sample_data_token, filename) and `<version>/sample_data.json`
    (token, filename, timestamp in microseconds). Scans are read by `read_nuscenes_scan`. Poses
    (ego_pose / calibrated_sensor tables) are not read.
    """

    def __init__(self, root: str | os.PathLike, version: str = "v1.0-trainval", label_set: LabelSet | None = None):
        self.root = Path(root)
        tables = self.root / version
        lidarseg = _json_table(tables / "lidarseg.json", ("sample_data_token", "filename"))
        sample_data = {row["token"]: row for row in _json_table(tables / "sample_data.json", ("token", "filename"))}
        self.items: list[tuple[Path, Path, int]] = []
        for row in lidarseg:
            scan = sample_data.get(row["sample_data_token"])
            if scan is None:
                raise DatasetError(f"{tables / 'lidarseg.json'}: token {row['sample_data_token']} not in sample_data")
            stamp = scan.get("timestamp", 0)
            if not isinstance(stamp, int) or isinstance(stamp, bool):
                raise DatasetError(
                    f"{tables / 'sample_data.json'}: timestamp {stamp!r} is not microseconds (an integer)"
                )
            stamp_ns = stamp * 1000
            self.items.append((self.root / scan["filename"], self.root / row["filename"], stamp_ns))
        self.label_set = label_set or load_label_set("nuscenes")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Frame:
        scan, labels, stamp_ns = self.items[i]
        frame = read_nuscenes_scan(scan)
        label = _read_bin(labels, np.uint8, 1, "uint8 label")[:, 0]
        if len(label) != frame.num_points:
            raise DatasetError(f"{labels}: {len(label)} labels for {frame.num_points} points in {scan.name}")
        return dataclasses.replace(frame, segment=self.label_set.map_raw(label), stamp_ns=stamp_ns)


def _json_table(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """A devkit table: a JSON list of objects that all have `keys`."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the nuScenes table ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        raise DatasetError(f"{path}: expected a list of objects with {list(keys)}")
    return rows
