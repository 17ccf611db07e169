"""AdamW with layer-wise learning-rate decay and the OneCycle schedule of the Sonata recipe.

Block j of the n encoder blocks (counted over all stages, first block j = 0) trains at
lr * decay ** (n - j - 1): the last block at the full rate, early blocks slower. Every other
parameter (embedding, pooling projections, prototype heads) trains at the full rate. Weight decay is
set on every group each step by the trainer's cosine schedule.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_BLOCK = re.compile(r"enc\.enc(\d+)\.block(\d+)\.")


def layer_decay_groups(model: nn.Module, lr: float, decay: float, depths: tuple[int, ...]) -> list[dict]:
    """Parameter groups: one per encoder block with its decayed lr, one for everything else."""
    total = sum(depths)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = _BLOCK.search(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            group_lr = lr * decay ** (total - sum(depths[:stage]) - block - 1)
        else:
            group_lr = lr
        groups.setdefault(group_lr, []).append(param)
    return [{"params": params, "lr": group_lr} for group_lr, params in groups.items()]


def build_optimizer(
    model: nn.Module,
    lr: float,
    layer_decay: float,
    weight_decay: float,
    depths: tuple[int, ...],
    total_steps: int,
    warmup_ratio: float = 0.05,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW + OneCycle (cosine, warm-up `warmup_ratio`, div 10, final div 1000) as the reference."""
    groups = layer_decay_groups(model, lr, layer_decay, depths)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if total_steps < 4:  # too short for a schedule (smoke runs): constant rate
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=total_steps,
        pct_start=max(warmup_ratio, 2.0 / total_steps),  # OneCycle needs a warm-up of 2 steps at least
        anneal_strategy="cos",
        div_factor=10.0,
        final_div_factor=1000.0,
    )
    return optimizer, scheduler
