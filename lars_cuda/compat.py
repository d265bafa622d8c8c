"""Drop-in LARS flavours: each constructor takes an original's own arguments and
returns a :class:`lars_cuda.Lars` whose group options reproduce that original's
step exactly (``shared/spec/lars-semantics.md`` §6), on every path (the fused
CPU/CUDA kernel in one launch, foreach, the reference loop), with GradScaler,
tensor lr, schedulers, ``state_dict`` and sharded (DTensor) params.

============  ===========================  ==========================  =====================
flavour       ratio r                      where r goes                zero norm
============  ===========================  ==========================  =====================
seed (Lars)   eta*|p| / (|g|+wd|p|+eps)    p -= lr*r*buf, clip 50/10   r = 1, decay kept
TimmLars      eta*|p| / (|g|+wd|p|+eps)    buf += r*(g+wd*p)           r = 1, decay kept
LARC          eta*|p| / (|g|+wd|p|+eps)    buf += r*(g+wd*p)           no decay, no scaling
SSLLars       eta*|p| / |g+wd*p|           buf += r*(g+wd*p)           r = 1, decay kept
============  ===========================  ==========================  =====================

(timm's ``trust_clip`` and LARC's ``clip`` both mean r <- min(r/lr, 1).) Unlike
the originals, none of these writes into ``p.grad``.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor

from .optimizer import Lars

__all__ = ["LARC", "SSLLars", "TimmLars"]

Params = Iterable[Union[Tensor, dict[str, Any]]]
_NO_CLIPS = dict(trust_clip=None, update_clip=None)


class TimmLars(Lars):
    """Replaces ``timm.optim.Lars`` (timm ≥ 0.9): the same arguments and the same
    step — adaptation only where ``weight_decay != 0`` unless ``always_adapt``;
    ``trust_clip`` is LARC's ``min(r/lr, 1)``; the ratio scales ``g + wd*p``
    before momentum with dampening; the first momentum step copies it."""

    def __init__(self, params: Params, lr: Union[float, Tensor] = 1.0, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, trust_coeff: float = 0.001, eps: float = 1e-8,
                 trust_clip: bool = False, always_adapt: bool = False, *, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None):
        super().__init__(params, lr=lr, momentum=momentum, eeta=trust_coeff, weight_decay=weight_decay, epsilon=eps,
                         nesterov=nesterov, dampening=dampening, ratio_on_grad=True, larc_clip=bool(trust_clip),
                         always_adapt=always_adapt, foreach=foreach, fused=fused, **_NO_CLIPS)


class LARC(Lars):
    """Replaces ``apex.parallel.LARC.LARC(sgd_optimizer, trust_coefficient, clip, eps)``:
    takes the ``torch.optim.SGD`` it would wrap and returns one fused optimizer over
    the SGD's param groups (their lr, momentum, dampening, weight decay, Nesterov,
    maximize) and state. Every param adapts (LARC ignores weight decay for that); a
    zero ``||p||`` or ``||g||`` means neither decay nor scaling (LARC's branch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, trust_coefficient: float = 0.02, clip: bool = True,
                 eps: float = 1e-8, *, foreach: Optional[bool] = None, fused: Optional[bool] = None):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"LARC takes the torch.optim.SGD it would wrap, got {type(optimizer).__name__}")
        groups = []
        for g in optimizer.param_groups:
            groups.append(dict(params=list(g["params"]), lr=g["lr"], momentum=g["momentum"],
                               dampening=g["dampening"], weight_decay=g["weight_decay"], nesterov=g["nesterov"],
                               maximize=g.get("maximize", False)))
        super().__init__(groups, lr=groups[0]["lr"] if groups else 0.1, eeta=trust_coefficient, epsilon=eps,
                         ratio_on_grad=True, larc_clip=bool(clip), zero_norm_skip=True, foreach=foreach,
                         fused=fused, **_NO_CLIPS)
        # The SGD's momentum buffers carry over (same key, same meaning).
        for p, state in optimizer.state.items():
            if state.get("momentum_buffer") is not None:
                self.state[p]["momentum_buffer"] = state["momentum_buffer"]


class SSLLars(Lars):
    """Replaces the LARS of the self-supervised repos (Barlow Twins, VICReg; MoCo v3
    with both filters on): ``r = eta*||p|| / ||g + wd*p||`` (no epsilon), r scales
    ``g + wd*p`` before momentum; ``weight_decay_filter`` / ``lars_adaptation_filter``
    exclude 1-D params (biases, norm layers) from decay / adaptation. The momentum
    buffer is the originals' ``mu`` (zeros first, no dampening), kept under
    ``momentum_buffer``."""

    def __init__(self, params: Params, lr: Union[float, Tensor], weight_decay: float = 0, momentum: float = 0.9,
                 eta: float = 0.001, weight_decay_filter: bool = True, lars_adaptation_filter: bool = True, *,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None):
        super().__init__(params, lr=lr, momentum=momentum, eeta=eta, weight_decay=weight_decay, epsilon=0.0,
                         decay=True, ratio_on_grad=True, norm_of_update=True, decay_filter=weight_decay_filter,
                         adaptation_filter=lars_adaptation_filter, foreach=foreach, fused=fused, **_NO_CLIPS)
