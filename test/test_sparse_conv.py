"""The sparse conv over a plan's level (the torch conv through the 27-tap table or through the CPU's
pairs grouped by kernel offset, and spconv) equals a dense conv3d evaluated at the active voxels; spconv builds one
rulebook per stage; under bf16 autocast nothing computes in fp16."""

from __future__ import annotations

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from plans import distinct_cells, stage_config, voxel_plan
from torch.utils._python_dispatch import TorchDispatchMode

import sonata_model as sm
from sonata_model.plan import SPARSE_BACKENDS, SizeBuckets
from sonata_model.sparse_conv import SubMConv3d, default_backend


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


LAYOUTS = ("table", "pairs", "spconv")


def level_of(grids, layout="table", buckets=None):
    """Level 0 of the plan of `grids` for a conv layout (table / pairs: the torch backend)."""
    backend = "spconv" if layout == "spconv" else layout if layout in SPARSE_BACKENDS else "torch"
    level = voxel_plan(grids, stage_config(), backend=backend, buckets=buckets, conv_pairs=layout == "pairs").levels[0]
    assert (level.pairs is not None) == (layout == "pairs")  # the scenes here are sparse enough for pairs
    return level


def backend_of(layout: str) -> str:
    return "spconv" if layout == "spconv" else "torch"


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def voxel_scene():
    rng = np.random.default_rng(1)
    grid = np.concatenate([distinct_cells(1500, 16, rng), [[30, 30, 30]]])  # an isolated voxel
    block = np.stack(np.meshgrid(*(np.arange(20, 24),) * 3, indexing="ij"), -1).reshape(-1, 3)  # fully occupied
    return torch.from_numpy(np.unique(np.concatenate([grid, block]), axis=0))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [False, True])
def test_matches_dense_convolution(layout, training):
    grid = voxel_scene()
    feat = torch.randn(len(grid), 5)
    conv = make_conv(5, 7).train(training)
    out = conv(feat, level_of([grid.numpy()], layout), backend_of(layout))
    torch.testing.assert_close(out, dense_reference(feat, grid, conv), rtol=1e-4, atol=1e-4)
    isolated = (grid == 30).all(dim=1).nonzero().item()
    expected = feat[isolated] @ conv.weight[:, 1, 1, 1].t() + conv.bias  # only the centre tap
    torch.testing.assert_close(out[isolated], expected, rtol=1e-5, atol=1e-5)


class OpRecorder(TorchDispatchMode):
    """The names of the aten ops that run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("channels", [16, 5])
def test_inference_pairs_run_a_matmul_per_tap_on_its_own_pairs(channels):
    """The centre tap is one matmul over all rows, each other tap with pairs one matmul over its pairs
    only (no gather of all pairs at once: that frame-sized temporary is what the loop avoids), for any
    channel count; equal to the dense conv."""
    grid = voxel_scene()
    feat = torch.randn(len(grid), channels)
    conv = make_conv(channels, channels)
    level = level_of([grid.numpy()], "pairs")
    assert sum(level.pairs.counts) == int((level_of([grid.numpy()]).neighbours < level.capacity).sum()) - len(grid)
    with torch.inference_mode(), OpRecorder() as recorder:
        out = conv(feat, level)
    taps_with_pairs = sum(count > 0 for count in level.pairs.counts)
    assert 20 <= taps_with_pairs <= 26
    assert recorder.ops.count("linear") == 1 + taps_with_pairs  # inference mode keeps linear whole
    assert recorder.ops.count("index_select") == recorder.ops.count("index_add_") == taps_with_pairs
    torch.testing.assert_close(out, dense_reference(feat, grid, conv), rtol=1e-4, atol=1e-4)


def test_conv_pairs_are_the_neighbour_tables_hits_grouped_by_offset():
    """The pairs (built from the search, without a table) name the table's neighbours exactly, at every
    level, with level 0 in the members' (unsorted) order: (offset, target, source) as sets, groups in
    offset order, the centre's group empty, each target at most once per group."""
    rng = np.random.default_rng(7)
    grids = [distinct_cells(900, 14, rng), distinct_cells(300, 9, rng)]
    config = stage_config(stages=3)
    pairs_plan = voxel_plan(grids, config, conv_pairs=True)
    table_plan = voxel_plan(grids, config)
    for with_pairs, with_table in zip(pairs_plan.levels, table_plan.levels, strict=True):
        table, pairs = with_table.neighbours, with_pairs.pairs
        assert with_pairs.neighbours is None and pairs.counts[13] == 0
        found = (table < with_table.capacity).nonzero().tolist()  # (row, offset)
        expected = {(k, row, int(table[row, k])) for row, k in found if k != 13}
        groups = torch.repeat_interleave(torch.arange(27), torch.tensor(pairs.counts))
        got = set(zip(groups.tolist(), pairs.target.tolist(), pairs.source.tolist(), strict=True))
        assert got == expected and len(got) == len(pairs.target) == len({(k, t) for k, t, _ in got})


