"""Learning-rate schedule of the training recipe: linear warm-up, then cosine decay, per optimiser step."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate for optimiser step `step` (0-based; the rate used BY that step).

    Linear warm-up from base_lr / (warmup_steps + 1) to base_lr over the first `warmup_steps` steps, then a cosine
    from base_lr down to min_lr at `total_steps`; min_lr after that. Pure; rates are in the optimiser's units.
    """
    if total_steps <= 0:
        return base_lr
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0):
    """A torch LambdaLR applying `warmup_cosine` to every parameter group (its lr is the base rate).

    Call `scheduler.step()` after each optimiser step. Its state_dict holds only plain values (it works with
    `torch.load(weights_only=True)`).
    """
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, _Factor(total_steps, warmup_steps, min_lr_ratio))


class _Factor:
    """Multiplier of the base rate at a step; a class (not a lambda) so LambdaLR saves its fields."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, 1.0, self.min_lr_ratio)
