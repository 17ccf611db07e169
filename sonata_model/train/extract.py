"""`sonata-extract`: turn recordings into per-frame folders once, for fast random access in training.

    sonata-extract --data bag:/data/run1.mcap:/points --out /data/extracted [--workers 2] [--every 2]

The source is read front to back (bags are sequential); frames are written by a pool of processes.
Frames already present are skipped, and each frame is written atomically, so an interrupted extraction
is resumed by running the same command again. Frames are named after the source (`run1_000042` for
run1.mcap) and each records where it was read from: a name already holding another source's frame (two
bags called run1.mcap, from two folders) stops the extraction instead of being taken as done. Ends with
a report: written, already there, unreadable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from ..io.bags import BagError, iter_bag_frames
from ..io.datasets import DatasetError, FrameFolderWriter, write_frame_folder
from ..io.frame import Frame
from ..io.pcd import PcdError
from ..io.sources import SKIPPABLE, SPEC_SYNTAX, FrameSource, SourceSpecError, open_source, parse_spec


class ExtractError(ValueError):
    """Frames of another source already hold the names this extraction would write."""


def _write(root: str, frame: Frame, source: str) -> bool:
    return write_frame_folder(Path(root), frame, source)


def _source_id(spec: str) -> str:
    """The spec with its path made absolute: the same source reads the same from any working folder."""
    kind, path, option = parse_spec(spec)
    return f"{kind}:{Path(path).resolve()}" + (f":{option}" if option else "")


def readable_frames(spec: str, source: FrameSource | None, every: int, counts: Counter):
    """(index, frame) of every `every`-th readable frame of `source` (None: the bag of `spec`, read
    sequentially); unreadable ones are counted in `counts`."""
    if source is None:  # sequential read: fast, and damaged bags still yield their good frames
        _, path, option = parse_spec(spec)
        frames = iter_bag_frames(path, option)
        for index, frame in enumerate(frames):
            if index % every == 0:
                yield index, frame
        counts["unreadable"] += sum(frames.report.skipped.values())
        return
    for index in range(0, len(source), every):
        try:
            frame = source[index]
        except SKIPPABLE:
            counts["unreadable"] += 1
            continue
        yield index, frame


def extract(spec: str, out: str | Path, workers: int = 2, every: int = 1, label_set: str | None = None) -> Counter:
    """Write the frames of `spec` as a frame folder; `label_set` (name or YAML path) is the one the source
    is read under (its own by default), recorded in index.json."""
    kind, path, _ = parse_spec(spec)
    stem = Path(path).name.split(".")[0] or "frame"
    source = None if kind == "bag" else open_source(spec, label_set=label_set)
    own = source.label_set.name if source is not None and source.label_set is not None else None
    writer = FrameFolderWriter(out, label_set=label_set or own)
    counts: Counter = Counter()
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = set()
        for index, frame in readable_frames(spec, source, every, counts):
            frame.name, origin = f"{stem}_{index:06d}", f"{_source_id(spec)}#{index}"
            if writer.exists(frame.name):
                if writer.source_of(frame.name) not in (None, origin):
                    raise ExtractError(
                        f"{out}: {frame.name} holds {writer.source_of(frame.name)}, not {origin} (two sources "
                        "with the same name): extract this one into another folder; frames:DIR can be repeated"
                    )
                counts["already there"] += 1
                continue
            pending.add(pool.submit(_write, str(out), frame, origin))
            if len(pending) >= 4 * max(1, workers):
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                counts["written"] += sum(f.result() for f in done)
            _progress(counts, start)
        for future in pending:
            counts["written"] += future.result()
    writer.finish()
    _progress(counts, start)
    print(file=sys.stderr)
    return counts


def _progress(counts: Counter, start: float) -> None:
    total = sum(counts.values())
    rate = total / max(time.perf_counter() - start, 1e-9)
    print(
        f"\r{counts['written']} written, {counts['already there']} already there, {counts['unreadable']} "
        f"unreadable ({rate:.1f} frames/s)",
        end="",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sonata-extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help=f"source spec: {SPEC_SYNTAX}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    parser.add_argument(
        "--label-set", help="label set (name or YAML path) to read the source under, recorded in index.json"
    )
    args = parser.parse_args(argv)
    try:
        counts = extract(args.data, args.out, args.workers, max(1, args.every), args.label_set)
    except (BagError, DatasetError, PcdError, SourceSpecError, ExtractError) as exc:
        print(f"sonata-extract: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {counts['written']} frames written, {counts['already there']} already there, "
        f"{counts['unreadable']} unreadable (read with frames:{args.out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
