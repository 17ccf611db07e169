"""LZF (liblzf's format, as PCL's `binary_compressed` PCD files use it), in Python and numpy.

A stream is a sequence of tokens, each starting with a control byte `c`:
  c < 32        literal run: the next c + 1 bytes are copied to the output;
  c >> 5 in 1-6 back-reference of (c >> 5) + 2 bytes;
  c >> 5 == 7   back-reference of 9 + the next byte;
and a back-reference then takes one more byte `b`: it copies from distance ((c & 31) << 8 | b) + 1
behind the output end, byte by byte, so a distance shorter than the length repeats a pattern.

Both directions loop over tokens in Python (a token is at least 3 bytes, literal runs up to 32),
never over bytes: the compressor finds its matches with vectorised numpy for a fixed set of
distances (the element sizes of the field-by-field planes PCL compresses), not with liblzf's hash
table, so it compresses less well than liblzf but writes streams that any LZF decoder reads.
"""

from __future__ import annotations

import bisect

import numpy as np

MAX_LITERAL = 32
MIN_MATCH, MAX_MATCH = 3, 264
MAX_DISTANCE = 8192
MATCH_DISTANCES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 256, 1024, MAX_DISTANCE)


class LzfError(ValueError):
    """A corrupt LZF stream (what is wrong and at which input byte)."""


def decompress(data: bytes | bytearray | memoryview, size: int) -> bytearray:
    """The `size` bytes that the LZF stream `data` decodes to; LzfError when it does not decode to exactly that."""
    src = bytes(data)
    out = bytearray(size)
    end = len(src)
    ip = op = 0
    while ip < end:
        ctrl = src[ip]
        ip += 1
        if ctrl < 32:
            length = ctrl + 1
            if ip + length > end:
                raise LzfError(f"literal run of {length} bytes at input byte {ip - 1} runs past the end ({end} bytes)")
            if op + length > size:
                raise LzfError(f"input byte {ip - 1}: output exceeds the declared {size} bytes")
            out[op : op + length] = src[ip : ip + length]
            ip += length
            op += length
            continue
        length = ctrl >> 5
        if length == 7:
            if ip >= end:
                raise LzfError(f"back-reference at input byte {ip - 1} is cut off")
            length += src[ip]
            ip += 1
        if ip >= end:
            raise LzfError(f"back-reference at input byte {ip - 1} is cut off")
        distance = ((ctrl & 31) << 8 | src[ip]) + 1
        ip += 1
        length += 2
        ref = op - distance
        if ref < 0:
            raise LzfError(f"back-reference at input byte {ip - 2} points {-ref} bytes before the start of the output")
        if op + length > size:
            raise LzfError(f"input byte {ip - 2}: output exceeds the declared {size} bytes")
        if distance >= length:
            out[op : op + length] = out[ref : ref + length]
        else:  # overlapping copy: the last `distance` bytes repeat
            out[op : op + length] = (out[ref:op] * -(-length // distance))[:length]
        op += length
    if op != size:
        raise LzfError(f"stream decodes to {op} bytes, {size} declared")
    return out


def compress(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """An LZF stream of `data` (see the module docstring for how matches are found)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = len(buf)
    match_length, match_distance = _matches(buf)
    candidate = match_length >= MIN_MATCH
    # starts of runs of candidate positions: where the next match may begin after literals
    run_starts = np.flatnonzero(candidate & ~np.concatenate(([False], candidate[:-1]))).tolist()
    lengths, distances, is_candidate = match_length.tolist(), match_distance.tolist(), candidate.tolist()
    raw = bytes(buf)
    pieces: list[bytes] = []
    i = 0
    while i < n:
        if is_candidate[i]:
            j = i
        else:
            k = bisect.bisect_right(run_starts, i)
            j = run_starts[k] if k < len(run_starts) else n
        for start in range(i, j, MAX_LITERAL):
            chunk = raw[start : min(start + MAX_LITERAL, j)]
            pieces.append(bytes((len(chunk) - 1,)) + chunk)
        if j >= n:
            break
        length, offset = min(lengths[j], MAX_MATCH) - 2, distances[j] - 1
        if length < 7:
            pieces.append(bytes((length << 5 | offset >> 8, offset & 0xFF)))
        else:
            pieces.append(bytes((7 << 5 | offset >> 8, length - 7, offset & 0xFF)))
        i = j + length + 2
    return b"".join(pieces)


def _matches(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the longest run of bytes equal to those `d` earlier over MATCH_DISTANCES, and that `d`."""
    n = len(buf)
    best_length = np.zeros(n, np.int64)
    best_distance = np.ones(n, np.int64)
    for distance in MATCH_DISTANCES:
        if distance >= n:
            break
        equal = buf[distance:] == buf[:-distance]  # equal[k]: position k + distance repeats k
        positions = np.arange(len(equal))
        next_differ = np.minimum.accumulate(np.where(equal, len(equal), positions)[::-1])[::-1]
        run = np.zeros(n, np.int64)
        run[distance:] = next_differ - positions
        better = run > best_length
        best_length[better] = run[better]
        best_distance[better] = distance
    return best_length, best_distance