@pytest.mark.parametrize("conv_pairs", [False, True], ids=["table", "pairs"])
def test_a_search_in_chunks_finds_what_one_search_finds(conv_pairs):
    """A CPU searches neighbours 8,192 rows at a time: chunks of any size (here 7 and 1,000 rows, which
    split levels and clouds anywhere) give the same table and pairs as one search."""
    rng = np.random.default_rng(11)
    grids = [distinct_cells(700, 12, rng), distinct_cells(200, 8, rng)]
    config = stage_config(stages=3)
    plans = [voxel_plan(grids, config, conv_pairs=conv_pairs, search_chunk=chunk) for chunk in (None, 7, 1000)]
    for levels in zip(*(plan.levels for plan in plans), strict=True):
        for level in levels[1:]:
            if conv_pairs:
                assert level.pairs.counts == levels[0].pairs.counts
                for name in ("source", "target"):
                    assert torch.equal(getattr(level.pairs, name), getattr(levels[0].pairs, name))
            else:
                assert torch.equal(level.neighbours, levels[0].neighbours)


def test_neighbour_table_names_each_offsets_voxel_or_the_zero_row():
    grid = voxel_scene()
    level = level_of([grid.numpy()])
    table = level.neighbours
    offsets = torch.cartesian_prod(*(torch.arange(-1, 2),) * 3)
    for k in (0, 4, 13, 22, 26):
        found = table[:, k] < level.capacity
        assert torch.equal(grid[table[found, k]], grid[found] + offsets[k])
        cells = {tuple(c) for c in grid.tolist()}
        missing = [tuple(c) in cells for c in (grid[~found] + offsets[k]).tolist()]
        assert not any(missing)
    assert torch.equal(table[:, 13], torch.arange(len(grid)))  # the centre is the voxel itself


