"""Writes liblzf_compressed.pcd: a binary_compressed PCD whose LZF stream comes from the real liblzf.

Run once with python-lzf (liblzf 3.6) installed, outside the project's environment:
    pip install python-lzf==0.2.6 numpy && python test/data/liblzf_compressed.py test/data/liblzf_compressed.pcd
`test_pcd.test_a_stream_compressed_by_liblzf_decodes_to_its_points` rebuilds the same arrays (`arrays()`).
The stream holds 451 literal runs and 521 back-references, 21 of them overlapping.
"""

import struct
import sys

import numpy as np

N = 300


def arrays() -> dict[str, np.ndarray]:
    """Exactly representable values (no RNG, no libm), one NaN point (5) and one all-zero point (6)."""
    i = np.arange(N)
    x = (i * 0.125).astype("<f4")
    y = ((i % 17) - 8).astype("<f4") * np.float32(0.25)
    z = (i // 20).astype("<f4") * np.float32(0.5)
    x[5] = np.nan
    x[6] = y[6] = z[6] = 0
    return {
        "x": x,
        "y": y,
        "z": z,
        "intensity": (i % 256).astype("<u1"),
        "ring": (i % 32).astype("<u2"),
        "time": i.astype("<f8") * 1e-5,
    }


if __name__ == "__main__":
    import lzf

    planes = b"".join(a.tobytes() for a in arrays().values())
    stream = lzf.compress(planes)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity ring time\n"
        f"SIZE 4 4 4 1 2 8\nTYPE F F F U U F\nCOUNT 1 1 1 1 1 1\nWIDTH {N}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {N}\nDATA binary_compressed\n"
    )
    with open(sys.argv[1], "wb") as out:
        out.write(header.encode() + struct.pack("<II", len(stream), len(planes)) + stream)
