"""One YAML file per pretraining run, overridable from the command line, saved in every checkpoint.

    data: [bag:/data/run1.mcap:/points, frames:/data/extracted]
    data_weights: [1.0, 2.0]
    encoder: demo                      # a named config (sonata_model.configs), plus encoder_overrides
    init: utonia.pth                   # or: fine-tune this checkpoint (its architecture; overrides apply)
    view: {preset: lidar, max_size: 20000}
    distill: {head_num_prototypes: 1024}
    steps: 2000

Overrides use dotted keys: `--set distill.student_temp=0.1 --set steps=500` (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import CheckpointError, load_config
from ..configs import EncoderConfig, get_config
from .distill import DistillConfig
from .views import ViewConfig

EXPORT_DTYPES = {"float32", "float16", "bfloat16"}


class RunConfigError(ValueError):
    """A run configuration that is malformed; the message says which key and why."""


@dataclass
class RunConfig:
    data: list[str] = field(default_factory=list)
    data_weights: list[float] | None = None
    encoder: str = "demo"
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # encoder checkpoint to start from (Sonata, Concerto, Utonia or own); replaces `encoder`
    view: dict[str, Any] = field(default_factory=lambda: {"preset": "lidar"})
    distill: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    samples_per_epoch: int = 0  # 0: one pass over the sources per epoch
    batch_size: int = 2  # scenes per process and micro-step
    accumulate: int = 1  # micro-steps per optimiser step
    workers: int = 2
    lr: float = 0.004
    layer_decay: float = 0.9
    weight_decay: float = 0.04
    weight_decay_final: float = 0.2
    warmup_ratio: float = 0.05
    clip_grad: float = 3.0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | off
    seed: int = 0
    out: str = "runs/pretrain"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    export_dtype: str = "float32"  # float16 halves the exported encoder's size (sm.load returns fp32 either way)

    def encoder_config(self) -> EncoderConfig:
        """The named config, or the `init` checkpoint's; `encoder_overrides` on top (e.g. domain: outdoor)."""
        if self.init:
            try:
                return load_config(self.init).replace(**self.encoder_overrides)
            except CheckpointError as exc:
                raise RunConfigError(f"init: {exc}") from exc
        return get_config(self.encoder, **self.encoder_overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        if not self.data:
            raise RunConfigError("data: at least one source is needed (e.g. --data frames:/path)")
        if self.data_weights is not None and len(self.data_weights) != len(self.data):
            raise RunConfigError(f"data_weights has {len(self.data_weights)} entries for {len(self.data)} sources")
        for name in ("steps", "batch_size", "accumulate", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise RunConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.amp not in ("auto", "bf16", "off"):
            raise RunConfigError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.export_dtype not in EXPORT_DTYPES:
            raise RunConfigError(f"export_dtype must be one of {sorted(EXPORT_DTYPES)}, got {self.export_dtype!r}")
        self.encoder_config()  # raises ConfigError for a bad name or override
        sections = {
            "view": {"preset", *_fields(ViewConfig)} - {"transform", "feature_keys"},
            "distill": _fields(DistillConfig),
        }
        for section, known in sections.items():
            unknown = sorted(set(getattr(self, section)) - known)
            if unknown:
                raise RunConfigError(f"unknown {section} keys {unknown}; known: {sorted(known)}")
        return self


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _set(target: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise RunConfigError(f"--set {dotted}: {key} is not a mapping")
    target[keys[-1]] = value


def load_run_config(path: str | os.PathLike | None, overrides: list[str] = (), **values: Any) -> RunConfig:
    """The run config: defaults <- YAML file <- keyword values <- `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunConfigError(f"{path}: cannot read run config ({exc})") from exc
        if not isinstance(data, dict):
            raise RunConfigError(f"{path}: a run config is a mapping of keys to values")
    data.update({k: v for k, v in values.items() if v is not None})
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise RunConfigError(f"--set {item!r}: expected key=value")
        _set(data, key, yaml.safe_load(text))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunConfigError(f"unknown run config keys {unknown}; known: {sorted(known)}")
    return RunConfig(**data).validate()
