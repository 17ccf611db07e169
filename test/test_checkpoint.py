"""Released checkpoints load strictly; broken ones fail with errors naming the problem."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest
import torch

import sonata_model as sm
from sonata_model.checkpoint import atomic_save
from sonata_model.domains import OUTDOOR_RANGE, InputTransform

DATA = Path(__file__).parent / "data"

# The reference's constructor arguments as stored in the released files' "config".
RELEASED_CONFIG = {
    "in_channels": 9,
    "order": ["z", "z-trans", "hilbert", "hilbert-trans"],
    "stride": [2, 2, 2, 2],
    "mlp_ratio": 4,
    "qkv_bias": True,
    "qk_scale": None,
    "attn_drop": 0.0,
    "proj_drop": 0.0,
    "drop_path": 0.3,
    "shuffle_orders": True,
    "pre_norm": True,
    "enable_rpe": False,
    "enable_flash": True,
    "upcast_attention": False,
    "upcast_softmax": False,
    "traceable": True,
    "mask_token": True,
    "enc_mode": True,
    "freeze_encoder": False,
}
SIZES = {
    "sonata": dict(
        enc_depths=[3, 3, 3, 12, 3],
        enc_channels=[48, 96, 192, 384, 512],
        enc_num_head=[3, 6, 12, 24, 32],
        enc_patch_size=[1024] * 5,
    ),
    "sonata_small": dict(
        enc_depths=[2, 2, 2, 6, 2],
        enc_channels=[32, 64, 128, 256, 512],
        enc_num_head=[2, 4, 8, 16, 32],
        enc_patch_size=[1024] * 5,
    ),
}
SIZES["concerto_large"] = dict(SIZES["sonata"], enc_channels=[64, 128, 256, 512, 768], enc_num_head=[4, 8, 16, 32, 48])
SIZES["utonia"] = dict(SIZES["sonata"], enc_channels=[54, 108, 216, 432, 576])
# Utonia's released config also carries its RoPE settings (training-time coordinate augmentations).
EXTRA_CONFIG = {"utonia": {"rope_base": 10, "shift_coords": None, "jitter_coords": 1.1, "rescale_coords": 1.2}}
PARAMETERS = {"sonata": 108_461_376, "sonata_small": 38_648_992, "concerto_large": 207_667_456, "utonia": 137_253_744}
TENSORS = {"sonata": 453, "sonata_small": 273, "concerto_large": 453, "utonia": 477}
INDOOR = InputTransform("indoor", scale=1.0, grid=0.02, centre="xyz")
UTONIA_OUTDOOR = InputTransform("outdoor", scale=0.2, grid=0.01, centre="none", range_box=OUTDOOR_RANGE)
RELEASED_TRANSFORM = {"sonata": INDOOR, "sonata_small": INDOOR, "concerto_large": INDOOR, "utonia": UTONIA_OUTDOOR}


def released_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the released file's keys and shapes (from the reference TSV); RoPE
    frequencies with their real values (base 10)."""
    rows = (DATA / f"{name}_state_dict_keys.tsv").read_text().splitlines()[1:]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for row in rows:
        key, shape, _ = row.split("\t")
        state[key] = torch.randn(ast.literal_eval(shape), generator=generator) * 0.02
        if key.endswith("rope.inv_freq"):
            state[key] = 10.0 ** (-torch.arange(0, 6, 2, dtype=torch.float32) / 6)
    return state


def released_config(name: str) -> dict:
    return {**RELEASED_CONFIG, **SIZES[name], **EXTRA_CONFIG.get(name, {})}


@pytest.fixture(scope="module", params=["sonata", "sonata_small", "concerto_large", "utonia"])
def released(request, tmp_path_factory):
    name = request.param
    state = released_state_dict(name)
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save({"config": released_config(name), "state_dict": state}, path)
    return name, path, state


