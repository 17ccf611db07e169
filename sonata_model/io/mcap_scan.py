"""Recover the messages of an MCAP file whose end is missing (a recorder killed mid-write).

Indexed readers need the footer and summary at the end of the file; a cut-off file has neither. This
scans the records front to back (the MCAP record framing: opcode u8, length u64 LE, content), follows
schema and channel definitions, decompresses chunks (none, lz4, zstd), and yields every complete
message up to the point where the file stops making sense.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
SCHEMA, CHANNEL, MESSAGE, CHUNK, FOOTER = 0x03, 0x04, 0x05, 0x06, 0x02


@dataclass
class ScanResult:
    stopped: str | None = None  # why the scan ended before a clean end of file, if it did


def _string(data: memoryview, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", data, pos)
    return bytes(data[pos + 4 : pos + 4 + length]).decode(), pos + 4 + length


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")


def scan_messages(path: str | Path, result: ScanResult) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, schema name, log time ns, serialized message) of every complete message, in file order."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:8]) != MAGIC:
        result.stopped = "not an MCAP file (bad magic)"
        return
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, int]] = {}
    try:
        yield from _records(data, 8, len(data), schemas, channels, result)
    except (struct.error, ValueError, UnicodeDecodeError, RuntimeError) as exc:
        result.stopped = f"corrupt record: {exc}"


def _records(data: memoryview, pos: int, end: int, schemas: dict, channels: dict, result: ScanResult):
    while pos < end:
        if pos + 9 > end:
            result.stopped = f"file ends inside a record header at byte {pos}"
            return
        opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        start, stop = pos + 9, pos + 9 + length
        if stop > end:
            result.stopped = f"file ends inside a record at byte {pos} ({length} bytes announced)"
            return
        if opcode == SCHEMA:
            schema_id = struct.unpack_from("<H", data, start)[0]
            schemas[schema_id], _ = _string(data, start + 2)
        elif opcode == CHANNEL:
            channel_id, schema_id = struct.unpack_from("<HH", data, start)
            topic, _ = _string(data, start + 4)
            channels[channel_id] = (topic, schema_id)
        elif opcode == MESSAGE:
            channel_id, _, log_time = struct.unpack_from("<HIQ", data, start)
            topic, schema_id = channels[channel_id]
            yield topic, schemas.get(schema_id, ""), log_time, bytes(data[start + 22 : stop])
        elif opcode == CHUNK:
            size = struct.unpack_from("<Q", data, start + 16)[0]
            compression, pos_records = _string(data, start + 28)
            (records_length,) = struct.unpack_from("<Q", data, pos_records)
            inner = _decompress(compression, bytes(data[pos_records + 8 : pos_records + 8 + records_length]), size)
            yield from _records(memoryview(inner), 0, len(inner), schemas, channels, result)
        elif opcode == FOOTER:
            return
        pos = stop
