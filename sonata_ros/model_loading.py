"""Which model the node runs: the configured checkpoint, or the demo model shipped with the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import sonata_model as sm
from sonata_model.checkpoint import head_label_set
from sonata_model.io.labels import LabelSet, load_label_set

MODELS = Path(__file__).parent / "models"
DEMO_ENCODER = MODELS / "demo_encoder.pth"
DEMO_HEAD = MODELS / "demo_head.pth"
DEMO_LABEL_SET = "synthetic"
WARM_UP_POINTS = 2048
UNTRAINED_WARNING = (
    "The trained demo model is not installed (sonata_ros/models/demo_*.pth): running the 'demo' encoder "
    "config with RANDOM weights. Its labels are meaningless; pass checkpoint:=/path/to/model.pth."
)


@dataclass
class LoadedModel:
    encoder: sm.SonataEncoder
    head: sm.LinearHead | None
    label_set: LabelSet
    description: str
    warning: str | None = None


def load_model(checkpoint: str, head: str, label_set: str) -> LoadedModel:
    """Load the configured model. Empty `checkpoint`: the shipped demo model (or, when its files are
    absent, the untrained demo config with a warning). `head` 'none': embeddings only."""
    warning = None
    if checkpoint:
        encoder = sm.load(checkpoint)
        description = checkpoint
        head_model = None if head in ("", "none") else sm.load_head(head)
    elif DEMO_ENCODER.is_file():
        encoder = sm.load(DEMO_ENCODER)
        description = f"shipped demo model ({DEMO_ENCODER.name}, trained on synthetic data)"
        head_model = None if head == "none" else sm.load_head(head or DEMO_HEAD)
    else:
        torch.manual_seed(0)
        encoder = sm.SonataEncoder(sm.get_config("demo")).eval()
        names = load_label_set(DEMO_LABEL_SET).names
        head_model = (
            None
            if head == "none"
            else sm.LinearHead(encoder.config.head_channels, len(names), list(names), DEMO_LABEL_SET)
        )
        description = "untrained demo config (random weights)"
        warning = UNTRAINED_WARNING
    if head_model is not None and head_model.in_channels != encoder.config.head_channels:
        raise ValueError(
            f"head {head or DEMO_HEAD} reads {head_model.in_channels} channels but the encoder ({description}) "
            f"gives {encoder.config.head_channels}: was the head fitted on this encoder?"
        )
    labels = head_label_set(head_model, label_set, default=DEMO_LABEL_SET)
    return LoadedModel(encoder, head_model, labels, description, warning)


def warm_up(segmenter: sm.Segmenter) -> None:
    """One forward on a small fixed cloud: the first call's one-off costs (kernel selection, allocator
    pools) are paid at start, not on the first frame, and a device or model that cannot run fails here."""
    rng = np.random.default_rng(0)
    coord = rng.uniform((-10.0, -10.0, -1.5), (10.0, 10.0, 1.5), (WARM_UP_POINTS, 3)).astype(np.float32)
    segmenter(
        coord,
        color=np.full((WARM_UP_POINTS, 3), 128, np.uint8),
        strength=np.full(WARM_UP_POINTS, 0.5, np.float32),
    )
