"""Serialized patch attention against a naive per-patch reference written from the padding rule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sonata_model.attention import ATTENTION_KERNELS, PatchLayout, SerializedAttention

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


def naive_for(module: SerializedAttention, feat, order, counts, patch_size=K, scale=None):
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
    )


def random_batch(counts, seed=0, dtype=torch.float64):
    """Features, and an order that visits each cloud's rows in a random sequence along the curve."""
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn(sum(counts), CHANNELS, generator=generator, dtype=dtype)
    starts = torch.cumsum(torch.tensor([0, *counts[:-1]]), 0).tolist()
    order = torch.cat([torch.randperm(n, generator=generator) + s for n, s in zip(counts, starts, strict=True)])
    return feat, order, torch.tensor(counts).cumsum(0)


def make_module(seed=0, dtype=torch.float64, **kwargs) -> SerializedAttention:
    torch.manual_seed(seed)
    module = SerializedAttention(CHANNELS, HEADS, **kwargs).to(dtype)
    with torch.no_grad():  # biases matter: the default init leaves them zero
        module.qkv.bias.normal_()
        module.proj.bias.normal_()
    return module.eval()


def test_layout_pads_last_patch_with_the_points_before_it():
    # clouds of 6, 0, 3, 4 and 2 points, K = 4: curve positions 0..5 | - | 6..8 | 9..12 | 13..14
    order = torch.tensor([5, 3, 0, 1, 4, 2, 7, 8, 6, 9, 10, 11, 12, 14, 13])
    layout = PatchLayout.build(order, torch.tensor([6, 6, 9, 13, 15]), 4)
    assert layout.num_full_patches == 3
    # cloud 0: positions 0-3, then 4, 5 and the 2 positions before them (2, 3); cloud 3: one patch of 4
    full = [0, 1, 2, 3, 4, 5, 2, 3, 9, 10, 11, 12]
    short = [6, 7, 8, 13, 14]  # clouds 2 and 4 are shorter than K: one sequence each
    assert torch.equal(layout.index, order[full + short])
    # every point reads its first slot: curve position p of cloud 0 sits at slot p
    slot_of_position = [0, 1, 2, 3, 4, 5, 12, 13, 14, 8, 9, 10, 11, 15, 16]
    expected_inverse = torch.empty(15, dtype=torch.long)
    expected_inverse[order] = torch.tensor(slot_of_position)
    assert torch.equal(layout.inverse, expected_inverse)
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [0, 4, 8, 12, 15, 17]
    assert layout.max_seqlen == 4
    assert layout.short_valid.tolist() == [[True, True, True], [True, True, False]]
    assert torch.equal(layout.index[12:][layout.short_gather[layout.short_valid]], order[short])
    assert layout.short_scatter.tolist() == [0, 1, 2, 3, 4]


def test_layout_of_short_clouds_only_is_unpadded():
    layout = PatchLayout.build(torch.arange(5), torch.tensor([3, 5]), 4)
    assert layout.num_full_patches == 0
    assert layout.index.tolist() == [0, 1, 2, 3, 4]
    assert layout.inverse.tolist() == [0, 1, 2, 3, 4]
    assert layout.cu_seqlens.tolist() == [0, 3, 5]
    assert layout.max_seqlen == 3


def test_cu_seqlens_segments_reproduce_the_module():
    """What the flash kernel computes from the layout (attention within each cu_seqlens segment of the
    slots, read back through `inverse`) equals the sdpa path: the flash wiring, checked on CPU."""
    counts = [21, 5, 8, 0, 1, 16, 3]
    feat, order, offset = random_batch(counts, seed=10)
    module = make_module(seed=10)
    layout = PatchLayout.build(order, offset, K)
    bounds = layout.cu_seqlens.tolist()
    assert bounds[-1] == layout.num_slots
    assert layout.max_seqlen == max(b - a for a, b in itertools.pairwise(bounds))
    qkv = module.qkv(feat[layout.index]).view(layout.num_slots, 3, HEADS, -1)
    segments = []
    for start, end in itertools.pairwise(bounds):
        q, k, v = qkv[start:end].permute(1, 2, 0, 3)  # (H, length, d) each
        segments.append(torch.softmax(q @ k.transpose(1, 2) * module.scale, -1) @ v)
    slots_out = torch.cat([s.transpose(0, 1).reshape(-1, CHANNELS) for s in segments])
    expected = module.proj(slots_out[layout.inverse])
    torch.testing.assert_close(module(feat, layout), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [5, K, 3 * K, 2 * K + 5], ids=["n<K", "n=K", "n=3K", "n=2K+5"])
