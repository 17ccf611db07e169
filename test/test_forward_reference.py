"""The encoder equals the outputs recorded from the previous implementation (per-block neighbour pairs,
per-level lazy layouts; commit 98d11b0), which equalled the reference implementation to 1e-7.

`data/encoder_reference.npz` holds, per case, the all-level upcast of a fixed batch of two clouds
through an encoder whose weights come from a numpy generator (so they do not depend on torch's
initialisers), and the voxel count of every level. Cases: the `tiny` config (Sonata blocks, full,
padded and short patches at different levels) and a small Utonia-shaped config (RoPE attention, a mask
token on some voxels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sonata_model as sm

DATA = Path(__file__).parent / "data" / "encoder_reference.npz"
CASES = {
    # (config, overrides, voxels per cloud, masked fraction)
    "tiny": ("tiny", {}, (170, 80), 0.0),
    "rope": (
        "utonia_tiny",
        dict(
            enc_depths=(1, 1, 1, 2, 1),
            enc_channels=(12, 12, 24, 24, 36),
            enc_num_head=(1, 1, 2, 2, 3),
            enc_patch_size=(32, 32, 32, 32, 32),
        ),
        (120, 60),
        0.3,
    ),
}


def make_encoder(name: str) -> sm.SonataEncoder:
    """The case's encoder in eval mode with weights drawn by numpy: linear and conv weights normal with
    std 1/sqrt(fan-in), norm weights 1 + 0.1 n, biases and the mask token 0.1 n; RoPE frequencies kept."""
    config_name, overrides, _, _ = CASES[name]
    encoder = sm.SonataEncoder(sm.get_config(config_name, **overrides)).eval()
    rng = np.random.default_rng(7)
    state = {}
    for key, value in encoder.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("inv_freq"):
            state[key] = value
        elif key.endswith("weight") and len(shape) >= 2:
            state[key] = torch.from_numpy(rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), shape).astype(np.float32))
        elif "norm" in key and key.endswith("weight"):
            state[key] = torch.from_numpy((1 + 0.1 * rng.normal(size=shape)).astype(np.float32))
        else:
            state[key] = torch.from_numpy((0.1 * rng.normal(size=shape)).astype(np.float32))
    encoder.load_state_dict(state, strict=True)
    return encoder


def make_point(name: str) -> sm.Point:
    """Two clouds of distinct voxels (random cells of a 16^3 and a 12^3 block), coordinates inside their
    voxels (5 cm), random features; the masked fraction of voxels flagged for the mask token."""
    config_name, overrides, counts, masked = CASES[name]
    config = sm.get_config(config_name, **overrides)
    rng = np.random.default_rng(11)
    grids, coords = [], []
    for n, extent in zip(counts, (16, 12), strict=True):
        cells = rng.choice(extent**3, size=n, replace=False)
        grid = np.stack(np.unravel_index(cells, (extent,) * 3), axis=1)
        grids.append(grid)
        coords.append((grid + rng.uniform(0, 1, grid.shape)) * 0.05)
    total = sum(counts)
    mask = rng.uniform(size=total) < masked
    return sm.Point(
        coord=torch.from_numpy(np.concatenate(coords).astype(np.float32)),
        grid_coord=torch.from_numpy(np.concatenate(grids)),
        feat=torch.from_numpy(rng.normal(size=(total, config.in_channels)).astype(np.float32)),
        offset=torch.tensor(np.cumsum(counts)),
        mask=torch.from_numpy(mask) if masked else None,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_equals_the_recorded_outputs(name):
    recorded = np.load(DATA)
    encoder = make_encoder(name)
    with torch.inference_mode():
        levels = encoder(make_point(name))
    assert [level.num_points for level in levels] == recorded[f"{name}_sizes"].tolist()
    np.testing.assert_allclose(sm.upcast(levels).numpy(), recorded[f"{name}_upcast"], rtol=1e-5, atol=1e-5)
