"""PointCloud2 frames from and to bag files, through `rosbags` (no ROS install needed).

Reads rosbag2 (`.mcap` / `.db3`, a bag directory or a bare storage file) and ROS 1 `.bag`. A truncated
or corrupt bag yields every good frame it holds; what was skipped (undecodable or malformed messages,
a cut-off file) is counted in a `BagReport` and logged. Writes frames in a real driver's layout
(`pointcloud2.LAYOUTS`): labels never go into a bag, as no driver publishes them.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .frame import Frame
from .mcap_scan import ScanResult, scan_messages
from .pointcloud2 import LAYOUT_POINT_STEP, LAYOUTS, UINT8, PointCloudError, decode, encode, to_message

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
BAG_FORMATS = ("mcap", "db3", "bag1")
log = logging.getLogger(__name__)


class BagError(RuntimeError):
    """A bag that cannot be opened, or a topic that is not in it."""


@dataclass
class BagReport:
    """What reading a bag produced: frames read and skipped messages by reason."""

    path: str
    frames: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: str | None = None  # why reading stopped early, if it did

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.frames} frames"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} x {reason}" for reason, n in self.skipped.items()))
        if self.truncated:
            parts.append(f"stopped early: {self.truncated}")
        return "; ".join(parts)


def _typestore(ros1: bool = False):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_JAZZY)


def _open(path: Path):
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = AnyReader([path], default_typestore=_typestore())
        reader.open()
    except Exception as exc:  # rosbags raises several types for unreadable files
        raise BagError(f"cannot open bag {path}: {exc}") from exc
    return reader


def list_pointcloud_topics(path: str | os.PathLike) -> dict[str, int]:
    """PointCloud2 topics of a bag and their message counts."""
    reader = _open(Path(path))
    try:
        counts: Counter = Counter()
        for connection in reader.connections:
            if connection.msgtype in (POINTCLOUD2, "sensor_msgs/PointCloud2"):
                counts[connection.topic] += connection.msgcount
        return dict(counts)
    finally:
        reader.close()


def _connections(reader, path: Path, topic: str | None):
    clouds = [c for c in reader.connections if c.msgtype in (POINTCLOUD2, "sensor_msgs/PointCloud2")]
    topics = sorted({c.topic for c in clouds})
    if topic is None:
        if len(topics) != 1:
            raise BagError(f"{path}: name a topic; PointCloud2 topics are {topics}")
        topic = topics[0]
    chosen = [c for c in clouds if c.topic == topic]
    if not chosen:
        raise BagError(f"{path}: no PointCloud2 topic {topic!r}; PointCloud2 topics are {topics}")
    return chosen


class BagFrames:
    """Iterable of the PointCloud2 frames of one topic; `.report` says what was read and skipped."""

    def __init__(
        self,
        path: str | os.PathLike,
        topic: str | None = None,
        *,
        intensity_scale: float | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.topic = topic
        self.intensity_scale = intensity_scale
        self.start_ns, self.stop_ns = start_ns, stop_ns
        self.report = BagReport(str(self.path))

    def __iter__(self) -> Iterator[Frame]:
        self.report = BagReport(str(self.path))
        try:
            reader = _open(self.path)
        except BagError:
            mcap = _mcap_file(self.path)
            if mcap is None:
                raise
            yield from self._recover(mcap)
            return
        try:
            connections = _connections(reader, self.path, self.topic)
            index = 0
            messages = reader.messages(connections=connections, start=self.start_ns, stop=self.stop_ns)
            while True:
                try:
                    connection, timestamp, raw = next(messages)
                except StopIteration:
                    break
                except Exception as exc:  # a cut-off or corrupt file: keep what was read
                    self.report.truncated = f"{type(exc).__name__}: {exc}"
                    log.warning("bag %s: reading stopped after %d messages: %s", self.path, index, exc)
                    break
                frame = self._frame(reader.deserialize, raw, connection.msgtype, timestamp, index)
                index += 1
                if frame is not None:
                    self.report.frames += 1
                    yield frame
        finally:
            reader.close()
            if self.report.skipped or self.report.truncated:
                log.warning("%s", self.report)

    def _recover(self, mcap: Path) -> Iterator[Frame]:
        """Linear scan of an MCAP file that indexed reading refused (cut off): every complete message."""
        store = _typestore()
        scan = ScanResult()
        index = 0
        for topic, schema, timestamp, raw in scan_messages(mcap, scan):
            if schema not in (POINTCLOUD2,) or (self.topic is not None and topic != self.topic):
                continue
            if not (self.start_ns is None or self.start_ns <= timestamp) or not (
                self.stop_ns is None or timestamp < self.stop_ns
            ):
                index += 1
                continue
            frame = self._frame(store.deserialize_cdr, raw, schema, timestamp, index)
            index += 1
            if frame is not None:
                self.report.frames += 1
                yield frame
        self.report.truncated = f"no index (file cut off?); recovered by a linear scan: {scan.stopped or 'clean end'}"
        log.warning("%s", self.report)

    def _frame(self, deserialize, raw: bytes, msgtype: str, timestamp: int, index: int) -> Frame | None:
        try:
            msg = deserialize(raw, msgtype)
        except Exception:
            self.report.skipped["undecodable message"] += 1
            return None
        try:
            cloud = decode(msg, intensity_scale=self.intensity_scale)
        except PointCloudError as exc:
            self.report.skipped[f"malformed cloud ({exc})"] += 1
            return None
        stamp = msg.header.stamp
        return Frame(
            coord=cloud.coord,
            strength=cloud.strength,
            color=cloud.color,
            normal=cloud.normal,
            stamp_ns=int(stamp.sec) * 10**9 + int(stamp.nanosec) if stamp is not None else timestamp,
            frame_id=msg.header.frame_id,
            name=f"{self.path.name}#{index}",
        )


def _mcap_file(path: Path) -> Path | None:
    if path.suffix == ".mcap" and path.is_file():
        return path
    found = sorted(path.glob("*.mcap")) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def iter_bag_frames(
    path: str | os.PathLike, topic: str | None = None, *, intensity_scale: float | None = None
) -> BagFrames:
    """The PointCloud2 frames of `topic` (or of the bag's only PointCloud2 topic)."""
    return BagFrames(path, topic, intensity_scale=intensity_scale)


def bag_timestamps(path: str | os.PathLike, topic: str | None = None) -> np.ndarray:
    """Receive timestamps (ns) of the topic's messages, in order: an index for random access."""
    reader = _open(Path(path))
    try:
        connections = _connections(reader, Path(path), topic)
        return np.array([t for _, t, _ in reader.messages(connections=connections)], dtype=np.int64)
    finally:
        reader.close()


def frame_arrays(frame: Frame, layout: str) -> tuple[dict[str, np.ndarray], int]:
    """Per-field arrays of a frame in a driver layout, and the row count (organized for Ouster).

    Intensity is strength * 255 (u8 for Autoware); ring / time come from `frame.extra` when there.
    Ouster clouds are organized by ring and azimuth column, with zeros for missing returns.
    """
    fields = {f.name: f for f in LAYOUTS[layout]}
    n = frame.num_points
    arrays: dict[str, np.ndarray] = {"x": frame.coord[:, 0], "y": frame.coord[:, 1], "z": frame.coord[:, 2]}
    strength = frame.strength if frame.strength is not None else np.zeros(n, np.float32)
    if "intensity" in fields:
        scaled = np.clip(strength, 0, 1) * 255
        arrays["intensity"] = (
            np.round(scaled).astype(np.uint8) if fields["intensity"].datatype == UINT8 else scaled.astype(np.float32)
        )
    ring = frame.extra.get("ring")
    for name in ("ring", "channel"):
        if name in fields and ring is not None:
            arrays[name] = ring.astype(np.uint16)
    if "time" in fields and "time" in frame.extra:
        arrays["time"] = frame.extra["time"].astype(np.float32)
    if "rgb" in fields and frame.color is not None:
        from .pointcloud2 import pack_rgb

        arrays["rgb"] = pack_rgb(frame.color)
    if layout != "ouster":
        return arrays, 1
    if ring is None or "column" not in frame.extra:
        raise ValueError(f"frame {frame.name!r}: an organized Ouster cloud needs extra['ring'] and extra['column']")
    rows, columns = int(ring.max()) + 1, int(frame.extra["column"].max()) + 1
    cell = ring.astype(np.int64) * columns + frame.extra["column"]
    organized = {}
    for name, values in arrays.items():
        grid = np.zeros(rows * columns, dtype=values.dtype)
        grid[cell] = values
        organized[name] = grid
    organized["ring"] = np.repeat(np.arange(rows), columns).astype(np.uint16)
    return organized, rows


class BagWriter:
    """Write frames as PointCloud2 messages of one topic: rosbag2 (mcap, db3) or ROS 1 (bag1)."""

    def __init__(
        self, path: str | os.PathLike, format: str = "mcap", topic: str = "/points", layout: str = "velodyne"
    ) -> None:
        if format not in BAG_FORMATS:
            raise ValueError(f"bag format must be one of {BAG_FORMATS}, got {format!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; available: {sorted(LAYOUTS)}")
        self.path, self.format, self.topic, self.layout = Path(path), format, topic, layout
        self._ros1 = format == "bag1"
        self._store = _typestore(self._ros1)
        self._msgtype = "sensor_msgs/msg/PointCloud2"
        self._writer = None
        self._connection = None

    def __enter__(self) -> BagWriter:
        if self._ros1:
            from rosbags.rosbag1 import Writer

            self._writer = Writer(self.path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer

            plugin = StoragePlugin.MCAP if self.format == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connection = self._writer.add_connection(self.topic, self._msgtype, typestore=self._store)
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, frame: Frame, stamp_ns: int | None = None) -> None:
        stamp_ns = frame.stamp_ns if stamp_ns is None else stamp_ns
        arrays, height = frame_arrays(frame, self.layout)
        encoded = encode(LAYOUTS[self.layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[self.layout])
        types = self._store.types
        time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        if self._ros1:
            header = types["std_msgs/msg/Header"](seq=0, stamp=time, frame_id=frame.frame_id or "lidar")
        else:
            header = types["std_msgs/msg/Header"](stamp=time, frame_id=frame.frame_id or "lidar")
        msg = to_message(encoded, types[self._msgtype], types["sensor_msgs/msg/PointField"], header)
        data = (
            self._store.serialize_ros1(msg, self._msgtype)
            if self._ros1
            else self._store.serialize_cdr(msg, self._msgtype)
        )
        self._writer.write(self._connection, stamp_ns, data)
