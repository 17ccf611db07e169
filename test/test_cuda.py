"""GPU checks of the plan and the forward (marker `cuda`; skipped without CUDA): the forward captured as a
CUDA graph per bucket and replayed on the next frame equals eager (by hand and through the segmenter's
`cuda_graphs`), no host sync inside the forward; bf16 and fp16 labels agree with fp32's, half-precision
embeddings of the 108M LiDAR encoder point as fp32's, a frame run twice gives the same bits; spconv on CUDA
equals the torch conv (one rulebook per stage, never fp16), flash_attn equals SDPA, the plan and
serialization on the GPU equal the CPU's.

    pytest -m cuda test/test_cuda.py
"""

from __future__ import annotations

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
from plans import distinct_cells, stage_config
from test_cpu_half_precision import street_label_agreement
from test_forward_reference import make_encoder
from test_plan import WIDE_BUCKETS, clouds, next_frame

import sonata_model as sm
from sonata_model.attention import SerializedAttention, flash_attn_varlen_qkvpacked_func
from sonata_model.plan import build_plan
from sonata_model.profiling import count_ops
from sonata_model.serialization import ORDERS, serialize
from sonata_model.sparse_conv import SubMConv3d
from sonata_model.synth.drive import generate_drive
from sonata_ros.model_loading import load_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def cuda_segmenter(name="rope", **kwargs) -> sm.Segmenter:
    return sm.Segmenter(make_encoder(name), None, device=CUDA, domain="outdoor", **kwargs)


def voxel_level(grid: np.ndarray, backend: str, device=CUDA):
    grid_t = torch.from_numpy(grid).to(device)
    batch = torch.zeros(len(grid), dtype=torch.long, device=device)
    plan = build_plan(stage_config(), grid_t.float(), grid_t, batch, 1, voxelize=False, sparse_backend=backend)
    return plan.levels[0]


