"""The contract (docs/semantics.md, "The seed's LARS") restated in float64, independent
of the package: the oracle of the tests."""

from __future__ import annotations

import math
from typing import Optional

import torch


def lars_step_f64(
    p: torch.Tensor,
    g: torch.Tensor,
    buf: Optional[torch.Tensor],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    eeta: float = 1e-3,
    epsilon: float = 0.0,
    lars: bool = True,
    nesterov: bool = False,
    trust_clip: Optional[float] = 50.0,
    update_clip: Optional[float] = 10.0,
    maximize: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One step for one parameter: returns (new p, new buffer) in float64."""
    p64, g64 = p.double(), g.double()
    if maximize:
        g64 = -g64
    if lars:
        w = p64.norm().item()
        n = g64.norm().item()
        r = eeta * w / (n + weight_decay * w + epsilon) if (w > 0 and n > 0) else 1.0
        if trust_clip is not None:
            r = min(max(r, 0.0), trust_clip)
        d = g64 + weight_decay * p64
    else:
        r = 1.0
        d = g64
    if update_clip is not None:
        d = d.clamp(-update_clip, update_clip)
    if momentum != 0:
        new_buf = d.clone() if buf is None else momentum * buf.double() + d
        u = d + momentum * new_buf if nesterov else new_buf
    else:
        new_buf = None
        u = d
    assert math.isfinite(r)
    return p64 - lr * r * u, new_buf


def global_clip_f64(grads: list[torch.Tensor], max_grad_norm: Optional[float]) -> float:
    """LAMB's global clipping factor c = max(1, ‖all grads‖ / max_grad_norm) (1 when off: None)."""
    if max_grad_norm is None:
        return 1.0
    assert max_grad_norm > 0, "0 makes the originals divide every grad by infinity; not a setting to imitate"
    total = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    return max(1.0, total / max_grad_norm)


def lamb_step_f64(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    decay_mode: str = "update",
    bias_correction: bool = True,
    grad_averaging: bool = True,
    clip: float = 1.0,
    always_adapt: bool = False,
    trust_clip: bool = False,
    caution: bool = False,
    max_lr: Optional[float] = None,
    ratio_out: Optional[list] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LAMB step of one parameter (docs/semantics.md, "LAMB"), float64: returns
    (new p, new m, new v). ``clip`` is the global factor (global_clip_f64); ``step``
    counts from 1; decay_mode is "update", "grad" or "decoupled". ``ratio_out``: a
    list the trust ratio is appended to where the param adapts."""
    assert decay_mode in ("update", "grad", "decoupled")
    beta1, beta2 = betas
    p64, g64 = p.double().clone(), g.double() / clip
    if decay_mode == "grad" and weight_decay != 0:
        g64 = g64 + weight_decay * p64
    beta3 = 1 - beta1 if grad_averaging else 1.0
    m64 = beta1 * m.double() + beta3 * g64
    v64 = beta2 * v.double() + (1 - beta2) * g64 * g64
    b1, b2 = (1 - beta1 ** step, 1 - beta2 ** step) if bias_correction else (1.0, 1.0)
    u = (m64 / b1) / ((v64 / b2).sqrt() + eps)
    if caution:
        mask = (u * g64 > 0).double()
        u = u * mask / max(float(mask.mean()), 1e-3)
    if weight_decay != 0 and decay_mode == "update":
        u = u + weight_decay * p64
    if weight_decay != 0 and decay_mode == "decoupled":
        scale = lr if max_lr is None else lr * lr / max_lr
        p64 = p64 - scale * weight_decay * p64
    r = 1.0
    if weight_decay != 0 or always_adapt:
        w, n = float(p64.norm()), float(u.norm())
        r = w / n if (w > 0 and n > 0) else 1.0
        if trust_clip:
            r = min(r, 1.0)
        if ratio_out is not None:
            ratio_out.append(r)
    assert math.isfinite(r)
    return p64 - lr * r * u, m64, v64
