"""Frames of a bag's `velodyne_msgs/VelodyneScan` topic: the raw packets decoded into revolutions.

`bags.BagFrames` and `bags.BagSource` read a packet topic through this module as they read a PointCloud2
topic: each frame is one revolution (`velodyne.RevolutionCutter`), named f"{bag}#{k}" with k the
revolution's position in the topic, stamped with its first packet, with per-point ring and time offset.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .frame import Frame
from .velodyne import PACKET_BYTES, Revolution, VelodyneError, wrap_cuts

VELODYNE_SCAN = "velodyne_msgs/msg/VelodyneScan"
_DEFINITIONS = {  # (ROS 2, ROS 1) message definitions of the velodyne_msgs package
    "velodyne_msgs/msg/VelodynePacket": (
        "builtin_interfaces/Time stamp\nuint8[1206] data\n",
        "time stamp\nuint8[1206] data\n",
    ),
    VELODYNE_SCAN: (
        "std_msgs/Header header\nvelodyne_msgs/VelodynePacket[] packets\n",
        "Header header\nvelodyne_msgs/VelodynePacket[] packets\n",
    ),
}


def register_velodyne_types(store, ros1: bool = False) -> None:
    """Teach a rosbags typestore velodyne_msgs, so that bags without embedded definitions (sqlite3) decode."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for name, (ros2_text, ros1_text) in _DEFINITIONS.items():
        types.update(get_types_from_msg(ros1_text if ros1 else ros2_text, name))
    store.register(types)


def scan_packets(msg) -> tuple[np.ndarray, np.ndarray]:
    """The (P, 1206) uint8 packets of a deserialized VelodyneScan and their stamps in seconds (P,)."""
    packets = msg.packets
    if not packets:
        return np.zeros((0, PACKET_BYTES), np.uint8), np.zeros(0)
    data = [np.asarray(packet.data, np.uint8).reshape(-1) for packet in packets]
    if any(len(d) != PACKET_BYTES for d in data):
        raise VelodyneError(f"packets must hold {PACKET_BYTES} bytes; got {sorted({len(d) for d in data})}")
    seconds = np.array([packet.stamp.sec + packet.stamp.nanosec * 1e-9 for packet in packets], np.float64)
    return np.stack(data), seconds


_CDR_LITTLE_ENDIAN = (0x00, 0x01)
_PACKET_STRIDE = 1216  # stamp (8 bytes) + 1206 data bytes, padded to the next stamp's 4-byte alignment


def scan_from_cdr(raw) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(frame_id, packets, stamps in s) of a little-endian CDR VelodyneScan, read in place: the packets are a
    strided view of the message bytes (deserializing 600 packets object by object costs more than decoding
    them). None for another encoding; raises VelodyneError for a message shorter than it says."""
    data = np.frombuffer(raw, np.uint8)
    if len(data) < 16 or tuple(data[:2]) != _CDR_LITTLE_ENDIAN:
        return None
    body = data[4:]  # CDR aligns relative to the end of the 4-byte encapsulation header
    length = int(body[8:12].view("<u4")[0])
    frame_id = bytes(body[12 : 12 + length]).rstrip(b"\0").decode("utf-8", "replace")
    at = (12 + length + 3) // 4 * 4
    if len(body) < at + 4:
        raise VelodyneError(f"VelodyneScan of {len(data)} bytes ends inside its header")
    count = int(body[at : at + 4].view("<u4")[0])
    start = at + 4
    if count and len(body) < start + (count - 1) * _PACKET_STRIDE + 8 + PACKET_BYTES:
        raise VelodyneError(f"VelodyneScan of {len(data)} bytes is too short for its {count} packets")
    buffer, offset = body.base if body.base is not None else body, 4 + start
    packets = np.ndarray((count, PACKET_BYTES), np.uint8, buffer, offset + 8, (_PACKET_STRIDE, 1))
    sec = np.ndarray((count,), "<i4", buffer, offset, (_PACKET_STRIDE,))
    nanosec = np.ndarray((count,), "<u4", buffer, offset + 4, (_PACKET_STRIDE,))
    return frame_id, packets, sec + nanosec * 1e-9


def read_scan(raw, deserialize, ros1: bool) -> tuple[str, np.ndarray, np.ndarray]:
    """(frame_id, packets, stamps in s) of a serialized VelodyneScan: in place when CDR, else deserialized."""
    scan = None if ros1 else scan_from_cdr(raw)
    if scan is not None:
        return scan
    msg = deserialize(raw, VELODYNE_SCAN)
    return (msg.header.frame_id, *scan_packets(msg))


def revolution_frame(revolution: Revolution, *, name: str, frame_id: str) -> Frame:
    """A Frame of one revolution: strength = intensity / 255 (Velodyne's calibrated reflectivity, as the
    node scales it), extra ring and time (seconds after the frame's stamp)."""
    time = np.maximum(revolution.time - revolution.stamp, 0.0).astype(np.float32)
    return Frame(
        coord=revolution.xyz,
        strength=revolution.intensity.astype(np.float32) / np.float32(255),
        stamp_ns=round(revolution.stamp * 1e9),
        frame_id=frame_id,
        name=name,
        extra={"ring": revolution.ring, "time": time},
    )


@dataclass(frozen=True)
class RevolutionSpan:
    """Where revolution k lies in the topic: messages first..last (positions) and its global packet range."""

    first_message: int
    last_message: int
    start_packet: int  # the packet whose wrap began it
    end_packet: int  # the packet whose wrap ended it


def revolution_spans(
    packet_azimuths: Iterable[tuple[np.ndarray, np.ndarray] | None], phase: int = 0
) -> list[RevolutionSpan]:
    """The complete revolutions of a topic from each message's packets' (first, last) block azimuths.

    Cut by `velodyne.wrap_cuts`, as the streaming decoder cuts; a revolution's messages begin one packet
    before its starting cut, so that decoding them alone finds that cut again. A message given as None
    (unreadable) breaks the stream: no revolution spans it, as the streaming reader starts afresh after it.
    """
    owners: list[np.ndarray] = []
    runs: list[list[int]] = [[]]  # cuts between breaks
    previous_first, previous_was_cut, seen = None, False, 0
    for m, bounds in enumerate(packet_azimuths):
        if bounds is None:
            runs.append([])
            previous_first, previous_was_cut = None, False
            continue
        first, last = bounds
        found, previous_first = wrap_cuts(first, last, phase, previous_first, previous_was_cut)
        runs[-1].extend(seen + p for p in found)
        if len(first):
            previous_was_cut = bool(found) and found[-1] == len(first) - 1
        owners.append(np.full(len(first), m))
        seen += len(first)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    return [
        RevolutionSpan(int(owner[start - 1]), int(owner[end]), start, end)
        for cuts in runs
        for start, end in itertools.pairwise(cuts)
    ]


def azimuth_bounds(packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each packet's first and last block azimuth (0.01 deg) straight from its bytes."""
    first = packets[:, 2].astype(np.int64) | packets[:, 3].astype(np.int64) << 8
    last = packets[:, 1102].astype(np.int64) | packets[:, 1103].astype(np.int64) << 8
    return first, last
