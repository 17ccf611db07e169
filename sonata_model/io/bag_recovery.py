"""Messages of a bag file whose end is missing or damaged (a recorder killed mid-write, a cut copy).

Indexed readers refuse such files: MCAP and ROS 1 bags keep their index at the end, and SQLite
rejects a file shorter than its header says. This module reads them front to back instead and yields
every complete message up to the point where the file stops making sense:

- MCAP: the record framing (opcode u8, length u64 LE), schema and channel records, chunks
  (none / lz4 / zstd) - works without summary or footer.
- ROS 1 (v2.0): records of (header length u32, `name=value` fields, data length u32, data), chunks
  (none / bz2 / lz4) holding connection and message records. `rosbag record` writes each connection
  record before its first message; a message whose connection record was lost cannot be decoded and
  is counted in `unattributed`.
- rosbag2 SQLite: opened read-only with `writable_schema` (which lets SQLite open a short file),
  messages read by id until the first one that is missing or unreadable.

Files are memory-mapped, so a large bag is not read into memory.
"""

from __future__ import annotations

import bz2
import mmap
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MCAP_MAGIC = b"\x89MCAP0\r\n"
ROS1_MAGIC = b"#ROSBAG V2.0\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
STORAGE_SUFFIXES = (".mcap", ".db3", ".bag")
CORRUPT = (struct.error, ValueError, KeyError, OSError, RuntimeError)  # what garbage bytes raise here


@dataclass(frozen=True)
class RawMessage:
    topic: str
    msgtype: str  # ROS 2 spelling, e.g. sensor_msgs/msg/PointCloud2
    timestamp: int  # receive time, ns
    data: bytes | memoryview
    ros1: bool  # serialized as ROS 1, else CDR


def storage_file(path: Path) -> Path | None:
    """The one storage file of a bag path (a bare file, or a rosbag2 folder holding exactly one)."""
    if path.is_file():
        return path
    found = [p for p in sorted(path.glob("*")) if p.suffix in STORAGE_SUFFIXES] if path.is_dir() else []
    return found[0] if len(found) == 1 else None


