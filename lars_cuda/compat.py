"""Drop-in LARS flavours: each class takes an original's own arguments, holds its
param groups and state in the original's own schema (what a user, a scheduler
or a checkpoint sees is the original's), and steps exactly as the original does
(docs/semantics.md) on every path of :class:`lars_cuda.Lars` (the fused CPU/CUDA
kernel in one launch, foreach, the reference loop), with GradScaler, tensor lr,
schedulers and sharded (DTensor) params.

The flavours' ratios, where each puts it and what a zero norm does: the
``Lars`` docstring (the switches) and ``docs/semantics.md`` (a table per class).
(timm's ``trust_clip`` and LARC's ``clip`` both mean r <- min(r/lr, 1).) The
kernel's options are derived from each group's original options at every step
(a dict per group, not per tensor), so a scheduler that changes
``group["trust_coeff"]`` or ``group["eta"]`` between steps gets the original's
behaviour. State dicts go both ways: the original's ``state_dict()`` loads into
the compat class and the compat class's into the original; a state dict of
another flavour is refused naming the key. Unlike the originals, none of these
writes into ``p.grad``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .lamb_compat import FusedLAMB, TimmLamb
from .optimizer import Lars
from .state_dict_schemas import BOLTS_OPTIONS, SGD_OPTIONS, SOLO_OPTIONS, SSL_OPTIONS, TIMM_OPTIONS

__all__ = ["LARC", "BoltsLars", "FusedLAMB", "SSLLars", "SoloLars", "TimmLamb", "TimmLars", "register_timm"]

Params = Iterable[Union[Tensor, dict[str, Any]]]

# What every flavour here shares: Lars's defaults without the seed's two clips and
# with the ratio inside the momentum; each class's _to_lars sets the rest.
_LARS_BASE = {**Lars.option_defaults(), "trust_clip": None, "update_clip": None, "ratio_on_grad": True}


class _Flavour(Lars):
    """A Lars whose param groups hold an original's options (``_OPTIONS``), translated
    into Lars's by ``_to_lars`` for each step. ``_RENAMED``: Lars's name -> the
    original's, for error messages."""

    _RENAMED: dict[str, str] = {}

    def __init__(self, params: Params, defaults: dict[str, Any]):
        # Lars.__init__ would set Lars's own defaults; Lars.add_param_group (run for each
        # group) checks the group through _check_options below.
        Optimizer.__init__(self, params, defaults)

    @staticmethod
    def _to_lars(group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _check_options(self, group: dict[str, Any]) -> None:
        try:
            super()._check_options(self._to_lars(group))
        except (TypeError, ValueError) as exc:  # name the original's option, not Lars's
            message = str(exc)
            for ours, theirs in self._RENAMED.items():
                message = re.sub(rf"\b{ours}\b", theirs, message)
            raise type(exc)(message) from None

    def _kernel_groups(self) -> list[dict[str, Any]]:
        return [{**self._to_lars(group), "params": group["params"]} for group in self.param_groups]


class TimmLars(_Flavour):
    """Replaces ``timm.optim.Lars`` (timm ≥ 0.9): the same arguments, param groups
    (``trust_coeff``, ``eps``, ``trust_clip`` as a bool, ``always_adapt``, ...), state
    (``momentum_buffer``) and step — adaptation only where ``weight_decay != 0`` unless
    ``always_adapt``; ``trust_clip`` is LARC's ``min(r/lr, 1)``; the ratio scales
    ``g + wd*p`` before momentum with dampening; the first momentum step copies it.
    ``fused`` is ours (timm ignores the key)."""

    _OPTIONS = TIMM_OPTIONS
    _RENAMED = {"eeta": "trust_coeff", "epsilon": "eps"}

    def __init__(self, params: Params, lr: Union[float, Tensor] = 1.0, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, trust_coeff: float = 0.001, eps: float = 1e-8,
                 trust_clip: bool = False, always_adapt: bool = False, foreach: Optional[bool] = None, *,
                 fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip,
                                      always_adapt=always_adapt, foreach=foreach, fused=fused))

    @staticmethod
    def _to_lars(g: dict[str, Any]) -> dict[str, Any]:
        return {**_LARS_BASE, "lr": g["lr"], "momentum": g["momentum"], "dampening": g["dampening"],
                "weight_decay": g["weight_decay"], "nesterov": g["nesterov"], "eeta": g["trust_coeff"],
                "epsilon": g["eps"], "larc_clip": bool(g["trust_clip"]), "always_adapt": g["always_adapt"],
                "foreach": g.get("foreach"), "fused": g.get("fused")}


