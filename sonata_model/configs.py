"""Encoder configurations: the authors' released ones (Sonata, Concerto, Utonia) and small ones for
CPU tests and the demo.

`EncoderConfig` uses the reference implementations' argument names so that a released checkpoint's
`config` dict maps onto it one to one. `rope_base` (Utonia) selects the PTv3 m3 family: 3D rotary
position embedding in every attention. The project's own fields describe the input, which the released
files leave implicit: `feature_keys`, and the checkpoint's `domain` with, optionally, its own voxel
size (`grid_size`, metres) and coordinate `coord_scale`; unset, they are the family's reference
transform for the domain (`sonata_model.domains`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .domains import DEFAULT_DOMAIN, DOMAINS, InputTransform, reference_transform

FEATURE_CHANNELS = {"coord": 3, "color": 3, "normal": 3, "strength": 1}
"""Input channels contributed by each feature key, in the order the features are concatenated."""

INDOOR_FEATURES = ("coord", "color", "normal")
LIDAR_FEATURES = ("coord", "strength")

# Reference arguments that must keep their default for this encoder-only implementation.
_FIXED_REFERENCE_ARGS = {
    "enable_rpe": False,
    "layer_scale": None,
    "pre_norm": True,
    "enc_mode": True,
    "attn_drop": 0.0,
    "proj_drop": 0.0,
    "shift_coords": None,
}
# Reference arguments with no effect here (runtime switches, decoder shapes of enc_mode=False models).
_IGNORED_REFERENCE_ARGS = {
    "enable_flash",
    "upcast_attention",
    "upcast_softmax",
    "traceable",
    "freeze_encoder",
    "shuffle_orders",
    "dec_depths",
    "dec_channels",
    "dec_num_head",
    "dec_patch_size",
    "type",
}


class ConfigError(ValueError):
    """An encoder configuration that this implementation cannot build."""


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a PTv3 encoder (Sonata's PT-v3m2, encoder only) and its input transform."""

    in_channels: int = 9
    order: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
    stride: tuple[int, ...] = (2, 2, 2, 2)
    enc_depths: tuple[int, ...] = (3, 3, 3, 12, 3)
    enc_channels: tuple[int, ...] = (48, 96, 192, 384, 512)
    enc_num_head: tuple[int, ...] = (3, 6, 12, 24, 32)
    enc_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_path: float = 0.3
    mask_token: bool = True
    rope_base: float | None = None  # Utonia: base of the 3D rotary position embedding
    jitter_coords: float | None = None  # Utonia training: per-axis log-uniform jitter of the RoPE coordinates
    rescale_coords: float | None = None  # Utonia training: global log-uniform rescale of the RoPE coordinates
    feature_keys: tuple[str, ...] = INDOOR_FEATURES
    domain: str | None = None  # the checkpoint's domain; None: the family's default
    grid_size: float | None = None  # voxel edge (m) in the checkpoint's domain; None: the family's
    coord_scale: float | None = None  # model units per metre in the checkpoint's domain; None: the family's
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        stages = len(self.enc_depths)
        for name in ("enc_channels", "enc_num_head", "enc_patch_size"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries, enc_depths has {stages}")
        if len(self.stride) != stages - 1:
            raise ConfigError(f"stride needs {stages - 1} entries (one per pooling), got {len(self.stride)}")
        if any(s != 2 for s in self.stride):
            raise ConfigError(f"only stride 2 pooling is supported, got {self.stride}")
        for channels, heads in zip(self.enc_channels, self.enc_num_head, strict=True):
            if channels % heads:
                raise ConfigError(f"{channels} channels do not split into {heads} heads")
        unknown = [k for k in self.feature_keys if k not in FEATURE_CHANNELS]
        if unknown:
            raise ConfigError(f"unknown feature keys {unknown}; known: {sorted(FEATURE_CHANNELS)}")
        if feature_channels(self.feature_keys) != self.in_channels:
            raise ConfigError(
                f"feature keys {self.feature_keys} give {feature_channels(self.feature_keys)} channels, "
                f"in_channels is {self.in_channels}"
            )
        for name in ("grid_size", "coord_scale", "rope_base"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ConfigError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.rope_base is not None:
            for channels, heads in zip(self.enc_channels, self.enc_num_head, strict=True):
                if (channels // heads) % 6:
                    raise ConfigError(
                        f"RoPE splits each head into x, y, z chunks of rotated pairs: head dim {channels // heads} "
                        f"({channels} channels / {heads} heads) must be a multiple of 6"
                    )

    @property
    def family(self) -> str:
        """ "utonia" (PTv3 m3, RoPE attention) or "sonata" (PTv3 m2: Sonata, Concerto, this project's)."""
        return "utonia" if self.rope_base is not None else "sonata"

    @property
    def default_domain(self) -> str:
        return self.domain or DEFAULT_DOMAIN[self.family]

    def transform(self, domain: str | None = None) -> InputTransform:
        """The input transform for `domain` (default: the checkpoint's): the family's reference one, with
        the checkpoint's own voxel size and coordinate scale in the checkpoint's own domain."""
        domain = domain or self.default_domain
        transform = reference_transform(self.family, domain)
        if domain != self.default_domain:
            return transform
        scale = self.coord_scale if self.coord_scale is not None else transform.scale
        grid = self.grid_size * scale if self.grid_size is not None else transform.grid
        return transform.replace(scale=scale, grid=grid)

    @property
    def num_stages(self) -> int:
        return len(self.enc_depths)

    @property
    def head_channels(self) -> int:
        """Channels of the all-level upcast that a segmentation head reads (1232 for `sonata`)."""
        return sum(self.enc_channels)

    @property
    def pretrain_channels(self) -> int:
        """Channels of the stage 2-4 upcast used by pretraining and the PCA view (1088 for `sonata`)."""
        return sum(self.enc_channels[2:])

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Reference-style dict (lists, plain types), as stored in checkpoints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **defaults: Any) -> EncoderConfig:
        """Build from a reference or project config dict; `defaults` fill keys the dict lacks.

        Raises ConfigError for options whose behaviour this encoder does not implement (RPE, layer
        scale, post-norm, a decoder), so that a checkpoint is never silently run with other maths.
        """
        for key, required in _FIXED_REFERENCE_ARGS.items():
            if key in config and config[key] != required:
                raise ConfigError(f"config {key}={config[key]!r} is not supported (needs {required!r})")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = names | set(_FIXED_REFERENCE_ARGS) | _IGNORED_REFERENCE_ARGS
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        values = {**defaults, **{k: v for k, v in config.items() if k in names}}
        if "order" in values and isinstance(values["order"], str):
            values["order"] = (values["order"],)
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        if "feature_keys" not in values:
            values["feature_keys"] = _default_feature_keys(values.get("in_channels", cls.in_channels))
        extra = {k: config[k] for k in config if k in _IGNORED_REFERENCE_ARGS}
        return cls(**values, extra=extra)


def feature_channels(feature_keys: Sequence[str]) -> int:
    return sum(FEATURE_CHANNELS[k] for k in feature_keys)


def _default_feature_keys(in_channels: int) -> tuple[str, ...]:
    by_channels = {9: INDOOR_FEATURES, 4: LIDAR_FEATURES, 6: ("coord", "color"), 3: ("coord",)}
    if in_channels not in by_channels:
        raise ConfigError(f"in_channels={in_channels} needs explicit feature_keys")
    return by_channels[in_channels]


SONATA = EncoderConfig()
SONATA_SMALL = EncoderConfig(
    enc_depths=(2, 2, 2, 6, 2),
    enc_channels=(32, 64, 128, 256, 512),
    enc_num_head=(2, 4, 8, 16, 32),
)
# LiDAR input (coord + strength). The released weights are indoor-only; outdoor models are pretrained
# with the offline module. 5 cm voxels and coordinates scaled by 0.2 follow the authors' outdoor recipe
# (scene x0.2 on a 1 cm grid), expressed in metres.
# Concerto (same architecture as Sonata): concerto_base == sonata, concerto_small == sonata_small;
# concerto_large is wider (also the shape of concerto_large_outdoor).
CONCERTO_LARGE = SONATA.replace(enc_channels=(64, 128, 256, 512, 768), enc_num_head=(4, 8, 16, 32, 48))
# Utonia (PTv3 m3): Sonata's blocks + 3D RoPE, head dim 18; and the authors' distillation sizes.
UTONIA = SONATA.replace(
    enc_channels=(54, 108, 216, 432, 576),
    rope_base=10.0,
    jitter_coords=1.1,
    rescale_coords=1.2,
)
UTONIA_SMALL = UTONIA.replace(
    enc_depths=(2, 2, 2, 6, 2), enc_channels=(36, 72, 144, 288, 432), enc_num_head=(2, 4, 8, 16, 24)
)
UTONIA_TINY = UTONIA.replace(
    enc_depths=(2, 2, 2, 6, 2), enc_channels=(18, 36, 72, 144, 216), enc_num_head=(1, 2, 4, 8, 12)
)
# LiDAR input (coord + strength) in the sensor frame. The released Sonata weights are indoor-only;
# outdoor models are pretrained with the offline module, on the authors' outdoor scale (x0.2), 5 cm voxels.
SONATA_LIDAR = SONATA.replace(
    in_channels=4, feature_keys=LIDAR_FEATURES, domain="outdoor", grid_size=0.05, coord_scale=0.2
)
# Small configs that run on a 2-core CPU: `demo` (the shipped demo model) and `tiny` (unit tests).
DEMO = EncoderConfig(
    in_channels=4,
    enc_depths=(1, 1, 1, 2, 1),
    enc_channels=(32, 48, 96, 128, 192),
    enc_num_head=(2, 3, 6, 8, 12),
    enc_patch_size=(256, 256, 256, 256, 256),
    drop_path=0.1,
    feature_keys=LIDAR_FEATURES,
    domain="outdoor",
    grid_size=0.1,
    coord_scale=0.2,
)
TINY = EncoderConfig(
    enc_depths=(1, 1, 1, 1, 1),
    enc_channels=(16, 16, 32, 32, 64),
    enc_num_head=(1, 1, 2, 2, 4),
    enc_patch_size=(48, 48, 48, 48, 48),
    drop_path=0.0,
)

CONFIGS: dict[str, EncoderConfig] = {
    "sonata": SONATA,
    "sonata_small": SONATA_SMALL,
    "sonata_lidar": SONATA_LIDAR,
    "concerto_large": CONCERTO_LARGE,
    "utonia": UTONIA,
    "utonia_small": UTONIA_SMALL,
    "utonia_tiny": UTONIA_TINY,
    "demo": DEMO,
    "tiny": TINY,
}


def get_config(name: str, **overrides: Any) -> EncoderConfig:
    """A named configuration, optionally with fields replaced (e.g. in_channels + feature_keys)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown encoder config {name!r}; available: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