class Salvage:
    """Iterable of the complete messages of a damaged bag file; `stopped` says where and why it ended."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            magic = f.read(16)
        if magic.startswith(MCAP_MAGIC):
            self._scan = self._mcap
        elif magic.startswith(ROS1_MAGIC):
            self._scan = self._ros1
        elif magic.startswith(SQLITE_MAGIC):
            self._scan = self._sqlite
        else:
            raise ValueError(f"{self.path}: not an MCAP, ROS 1 or SQLite bag (unknown magic {magic[:8]!r})")
        self.stopped: str | None = None
        self.unattributed = 0

    def __iter__(self) -> Iterator[RawMessage]:
        self.stopped, self.unattributed = None, 0
        yield from self._scan()

    def _mapped(self) -> memoryview:
        with self.path.open("rb") as f:
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    # ------------------------------------------------------------------------------------------ MCAP

    def _mcap(self) -> Iterator[RawMessage]:
        data = self._mapped()
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        try:
            yield from self._mcap_records(data, len(MCAP_MAGIC), schemas, channels)
        except CORRUPT as exc:
            self.stopped = f"corrupt record: {type(exc).__name__}: {exc}"

    def _mcap_records(self, data: memoryview, pos: int, schemas: dict, channels: dict) -> Iterator[RawMessage]:
        end = len(data)
        while pos < end:
            if pos + 9 > end:
                self.stopped = f"file ends inside a record header at byte {pos}"
                return
            opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            start, stop = pos + 9, pos + 9 + length
            if stop > end:
                self.stopped = f"file ends inside a record at byte {pos} ({length} bytes announced)"
                return
            if opcode == 0x03:  # schema: id u16, name
                schemas[struct.unpack_from("<H", data, start)[0]] = _mcap_string(data, start + 2)[0]
            elif opcode == 0x04:  # channel: id u16, schema id u16, topic
                channel_id, schema_id = struct.unpack_from("<HH", data, start)
                channels[channel_id] = (_mcap_string(data, start + 4)[0], schemas.get(schema_id, ""))
            elif opcode == 0x05:  # message: channel u16, sequence u32, log time u64, publish time u64
                channel_id, _, log_time = struct.unpack_from("<HIQ", data, start)
                if channel_id not in channels:
                    self.unattributed += 1
                else:
                    topic, msgtype = channels[channel_id]
                    yield RawMessage(topic, msgtype, log_time, data[start + 22 : stop], ros1=False)
            elif opcode == 0x06:  # chunk: start, end, uncompressed size u64, crc u32, compression, records
                compression, records_at = _mcap_string(data, start + 28)
                (records_length,) = struct.unpack_from("<Q", data, records_at)
                inner = _decompress(compression, data[records_at + 8 : records_at + 8 + records_length])
                yield from self._mcap_records(memoryview(inner), 0, schemas, channels)
            elif opcode == 0x02:  # footer: the file is complete after all
                return
            pos = stop

    # ----------------------------------------------------------------------------------------- ROS 1

    def _ros1(self) -> Iterator[RawMessage]:
        connections: dict[int, tuple[str, str]] = {}
        try:
            yield from self._ros1_records(self._mapped(), len(ROS1_MAGIC), connections)
        except CORRUPT as exc:
            self.stopped = f"corrupt record: {type(exc).__name__}: {exc}"

    def _ros1_records(self, data: memoryview, pos: int, connections: dict) -> Iterator[RawMessage]:
        end = len(data)
        while pos < end:
            record = _ros1_record(data, pos)
            if record is None:
                self.stopped = f"file ends inside a record at byte {pos}"
                return
            header, body, pos = record
            op = header.get("op", b"\x00")[0]
            if op == 0x05:  # chunk
                inner = _decompress(header["compression"].decode(), body)
                yield from self._ros1_records(memoryview(inner), 0, connections)
            elif op == 0x07:  # connection: header conn, topic; body = connection header with the type
                fields = _ros1_fields(body)
                msgtype = _ros2_name(fields["type"].decode())
                connections[struct.unpack("<I", header["conn"])[0]] = (header["topic"].decode(), msgtype)
            elif op == 0x02:  # message data: header conn, time (sec u32, nsec u32)
                conn = struct.unpack("<I", header["conn"])[0]
                if conn not in connections:
                    self.unattributed += 1
                    continue
                sec, nsec = struct.unpack("<II", header["time"])
                topic, msgtype = connections[conn]
                yield RawMessage(topic, msgtype, sec * 10**9 + nsec, body, ros1=True)

    # ---------------------------------------------------------------------------------- rosbag2 SQLite

    def _sqlite(self) -> Iterator[RawMessage]:
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA writable_schema = ON")  # lets SQLite open a file shorter than its header says
            topics = {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, name, type FROM topics")}
            (next_id,) = db.execute("SELECT MIN(id) FROM messages").fetchone()
            while next_id is not None:
                row = db.execute("SELECT topic_id, timestamp, data FROM messages WHERE id = ?", (next_id,)).fetchone()
                if row is None:
                    return  # past the last message
                next_id += 1
                if row[0] not in topics:
                    self.unattributed += 1
                    continue
                topic, msgtype = topics[row[0]]
                yield RawMessage(topic, msgtype, row[1], row[2], ros1=False)
        except sqlite3.DatabaseError as exc:
            self.stopped = f"SQLite: {exc}"
        finally:
            db.close()


def _mcap_string(data: memoryview, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", data, pos)
    return bytes(data[pos + 4 : pos + 4 + length]).decode(), pos + 4 + length


def _ros1_record(data: memoryview, pos: int) -> tuple[dict[str, bytes], memoryview, int] | None:
    """(header fields, body, next position) of the record at `pos`, or None if the file ends inside it."""
    if pos + 4 > len(data):
        return None
    (header_length,) = struct.unpack_from("<I", data, pos)
    body_at = pos + 4 + header_length + 4
    if body_at > len(data):
        return None
    header = _ros1_fields(data[pos + 4 : body_at - 4])
    (body_length,) = struct.unpack_from("<I", data, body_at - 4)
    if body_at + body_length > len(data):
        return None
    return header, data[body_at : body_at + body_length], body_at + body_length


def _ros1_fields(block: memoryview) -> dict[str, bytes]:
    """A ROS 1 header block: repeated (length u32, b"name=value")."""
    fields, pos = {}, 0
    while pos < len(block):
        (length,) = struct.unpack_from("<I", block, pos)
        name, sep, value = bytes(block[pos + 4 : pos + 4 + length]).partition(b"=")
        if not sep or pos + 4 + length > len(block):
            raise ValueError(f"malformed ROS 1 header field at offset {pos}")
        fields[name.decode()] = value
        pos += 4 + length
    return fields


def _ros2_name(ros1_type: str) -> str:
    """sensor_msgs/PointCloud2 -> sensor_msgs/msg/PointCloud2."""
    package, _, name = ros1_type.partition("/")
    return f"{package}/msg/{name}"


def _decompress(compression: str, data: memoryview) -> bytes | memoryview:
    if compression in ("", "none"):
        return data
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if compression == "bz2":
        return bz2.decompress(data)
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")
