"""Both sparse-conv backends equal a dense conv3d evaluated at the active voxels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sonata_model.sparse_conv import BACKENDS, SparseGeometry, SubMConv3d, default_backend


def random_voxels(count: int, extent: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randperm(extent**3, generator=generator)[:count]
    return torch.stack((cells // extent**2, cells // extent % extent, cells % extent), dim=1)


def dense_reference(feat: torch.Tensor, grid: torch.Tensor, conv: SubMConv3d) -> torch.Tensor:
    """conv3d over a zero-filled dense grid, read back at the active voxels (submanifold)."""
    extent = int(grid.max()) + 1
    dense = feat.new_zeros(1, feat.shape[1], extent, extent, extent)
    dense[0, :, grid[:, 0], grid[:, 1], grid[:, 2]] = feat.t()
    weight = conv.weight.permute(0, 4, 1, 2, 3)
    out = F.conv3d(dense, weight, conv.bias, padding=conv.kernel_size // 2)
    return out[0, :, grid[:, 0], grid[:, 1], grid[:, 2]].t()


def make_conv(c_in: int, c_out: int, seed: int = 0) -> SubMConv3d:
    torch.manual_seed(seed)
    conv = SubMConv3d(c_in, c_out)
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight.normal_()
    return conv


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True])
def test_matches_dense_convolution(backend, training):
    grid = random_voxels(1500, 16, seed=1)
    grid = torch.cat((grid, torch.tensor([[30, 30, 30]])))  # an isolated voxel
    dense_block = torch.cartesian_prod(*(torch.arange(20, 24),) * 3)  # a fully occupied 4^3 block
    grid = torch.unique(torch.cat((grid, dense_block)), dim=0)
    feat = torch.randn(len(grid), 5)
    conv = make_conv(5, 7).train(training)
    geometry = SparseGeometry.build(grid, torch.zeros(len(grid), dtype=torch.long), 1, backend=backend)
    out = conv(feat, geometry)
    torch.testing.assert_close(out, dense_reference(feat, grid, conv), rtol=1e-4, atol=1e-4)
    isolated = (grid == 30).all(dim=1).nonzero().item()
    expected = feat[isolated] @ conv.weight[:, 1, 1, 1].t() + conv.bias  # only the centre tap
    torch.testing.assert_close(out[isolated], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_clouds_do_not_see_each_other(backend):
    a, b = random_voxels(400, 10, seed=2), random_voxels(300, 10, seed=3)
    grid = torch.cat((a, b))
    batch = torch.cat((torch.zeros(len(a)), torch.ones(len(b)))).long()
    feat = torch.randn(len(grid), 4)
    conv = make_conv(4, 4)
    together = conv(feat, SparseGeometry.build(grid, batch, 2, backend=backend))
    alone_a = conv(feat[: len(a)], SparseGeometry.build(a, torch.zeros(len(a)).long(), 1, backend=backend))
    alone_b = conv(feat[len(a) :], SparseGeometry.build(b, torch.zeros(len(b)).long(), 1, backend=backend))
    torch.testing.assert_close(together, torch.cat((alone_a, alone_b)), rtol=1e-5, atol=1e-5)


def test_torch_backend_gradients_equal_the_dense_reference():
    grid = random_voxels(500, 9, seed=4)
    conv = make_conv(3, 6)
    feat = torch.randn(len(grid), 3, requires_grad=True)
    geometry = SparseGeometry.build(grid, torch.zeros(len(grid)).long(), 1, backend="torch")
    upstream = torch.randn(len(grid), 6)
    (conv(feat, geometry) * upstream).sum().backward()
    grads = [feat.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()]
    for tensor in (feat, conv.weight, conv.bias):
        tensor.grad = None
    (dense_reference(feat, grid, conv) * upstream).sum().backward()
    for mine, reference in zip(grads, (feat.grad, conv.weight.grad, conv.bias.grad), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4)


def test_backends_agree_and_are_deterministic():
    grid = random_voxels(3000, 20, seed=5)
    feat = torch.randn(len(grid), 16)
    conv = make_conv(16, 16).eval()
    batch = torch.zeros(len(grid)).long()
    outs = {b: conv(feat, SparseGeometry.build(grid, batch, 1, backend=b)) for b in BACKENDS}
    torch.testing.assert_close(outs["torch"], outs["spconv"], rtol=1e-4, atol=1e-4)
    again = conv(feat, SparseGeometry.build(grid, batch, 1, backend="torch"))
    assert torch.equal(outs["torch"], again)
    assert torch.get_num_threads() == 2  # the spconv CPU guard restores the thread count


def test_state_dict_has_only_spconv_layout_weight_and_bias():
    conv = make_conv(4, 6)
    conv(torch.randn(10, 4), SparseGeometry.build(random_voxels(10, 4, 0), torch.zeros(10).long(), 1, "spconv"))
    state = conv.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"].shape == (6, 3, 3, 3, 4)


def test_backend_selection_and_errors(monkeypatch):
    assert default_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("SONATA_SPARSE_BACKEND", "spconv")
    assert default_backend(torch.device("cpu")) == "spconv"
    monkeypatch.setenv("SONATA_SPARSE_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="SONATA_SPARSE_BACKEND"):
        default_backend(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown sparse-conv backend"):
        SparseGeometry.build(torch.zeros(1, 3).long(), torch.zeros(1).long(), 1, backend="dense")
    conv = make_conv(4, 4)
    geometry = SparseGeometry.build(torch.zeros(2, 3).long(), torch.zeros(2).long(), 1, backend="torch")
    with pytest.raises(ValueError, match="do not fit"):
        conv(torch.randn(3, 4), geometry)
