"""Serialized patch attention over a frame plan's layouts against a naive per-patch reference written
from the padding rule (the curve order taken from the serialization module)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from plans import distinct_cells, stage_config, voxel_plan

from sonata_model.attention import SerializedAttention, resolve_attention
from sonata_model.plan import SizeBuckets
from sonata_model.serialization import serialize

CHANNELS, HEADS, K = 12, 3, 8


def rope_matrix(point: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """(D, D) rotation Utonia's RoPE applies to one head of the query / key of a point at `point` (3,):
    block-diagonal over the x, y, z chunks of D / 3 channels; in the chunk of axis a, channels j and
    j + D / 6 rotate by point[a] * base ** (-2 j / (D / 3))."""
    chunk, half = head_dim // 3, head_dim // 6
    matrix = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    for axis in range(3):
        for j in range(half):
            angle = float(point[axis]) * base ** (-2 * j / chunk)
            a, b = axis * chunk + j, axis * chunk + j + half
            c, s = math.cos(angle), math.sin(angle)
            matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def naive_attention(
    feat, order, counts, patch_size, num_heads, w_qkv, b_qkv, w_proj, b_proj, scale=None, coord=None, rope_base=None
):
    """Per cloud and patch: softmax(q k^T * scale) v per head, then proj; each point keeps the output of
    its first occurrence. A cloud of n > K points has patches of K consecutive curve positions; with
    r = n % K != 0 the last patch is the last r positions followed by the K - r positions before them.
    With `rope_base`, each point's q and k are first multiplied by its `rope_matrix`."""
    head_dim = feat.shape[1] // num_heads
    scale = scale or head_dim**-0.5
    rows, outputs, start = [], [], 0
    for n in counts:
        positions = list(range(start, start + n))
        start += n
        if n <= patch_size:
            patches = [positions] if n else []
        else:
            whole = n - n % patch_size
            patches = [positions[i : i + patch_size] for i in range(0, whole, patch_size)]
            if n % patch_size:
                patches.append(positions[whole:] + positions[n - patch_size : whole])
        emitted = set()
        for patch in patches:
            points = order[patch]
            qkv = (feat[points] @ w_qkv.T + b_qkv).reshape(len(patch), 3, num_heads, head_dim)
            heads = []
            for h in range(num_heads):
                q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
                if rope_base is not None:
                    rotations = torch.stack([rope_matrix(coord[p], head_dim, rope_base) for p in points.tolist()])
                    q = torch.einsum("nij,nj->ni", rotations.to(q.dtype), q)
                    k = torch.einsum("nij,nj->ni", rotations.to(k.dtype), k)
                heads.append(torch.softmax(q @ k.T * scale, dim=-1) @ v)
            out = torch.cat(heads, dim=1) @ w_proj.T + b_proj
            first = [i for i, p in enumerate(points.tolist()) if p not in emitted]
            emitted.update(points.tolist())
            rows.append(points[first])
            outputs.append(out[first])
    rows = torch.cat(rows)
    assert torch.equal(rows.sort().values, torch.arange(feat.shape[0]))
    return torch.cat(outputs)[rows.argsort()]


def naive_for(module: SerializedAttention, feat, order, counts, patch_size=K, scale=None, coord=None):
    return naive_attention(
        feat,
        order,
        counts,
        patch_size,
        module.num_heads,
        module.qkv.weight,
        module.qkv.bias,
        module.proj.weight,
        module.proj.bias,
        scale,
        coord=coord,
        rope_base=None if module.rope is None else 10.0,
    )


def batch_of(
    counts, seed=0, dtype=torch.float64, attention="sdpa", buckets=None, curve=0, channels=CHANNELS, heads=HEADS
):
    """Random voxel clouds of `counts` voxels: their features, the plan's layout along curve `curve`, the
    curve order the serialization module gives, and the voxel coordinates."""
    rng = np.random.default_rng(seed)
    grids = [distinct_cells(n, 12, rng) for n in counts]
    plan = voxel_plan(grids, stage_config(channels=channels, heads=heads), attention=attention, buckets=buckets)
    grid = torch.from_numpy(np.concatenate(grids))
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    order = serialize(grid, batch, len(counts), plan.orders).order[curve]
    level = plan.levels[0]
    feat = torch.from_numpy(rng.normal(size=(level.capacity, channels))).to(dtype)
    return feat, level.layouts[curve], order, level.coord.to(dtype)