class LARC(_Flavour):
    """Replaces ``apex.parallel.LARC.LARC(sgd_optimizer, trust_coefficient, clip, eps)``:
    takes the ``torch.optim.SGD`` it would wrap and returns one fused optimizer over the
    SGD's param groups (kept in torch SGD's schema: lr, momentum, dampening, weight decay,
    Nesterov, maximize) and state (``momentum_buffer``), so its ``state_dict()`` is the
    SGD's, as apex's is. ``trust_coefficient``, ``clip`` and ``eps`` are attributes, as
    in apex. Every param adapts (LARC ignores weight decay for that); a zero ``||p||``
    or ``||g||`` means neither decay nor scaling (LARC's branch). ``foreach``/``fused``,
    when given, choose our path for every group."""

    _OPTIONS = SGD_OPTIONS

    def __init__(self, optimizer: torch.optim.Optimizer, trust_coefficient: float = 0.02, clip: bool = True,
                 eps: float = 1e-8, *, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"LARC takes the torch.optim.SGD it would wrap, got {type(optimizer).__name__}")
        self.trust_coefficient, self.clip, self.eps = trust_coefficient, clip, eps
        switches = {k: v for k, v in dict(foreach=foreach, fused=fused).items() if v is not None}
        defaults = {**{k: optimizer.defaults[k] for k in SGD_OPTIONS if k in optimizer.defaults}, **switches}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, **switches, "params": list(g["params"])}
                  for g in optimizer.param_groups]
        super().__init__(groups, defaults)
        # The SGD's momentum buffers carry over (same key, same meaning).
        for p, state in optimizer.state.items():
            if state.get("momentum_buffer") is not None:
                self.state[p]["momentum_buffer"] = state["momentum_buffer"]

    def _to_lars(self, g: dict[str, Any]) -> dict[str, Any]:
        if g.get("differentiable"):
            raise ValueError("LARC: the SGD's differentiable=True is not supported")
        return {**_LARS_BASE, "lr": g["lr"], "momentum": g["momentum"], "dampening": g["dampening"],
                "weight_decay": g["weight_decay"], "nesterov": g["nesterov"], "maximize": g.get("maximize", False),
                "eeta": self.trust_coefficient, "epsilon": self.eps, "larc_clip": bool(self.clip),
                "zero_norm_skip": True, "foreach": g.get("foreach"), "fused": g.get("fused")}


