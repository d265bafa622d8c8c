"""``LambOptions``: one param group's LAMB step options, resolved once per step
(the LAMB counterpart of :class:`lars_cuda.options.StepOptions`). The math they
switch: :class:`lars_cuda.Lamb`'s docstring and ``docs/semantics.md`` ("LAMB")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from torch import Tensor

from .options import LR

__all__ = ["DECAY_MODES", "LAMB_FLAG_BITS", "LAMB_GLOBAL_OPTIONS", "LAMB_HYPER_FIELDS", "LAMB_OPTIONS",
           "LAMB_SUM_FIELDS",
           "LAMB_PATH_OPTIONS", "LAMB_STEP_OPTIONS", "LambOptions"]

# Where weight decay enters: added to the Adam update (timm's default, apex
# adam_w_mode=True), to the gradient before the moments (apex adam_w_mode=False),
# or decoupled from the update (timm decoupled_decay=True).
DECAY_MODES = ("update", "grad", "decoupled")

# THE Python owner of the fused LAMB op's packed layout (csrc/lamb_args.h is the C++
# one; tests/unit/test_layout.py holds them together): a group's floats, in order
# (a tensor lr travels in lr_tensors and its slot holds 0; no max_lr is 0) ...
LAMB_HYPER_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "max_lr")
# ... and its flag bits (neither decay bit: decay enters the update).
LAMB_FLAG_BITS = {"bias_correction": 1, "grad_averaging": 2, "trust_clip": 4, "adapt": 8, "caution": 16,
                  "maximize": 32, "decay_grad": 64, "decay_decoupled": 128}
# The sharded step's float64 row of sums per tensor, in order (fused_lamb_norms'
# output and the foreach/loop halves' rows, all-reduced as one tensor; csrc/lamb.h's
# kLambSumsPerTensor is its width): the caution fields are zero without caution.
LAMB_SUM_FIELDS = ("sum_p2", "sum_u2", "sum_up", "mask_count", "numel")


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

    # ---- the fused op's packed layout (LAMB_HYPER_FIELDS, LAMB_FLAG_BITS) ----
    @property
    def lr_tensor(self) -> Optional[Tensor]:
        return self.lr if isinstance(self.lr, Tensor) else None

    def hyper_row(self) -> list[float]:
        beta1, beta2 = self.betas
        row = {"lr": 0.0 if isinstance(self.lr, Tensor) else float(self.lr), "beta1": beta1, "beta2": beta2,
               "eps": self.eps, "weight_decay": self.weight_decay,
               "max_lr": 0.0 if self.max_lr is None else self.max_lr}
        return [float(row[f]) for f in LAMB_HYPER_FIELDS]

    @property
    def flags(self) -> int:
        on = {"bias_correction": self.bias_correction, "grad_averaging": self.grad_averaging,
              "trust_clip": self.trust_clip, "adapt": self.adapts, "caution": self.caution,
              "maximize": self.maximize, "decay_grad": self.decay_mode == "grad",
              "decay_decoupled": self.decay_mode == "decoupled"}
        return sum(bit for name, bit in LAMB_FLAG_BITS.items() if on[name])


LAMB_STEP_OPTIONS = tuple(f.name for f in dataclasses.fields(LambOptions))
# Optimizer-wide (read from the defaults, as timm and apex read it: the clip is global).
LAMB_GLOBAL_OPTIONS = ("max_grad_norm",)
LAMB_PATH_OPTIONS = ("foreach", "fused")
LAMB_OPTIONS = LAMB_STEP_OPTIONS + LAMB_GLOBAL_OPTIONS + LAMB_PATH_OPTIONS
_FIELDS = frozenset(LAMB_STEP_OPTIONS)
