"""``LambOptions``: one param group's LAMB step options, resolved once per step
(the LAMB counterpart of :class:`lars_cuda.options.StepOptions`). The math they
switch: :class:`lars_cuda.Lamb`'s docstring and ``docs/semantics.md`` ("LAMB")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .options import LR

__all__ = ["DECAY_MODES", "LAMB_GLOBAL_OPTIONS", "LAMB_OPTIONS", "LAMB_PATH_OPTIONS", "LAMB_STEP_OPTIONS",
           "LambOptions"]

# Where weight decay enters: added to the Adam update (timm's default, apex
# adam_w_mode=True), to the gradient before the moments (apex adam_w_mode=False),
# or decoupled from the update (timm decoupled_decay=True).
DECAY_MODES = ("update", "grad", "decoupled")


@dataclass(frozen=True)
class LambOptions:
    """What one LAMB step takes for one set of tensors; the defaults are timm's."""

    lr: LR
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    decay_mode: str = "update"
    bias_correction: bool = True
    grad_averaging: bool = True
    trust_clip: bool = False
    always_adapt: bool = False
    caution: bool = False
    max_lr: Optional[float] = None   # decoupled decay scaled by lr/max_lr (timm's corrected_weight_decay)
    maximize: bool = False

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> "LambOptions":
        kw = {k: v for k, v in options.items() if k in _FIELDS}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "LambOptions":
        return dataclasses.replace(self, **changes)

    @property
    def adapts(self) -> bool:
        """Whether the trust ratio applies (timm: only where weight_decay != 0 unless
        always_adapt; apex: use_nvlamb)."""
        return self.weight_decay != 0 or self.always_adapt


LAMB_STEP_OPTIONS = tuple(f.name for f in dataclasses.fields(LambOptions))
# Optimizer-wide (read from the defaults, as timm and apex read it: the clip is global).
LAMB_GLOBAL_OPTIONS = ("max_grad_norm",)
LAMB_PATH_OPTIONS = ("foreach",)
LAMB_OPTIONS = LAMB_STEP_OPTIONS + LAMB_GLOBAL_OPTIONS + LAMB_PATH_OPTIONS
_FIELDS = frozenset(LAMB_STEP_OPTIONS)