def test_released_checkpoint_loads_strictly_with_exact_parameter_count(released):
    name, path, state = released
    encoder = sm.load(path)
    assert sm.count_parameters(encoder) == PARAMETERS[name]
    assert sm.count_parameters(sm.SonataEncoder(sm.get_config(name))) == PARAMETERS[name]
    loaded = encoder.state_dict()
    assert len(loaded) == TENSORS[name]
    assert list(loaded) == list(state)  # same key names, same order as the released file
    key = "enc.enc3.block1.attn.qkv.weight"
    assert torch.equal(loaded[key], state[key])
    assert encoder.config.feature_keys == ("coord", "color", "normal")
    assert encoder.config.transform() == RELEASED_TRANSFORM[name]
    assert encoder.config.head_channels == sum(SIZES[name]["enc_channels"])  # 1232 for sonata
    assert encoder.config.pretrain_channels == sum(SIZES[name]["enc_channels"][2:])  # 1088 for sonata
    assert not encoder.training


def test_training_checkpoint_prefixes_are_stripped_and_other_entries_ignored(released, tmp_path):
    name, _, state = released
    for prefix in ("module.student.backbone.", "module.backbone."):
        wrapped = {prefix + k: v for k, v in state.items()}
        wrapped["module.teacher.backbone.embedding.mask_token"] = torch.zeros(1, 1)
        wrapped["module.mask_head.weight"] = torch.zeros(3, 3)
        path = tmp_path / "train.pth"
        torch.save({"state_dict": wrapped, "epoch": 3}, path)
        encoder = sm.load(path, config=sm.get_config(name))
        assert torch.equal(encoder.embedding.mask_token, state["embedding.mask_token"])


def test_mismatched_checkpoint_names_missing_unexpected_and_misshaped_keys(released, tmp_path):
    name, _, state = released
    broken = dict(state)
    broken.pop("enc.enc0.block0.attn.proj.bias")
    broken["enc.enc9.block0.bogus"] = torch.zeros(1)
    broken["embedding.stem.linear.weight"] = torch.zeros(SIZES[name]["enc_channels"][0], 4)
    path = tmp_path / "broken.pth"
    torch.save({"config": released_config(name), "state_dict": broken}, path)
    with pytest.raises(sm.CheckpointError) as error:
        sm.load(path)
    message = str(error.value)
    assert str(path) in message
    assert "1 missing key(s): enc.enc0.block0.attn.proj.bias" in message
    assert "1 unexpected key(s): enc.enc9.block0.bogus" in message
    assert "embedding.stem.linear.weight: file (" in message and ", 4) vs model (" in message


