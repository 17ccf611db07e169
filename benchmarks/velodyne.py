"""Reading a Velodyne packet bag: ms per revolution to decode the packets and to read the bag end to end.

    python benchmarks/velodyne.py [--bag ../shared/real/nebula-driver-frames/bags/vls128] [--repeats 20] [--record]

The bag's VelodyneScan messages are read once; `decode_ms` times `velodyne.decode_packets` + the
revolution cut on all of them (per revolution); `bag_read_ms` the `iter_bag_frames` pass (storage,
messages, decoding, cutting, Frames) per revolution after the first one, whose time also holds the bag's
opening (`first_frame_ms`: rosbags builds its message types once per bag). A sensor spinning at 10 Hz
sends one revolution per 100 ms: the ratio says how far faster than real time a long recording is read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import emit, summarize

from sonata_model.io.bags import _open, iter_bag_frames
from sonata_model.io.velodyne import PRODUCTS, RevolutionCutter, packet_product
from sonata_model.io.velodyne_bags import VELODYNE_SCAN, read_scan

REAL_BAG = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "nebula-driver-frames" / "bags" / "vls128"


def scans(bag: Path) -> list:
    """(packets, seconds) of every VelodyneScan message of the bag, in order."""
    reader = _open(bag)
    try:
        topics = [c for c in reader.connections if c.msgtype == VELODYNE_SCAN]
        messages = reader.messages(connections=topics)
        return [read_scan(raw, reader.deserialize, not reader.is2)[1:] for _, _, raw in messages]
    finally:
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", type=Path, default=REAL_BAG)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--name", default="velodyne_packets", help="record name (benchmarks/results/NAME.json)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    messages = scans(args.bag)
    decode_ms, read_ms, first_ms, revolutions = [], [], [], 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        cutter = RevolutionCutter()
        found = [r for packets, seconds in messages for r in cutter.feed(packets, seconds)]
        decode_ms.append((time.perf_counter() - start) * 1e3 / len(found))
        start = time.perf_counter()
        frames = iter_bag_frames(args.bag)
        next(frames)
        first = time.perf_counter()
        rest = sum(1 for _ in frames)
        first_ms.append((first - start) * 1e3)
        read_ms.append((time.perf_counter() - first) * 1e3 / rest)
        revolutions = len(found)
    points = [len(r.xyz) for r in found]
    packets = sum(len(p) for p, _ in messages)
    read = summarize(read_ms)
    emit(
        args.name,
        {
            "bag": str(args.bag),
            "sensor": PRODUCTS[packet_product(messages[0][0])][0],
            "messages": len(messages),
            "packets": packets,
            "revolutions": revolutions,
            "points_per_revolution": round(sum(points) / len(points)),
            "decode_ms": summarize(decode_ms),
            "first_frame_ms": summarize(first_ms),
            "bag_read_ms": read,
            "faster_than_10hz_sensor": round(100.0 / read["median_ms"], 1),
        },
        args.record,
    )


if __name__ == "__main__":
    main()
