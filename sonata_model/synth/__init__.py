"""A labelled synthetic LiDAR world: procedural streets, spinning-LiDAR ray casting, drives.

No dataset can be downloaded where this project is built and tested, so it generates its own labelled
drives: for tests, the demo, the benchmarks and the pretraining / probing experiments.
"""

from .classes import CLASS_NAMES

__all__ = ["CLASS_NAMES"]