def make_module(seed=0, dtype=torch.float64, **kwargs) -> SerializedAttention:
    torch.manual_seed(seed)
    module = SerializedAttention(CHANNELS, HEADS, **kwargs).to(dtype)
    with torch.no_grad():  # biases matter: the default init leaves them zero
        module.qkv.bias.normal_()
        module.proj.bias.normal_()
    return module.eval()


def test_layout_pads_last_patch_with_the_points_before_it():
    # clouds of 13, 3, 8 and 2 voxels, K = 8: 13 = patches [0..7], [8..12 + 5, 6, 7]; the others one each.
    # Full patches (every slot its own) first: cloud 0's first, cloud 2; then the partly own ones,
    # queried at their own slots only: cloud 0's last (5 own), cloud 1 (3), cloud 3 (2).
    counts = [13, 3, 8, 2]
    _, layout, order, _ = batch_of(counts, seed=1)
    starts = np.cumsum([0, *counts[:-1]])
    assert (layout.num_patches, layout.length, layout.full_patches, layout.query_length) == (5, K, 2, 5)
    positions = [list(range(8)), list(range(16, 24)), [8, 9, 10, 11, 12, 5, 6, 7]]  # curve positions
    positions += [[13, 14, 15] + [15] * 5, [24, 25] + [25] * 6]  # short clouds: masked tails
    keys = [8, 8, 8, 3, 2]
    index = layout.index.view(5, K)
    for p, (pos, n) in enumerate(zip(positions, keys, strict=True)):
        assert torch.equal(index[p, :n], order[pos[:n]]), p
        if p >= layout.full_patches:
            bias = layout.bias[p - layout.full_patches, 0, 0]
            assert bias[:n].eq(0).all() and bias[n:].eq(-torch.inf).all()
    assert layout.bias.shape == (3, 1, 1, K)
    # every voxel reads the output of its own (first) curve position: 16 full-patch outputs, then 5 per
    # partly own patch
    own_output = torch.tensor([*range(8), *range(16, 21), *range(21, 24), *range(8, 16), 26, 27])
    expected = torch.empty(26, dtype=torch.long)
    expected[order] = own_output
    assert torch.equal(layout.inverse, expected)
    assert starts.tolist() == [0, 13, 16, 24]


def test_layout_of_short_clouds_only_has_the_longest_cloud_as_patch_length():
    _, layout, order, _ = batch_of([3, 5], seed=2)
    assert (layout.num_patches, layout.length, layout.full_patches, layout.query_length) == (2, 5, 1, 3)
    index = layout.index.view(2, 5)
    assert torch.equal(index[0], order[3:]) and torch.equal(index[1, :3], order[:3])
    assert layout.bias.flatten().tolist() == [0, 0, 0, -torch.inf, -torch.inf]


def test_clouds_of_whole_patches_need_no_mask():
    _, layout, _, _ = batch_of([16, 13], seed=3)
    assert layout.bias is None and layout.num_patches == 4


@pytest.mark.parametrize("n", [5, K, 3 * K, 2 * K + 5], ids=["n<K", "n=K", "n=3K", "n=2K+5"])
@pytest.mark.parametrize("curve", [0, 2])
def test_single_cloud_matches_naive(n, curve):
    feat, layout, order, _ = batch_of([n], seed=n, curve=curve)
    module = make_module(seed=n)
    out = module(feat, layout)
    torch.testing.assert_close(out, naive_for(module, feat, order, [n]), rtol=1e-10, atol=1e-10)


def test_mixed_batch_matches_naive():
    counts = [21, 5, 8, 1, 16, 3, 13]
    feat, layout, order, _ = batch_of(counts, seed=1, curve=3)
    module = make_module(seed=1)
    torch.testing.assert_close(module(feat, layout), naive_for(module, feat, order, counts), rtol=1e-10, atol=1e-10)


def test_custom_qk_scale_matches_naive():
    counts = [19, 6]
    feat, layout, order, _ = batch_of(counts, seed=2)
    module = make_module(seed=2, qk_scale=0.9)
    out = module(feat, layout)
    torch.testing.assert_close(out, naive_for(module, feat, order, counts, scale=0.9), rtol=1e-10, atol=1e-10)