def test_padding_rows_change_no_real_output():
    grid = voxel_scene()
    feat = torch.randn(len(grid), 5)
    conv = make_conv(5, 7)
    padded = level_of([grid.numpy()], buckets=SizeBuckets(minimum=64))
    assert padded.capacity > len(grid)
    padded_feat = torch.cat((feat, torch.randn(padded.capacity - len(grid), 5) * 1e3))  # loud padding rows
    out = conv(padded_feat, padded)
    torch.testing.assert_close(out[: len(grid)], conv(feat, level_of([grid.numpy()])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batched_clouds_do_not_see_each_other(layout):
    rng = np.random.default_rng(2)
    a, b = distinct_cells(400, 10, rng), distinct_cells(300, 10, rng)
    feat = torch.randn(700, 4)
    conv = make_conv(4, 4)
    backend = backend_of(layout)
    together = conv(feat, level_of([a, b], layout), backend)
    alone_a = conv(feat[:400], level_of([a], layout), backend)
    alone_b = conv(feat[400:], level_of([b], layout), backend)
    torch.testing.assert_close(together, torch.cat((alone_a, alone_b)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["table", "pairs"])
def test_torch_backend_gradients_equal_the_dense_reference(layout):
    grid = torch.from_numpy(distinct_cells(500, 12, np.random.default_rng(4)))
    conv = make_conv(3, 6)
    feat = torch.randn(len(grid), 3, requires_grad=True)
    upstream = torch.randn(len(grid), 6)
    (conv(feat, level_of([grid.numpy()], layout)) * upstream).sum().backward()
    grads = [feat.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()]
    for tensor in (feat, conv.weight, conv.bias):
        tensor.grad = None
    (dense_reference(feat, grid, conv) * upstream).sum().backward()
    for mine, reference in zip(grads, (feat.grad, conv.weight.grad, conv.bias.grad), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4)


def test_backends_agree_and_are_deterministic():
    grid = distinct_cells(3000, 20, np.random.default_rng(5))
    feat = torch.randn(len(grid), 16)
    conv = make_conv(16, 16).eval()
    outs = {layout: conv(feat, level_of([grid], layout), backend_of(layout)) for layout in LAYOUTS}
    torch.testing.assert_close(outs["table"], outs["spconv"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["pairs"], outs["spconv"], rtol=1e-4, atol=1e-4)
    assert torch.equal(outs["table"], conv(feat, level_of([grid])))
    assert torch.equal(outs["pairs"], conv(feat, level_of([grid], "pairs")))
    assert torch.get_num_threads() == 2  # the spconv CPU guard restores the thread count


def test_spconv_builds_one_rulebook_per_stage(monkeypatch):
    """spconv keeps the pairs on its output tensor; the plan's level keeps them for the stage's next
    blocks: a 3-stage encoder with 3 blocks per stage builds 3 rulebooks per frame, not 9."""
    builds = []
    original = spconv.conv.ops.get_indice_pairs

    def counted(*args, **kwargs):
        builds.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(spconv.conv.ops, "get_indice_pairs", counted)
    config = stage_config(stages=3).replace(enc_depths=(3, 3, 3), drop_path=0.0)
    encoder = sm.SonataEncoder(config).eval()
    encoder.sparse_backend = "spconv"
    rng = np.random.default_rng(6)
    grid = torch.from_numpy(distinct_cells(600, 14, rng))
    point = sm.Point(coord=grid * 0.1, grid_coord=grid, feat=torch.randn(600, 9), offset=torch.tensor([600]))
    with torch.inference_mode():
        levels = encoder(point)
        assert builds == [level.num_points for level in levels]
        encoder.sparse_backend = "torch"
        reference = encoder(point)
    for mine, theirs in zip(levels, reference, strict=True):
        torch.testing.assert_close(mine.feat, theirs.feat, rtol=1e-4, atol=1e-4)


class DtypeRecorder(TorchDispatchMode):
    """The dtypes of every floating-point tensor an op reads or writes."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in (*args, out):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                self.dtypes.add(value.dtype)
        return out


def test_under_bf16_autocast_the_torch_conv_runs_in_bf16_and_spconv_in_fp32(monkeypatch):
    """Never fp16: spconv's custom_fwd would cast the un-normalised residual stream to fp16 under autocast."""
    grid = distinct_cells(800, 12, np.random.default_rng(7))
    feat = torch.randn(len(grid), 8) * 100
    conv = make_conv(8, 8)
    seen = {}
    original = spconv.conv.Fsp.indice_subm_conv

    def recorded(features, filters, *args, **kwargs):
        seen["dtypes"] = (features.dtype, filters.dtype)
        seen["autocast"] = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
        return original(features, filters, *args, **kwargs)

    monkeypatch.setattr(spconv.conv.Fsp, "indice_subm_conv", recorded)
    exact = conv(feat, level_of([grid]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recorder = DtypeRecorder()
        with recorder:
            low = conv(feat, level_of([grid]))
            low_pairs = conv(feat, level_of([grid], "pairs"))
        spconv_out = conv(feat, level_of([grid], "spconv"), "spconv")
    assert low.dtype == torch.bfloat16 and torch.bfloat16 in recorder.dtypes and torch.float16 not in recorder.dtypes
    for out in (low, low_pairs):
        assert (out.float() - exact).abs().max() < 0.01 * exact.abs().max()  # bf16's 8 bits of mantissa
    assert seen == {"dtypes": (torch.float32, torch.float32), "autocast": False}
    torch.testing.assert_close(spconv_out, exact, rtol=1e-4, atol=1e-3)


def test_state_dict_has_only_spconv_layout_weight_and_bias():
    conv = make_conv(4, 6)
    grid = distinct_cells(10, 4, np.random.default_rng(0))
    conv(torch.randn(10, 4), level_of([grid], "spconv"), "spconv")
    state = conv.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"].shape == (6, 3, 3, 3, 4)


def test_backend_selection_and_errors(monkeypatch):
    assert default_backend() == "torch"
    monkeypatch.setenv("SONATA_SPARSE_BACKEND", "spconv")
    assert default_backend() == "spconv"
    monkeypatch.setenv("SONATA_SPARSE_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="SONATA_SPARSE_BACKEND"):
        default_backend()
    grid = distinct_cells(20, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sparse-conv backend must be one of"):
        voxel_plan([grid], stage_config(), backend="dense")
    with pytest.raises(ValueError, match="size buckets need the torch sparse conv"):
        voxel_plan([grid], stage_config(), backend="spconv", buckets=SizeBuckets())
    with pytest.raises(ValueError, match="conv pairs are for the torch conv on CPU tensors without size buckets"):
        voxel_plan([grid], stage_config(), buckets=SizeBuckets(), conv_pairs=True)
    conv = make_conv(4, 4)
    with pytest.raises(ValueError, match="do not fit"):
        conv(torch.randn(3, 4), level_of([grid]))
