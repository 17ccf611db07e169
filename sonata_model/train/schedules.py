"""Per-step schedules of self-distillation: linear warm-up then cosine, as the reference defines them.

`CosineSchedule(base, final, total, start, warmup)`: step 0 is `start`, rising linearly to `base` over
`warmup` steps, then a half cosine from `base` to `final` over the remaining steps; `final` after the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    base: float
    final: float
    total_steps: int
    start: float = 0.0
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return self.final
        if step < self.warmup_steps:
            if self.warmup_steps == 1:
                return self.start
            return self.start + (self.base - self.start) * step / (self.warmup_steps - 1)
        cosine_steps = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps) / cosine_steps
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * progress))


def warmup_then_constant(start: float, base: float, total_steps: int, warmup_ratio: float) -> CosineSchedule:
    """Warm up from `start` to `base` over `warmup_ratio` of training, then hold `base` (mask size,
    mask ratio, teacher temperature)."""
    return CosineSchedule(base, base, total_steps, start=start, warmup_steps=int(total_steps * warmup_ratio))
