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