def _filter_flag(value: Any, name: str) -> bool:
    """The SSL repos' filter switches: Barlow Twins' bools, or VICReg's filter function
    ``exclude_bias_and_norm`` (p.ndim == 1), which means the same as True."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if callable(value) and getattr(value, "__name__", "") == "exclude_bias_and_norm":
        return True
    raise TypeError(f"{name} must be a bool (or the SSL repos' exclude_bias_and_norm), got {value!r}")


class SSLLars(_Flavour):
    """Replaces the LARS of the self-supervised repos (Barlow Twins, VICReg; MoCo v3
    with both filters on): ``r = eta*||p|| / ||g + wd*p||`` (no epsilon), r scales
    ``g + wd*p`` before momentum; ``weight_decay_filter`` / ``lars_adaptation_filter``
    exclude 1-D params (biases, norm layers) from decay / adaptation. Param groups
    hold the originals' options (``eta``, the two filters) and the momentum buffer is
    their ``mu`` (zeros first, no dampening). ``foreach``/``fused`` are ours."""

    _OPTIONS = SSL_OPTIONS
    _BUFFER_KEY = "mu"
    _RENAMED = {"eeta": "eta", "decay_filter": "weight_decay_filter", "adaptation_filter": "lars_adaptation_filter"}

    def __init__(self, params: Params, lr: Union[float, Tensor], weight_decay: float = 0, momentum: float = 0.9,
                 eta: float = 0.001, weight_decay_filter: bool = True, lars_adaptation_filter: bool = True, *,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      weight_decay_filter=weight_decay_filter,
                                      lars_adaptation_filter=lars_adaptation_filter, foreach=foreach, fused=fused))

    @staticmethod
    def _to_lars(g: dict[str, Any]) -> dict[str, Any]:
        return {**_LARS_BASE, "lr": g["lr"], "momentum": g["momentum"], "weight_decay": g["weight_decay"],
                "eeta": g["eta"], "decay": True, "norm_of_update": True,
                "decay_filter": _filter_flag(g["weight_decay_filter"], "weight_decay_filter"),
                "adaptation_filter": _filter_flag(g["lars_adaptation_filter"], "lars_adaptation_filter"),
                "foreach": g.get("foreach"), "fused": g.get("fused")}


class BoltsLars(_Flavour):
    """Replaces Lightning Bolts' ``pl_bolts.optimizers.lars.LARS`` and lightly's copy of
    it (``lightly.utils.lars.LARS``): the same arguments, param groups
    (``trust_coefficient``, ``eps``), state (``momentum_buffer``) and step — the ratio
    ``trust_coefficient*||p|| / (||g|| + wd*||p|| + eps)`` scales ``g + wd*p`` before
    momentum, only where ``weight_decay != 0`` (SimCLR/BYOL: groups without decay are
    not adapted) and both norms are non-zero (else neither decay nor scaling); the
    first momentum step copies the update. Unlike Bolts, ours does not write into
    ``p.grad``. ``foreach``/``fused`` are ours."""

    _OPTIONS = BOLTS_OPTIONS
    _RENAMED = {"eeta": "trust_coefficient", "epsilon": "eps"}

    def __init__(self, params: Params, lr: Union[float, Tensor], momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, trust_coefficient: float = 0.001,
                 eps: float = 1e-8, *, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, trust_coefficient=trust_coefficient, eps=eps,
                                      foreach=foreach, fused=fused))

    @staticmethod
    def _to_lars(g: dict[str, Any]) -> dict[str, Any]:
        return {**_LARS_BASE, "lr": g["lr"], "momentum": g["momentum"], "dampening": g["dampening"],
                "weight_decay": g["weight_decay"], "nesterov": g["nesterov"], "eeta": g["trust_coefficient"],
                "epsilon": g["eps"], "always_adapt": False, "zero_norm_skip": True,
                "foreach": g.get("foreach"), "fused": g.get("fused")}


class SoloLars(_Flavour):
    """Replaces solo-learn's ``solo.utils.lars.LARS`` (Bolts' LARS with ``eta``): every
    param adapts whatever its weight decay, but 1-D params (biases, norms) take neither
    decay nor ratio when ``exclude_bias_n_norm_lars``; ``clip_lars_lr`` makes the ratio
    ``min(r/lr, 1)``; a zero norm means neither decay nor scaling; the first momentum
    step copies the update. Param groups hold solo-learn's options, state its
    ``momentum_buffer``. ``foreach``/``fused`` are ours."""

    _OPTIONS = SOLO_OPTIONS
    _RENAMED = {"eeta": "eta", "epsilon": "eps"}

    def __init__(self, params: Params, lr: Union[float, Tensor], momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, eta: float = 1e-3, eps: float = 1e-8,
                 clip_lars_lr: bool = False, exclude_bias_n_norm_lars: bool = False, *,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, eta=eta, eps=eps, clip_lars_lr=clip_lars_lr,
                                      exclude_bias_n_norm_lars=exclude_bias_n_norm_lars, foreach=foreach,
                                      fused=fused))

    @staticmethod
    def _to_lars(g: dict[str, Any]) -> dict[str, Any]:
        exclude = _flag(g["exclude_bias_n_norm_lars"], "exclude_bias_n_norm_lars")
        return {**_LARS_BASE, "lr": g["lr"], "momentum": g["momentum"], "dampening": g["dampening"],
                "weight_decay": g["weight_decay"], "nesterov": g["nesterov"], "eeta": g["eta"],
                "epsilon": g["eps"], "larc_clip": _flag(g["clip_lars_lr"], "clip_lars_lr"), "zero_norm_skip": True,
                "decay_filter": exclude, "adaptation_filter": exclude,
                "foreach": g.get("foreach"), "fused": g.get("fused")}


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


# ---- timm's optimizer factory ------------------------------------------------------------

# name -> (description, defaults): timm's lars/larc/nlars/nlarc, fused (timm splits names on "_").
TIMM_NAMES = {
    "fusedlars": ("lars_cuda's fused LARS (timm's lars)", {}),
    "fusedlarc": ("lars_cuda's fused LARS with trust ratio clipping (timm's larc)", {"trust_clip": True}),
    "fusednlars": ("lars_cuda's fused LARS with Nesterov momentum (timm's nlars)", {"nesterov": True}),
    "fusednlarc": ("lars_cuda's fused LARS, Nesterov and trust ratio clipping (timm's nlarc)",
                   {"nesterov": True, "trust_clip": True}),
}
# timm's LAMB family under an "lcuda" prefix: timm's "fusedlamb" is apex's FusedLAMB, which
# we do not take over (lars_cuda.compat.FusedLAMB is imported by name instead).
TIMM_LAMB_NAMES = {
    "lcudalamb": ("lars_cuda's LAMB (timm's lamb)", {}),
    "lcudalambc": ("lars_cuda's LAMB with trust ratio clipping (timm's lambc)", {"trust_clip": True}),
    "lcudalambw": ("lars_cuda's LAMB with decoupled weight decay (timm's lambw)", {"decoupled_decay": True}),
    "lcudalambcw": ("lars_cuda's LAMB, trust ratio clipping and decoupled decay (timm's lambcw)",
                    {"trust_clip": True, "decoupled_decay": True}),
    "lcudaclamb": ("lars_cuda's cautious LAMB (timm's clamb)", {"caution": True}),
    "lcudaclambw": ("lars_cuda's cautious LAMB with decoupled decay (timm's clambw)",
                    {"caution": True, "decoupled_decay": True}),
    "lcudalambcd": ("lars_cuda's LAMB with corrected decoupled decay (timm's lambcd)",
                    {"decoupled_decay": True, "corrected_weight_decay": True}),
}


def register_timm() -> list[str]:
    """Adds TimmLars to timm's optimizer registry under :data:`TIMM_NAMES` and TimmLamb
    under :data:`TIMM_LAMB_NAMES`, so that ``timm.optim.create_optimizer_v2(model,
    opt="fusedlars", ...)`` (or ``opt="lcudalamb"``) builds ours with timm's parameter
    grouping (no weight decay for biases and norms, layer decay). Idempotent; returns
    the names."""
    from timm.optim import OptimInfo
    from timm.optim._optim_factory import default_registry

    for names, cls, momentum, betas in ((TIMM_NAMES, TimmLars, True, False),
                                        (TIMM_LAMB_NAMES, TimmLamb, False, True)):
        for name, (description, defaults) in names.items():
            default_registry.register(OptimInfo(name=name, opt_class=cls, description=description,
                                                has_momentum=momentum, has_betas=betas,
                                                defaults=dict(defaults) or None))
    return list(TIMM_NAMES) + list(TIMM_LAMB_NAMES)
