"""Loading and saving encoder and head checkpoints: the released Sonata files and the project's own.

Accepted encoder files:
- released (`sonata.pth`, `sonata_small.pth`, Concerto's `concerto_*.pth`, Utonia's `utonia.pth`):
  `{"config", "state_dict"}`, keys without prefix. The family is read from the file: a `rope_base`
  config key or `*.attn.rope.inv_freq` weights mean Utonia (PTv3 m3, RoPE attention); otherwise the
  Sonata / Concerto architecture;
- training checkpoints whose keys carry `module.student.backbone.` / `module.backbone.` (other
  entries such as the teacher or the projection heads are ignored);
- the project's own (`save_encoder`): the released layout plus the input transform in `config` and a
  `meta` dict (label set, provenance).
Loading is strict: any missing, unexpected or wrongly shaped key raises `CheckpointError` naming them.
Nothing is ever downloaded: a path is given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .configs import ConfigError, EncoderConfig
from .encoder import SonataEncoder
from .io.labels import LabelSet, LabelSetError, load_label_set

ENCODER_PREFIXES = ("module.student.backbone.", "module.backbone.", "student.backbone.", "backbone.")
PROJECT_FORMAT = "sonata_ros"
_LIST_LIMIT = 8


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what and where."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same directory, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True on CPU, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(ckpt).__name__}")
    return dict(ckpt)


def encoder_state_dict(ckpt: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """The encoder's weights, with training prefixes stripped and non-encoder entries dropped."""
    state = ckpt.get("state_dict", ckpt.get("model"))
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: no 'state_dict' (keys found: {sorted(ckpt)[:_LIST_LIMIT]})")
    _check_tensors(state, source)
    for prefix in ENCODER_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return dict(state)


def _check_tensors(state: Mapping[str, Any], source: str) -> None:
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: the state_dict holds {_describe('non-tensor', not_tensors)}")


def load_config(path: str | os.PathLike) -> EncoderConfig:
    """The encoder config a checkpoint describes (family read from the file), without building the model."""
    ckpt = read_checkpoint(path)
    return _config_of(ckpt, path, encoder_state_dict(ckpt, str(path)))


