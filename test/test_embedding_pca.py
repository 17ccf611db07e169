"""The embeddings' PCA basis: principal axes by decreasing variance, the projection as a linear map, colours
whose scale is fixed on first use (no flicker), and a basis stored with the model."""

from __future__ import annotations

import numpy as np
import torch

import sonata_model as sm
from sonata_model.embedding_pca import EmbeddingPCA
from sonata_model.profiling import count_ops


def anisotropic(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, 6) features with standard deviations 6, 4, 2, 1, 0.5, 0.1 along a random rotation, and that rotation."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator))
    scales = torch.tensor([6.0, 4.0, 2.0, 1.0, 0.5, 0.1])
    return torch.randn(rows, 6, generator=generator) * scales @ rotation.T + 3.0, rotation


def test_the_basis_is_the_principal_axes_by_decreasing_variance():
    feat, rotation = anisotropic(20_000, seed=0)
    pca = EmbeddingPCA.fit(feat, components=3)
    assert pca.components == 3
    torch.testing.assert_close(pca.basis.T @ pca.basis, torch.eye(3), atol=1e-5, rtol=0)
    alignment = (pca.basis.T @ rotation[:, :3]).abs()  # each axis found, up to its sign
    assert (alignment.diagonal() > 0.999).all()
    torch.testing.assert_close(pca.mean, torch.full((6,), 3.0), atol=0.2, rtol=0)
    variance = pca.project(feat).var(dim=0)
    assert variance[0] > variance[1] > variance[2]
    torch.testing.assert_close(variance.sqrt(), torch.tensor([6.0, 4.0, 2.0]), rtol=0.05, atol=0)


def test_the_projection_as_a_linear_map_equals_the_projection():
    feat, _ = anisotropic(1_000, seed=1)
    pca = EmbeddingPCA.fit(feat, components=4)
    weight, bias = pca.linear(2)
    torch.testing.assert_close(feat @ weight.T + bias, pca.project(feat, 2), atol=1e-4, rtol=1e-5)


def test_colours_keep_the_scale_of_the_first_frame():
    feat, _ = anisotropic(5_000, seed=2)
    pca = EmbeddingPCA.fit(feat, components=3)
    first = pca.rgb(pca.project(feat))
    assert first.dtype == torch.uint8 and first.shape == (5_000, 3)
    assert int(first.min()) == 0 and int(first.max()) == 255  # the 1-99 % range spans the colours
    pca.rgb(pca.project(feat * 10.0))  # a frame with a far wider spread does not rescale
    assert torch.equal(pca.rgb(pca.project(feat)), first)


def test_a_basis_saved_with_the_model_is_the_one_read_back(tmp_path):
    feat, _ = anisotropic(2_000, seed=3)
    fitted = EmbeddingPCA.fit(feat, components=3)
    encoder = sm.SonataEncoder(sm.get_config("tiny"))
    meta = {"pca_mean": fitted.mean.tolist(), "pca_basis": fitted.basis.tolist()}
    loaded = sm.load(sm.save_encoder(tmp_path / "encoder.pth", encoder, meta=meta))
    pca = EmbeddingPCA.from_meta(loaded.meta)
    np.testing.assert_allclose(pca.project(feat).numpy(), fitted.project(feat).numpy(), atol=1e-5)
    assert EmbeddingPCA.from_meta({}) is None


def test_a_basis_kept_on_the_models_device_projects_there_without_an_upload():
    """`meta` stands in for a GPU (no data: shapes and devices only), where a blocking upload per frame
    would make the host wait for the device's queued work."""
    fitted = EmbeddingPCA.fit(anisotropic(1_000, seed=4)[0], components=3)
    feat = torch.empty(50, 6, device="meta")
    with count_ops() as host_basis:
        fitted.project(feat)
    assert host_basis.syncs == {"blocking_upload": 2}  # mean and basis, every frame
    on_device = fitted.to(torch.device("meta"))
    with count_ops(forbid_syncs=True):
        weight, bias = on_device.linear(3)
        projected = on_device.project(feat)
    assert {weight.device.type, bias.device.type, projected.device.type} == {"meta"}
    assert projected.shape == (50, 3)