def test_single_cloud_matches_naive(n):
    feat, order, offset = random_batch([n], seed=n)
    module = make_module(seed=n)
    out = module(feat, PatchLayout.build(order, offset, K))
    torch.testing.assert_close(out, naive_for(module, feat, order, [n]), rtol=1e-10, atol=1e-10)


def test_mixed_batch_matches_naive():
    counts = [21, 5, 8, 0, 1, 16, 3, 13]
    feat, order, offset = random_batch(counts, seed=1)
    module = make_module(seed=1)
    out = module(feat, PatchLayout.build(order, offset, K))
    torch.testing.assert_close(out, naive_for(module, feat, order, counts), rtol=1e-10, atol=1e-10)


def test_custom_qk_scale_matches_naive():
    counts = [19, 6]
    feat, order, offset = random_batch(counts, seed=2)
    module = make_module(seed=2, qk_scale=0.9)
    out = module(feat, PatchLayout.build(order, offset, K))
    torch.testing.assert_close(out, naive_for(module, feat, order, counts, scale=0.9), rtol=1e-10, atol=1e-10)


def test_batch_of_two_equals_each_alone():
    counts = [19, 6]
    feat, order, offset = random_batch(counts, seed=3)
    module = make_module(seed=3)
    together = module(feat, PatchLayout.build(order, offset, K))
    first = module(feat[:19], PatchLayout.build(order[:19], torch.tensor([19]), K))
    second = module(feat[19:], PatchLayout.build(order[19:] - 19, torch.tensor([6]), K))
    torch.testing.assert_close(together, torch.cat([first, second]), rtol=1e-12, atol=1e-12)


def test_padding_copies_do_not_change_the_outputs_of_their_originals():
    n = 2 * K + 3
    feat, order, offset = random_batch([n], seed=4)
    module = make_module(seed=4)
    out = module(feat, PatchLayout.build(order, offset, K))
    # the first 2K curve positions alone (no padding) give their points the same outputs
    head = module(feat[order[: 2 * K]], PatchLayout.build(torch.arange(2 * K), torch.tensor([2 * K]), K))
    torch.testing.assert_close(out[order[: 2 * K]], head, rtol=1e-12, atol=1e-12)
    # the last 3 points attend over the cloud's last K points along the curve
    tail = module(feat[order[-K:]], PatchLayout.build(torch.arange(K), torch.tensor([K]), K))
    torch.testing.assert_close(out[order[-3:]], tail[-3:], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[order[-K:-3]], tail[:-3])  # the padding copies' outputs were dropped


def test_gradients_match_naive():
    counts = [21, 5, 8]
    feat, order, offset = random_batch(counts, seed=5)
    weights = torch.randn(feat.shape, generator=torch.Generator().manual_seed(6), dtype=feat.dtype)
    module = make_module(seed=5)
    layout = PatchLayout.build(order, offset, K)

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
    feat, order, offset = random_batch(counts, seed=7)
    expected = naive_attention(feat, order, counts, K, HEADS, *state.values())
    out = module(feat, PatchLayout.build(order, offset, K))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_dropout_acts_in_training_only():
    counts = [21, 5]
    feat, order, offset = random_batch(counts, seed=8)
    module = make_module(seed=8, attn_drop=0.5, proj_drop=0.5)
    layout = PatchLayout.build(order, offset, K)
    torch.testing.assert_close(module(feat, layout), naive_for(module, feat, order, counts))
    module.train()
    torch.manual_seed(0)
    assert not torch.allclose(module(feat, layout), naive_for(module, feat, order, counts))


