"""``Lars.trust_ratios()``: the trust ratio the next step would give each LARS
parameter, for monitoring — from one float32 sum per tensor and one host copy
per device (no per-parameter ``.item()``), through the step's own ratio rule
(``functional.ratio_and_decay``) and its views (``StepOptions.views``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from . import sharded
from .functional import partition, ratio_and_decay
from .options import StepOptions


__all__ = ["trust_ratios"]


def trust_ratios(groups: list[dict[str, Any]], scale: float) -> Tensor:
    """float32 CPU ratios of every adapted param (with a grad) in group order; the
    grads are divided by ``scale`` (GradScaler's, on the fused path)."""
    ratios = []
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not group["lars"] or not params:
            continue
        # (||p||, ||g||, <g,p>) per param in group order, in float64 as the step's
        # float32 sums widened.
        sums = _sums(params)
        w, n, dot = sums[:, 0].sqrt(), sums[:, 1].sqrt() / scale, sums[:, 2] / scale
        out = torch.full((len(params),), float("nan"))
        adapted = torch.zeros(len(params), dtype=torch.bool)
        for options, idx in StepOptions.views(group, params):
            if not options.lars:
                continue
            rows = torch.tensor(idx, dtype=torch.long)
            # float(lr): the ratio alone is wanted, on the CPU, whatever device a tensor lr is on.
            host = dataclasses.replace(options, lr=float(options.lr))
            r, _, _ = ratio_and_decay(w[rows].float(), n[rows].float(), dot[rows].float(), host)
            out[rows] = r.float()
            adapted[rows] = True
        ratios.append(out[adapted])
    return torch.cat(ratios) if ratios else torch.empty(0)


def _sums(params: list[Tensor]) -> Tensor:
    """float64 CPU ``[n, 3]``: Σp², Σg², Σg·p of each param (float32 sums, as the
    step computes them, widened); sharded params' global sums come from one
    all-reduce (so every rank must call this), the others from one host copy per device."""
    out = torch.empty(len(params), 3, dtype=torch.float64)
    keys = ["sharded" if sharded.HAS_DTENSOR and sharded.is_dtensor(p) else p.device for p in params]
    for key, ((part,), idx) in partition([params], keys).items():
        rows = sharded.sharded_trust_ratio_sums(part) if key == "sharded" else torch.stack([_row(p) for p in part])
        out[idx] = rows.to("cpu", torch.float64)
    return out


def _row(p: Tensor) -> Tensor:
    pf, gf = p.detach().float(), p.grad.detach().float()
    return torch.stack([(pf * pf).sum(), (gf * gf).sum(), (gf * pf).sum()])