@pytest.mark.parametrize("name", ["tiny", "rope"])
@torch.inference_mode()
def test_the_forward_captured_per_bucket_replays_the_next_frame_as_eager(name):
    seg = cuda_segmenter(name, buckets=WIDE_BUCKETS, attention="sdpa")
    frame = clouds(seed=5)
    first, second = seg.prepare(frame), seg.prepare(next_frame(frame))
    assert first.plan.signature == second.plan.signature
    forward = seg.encoder.forward_plan
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (allocator, kernels' lazy init)
        for _ in range(2):
            forward(first.plan, first.feat)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(first.plan, first.feat)
    first.plan.copy_(second.plan)  # the next frame into the captured tensors
    first.feat.copy_(second.feat)
    graph.replay()
    expected = forward(second.plan, second.feat)
    for level, got, want in zip(second.plan.levels, static_out, expected, strict=True):
        torch.testing.assert_close(got[: level.num_voxels], want[: level.num_voxels], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_segmenter_replays_one_graph_per_bucket_and_equals_eager(precision):
    """`cuda_graphs`: one capture per bucket, a replay for every later frame of it, results equal to the
    eager forward's, an earlier result still right after the next frame's replay, no host sync inside."""
    encoder = make_encoder("rope")
    eager = sm.Segmenter(encoder, None, device=CUDA, domain="outdoor", buckets=WIDE_BUCKETS, precision=precision)
    graphed = sm.Segmenter(
        encoder, None, device=CUDA, domain="outdoor", buckets=WIDE_BUCKETS, precision=precision, cuda_graphs=True
    )
    first = clouds(seed=5)
    frames = [first, next_frame(first), clouds(seed=1, sizes=(6000, 300)), first]
    results = [graphed.segment_batch(frame) for frame in frames]  # read only after every replay
    assert graphed.graphed.captures == 2 and graphed.forwards == 4
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    for frame, got in zip(frames, results, strict=True):
        for mine, theirs in zip(got, eager.segment_batch(frame), strict=True):
            assert np.array_equal(mine.voxel_of_point, theirs.voxel_of_point)
            np.testing.assert_allclose(mine.embedding, theirs.embedding, rtol=tolerance, atol=tolerance)
    prepared = graphed.prepare(next_frame(first))
    with torch.inference_mode(), graphed._autocast():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            graphed.encode(prepared)  # copy into the captured inputs, replay, clone out
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert graphed.graphed.captures == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@torch.inference_mode()
def test_the_forward_never_makes_the_host_wait(precision):
    seg = cuda_segmenter(precision=precision, attention="sdpa")
    prepared = seg.prepare(clouds())
    with seg._autocast():
        seg.encoder.forward_plan(prepared.plan, prepared.feat)  # lazy initialisation outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            seg.encoder.forward_plan(prepared.plan, prepared.feat)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_frame_on_the_gpu_plans_with_one_host_wait_and_equals_the_cpu():
    cpu = sm.Segmenter(make_encoder("rope"), None, device="cpu", domain="outdoor")
    gpu = cuda_segmenter()
    gpu.prepare(clouds())  # tables on the device on first use
    with torch.inference_mode(), count_ops() as counts:
        gpu.prepare(clouds())
    assert dict(counts.syncs) == {"copy_to_host": 1}, counts.syncs
    for mine, theirs in zip(gpu.segment_batch(clouds()), cpu.segment_batch(clouds()), strict=True):
        assert np.array_equal(mine.voxel_of_point, theirs.voxel_of_point)
        np.testing.assert_allclose(mine.embedding, theirs.embedding, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_labels_agree_with_fp32_on_a_street(precision):
    assert street_label_agreement(CUDA, precision) >= 0.99


def voxel_cosine(device: str | torch.device, precision: str, config: str = "sonata_lidar") -> float:
    """Mean over voxels of the cosine similarity between a random-weight encoder's embeddings in `precision`
    and in fp32, on a synthetic 64-beam frame."""
    torch.manual_seed(0)
    encoder = sm.SonataEncoder(sm.get_config(config)).eval()
    frame = next(iter(generate_drive("hdl64", frames=1, seed=3)))
    full, half = (
        torch.from_numpy(segmenter(frame.coord, strength=frame.strength).embedding)
        for segmenter in (sm.Segmenter(encoder, None, device=device, precision=p) for p in ("fp32", precision))
    )
    return torch.nn.functional.cosine_similarity(full, half, dim=1).mean().item()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_embeddings_of_the_108m_lidar_encoder_point_as_fp32s(precision):
    assert voxel_cosine(CUDA, precision) >= 0.99


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_frame_segmented_twice_in_a_row_gives_the_same_labels_and_embeddings(precision):
    model = load_model("", "", "")
    segmenter = sm.Segmenter(model.encoder, model.head, device=CUDA, precision=precision)
    frame = next(iter(generate_drive("hdl64", frames=1, seed=4)))
    runs = []
    for _ in range(2):  # each run read before the next one
        result = segmenter(frame.coord, strength=frame.strength)
        runs.append((result.labels, result.probability, result.embedding))
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


def test_spconv_on_cuda_equals_the_torch_conv_and_builds_one_rulebook_per_stage(monkeypatch):
    builds = []
    for name in ("get_indice_pairs", "get_indice_pairs_implicit_gemm"):
        original = getattr(spconv.conv.ops, name)

        def counted(*args, _original=original, **kwargs):
            builds.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(spconv.conv.ops, name, counted)
    grid = distinct_cells(5000, 40, np.random.default_rng(0))
    torch.manual_seed(0)
    conv = SubMConv3d(32, 32).to(CUDA)
    feat = torch.randn(len(grid), 32, device=CUDA)
    expected = conv(feat, voxel_level(grid, "torch"))
    level = voxel_level(grid, "spconv")
    for _ in range(3):  # three blocks of one stage
        torch.testing.assert_close(conv(feat, level, "spconv"), expected, rtol=1e-3, atol=1e-3)
    assert len(builds) == 1
    encoder = make_encoder("tiny").to(CUDA)
    encoder.sparse_backend = "spconv"
    point = sm.Point(
        coord=torch.from_numpy(grid).float().to(CUDA) * 0.05,
        grid_coord=torch.from_numpy(grid).to(CUDA),
        feat=torch.randn(len(grid), 9, device=CUDA),
        offset=torch.tensor([len(grid)], device=CUDA),
    )
    builds.clear()
    with torch.inference_mode():
        got = encoder(point)
        encoder.sparse_backend = "torch"
        want = encoder(point)
    assert len(builds) == encoder.config.num_stages
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.feat, b.feat, rtol=1e-3, atol=1e-3)


def test_under_bf16_autocast_spconv_on_cuda_runs_in_fp32(monkeypatch):
    """spconv's custom_fwd(cast_inputs=float16) would run the conv in fp16 on the residual stream."""
    seen = []
    for name in ("indice_subm_conv", "implicit_gemm"):
        original = getattr(spconv.conv.Fsp, name)

        def recorded(features, *args, _original=original, **kwargs):
            seen.append((features.dtype, torch.is_autocast_enabled("cuda")))
            return _original(features, *args, **kwargs)

        monkeypatch.setattr(spconv.conv.Fsp, name, recorded)
    grid = distinct_cells(3000, 30, np.random.default_rng(1))
    conv = SubMConv3d(16, 16).to(CUDA)
    feat = torch.randn(len(grid), 16, device=CUDA) * 3000  # beyond fp16's comfort after 27 x 16 products
    exact = conv(feat, voxel_level(grid, "torch"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = conv(feat, voxel_level(grid, "spconv"), "spconv")
    assert seen and all(entry == (torch.float32, False) for entry in seen), seen
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), exact, rtol=1e-3, atol=1e-2)


@pytest.mark.skipif(flash_attn_varlen_qkvpacked_func is None, reason="flash_attn is not installed")
@pytest.mark.parametrize("buckets", [None, WIDE_BUCKETS], ids=["exact", "bucketed"])
def test_flash_attention_equals_sdpa(buckets):
    sdpa = cuda_segmenter("rope", attention="sdpa", precision="bf16", buckets=buckets)
    flash = sm.Segmenter(
        sdpa.encoder, None, device=CUDA, domain="outdoor", attention="flash", precision="bf16", buckets=buckets
    )
    assert sm.Segmenter(sdpa.encoder, None, device=CUDA, precision="bf16").attention == "flash"  # auto
    for a, b in zip(flash.segment_batch(clouds()), sdpa.segment_batch(clouds()), strict=True):
        scale = float(np.abs(b.embedding).max())
        assert np.abs(a.embedding - b.embedding).max() < 0.02 * scale
    # one module in fp16 on both kernels: the same numbers to fp16 rounding
    module = SerializedAttention(48, 3).to(CUDA).half().eval()
    plan_sdpa = cuda_segmenter("rope", attention="sdpa").prepare(clouds()).plan
    plan_flash = cuda_segmenter("rope", attention="flash", precision="fp16").prepare(clouds()).plan
    feat = torch.randn(plan_sdpa.levels[0].capacity, 48, device=CUDA, dtype=torch.float16)
    with torch.inference_mode():
        for k in range(len(plan_sdpa.orders)):
            a = module(feat, plan_flash.levels[0].layouts[k])
            b = module(feat, plan_sdpa.levels[0].layouts[k])
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_serialization_on_cuda_equals_the_cpu_without_a_host_sync():
    rng = np.random.default_rng(3)
    cells = rng.choice(4000**3, size=20_000, replace=False)
    grid = torch.from_numpy(np.stack(np.unravel_index(cells, (4000,) * 3), axis=1))
    cloud = (torch.arange(20_000) >= 5_000).long()
    expected = serialize(grid, cloud, 2, ORDERS)
    grid, cloud = grid.cuda(), cloud.cuda()
    serialize(grid, cloud, 2, ORDERS)  # copies the lookup tables to the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = serialize(grid, cloud, 2, ORDERS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name in ("code", "order", "depth"):
        assert torch.equal(getattr(got, name).cpu(), getattr(expected, name)), name
