"""`sonata-synth`: write a labelled synthetic drive as a bag, a SemanticKITTI sequence or frame folders.

    sonata-synth --sensor hdl64 --frames 100 --seed 0 --format mcap --out drive/

Bags (mcap, db3, bag1) hold the clouds in the sensor's driver layout, as a recorded drive would;
bags carry no labels, so the labelled frames are written next to them as frame folders
(`<out>/labels/`, readable as `frames:<out>/labels`). `kitti` writes `sequences/00` under --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

from ..io.bags import BAG_FORMATS, BagWriter
from ..io.datasets import FrameFolderWriter, write_kitti
from ..io.frame import Frame
from .drive import generate_drive
from .sensors import SENSORS, get_sensor

FORMATS = (*BAG_FORMATS, "kitti", "frames")


def _progress(frames: Iterator[Frame], total: int) -> Iterator[Frame]:
    start = time.perf_counter()
    for done, frame in enumerate(frames, 1):
        yield frame
        elapsed = time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate else 0.0
        print(f"\r{done}/{total} frames, {rate:.1f} frames/s, ETA {eta:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensor", default="hdl64", choices=sorted(SENSORS))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="mcap", choices=FORMATS)
    parser.add_argument("--topic", default="/points", help="bag topic")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    frames = _progress(generate_drive(args.sensor, frames=args.frames, seed=args.seed), args.frames)
    if args.format == "kitti":
        count = write_kitti(args.out, "00", frames)
        print(f"wrote {count} frames to {args.out}/sequences/00 (read with kitti:{args.out})")
        return 0
    labels = FrameFolderWriter(args.out if args.format == "frames" else f"{args.out}/labels", label_set="synthetic")
    if args.format == "frames":
        for frame in frames:
            labels.write(frame)
        labels.finish()
        print(f"wrote {args.frames} frames to {args.out} (read with frames:{args.out})")
        return 0
    bag = f"{args.out}/drive.bag" if args.format == "bag1" else f"{args.out}/drive"
    with BagWriter(bag, format=args.format, topic=args.topic, layout=get_sensor(args.sensor).layout) as writer:
        for frame in frames:
            writer.write(frame)
            labels.write(frame)
    labels.finish()
    print(f"wrote {args.frames} frames to {bag} (topic {args.topic}) and their labels to {args.out}/labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
