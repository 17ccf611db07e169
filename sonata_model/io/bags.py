"""PointCloud2 frames from and to bag files, through `rosbags` (no ROS install needed).

Reads rosbag2 (`.mcap` / `.db3`: a bag folder with metadata.yaml, or a bare `.mcap` file) and ROS 1
`.bag`, from a PointCloud2 topic or a Velodyne driver's raw packets (`velodyne_msgs/VelodyneScan`,
decoded into revolutions by `velodyne_bags`).
A damaged bag yields every good frame it holds: undecodable or malformed messages are skipped,
and a file that indexed reading refuses (cut off, no index) is read front to back by `bag_recovery`.
What was skipped is counted in the iterator's `BagReport` and logged.

Random access (`BagSource`) needs an intact bag; a damaged one is read front to back, or extracted to
frame folders first. Writes frames in a real driver's layout (`pointcloud2.LAYOUTS`); labels never go
into a bag, as no driver publishes them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .bag_recovery import Salvage, storage_file
from .frame import Frame
from .labels import LabelSet
from .pointcloud2 import (
    LAYOUT_POINT_STEP,
    LAYOUTS,
    RING_FIELDS,
    UINT8,
    PackedPoints,
    PointCloudError,
    decode,
    pack_points,
    pack_rgb,
    point_extras,
    structured_view,
    to_message,
)
from .velodyne import RevolutionCutter, UnsupportedSensorError, VelodyneCalibration, VelodyneError
from .velodyne_bags import (
    VELODYNE_SCAN,
    azimuth_bounds,
    read_scan,
    register_velodyne_types,
    revolution_frame,
    revolution_spans,
)

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
POINT_TOPIC_TYPES = (POINTCLOUD2, VELODYNE_SCAN)  # topics frames are read from
CalibrationSpec = str | os.PathLike | VelodyneCalibration | None  # a velodyne_pointcloud YAML, or loaded
BAG_FORMATS = ("mcap", "db3", "bag1")
RAW_PACKET_DRIVERS = {  # packet message types that only a LiDAR driver turns into points
    "velodyne_msgs/msg/VelodynePacket": "velodyne_pointcloud or Nebula",
    "pandar_msgs/msg/PandarScan": "the Hesai driver or Nebula",
    "nebula_msgs/msg/NebulaPackets": "Nebula",
    "nebula_msgs/msg/NebulaPacket": "Nebula",
    "ouster_sensor_msgs/msg/PacketMsg": "ouster-ros",
}
log = logging.getLogger(__name__)


class BagError(RuntimeError):
    """A bag that cannot be opened or written, or a topic that is not in it."""


class NoPointCloudError(BagError):
    """A bag without any PointCloud2 topic (raw sensor packets, images...): nothing to read or salvage."""


def _no_clouds(path: Path, topic_types: dict[str, str]) -> NoPointCloudError:
    """The error for a bag whose topics (name -> type) hold no PointCloud2, saying what they hold instead."""
    listed = ", ".join(f"{topic} ({msgtype})" for topic, msgtype in sorted(topic_types.items())) or "none"
    text = f"{path}: no {POINTCLOUD2} (or {VELODYNE_SCAN}) topic; the bag holds {listed}"
    raw = sorted({msgtype for msgtype in topic_types.values() if msgtype in RAW_PACKET_DRIVERS})
    for msgtype in raw:
        text += (
            f". {msgtype} messages are raw sensor packets, not points: decode them with a LiDAR driver "
            f"({RAW_PACKET_DRIVERS[msgtype]}) and record its PointCloud2 output"
        )
    return NoPointCloudError(text)


def _declared_topics(path: Path) -> dict[str, str] | None:
    """Topic -> type as a rosbag2 folder's metadata.yaml declares them; None without a readable one."""
    metadata = (path if path.is_dir() else path.parent) / "metadata.yaml"
    try:
        info = yaml.safe_load(metadata.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: t["topic_metadata"]["type"] for t in info["topics_with_message_count"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


@dataclass
class BagReport:
    """What reading a bag produced: frames read, skipped messages by reason, and why reading ended early."""

    path: str
    frames: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_error: dict[str, str] = field(default_factory=dict)  # reason -> the first error's text
    truncated: str | None = None

    def skip(self, reason: str, error: object) -> None:
        self.skipped[reason] += 1
        self.first_error.setdefault(reason, str(error))

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.frames} frames"]
        for reason, n in self.skipped.items():
            first = self.first_error.get(reason)
            parts.append(f"skipped {n} x {reason}" + (f" (first: {first})" if first else ""))
        if self.truncated:
            parts.append(f"stopped early: {self.truncated}")
        return "; ".join(parts)


@functools.cache
def _typestore(ros1: bool = False):
    """The message types bags are read and written with (built once: registering types takes ~0.1 s)."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_JAZZY)
    register_velodyne_types(store, ros1)
    return store


def _open(path: Path):
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = AnyReader([path], default_typestore=_typestore())
        reader.open()
    except Exception as exc:  # rosbags raises several types for unreadable files
        declared = _declared_topics(path)
        if declared is not None and not set(POINT_TOPIC_TYPES) & set(declared.values()):
            raise _no_clouds(path, declared) from exc
        reader = _open_storage_file(path)
        if reader is None:
            raise BagError(f"cannot open bag {path}: {exc}") from exc
    return reader


def _open_storage_file(folder: Path):
    """The one storage file of a rosbag2 folder whose metadata.yaml rosbags refuses (older rosbag2 wrote an
    empty serialization format), opened on its own; None if there is none or it is unreadable too."""
    from rosbags.highlevel import AnyReader

    file = storage_file(folder) if folder.is_dir() else None
    if file is None:
        return None
    try:
        reader = AnyReader([file], default_typestore=_typestore())
        reader.open()
    except Exception:  # a damaged file: left to the front-to-back reader
        return None
    return reader


def _salvage(path: Path, open_error: BagError) -> Salvage:
    """Front-to-back reader of a bag that indexed reading refused; re-raises if it is no bag at all."""
    file = storage_file(path)
    if file is None:
        raise open_error
    try:
        return Salvage(file)
    except ValueError:
        raise open_error from None


def _choose_topic(path: Path, topics: Iterable[str], topic: str | None) -> str:
    """`topic`, checked against the bag's point topics (PointCloud2, VelodyneScan), or the only one when None."""
    topics = sorted(set(topics))
    if topic is None:
        if len(topics) != 1:
            raise BagError(f"{path}: name a topic; point topics are {topics}")
        return topics[0]
    if topic not in topics:
        raise BagError(f"{path}: no point topic {topic!r}; point topics are {topics}")
    return topic


def _cloud_connections(reader, path: Path, topic: str | None) -> list:
    clouds = [c for c in reader.connections if c.msgtype in POINT_TOPIC_TYPES]
    if not clouds:
        raise _no_clouds(path, {c.topic: c.msgtype for c in reader.connections})
    topic = _choose_topic(path, (c.topic for c in clouds), topic)
    return [c for c in clouds if c.topic == topic]


def _salvaged_counts(salvage: Salvage) -> Counter:
    return Counter(m.topic for m in salvage if m.msgtype in POINT_TOPIC_TYPES)


def list_pointcloud_topics(path: str | os.PathLike) -> dict[str, int]:
    """Point topics (PointCloud2, VelodyneScan) of a bag and their message counts (of a damaged bag: those
    still readable)."""
    path = Path(path)
    try:
        reader = _open(path)
    except NoPointCloudError:
        return {}
    except BagError as exc:
        return dict(_salvaged_counts(_salvage(path, exc)))
    try:
        counts: Counter = Counter()
        for connection in reader.connections:
            if connection.msgtype in POINT_TOPIC_TYPES:
                counts[connection.topic] += connection.msgcount
        return dict(counts)
    finally:
        reader.close()


def cloud_frame(msg, *, name: str, intensity_scale: float | None = None) -> Frame:
    """A Frame of a deserialized PointCloud2: valid points, strength, colour, normals and the other fields.

    extra holds "ring", "time" (the point's time offset in seconds) and every other field of the
    valid points (`pointcloud2.point_extras`). Raises PointCloudError for a malformed cloud.
    """
    cloud = decode(msg, intensity_scale=intensity_scale)
    stamp = msg.header.stamp
    return Frame(
        coord=cloud.coord,
        strength=cloud.strength,
        color=cloud.color,
        normal=cloud.normal,
        stamp_ns=int(stamp.sec) * 10**9 + int(stamp.nanosec),
        frame_id=msg.header.frame_id,
        name=name,
        extra=point_extras(structured_view(msg).reshape(-1), cloud.valid),
    )


def _calibration(calibration: CalibrationSpec) -> VelodyneCalibration | None:
    if calibration is None or isinstance(calibration, VelodyneCalibration):
        return calibration
    return VelodyneCalibration.load(calibration)


class BagFrames:
    """Iterator over the frames of one topic; `.report` says what was read and skipped.

    Frame names are f"{bag name}#{k}" with k the message's position in the topic (skipped ones count),
    or for a VelodyneScan topic the revolution's. `velodyne_calibration` (a velodyne_pointcloud YAML)
    replaces the sensor's factory table.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        topic: str | None = None,
        *,
        intensity_scale: float | None = None,
        velodyne_calibration: CalibrationSpec = None,
    ):
        self.path = Path(path)
        self.topic = topic
        self.intensity_scale = intensity_scale
        self.report = BagReport(str(self.path))
        self._cutter = RevolutionCutter(_calibration(velodyne_calibration))
        self._frames = self._generate()

    def __iter__(self) -> BagFrames:
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        """Stop early and release the bag."""
        self._frames.close()

    def _generate(self) -> Iterator[Frame]:
        try:
            reader = _open(self.path)
        except NoPointCloudError:
            raise
        except BagError as exc:
            salvage = _salvage(self.path, exc)
            try:
                yield from self._salvaged(salvage, exc)
            finally:
                self._log()
            return
        try:
            messages = reader.messages(connections=_cloud_connections(reader, self.path, self.topic))
            for index in itertools.count():
                try:
                    connection, _, raw = next(messages)
                except StopIteration:
                    return
                except Exception as exc:  # a corrupt chunk or record: keep what was read
                    self.report.truncated = f"message {index}: {type(exc).__name__}: {exc}"
                    return
                yield from self._frames_of(reader.deserialize, raw, connection.msgtype, index, ros1=not reader.is2)
        finally:
            reader.close()
            self._log()

    def _salvaged(self, salvage: Salvage, open_error: BagError) -> Iterator[Frame]:
        counts = _salvaged_counts(salvage)
        if not counts:
            raise BagError(
                f"{open_error}; read front to back, no PointCloud2 message is left ({salvage.unattributed} messages "
                f"lost their connection record; {salvage.stopped or 'reached the end of the file'})"
            )
        topic = _choose_topic(self.path, counts, self.topic)
        stores = {False: _typestore(), True: _typestore(ros1=True)}
        index = 0
        for message in salvage:
            if message.topic != topic or message.msgtype not in POINT_TOPIC_TYPES:
                continue
            store = stores[message.ros1]
            deserialize = store.deserialize_ros1 if message.ros1 else store.deserialize_cdr
            yield from self._frames_of(deserialize, message.data, message.msgtype, index, ros1=message.ros1)
            index += 1
        if salvage.unattributed:
            self.report.skipped["message without a connection record"] += salvage.unattributed
        self.report.truncated = f"{open_error}; read front to back: {salvage.stopped or 'to the end of the file'}"

    def _frames_of(
        self, deserialize: Callable[[bytes, str], object], raw, msgtype: str, index: int, ros1: bool
    ) -> list[Frame]:
        try:
            if msgtype == VELODYNE_SCAN:
                frame_id, packets, seconds = read_scan(raw, deserialize, ros1)
            else:
                msg = deserialize(raw, msgtype)
        except VelodyneError as exc:
            self._restart_revolutions()
            self.report.skip("malformed VelodyneScan", f"message {index}: {exc}")
            return []
        except Exception as exc:  # garbage bytes make the deserializer raise anything
            if msgtype == VELODYNE_SCAN:
                self._restart_revolutions()
            self.report.skip("undecodable message", f"message {index}: {type(exc).__name__}: {exc}")
            return []
        if msgtype == VELODYNE_SCAN:
            return self._revolutions(frame_id, packets, seconds, index)
        frame = self._frame(msg, index)
        return [] if frame is None else [frame]

    def _revolutions(self, frame_id: str, packets: np.ndarray, seconds: np.ndarray, index: int) -> list[Frame]:
        try:
            revolutions = list(self._cutter.feed(packets, seconds))
        except UnsupportedSensorError as exc:
            raise BagError(f"{self.path}: {exc}") from exc
        except VelodyneError as exc:
            self._restart_revolutions()
            self.report.skip("malformed VelodyneScan", f"message {index}: {exc}")
            return []
        frames = []
        for revolution in revolutions:
            name = f"{self.path.name}#{self.report.frames}"
            frames.append(revolution_frame(revolution, name=name, frame_id=frame_id))
            self.report.frames += 1
        return frames

    def _restart_revolutions(self) -> None:
        """After a lost message, start afresh: no revolution is pieced together across the gap."""
        self._cutter = RevolutionCutter(self._cutter.calibration)

    def _frame(self, msg, index: int) -> Frame | None:
        try:
            frame = cloud_frame(msg, name=f"{self.path.name}#{index}", intensity_scale=self.intensity_scale)
        except PointCloudError as exc:
            self.report.skip("malformed PointCloud2", f"message {index}: {exc}")
            return None
        self.report.frames += 1
        return frame

    def _log(self) -> None:
        if self.report.skipped or self.report.truncated:
            log.warning("%s", self.report)


def iter_bag_frames(
    path: str | os.PathLike,
    topic: str | None = None,
    *,
    intensity_scale: float | None = None,
    velodyne_calibration: CalibrationSpec = None,
) -> BagFrames:
    """The frames of `topic` (or of the bag's only point topic), in bag order."""
    return BagFrames(path, topic, intensity_scale=intensity_scale, velodyne_calibration=velodyne_calibration)


class BagSource:
    """Random access to one point topic of an intact bag (a FrameSource).

    Opening reads the bag once to index the receive time of every message (of a VelodyneScan topic also
    where each revolution lies); frame i is then read by a time-window query, which seeks to the chunk that
    holds it. For many epochs of training, extract the bag to frame folders instead. A corrupt message
    raises its PointCloudError / BagError.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        topic: str | None = None,
        *,
        intensity_scale: float | None = None,
        velodyne_calibration: CalibrationSpec = None,
    ):
        self.path, self.intensity_scale = Path(path), intensity_scale
        self.calibration = _calibration(velodyne_calibration)
        self.name = f"bag:{self.path}"
        self.label_set: LabelSet | None = None
        try:
            reader = _open(self.path)
        except NoPointCloudError:
            raise
        except BagError as exc:
            raise BagError(f"{exc}; a damaged bag can only be read front to back (iter_bag_frames)") from exc
        try:
            connections = _cloud_connections(reader, self.path, topic)
            self.topic, self.packet_topic = connections[0].topic, connections[0].msgtype == VELODYNE_SCAN
            stamps, bounds = [], []
            for _, t, raw in reader.messages(connections=connections):
                stamps.append(t)
                if self.packet_topic:
                    bounds.append(self._azimuth_bounds(reader, raw, len(stamps) - 1))
            self.timestamps = np.array(stamps, dtype=np.int64)
        finally:
            reader.close()
        if self.packet_topic:
            self.revolutions = revolution_spans(bounds)
            self.message_packet_offset = np.cumsum([0] + [0 if b is None else len(b[0]) for b in bounds])

    def __len__(self) -> int:
        return len(self.revolutions) if self.packet_topic else len(self.timestamps)

    def __getitem__(self, i: int) -> Frame:
        i = range(len(self))[i]  # negative indices count from the end, as the name should
        reader = _open(self.path)
        try:
            if self.packet_topic:
                return self._revolution(reader, i)
            for connection, raw in self._messages(reader, i, i):
                try:
                    msg = reader.deserialize(raw, connection.msgtype)
                except Exception as exc:
                    raise BagError(f"{self.path}: message {i} cannot be deserialized: {exc}") from exc
                return cloud_frame(msg, name=f"{self.path.name}#{i}", intensity_scale=self.intensity_scale)
        finally:
            reader.close()
        raise BagError(f"{self.path}: message {i} (t={self.timestamps[i]}) is gone; was the bag changed after opening?")

    def _messages(self, reader, first: int, last: int) -> Iterator[tuple[object, bytes]]:
        """Messages first..last (positions in the topic), by one time-window query."""
        start, stop = int(self.timestamps[first]), int(self.timestamps[last])
        earlier = int(np.count_nonzero(self.timestamps[:first] == start))  # messages sharing the first stamp
        connections = _cloud_connections(reader, self.path, self.topic)
        window = reader.messages(connections=connections, start=start, stop=stop + 1)
        for connection, _, raw in itertools.islice(window, earlier, earlier + last - first + 1):
            yield connection, raw

    def _azimuth_bounds(self, reader, raw, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Each packet's first and last azimuth, or None for an unreadable message (logged; no revolution
        spans it)."""
        try:
            return azimuth_bounds(self._scan(reader, raw, index)[1])
        except BagError as exc:
            log.warning("%s; its revolutions are left out", exc)
            return None

    def _scan(self, reader, raw, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """A VelodyneScan message's frame id, packets and their stamps."""
        try:
            return read_scan(raw, reader.deserialize, ros1=not reader.is2)
        except Exception as exc:
            raise BagError(f"{self.path}: VelodyneScan message {index} cannot be decoded: {exc}") from exc

    def _revolution(self, reader, i: int) -> Frame:
        span = self.revolutions[i]
        cutter = RevolutionCutter(self.calibration)
        cutter.packets_seen = int(self.message_packet_offset[span.first_message])
        frame_id, found = "", []
        for k, (_, raw) in enumerate(self._messages(reader, span.first_message, span.last_message)):
            frame_id, packets, seconds = self._scan(reader, raw, span.first_message + k)
            try:
                found += cutter.feed(packets, seconds)
            except VelodyneError as exc:
                raise BagError(f"{self.path}: revolution {i}: {exc}") from exc
        revolution = next((r for r in found if r.end_packet == span.end_packet), None)
        if revolution is None:
            raise BagError(f"{self.path}: revolution {i} is gone; was the bag changed after opening?")
        return revolution_frame(revolution, name=f"{self.path.name}#{i}", frame_id=frame_id)


def frame_arrays(frame: Frame, layout: str) -> tuple[dict[str, np.ndarray], int]:
    """Per-field arrays of a frame in a driver layout, and the row count (organized for Ouster).

    Intensity is strength * 255 (u8 for Autoware). Ouster's driver carries the strength as calibrated
    `reflectivity` (u16, 0-255) and signal photons as float `intensity`, here strength * 6e5 / range**2
    (thousands up close, as the sensor reports). Ring / time come from `frame.extra` when there (time
    in seconds; Ouster's `t` in ns). Ouster clouds are organized by ring and azimuth column
    (extra["column"]), with zeros for missing returns, as the driver sends them.
    """
    fields = {f.name: f for f in LAYOUTS[layout]}
    n = frame.num_points
    arrays: dict[str, np.ndarray] = {"x": frame.coord[:, 0], "y": frame.coord[:, 1], "z": frame.coord[:, 2]}
    strength = frame.strength if frame.strength is not None else np.zeros(n, np.float32)
    scaled = np.clip(strength, 0, 1) * 255
    if "reflectivity" in fields:
        arrays["reflectivity"] = np.round(scaled).astype(np.uint16)
        distance_sq = np.maximum(np.einsum("ij,ij->i", frame.coord, frame.coord), 1.0)
        arrays["intensity"] = np.minimum(strength * 6e5 / distance_sq, 65535).astype(np.float32)
    elif "intensity" in fields:
        arrays["intensity"] = (
            np.round(scaled).astype(np.uint8) if fields["intensity"].datatype == UINT8 else scaled.astype(np.float32)
        )
    ring, time = frame.extra.get("ring"), frame.extra.get("time")
    for name in RING_FIELDS:
        if name in fields and ring is not None:
            arrays[name] = ring.astype(np.uint16)
    if "time" in fields and time is not None:
        arrays["time"] = time.astype(np.float32)
    if "t" in fields and time is not None:
        arrays["t"] = np.round(time.astype(np.float64) * 1e9).astype(np.uint32)
    if "rgb" in fields and frame.color is not None:
        arrays["rgb"] = pack_rgb(frame.color)
    if layout != "ouster":
        return arrays, 1
    if ring is None or "column" not in frame.extra:
        raise ValueError(f"frame {frame.name!r}: an organized Ouster cloud needs extra['ring'] and extra['column']")
    rows, columns = int(ring.max(initial=0)) + 1, int(frame.extra["column"].max(initial=0)) + 1
    cell = ring.astype(np.int64) * columns + frame.extra["column"]
    organized = {}
    for name, values in arrays.items():
        grid = np.zeros(rows * columns, dtype=values.dtype)
        grid[cell] = values
        organized[name] = grid
    organized["ring"] = np.repeat(np.arange(rows), columns).astype(np.uint16)
    return organized, rows


class BagWriter:
    """Writes frames as PointCloud2 messages of one topic: rosbag2 version 9 (mcap, db3) or ROS 1 (bag1).

    Use as a context manager; the bag is complete (indexed) when the block exits.
    """

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
        self._connection = self._writer.add_connection(self.topic, POINTCLOUD2, typestore=self._store)
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()
        self._writer = None

    def write(self, frame: Frame, stamp_ns: int | None = None) -> None:
        """Append one frame in the writer's driver layout, stamped (header and receive time) `stamp_ns`, by
        default frame.stamp_ns."""
        arrays, height = frame_arrays(frame, self.layout)
        packed = pack_points(LAYOUTS[self.layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[self.layout])
        self.write_points(packed, frame.stamp_ns if stamp_ns is None else stamp_ns, frame.frame_id)

    def write_points(self, packed: PackedPoints, stamp_ns: int, frame_id: str = "") -> None:
        """Append one cloud of any layout (e.g. `segmentation_cloud.segmentation_points`), stamped (header and
        receive time) `stamp_ns`, in frame `frame_id` ("lidar" when empty)."""
        if self._writer is None:
            raise BagError(f"{self.path}: write inside `with BagWriter(...) as writer:`")
        types = self._store.types
        time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        header_fields = {"stamp": time, "frame_id": frame_id or "lidar"}
        if self._ros1:
            header_fields["seq"] = 0
        header = types["std_msgs/msg/Header"](**header_fields)
        msg = to_message(packed, types[POINTCLOUD2], types["sensor_msgs/msg/PointField"], header)
        serialize = self._store.serialize_ros1 if self._ros1 else self._store.serialize_cdr
        self._writer.write(self._connection, stamp_ns, serialize(msg, POINTCLOUD2))
