"""Drop-in LAMB flavours (re-exported by :mod:`lars_cuda.compat`): each class takes
an original's own arguments, holds its param groups and state in the original's
schema, and steps exactly as the original does (``docs/semantics.md``, "LAMB") on
every path of :class:`lars_cuda.Lamb`.

* :class:`TimmLamb` replaces ``timm.optim.Lamb`` (timm ≥ 1.0): groups with timm's
  options (``decoupled_decay``, ``corrected_weight_decay``, ``max_lr_snapshot``,
  ...) and timm's per-group step count (a CPU tensor ``group["step"]``).
* :class:`FusedLAMB` replaces ``apex.optimizers.FusedLAMB`` on any device: apex's
  arguments (``adam_w_mode``, ``use_nvlamb``, ``set_grad_none``, ...) and its
  per-group integer ``group["step"]``. Unlike apex it does not write the update
  into ``p.grad``.

Both keep ``exp_avg``/``exp_avg_sq`` per param, so state dicts go both ways.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .lamb import Lamb
from .lamb_options import LambOptions
from .state_dict_schemas import APEX_LAMB_OPTIONS, TIMM_LAMB_OPTIONS

__all__ = ["FusedLAMB", "TimmLamb"]

Params = Iterable[Union[Tensor, dict[str, Any]]]


class _LambFlavour(Lamb):
    """A Lamb whose groups hold an original's options (``_OPTIONS``), translated into
    Lamb's by ``_to_lamb`` at every step, and whose step count is per group."""

    _RENAMED: dict[str, str] = {}
    _STEP_IN_STATE = False

    def __init__(self, params: Params, defaults: dict[str, Any]):
        Optimizer.__init__(self, params, defaults)

    def _to_lamb(self, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _check_options(self, group: dict[str, Any], read_tensor_lr: bool = True) -> LambOptions:
        try:  # (one translation per group and step: the check and the options share it)
            return super()._check_options(self._to_lamb(group), read_tensor_lr)
        except (TypeError, ValueError) as exc:  # name the original's option, not Lamb's
            message = str(exc)
            for ours, theirs in self._RENAMED.items():
                message = re.sub(rf"\b{ours}\b", theirs, message)
            raise type(exc)(message) from None

    def _peek_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[float]:
        return [float(group.get("step", 0))] * len(params)


class TimmLamb(_LambFlavour):
    """Replaces ``timm.optim.Lamb``: the same arguments, param groups, state and step
    (its kernel, foreach and loop paths are ours: ``foreach`` chooses as timm's, and a
    group's ``fused`` key, which timm's groups do not hold, as :class:`lars_cuda.Lamb`'s;
    unset, the kernel where it serves the group). The step count is
    timm's: one CPU tensor per group, advanced for every group at every step."""

    _OPTIONS = TIMM_LAMB_OPTIONS
    _RENAMED = {"max_lr": "max_lr_snapshot"}

    def __init__(self, params: Params, lr: Union[float, Tensor] = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 grad_averaging: bool = True, max_grad_norm: Optional[float] = 1.0, trust_clip: bool = False,
                 always_adapt: bool = False, caution: bool = False, decoupled_decay: bool = False,
                 corrected_weight_decay: bool = False, foreach: Optional[bool] = None):
        max_lr = float(lr.detach()) if isinstance(lr, Tensor) else lr  # timm's snapshot of the constructor lr
        if corrected_weight_decay and not (isinstance(max_lr, (int, float)) and max_lr > 0):
            raise ValueError(f"Corrected weight decay requires a positive max lr, got {max_lr}. Construct the "
                             "optimizer with the peak lr.")
        super().__init__(params, dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
            grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, trust_clip=trust_clip,
            always_adapt=always_adapt, caution=caution, decoupled_decay=decoupled_decay,
            corrected_weight_decay=corrected_weight_decay, max_lr_snapshot=float(max_lr), foreach=foreach))

    def _to_lamb(self, g: dict[str, Any]) -> dict[str, Any]:
        # Every timm option is in a group (an older timm's loaded groups are completed
        # with the defaults: SchemaOptimizer.__setstate__); "fused" is ours, set or not.
        decoupled = bool(g["decoupled_decay"])
        corrected = decoupled and bool(g["corrected_weight_decay"])
        return {"lr": g["lr"], "betas": g["betas"], "eps": g["eps"], "weight_decay": g["weight_decay"],
                "decay_mode": "decoupled" if decoupled else "update", "bias_correction": g["bias_correction"],
                "grad_averaging": g["grad_averaging"], "trust_clip": g["trust_clip"],
                "always_adapt": g["always_adapt"], "caution": g["caution"],
                "max_lr": g["max_lr_snapshot"] if corrected else None,
                "maximize": False, "foreach": g["foreach"], "fused": g.get("fused")}

    def _advance_steps(self, group: dict[str, Any], states: list[dict[str, Any]]) -> list[Any]:
        # timm: group["step"] is a float32 CPU tensor, advanced for every group (even one
        # without grads); an int from an older timm or from apex's FusedLAMB becomes one.
        step = group.get("step")
        if not isinstance(step, Tensor):
            step = group["step"] = torch.tensor(float(step or 0), dtype=torch.float32)
        step.add_(1)
        return [step] * len(states)


class FusedLAMB(_LambFlavour):
    """Replaces ``apex.optimizers.FusedLAMB`` (on CPU and CUDA): apex's arguments, param
    groups (``lr, bias_correction, betas, eps, weight_decay, grad_averaging,
    max_grad_norm`` and an integer ``step``), state (``exp_avg``, ``exp_avg_sq``) and
    step: ``adam_w_mode=True`` adds the decay to the update, ``False`` to the gradient;
    ``use_nvlamb`` adapts params without weight decay too. ``amsgrad=True`` is refused
    as apex refuses it. ``set_grad_none`` decides what ``zero_grad()`` does, as in apex.
    ``foreach`` and ``fused`` are ours (group options, as for :class:`lars_cuda.Lamb`;
    apex ignores the keys)."""

    _OPTIONS = APEX_LAMB_OPTIONS

    def __init__(self, params: Params, lr: Union[float, Tensor] = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 amsgrad: bool = False, adam_w_mode: bool = True, grad_averaging: bool = True,
                 set_grad_none: bool = True, max_grad_norm: float = 1.0, use_nvlamb: bool = False, *,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if amsgrad:
            raise RuntimeError("FusedLAMB does not support the AMSGrad variant.")
        self.adam_w_mode, self.set_grad_none, self.use_nvlamb = bool(adam_w_mode), set_grad_none, use_nvlamb
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                                      weight_decay=weight_decay, grad_averaging=grad_averaging,
                                      max_grad_norm=max_grad_norm, foreach=foreach, fused=fused))

    def _to_lamb(self, g: dict[str, Any]) -> dict[str, Any]:
        return {"lr": g["lr"], "betas": g["betas"], "eps": g["eps"], "weight_decay": g["weight_decay"],
                "decay_mode": "update" if self.adam_w_mode else "grad",
                "bias_correction": bool(g["bias_correction"]), "grad_averaging": bool(g["grad_averaging"]),
                "trust_clip": False, "always_adapt": bool(self.use_nvlamb), "caution": False, "max_lr": None,
                "maximize": False, "foreach": g["foreach"], "fused": g["fused"]}

    def _advance_steps(self, group: dict[str, Any], states: list[dict[str, Any]]) -> list[Any]:
        group["step"] = int(group.get("step", 0)) + 1  # apex: an int per group, every group
        return [group["step"]] * len(states)

    def zero_grad(self, set_to_none: Optional[bool] = None) -> None:
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)