def load(
    path: str | os.PathLike, *, config: EncoderConfig | None = None, device: str | torch.device = "cpu"
) -> SonataEncoder:
    """Build the encoder described by a checkpoint and load its weights strictly (eval mode).

    `config` overrides the file's config (needed only for training checkpoints that carry none).
    """
    ckpt = read_checkpoint(path)
    state = encoder_state_dict(ckpt, str(path))
    if config is None:
        config = _config_of(ckpt, path, state)
    with torch.device("meta"):  # no time spent initialising weights that the file replaces
        encoder = SonataEncoder(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 exports
    load_strict(encoder, state, str(path), assign=True)
    encoder.meta = dict(ckpt.get("meta", {}))
    return encoder.to(device).eval()


def _config_of(ckpt: Mapping[str, Any], path: str | os.PathLike, state: Mapping[str, Tensor]) -> EncoderConfig:
    config = ckpt.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("encoder"), Mapping):
        config = config["encoder"]  # the project's pretraining checkpoints nest the encoder config
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"{path}: no encoder config in the file; pass config=sonata_model.get_config(...) explicitly"
        )
    if config.get("rope_base") is None and (base := _rope_base_of(state)) is not None:
        config = {**config, "rope_base": base}
    try:
        return EncoderConfig.from_dict(config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad encoder config: {exc}") from exc


def _rope_base_of(state: Mapping[str, Tensor]) -> float | None:
    """RoPE base from a stored `inv_freq` ([1, base^(-2/chunk), ...]; chunk = 2 x its length), if any."""
    inv_freq = next((v for k, v in state.items() if k.endswith(".attn.rope.inv_freq")), None)
    if inv_freq is None or inv_freq.numel() < 2:
        return None
    return float(f"{float(inv_freq[1].double() ** (-inv_freq.numel())):.6g}")


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str, assign: bool = False) -> None:
    """load_state_dict(strict=True) with one error listing missing, unexpected and misshaped keys.

    `assign` adopts the given tensors (for a module built on the meta device)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        _describe(name, keys)
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=assign)


def _describe(name: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"{len(keys)} {name} key(s): {shown}{more}"


def save_encoder(
    path: str | os.PathLike,
    encoder: SonataEncoder,
    meta: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the encoder in the released layout plus its input transform and `meta` (atomic).

    `dtype` (e.g. float16) stores the floating-point tensors smaller; `load` casts them back into the
    fp32 module, so a shipped model can be half the size at no cost to the code that reads it.
    """
    state = {
        k: (v.detach().cpu().to(dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
        for k, v in encoder.state_dict().items()
    }
    payload = {
        "format": PROJECT_FORMAT,
        "config": encoder.config.to_dict(),
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    return atomic_save(payload, path)


class LinearHead(nn.Module):
    """Linear probe over the all-level upcast: one Linear(C_upcast, classes), key `seg_head.*`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        class_names: list[str] | None = None,
        label_set: str | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__()
        self.seg_head = nn.Linear(in_channels, num_classes)
        self.class_names = class_names
        self.label_set = label_set
        self.domain = domain  # the input transform it was fitted under, when not the encoder's own

    @property
    def in_channels(self) -> int:
        return self.seg_head.in_features

    @property
    def num_classes(self) -> int:
        return self.seg_head.out_features

    def forward(self, feat: Tensor) -> Tensor:
        return self.seg_head(feat)


def load_head(path: str | os.PathLike, device: str | torch.device = "cpu") -> LinearHead:
    """Load a head in the released format `{"config": {backbone_out_channels, num_classes}, "state_dict"}`."""
    ckpt = read_checkpoint(path)
    config = ckpt.get("config")
    if not isinstance(config, Mapping) or not {"backbone_out_channels", "num_classes"} <= set(config):
        raise CheckpointError(f"{path}: head config needs backbone_out_channels and num_classes, got {config!r}")
    sizes = [config["backbone_out_channels"], config["num_classes"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise CheckpointError(f"{path}: head config needs positive integer sizes, got {dict(config)!r}")
    meta = ckpt.get("meta") or {}
    names = meta.get("class_names") if isinstance(meta, Mapping) else None
    if not isinstance(meta, Mapping) or (names is not None and len(names) != sizes[1]):
        raise CheckpointError(f"{path}: head meta must be a mapping, its class_names one per class ({sizes[1]})")
    head = LinearHead(*sizes, class_names=names, label_set=meta.get("label_set"), domain=meta.get("domain"))
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' in head checkpoint")
    _check_tensors(state, str(path))
    load_strict(head, state, str(path))
    return head.to(device).eval()


def head_label_set(head: LinearHead | None, requested: str | None = None, default: str | None = None) -> LabelSet:
    """The label set naming and colouring `head`'s classes: `requested` (a name or YAML path), else the one
    the head was fitted under (sonata-probe records it), else `default`; LabelSetError when there is none
    or it has fewer classes than the head."""
    name = requested or (head.label_set if head is not None else None) or default
    if not name:
        raise LabelSetError("the head names no label set: pass one (a shipped name or a YAML path)")
    labels = load_label_set(name)
    if head is not None and head.num_classes > labels.num_classes:
        raise LabelSetError(
            f"head predicts {head.num_classes} classes but label set {labels.name!r} has {labels.num_classes}"
        )
    return labels


def save_head(path: str | os.PathLike, head: LinearHead, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a head in the released format (+ `meta`: class names, label set, provenance)."""
    meta = {"class_names": head.class_names, "label_set": head.label_set, "domain": head.domain, **(meta or {})}
    payload = {
        "config": {"backbone_out_channels": head.in_channels, "num_classes": head.num_classes},
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "meta": meta,
    }
    return atomic_save(payload, path)