def test_padded_layout_gives_every_real_voxel_the_same_output():
    """A bucketed plan (padding rows, spare patches, masked keys everywhere) equals the exact one."""
    counts = [21, 5, 9]
    feat, layout, order, _ = batch_of(counts, seed=4)
    padded_feat, padded, padded_order, _ = batch_of(counts, seed=4, buckets=SizeBuckets(growth=1.5, minimum=48))
    assert padded.inverse.shape[0] > sum(counts) and padded.num_patches > layout.num_patches
    assert torch.equal(order, padded_order)
    module = make_module(seed=4)
    padded_feat[: sum(counts)] = feat[: sum(counts)]
    out = module(padded_feat, padded)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[: sum(counts)], module(feat, layout), rtol=1e-12, atol=1e-12)


def test_padding_copies_do_not_change_the_outputs_of_their_originals():
    n = 2 * K + 3
    feat, layout, order, _ = batch_of([n], seed=4)
    module = make_module(seed=4)
    out = module(feat, layout)
    naive = naive_for(module, feat, order, [n])
    torch.testing.assert_close(out, naive, rtol=1e-12, atol=1e-12)
    # the last 3 voxels attend over the cloud's last K voxels along the curve, the copies' outputs dropped
    tail = naive_for(module, feat[order[-K:]], torch.arange(K), [K])
    torch.testing.assert_close(out[order[-3:]], tail[-3:], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[order[-K:-3]], tail[:-3])


def test_gradients_match_naive():
    counts = [21, 5, 8]
    feat, layout, order, _ = batch_of(counts, seed=5)
    weights = torch.randn(feat.shape, generator=torch.Generator().manual_seed(6), dtype=feat.dtype)
    module = make_module(seed=5)

    feat_module = feat.clone().requires_grad_()
    (module(feat_module, layout) * weights).sum().backward()
    module_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    feat_naive = feat.clone().requires_grad_()
    (naive_for(module, feat_naive, order, counts) * weights).sum().backward()

    torch.testing.assert_close(feat_module.grad, feat_naive.grad, rtol=1e-10, atol=1e-10)
    for grad, param in zip(module_grads, module.parameters(), strict=True):
        torch.testing.assert_close(grad, param.grad, rtol=1e-10, atol=1e-10)


def test_reference_shaped_weights_load_and_give_the_reference_output():
    generator = torch.Generator().manual_seed(7)
    state = {
        "qkv.weight": torch.randn(3 * CHANNELS, CHANNELS, generator=generator, dtype=torch.float64),
        "qkv.bias": torch.randn(3 * CHANNELS, generator=generator, dtype=torch.float64),
        "proj.weight": torch.randn(CHANNELS, CHANNELS, generator=generator, dtype=torch.float64),
        "proj.bias": torch.randn(CHANNELS, generator=generator, dtype=torch.float64),
    }
    module = SerializedAttention(CHANNELS, HEADS).double().eval()
    assert {key: tuple(v.shape) for key, v in module.state_dict().items()} == {
        key: tuple(v.shape) for key, v in state.items()
    }
    module.load_state_dict(state, strict=True)
    counts = [13, 4]
    feat, layout, order, _ = batch_of(counts, seed=7)
    expected = naive_attention(feat, order, counts, K, HEADS, *state.values())
    torch.testing.assert_close(module(feat, layout), expected, rtol=1e-10, atol=1e-10)


def test_dropout_acts_in_training_only():
    counts = [21, 5]
    feat, layout, order, _ = batch_of(counts, seed=8)
    module = make_module(seed=8, attn_drop=0.5, proj_drop=0.5)
    torch.testing.assert_close(module(feat, layout), naive_for(module, feat, order, counts))
    module.train()
    torch.manual_seed(0)
    assert not torch.allclose(module(feat, layout), naive_for(module, feat, order, counts))


def test_cpu_autocast_bf16_close_to_fp32():
    counts = [21, 5]
    feat, layout, _, _ = batch_of(counts, seed=9, dtype=torch.float32)
    module = make_module(seed=9, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = module(feat, layout)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), module(feat, layout), rtol=0.05, atol=0.05)


