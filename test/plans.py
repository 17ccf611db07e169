"""Frame plans of random voxel clouds for the unit tests of the parts that run over a plan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

import sonata_model as sm
from sonata_model.plan import FramePlan, SizeBuckets, build_plan


def distinct_cells(count: int, extent: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct voxels of an extent^3 block (as grid sampling produces), (count, 3) int64."""
    cells = rng.choice(extent**3, size=count, replace=False)
    return np.stack(np.unravel_index(cells, (extent,) * 3), axis=1).astype(np.int64)


def stage_config(
    stages: int = 1, channels: int = 12, heads: int = 3, patch: int = 8, orders: Sequence[str] = sm.configs.SONATA.order
) -> sm.EncoderConfig:
    """An encoder shape with `stages` stages of one block each (what a plan needs: levels, patches, orders)."""
    return sm.EncoderConfig(
        enc_depths=(1,) * stages,
        enc_channels=(channels,) * stages,
        enc_num_head=(heads,) * stages,
        enc_patch_size=(patch,) * stages,
        stride=(2,) * (stages - 1),
        order=tuple(orders),
        drop_path=0.0,
    )


def voxel_plan(
    grids: Sequence[np.ndarray],
    config: sm.EncoderConfig,
    attention: str = "sdpa",
    buckets: SizeBuckets | None = None,
    backend: str = "torch",
    conv_pairs: bool = False,
    search_chunk: int | None = None,
) -> FramePlan:
    """The plan of clouds of distinct voxels `grids` (level 0 keeps their rows), coordinates at the
    voxel centres of a 10 cm grid."""
    grid = torch.from_numpy(np.concatenate(grids))
    batch = torch.repeat_interleave(torch.arange(len(grids)), torch.tensor([len(g) for g in grids]))
    coord = (grid.float() + 0.5) * 0.1
    return build_plan(
        config,
        coord,
        grid,
        batch,
        len(grids),
        voxelize=False,
        attention=attention,
        sparse_backend=backend,
        buckets=buckets,
        conv_pairs=conv_pairs,
        search_chunk=search_chunk,
    )
