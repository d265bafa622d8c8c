"""``PolynomialWarmup``: linear warmup then polynomial decay, per optimizer step
(``docs/semantics.md``, the schedule)."""

from __future__ import annotations

import math
from numbers import Real

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolynomialWarmup", "polynomial_warmup_lr"]


def polynomial_warmup_lr(k: int, base_lr: float, decay_steps: float, warmup_steps: float, end_lr: float,
                         power: float) -> float:
    """The lr after ``k`` scheduler steps. ``k < W``: ``b*k/W`` (so step 0 has lr 0);
    then with ``j = k - ceil(W)``: ``(b - end)*(1 - min(j, D-W)/(D-W))**power + end``."""
    if k < warmup_steps:
        return base_lr * k / warmup_steps
    span = decay_steps - warmup_steps
    if span <= 0:
        return end_lr
    j = k - math.ceil(warmup_steps)
    return (base_lr - end_lr) * (1 - min(j, span) / span) ** power + end_lr


class PolynomialWarmup(LRScheduler):
    """Stepped once per optimizer step, after ``optimizer.step()``. A tensor lr is
    written in place (``fill_``), so CUDA-graph captures of the step stay valid.
    ``state_dict()``/``load_state_dict()`` resume the exact sequence (unlike the seed)."""

    def __init__(self, optimizer: Optimizer, decay_steps: float, warmup_steps: float = 0, end_lr: float = 0.0001,
                 power: float = 1.0, last_epoch: int = -1):
        for name, value in (("decay_steps", decay_steps), ("warmup_steps", warmup_steps), ("end_lr", end_lr),
                            ("power", power)):
            if not isinstance(value, Real) or isinstance(value, bool):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
        if end_lr < 0:
            raise ValueError(f"end_lr must be non-negative, got {end_lr}")
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}")
        self.decay_steps = decay_steps
        self.warmup_steps = warmup_steps
        self.end_lr = end_lr
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [
            polynomial_warmup_lr(self.last_epoch, float(base_lr), self.decay_steps, self.warmup_steps, self.end_lr,
                                 self.power)
            for base_lr in self.base_lrs
        ]

    # The closed form makes chainable and closed-form steps the same.
    _get_closed_form_lr = get_lr