def test_flash_layout_segments_reproduce_the_sdpa_output():
    """What flash_attn computes from a flash layout (attention within each cu_seqlens segment of the
    packed slots, read back through `inverse`) equals the sdpa path: the flash wiring, checked on CPU,
    padded plans included (spare sequences are empty, spare tail slots belong to none)."""
    counts = [21, 5, 8, 1, 16, 3]
    for buckets in (None, SizeBuckets(growth=1.5, minimum=48)):
        feat, flash, _, _ = batch_of(counts, seed=10, attention="flash", buckets=buckets)
        _, sdpa, _, _ = batch_of(counts, seed=10, buckets=buckets)
        module = make_module(seed=10)
        bounds = flash.cu_seqlens.tolist()
        assert flash.cu_seqlens.dtype == torch.int32 and len(bounds) == flash.num_patches + 1
        assert max(b - a for a, b in itertools.pairwise(bounds)) <= flash.length
        qkv = module.qkv(feat[flash.index]).view(-1, 3, HEADS, CHANNELS // HEADS)
        slots = torch.full((qkv.shape[0], CHANNELS), torch.nan, dtype=feat.dtype)
        for start, end in itertools.pairwise(bounds):
            q, k, v = qkv[start:end].permute(1, 2, 0, 3)  # (H, length, d) each
            slots[start:end] = (torch.softmax(q @ k.transpose(1, 2) * module.scale, -1) @ v).transpose(0, 1).flatten(1)
        real = sum(counts)
        expected = module.proj(slots[flash.inverse])[:real]
        torch.testing.assert_close(expected, module(feat, sdpa)[:real], rtol=1e-10, atol=1e-10)


def test_attention_choice_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu, "bf16") == "sdpa" and resolve_attention("sdpa", cpu, "fp32") == "sdpa"
    with pytest.raises(ValueError, match="flash"):  # no flash_attn here, or no CUDA: named either way
        resolve_attention("flash", cpu, "fp16")
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("xformers", cpu, "fp32")


def test_bad_module_input_is_rejected():
    module = make_module()
    feat, layout, _, _ = batch_of([6], seed=11)
    with pytest.raises(ValueError, match="built for 6"):
        module(feat[:5], layout)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        module(torch.zeros(6, 4, dtype=torch.float64), layout)


@pytest.mark.parametrize("counts", [[37], [20, 5, 9]])
def test_rope_attention_matches_naive_rotation(counts):
    """Utonia's attention: q and k rotated by the voxels' coordinates (head dim 18: chunks of 6); a
    padding copy rotates by the coordinate of the voxel it copies."""
    torch.manual_seed(3)
    module = SerializedAttention(36, 2, rope_base=10.0).double().eval()
    with torch.no_grad():
        module.qkv.bias.normal_()
        module.proj.bias.normal_()
    feat, layout, order, coord = batch_of(counts, seed=4, channels=36, heads=2)
    coord = coord * 50  # angles of several radians
    with torch.no_grad():
        out = module(feat, layout, coord)
        expected = naive_for(module, feat, order, counts, coord=coord)
    # (to 1e-6: the stored frequencies are float32, as in the released files)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    plain = SerializedAttention(36, 2).double().eval()
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if "rope" not in k})
    with torch.no_grad():
        assert not torch.allclose(out, plain(feat, layout))  # the rotation matters
        # q . k depends on coordinate differences only: a common shift leaves the output unchanged
        torch.testing.assert_close(module(feat, layout, coord + torch.tensor([3.0, -7.0, 1.5])), out)
    expected_freq = torch.tensor([1.0, 10 ** (-1 / 3), 10 ** (-2 / 3)], dtype=torch.float64)
    assert torch.allclose(module.rope.inv_freq, expected_freq)


def test_rope_needs_coordinates_and_a_head_dim_of_six():
    module = SerializedAttention(36, 2, rope_base=10.0)
    feat, layout, _, _ = batch_of([10], seed=12, dtype=torch.float32, channels=36, heads=2)
    with pytest.raises(ValueError, match="needs the points' coordinates"):
        module(feat, layout)
    with pytest.raises(ValueError, match="multiple of 6"):
        SerializedAttention(32, 2, rope_base=10.0)