def test_unreadable_and_unsupported_checkpoints_fail_fast(tmp_path):
    with pytest.raises(sm.CheckpointError, match="checkpoint not found"):
        sm.load(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(sm.CheckpointError, match="cannot read checkpoint"):
        sm.load(garbage)
    rpe = tmp_path / "rpe.pth"
    torch.save({"config": {**RELEASED_CONFIG, "enable_rpe": True}, "state_dict": {}}, rpe)
    with pytest.raises(sm.CheckpointError, match="enable_rpe"):
        sm.load(rpe)
    listed = tmp_path / "listed.pth"
    torch.save({"config": RELEASED_CONFIG, "state_dict": {"embedding.stem.conv.weight": [[0.0]]}}, listed)
    with pytest.raises(sm.CheckpointError, match=r"listed\.pth: the state_dict holds 1 non-tensor key"):
        sm.load(listed)


def test_own_checkpoint_round_trip_keeps_transform_and_meta(tmp_path):
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.1, coord_scale=0.2)
    encoder = sm.SonataEncoder(config)
    path = sm.save_encoder(tmp_path / "own.pth", encoder, meta={"label_set": "synthetic"})
    loaded = sm.load(path)
    assert loaded.config == config
    assert loaded.meta == {"label_set": "synthetic"}
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_half_precision_export_is_half_the_size_and_loads_as_fp32(tmp_path):
    encoder = sm.SonataEncoder(sm.get_config("tiny"))
    full = sm.save_encoder(tmp_path / "fp32.pth", encoder)
    half = sm.save_encoder(tmp_path / "fp16.pth", encoder, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = sm.load(half)
    for key, value in encoder.state_dict().items():
        restored = loaded.state_dict()[key]
        assert restored.dtype == value.dtype
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(restored, expected), key


def test_head_round_trip_in_released_format(tmp_path):
    head = sm.LinearHead(1232, 20, class_names=[f"c{i}" for i in range(20)], label_set="scannet20")
    path = sm.save_head(tmp_path / "head.pth", head)
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"backbone_out_channels": 1232, "num_classes": 20}
    assert set(raw["state_dict"]) == {"seg_head.weight", "seg_head.bias"}
    loaded = sm.load_head(path)
    assert loaded.class_names == head.class_names and loaded.label_set == "scannet20"
    assert torch.equal(loaded.seg_head.weight, head.seg_head.weight)
    torch.save({"config": {"num_classes": 20}, "state_dict": {}}, tmp_path / "bad_head.pth")
    with pytest.raises(sm.CheckpointError, match="backbone_out_channels"):
        sm.load_head(tmp_path / "bad_head.pth")
    state = {k: v.clone() for k, v in head.state_dict().items()}
    for broken, message in [
        ({"config": {"backbone_out_channels": "1232", "num_classes": 20}}, "positive integer sizes"),
        ({"config": {"backbone_out_channels": 1232, "num_classes": -3}}, "positive integer sizes"),
        ({"meta": {"class_names": ["only", "three", "names"]}}, "class_names one per class .20."),
        ({"meta": ["not", "a", "mapping"]}, "head meta must be a mapping"),
        ({"state_dict": {k: v.tolist() for k, v in state.items()}}, "holds 2 non-tensor key.s.: seg_head"),
    ]:
        payload = {"config": {"backbone_out_channels": 1232, "num_classes": 20}, "state_dict": state} | broken
        torch.save(payload, tmp_path / "broken_head.pth")
        with pytest.raises(sm.CheckpointError, match=f"broken_head.pth: .*{message}"):
            sm.load_head(tmp_path / "broken_head.pth")


def test_atomic_save_gives_ordinary_file_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_save({"a": 1}, tmp_path / "ckpt.pth")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "ckpt.pth"
    atomic_save({"ok": 1}, target)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=True) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_family_is_read_from_the_file(released, tmp_path):
    """Utonia is recognised by its rope_base, or by its RoPE buffers when a config lacks the key."""
    name, path, state = released
    encoder = sm.load(path)
    assert encoder.config.family == ("utonia" if name == "utonia" else "sonata")
    assert (encoder.config.rope_base == 10.0) == (name == "utonia")
    if name == "utonia":
        bare = {k: v for k, v in released_config(name).items() if k != "rope_base"}
        torch.save({"config": bare, "state_dict": state}, tmp_path / "bare.pth")
        assert sm.load(tmp_path / "bare.pth").config.rope_base == 10.0
        rope = encoder.enc.enc3.block7.attn.rope
        assert torch.equal(rope.inv_freq, state["enc.enc3.block7.attn.rope.inv_freq"])


@pytest.mark.parametrize(("name", "channels"), [("utonia", 1386), ("concerto_large", 1728), ("sonata", 1232)])
def test_released_scannet_heads_load_and_fit_their_encoder(tmp_path, name, channels):
    """The authors' linear heads ({config: {backbone_out_channels, num_classes}, state_dict: seg_head.*})
    read the all-level upcast: 1386 channels for Utonia, 1728 for Concerto large, 1232 for Sonata."""
    path = tmp_path / f"{name}_linear_prob_head_sc.pth"
    state = {"seg_head.weight": torch.randn(20, channels), "seg_head.bias": torch.randn(20)}
    torch.save({"config": {"backbone_out_channels": channels, "num_classes": 20}, "state_dict": state}, path)
    head = sm.load_head(path)
    assert (head.in_channels, head.num_classes) == (channels, 20)
    assert sm.get_config(name).head_channels == channels
    assert torch.equal(head.seg_head.weight, state["seg_head.weight"])
