"""Running a step's plans (``lars_cuda.plan``): every kernel plan of a device in
ONE op call (which checks every group before it writes any), the sharded plans
around one all-reduce per mesh, the others through the foreach path or the
reference loop. Nothing here can fail on an input the planner accepted."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import functional, sharded
from .plan import Plan

__all__ = ["run_plans"]


def run_plans(plans: list[Plan], grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """Steps every plan, in place."""
    distributed = [p for p in plans if p.sharded]
    if distributed:
        _run_sharded(distributed, grad_scale, found_inf)
    plain = [p for p in plans if not p.sharded]
    for idx in _fused_by_device(plain).values():
        functional.fused_lars_groups([_group(plain[i]) for i in idx], grad_scale=grad_scale, found_inf=found_inf)
    for plan in plain:
        if plan.path != "fused":
            _run_unfused(plan, None)


def _fused_by_device(plans: list[Plan]) -> dict[torch.device, list[int]]:
    """The indices of the fused plans, by device (one op call each)."""
    out: dict[torch.device, list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.path == "fused":
            out.setdefault(plan.device, []).append(i)
    return out


def _group(plan: Plan) -> functional.Group:
    return plan.local_params, plan.local_grads, plan.local_bufs, plan.options


def _run_unfused(plan: Plan, sums: Optional[Tensor]) -> None:
    step = functional.multi_tensor_lars if plan.path == "foreach" else functional.single_tensor_lars
    step(plan.local_params, plan.local_grads, plan.local_bufs, plan.options, sums=sums)


def _run_sharded(plans: list[Plan], grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """Local sums of squares, ONE all-reduce per mesh, then the update on the local
    shards (lars_cuda/sharded.py): local sums -> reduce -> global rows."""
    fused = _fused_by_device(plans)
    local: list[Optional[Tensor]] = [None if p.path == "fused" else _unfused_local_sums(p) for p in plans]
    for idx in fused.values():
        rows = functional.fused_lars_norms([(plans[i].local_params, plans[i].local_grads, plans[i].options)
                                            for i in idx])
        for i, part in zip(idx, rows.split([len(plans[i].params) for i in idx])):
            local[i] = part
    global_sums, global_inf = sharded.reduce_sums([(p.params, rows) for p, rows in zip(plans, local)], found_inf)
    for idx in fused.values():
        functional.fused_lars_groups([_group(plans[i]) for i in idx], grad_scale=grad_scale, found_inf=global_inf,
                                     sums=torch.cat([global_sums[i] for i in idx]).contiguous())
    for plan, sums in zip(plans, global_sums):
        if plan.path != "fused":
            _run_unfused(plan, sums)


def _unfused_local_sums(plan: Plan) -> Tensor:
    """The local rows of a foreach/loop plan; zeros where the plan does not adapt."""
    if plan.options.lars:
        return sharded.local_sums(plan.local_params, plan.local_grads, foreach=plan.path == "foreach",
                                  dot=plan.options.norm_of_update)
    return torch.zeros((len(plan.params), 3), dtype=torch.float64, device=plan.device)