def test_cpu_autocast_bf16_close_to_fp32():
    counts = [21, 5]
    feat, order, offset = random_batch(counts, seed=9, dtype=torch.float32)
    module = make_module(seed=9, dtype=torch.float32)
    layout = PatchLayout.build(order, offset, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = module(feat, layout)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), module(feat, layout), rtol=0.05, atol=0.05)


def test_bad_layout_input_is_rejected():
    with pytest.raises(ValueError, match=r"offset\[-1\] = 6 but order has 5"):
        PatchLayout.build(torch.arange(5), torch.tensor([2, 6]), 4)
    with pytest.raises(ValueError, match="non-decreasing"):
        PatchLayout.build(torch.arange(5), torch.tensor([3, 2, 5]), 4)
    with pytest.raises(ValueError, match="permutation"):
        PatchLayout.build(torch.tensor([0, 1, 1, 3]), torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="permutation"):
        PatchLayout.build(torch.tensor([0, 1, 2, 4]), torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="patch_size"):
        PatchLayout.build(torch.arange(4), torch.tensor([4]), 0)
    with pytest.raises(ValueError, match="integer"):
        PatchLayout.build(torch.arange(4.0), torch.tensor([4]), 4)


def test_bad_module_input_is_rejected():
    module = make_module()
    layout = PatchLayout.build(torch.arange(6), torch.tensor([6]), 4)
    with pytest.raises(ValueError, match="built for 6 points"):
        module(torch.zeros(5, CHANNELS, dtype=torch.float64), layout)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        module(torch.zeros(6, 4, dtype=torch.float64), layout)
    with pytest.raises(ValueError, match="kernel must be one of"):
        module.kernel = "xformers"
    assert ATTENTION_KERNELS == ("sdpa", "flash")
    # flash needs flash_attn and CUDA: on this CPU run one of the two must refuse, by name
    with pytest.raises(RuntimeError, match="flash"):
        module.kernel = "flash"
        module(torch.zeros(6, CHANNELS, dtype=torch.float64), layout)


@pytest.mark.parametrize("counts", [[37], [20, 5, 9]])
def test_rope_attention_matches_naive_rotation(counts):
    """Utonia's attention: q and k rotated by the points' coordinates (head dim 18: chunks of 6)."""
    torch.manual_seed(3)
    module = SerializedAttention(36, 2, rope_base=10.0).double().eval()
    with torch.no_grad():
        module.qkv.bias.normal_()
        module.proj.bias.normal_()
    generator = torch.Generator().manual_seed(4)
    feat = torch.randn(sum(counts), 36, generator=generator, dtype=torch.float64)
    coord = torch.randn(sum(counts), 3, generator=generator, dtype=torch.float64) * 5
    starts = torch.cumsum(torch.tensor([0, *counts[:-1]]), 0).tolist()
    order = torch.cat([torch.randperm(n, generator=generator) + s for n, s in zip(counts, starts, strict=True)])
    layout = PatchLayout.build(order, torch.tensor(counts).cumsum(0), K)
    expected = naive_attention(
        feat, order, counts, K, 2, module.qkv.weight, module.qkv.bias, module.proj.weight, module.proj.bias,
        coord=coord, rope_base=10.0,
    )  # fmt: skip
    with torch.no_grad():
        out = module(feat, layout, coord)
    # (to 1e-6: the stored frequencies are float32, as in the released files)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, naive_for(module, feat, order, counts))  # the rotation matters
    # q . k depends on coordinate differences only: a common shift leaves the output unchanged
    with torch.no_grad():
        torch.testing.assert_close(module(feat, layout, coord + torch.tensor([3.0, -7.0, 1.5])), out)
    expected_freq = torch.tensor([1.0, 10 ** (-1 / 3), 10 ** (-2 / 3)], dtype=torch.float64)
    assert torch.allclose(module.rope.inv_freq, expected_freq)


def test_rope_needs_coordinates_and_a_head_dim_of_six():
    module = SerializedAttention(36, 2, rope_base=10.0)
    layout = PatchLayout.build(torch.arange(10), torch.tensor([10]), K)
    with pytest.raises(ValueError, match="needs the points' coordinates"):
        module(torch.randn(10, 36), layout)
    with pytest.raises(ValueError, match="multiple of 6"):
        SerializedAttention(32, 2, rope_base=10.0)
