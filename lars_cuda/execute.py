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


def run_plans(plans: list[Plan], grad_scale: Optional[Tensor],
              found_inf: Optional[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Steps every plan; returns the (param, buffer) pairs of the buffers created
    this step, for the optimizer's state."""
    plain = [p for p in plans if not p.sharded]
    distributed = [p for p in plans if p.sharded]
    if distributed:
        _run_sharded(distributed, grad_scale, found_inf)
    for device_plans in _fused_by_device(plain).values():
        functional.fused_lars_groups([(p.local_params, p.local_grads, p.local_bufs, p.options) for p in device_plans],
                                     grad_scale=grad_scale, found_inf=found_inf)
    for plan in plain:
        if plan.path != "fused":
            _run_unfused(plan)
    return [pair for plan in plans for pair in plan.new_bufs]


def _fused_by_device(plans: list[Plan]) -> dict[torch.device, list[Plan]]:
    out: dict[torch.device, list[Plan]] = {}
    for plan in plans:
        if plan.path == "fused":
            out.setdefault(plan.device, []).append(plan)
    return out


def _run_unfused(plan: Plan) -> None:
    step = functional._multi_tensor_lars if plan.path == "foreach" else functional._single_tensor_lars
    step(plan.local_params, plan.local_grads, plan.local_bufs, plan.options, sums=plan.sums)


def _run_sharded(plans: list[Plan], grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """Local sums of squares, ONE all-reduce per mesh, then the update on the local
    shards (lars_cuda/sharded.py)."""
    fused = _fused_by_device(plans)
    for plan in plans:
        if plan.path == "fused":
            continue
        if plan.options.lars:
            plan.sums = sharded.local_sums(plan.local_params, plan.local_grads, foreach=plan.path == "foreach",
                                           dot=plan.options.norm_of_update)
        else:
            plan.sums = torch.zeros((len(plan.params), 3), dtype=torch.float64, device=plan.device)
    for device_plans in fused.values():
        sums = functional.fused_lars_norms([(p.local_params, p.local_grads, p.options) for p in device_plans])
        for plan, rows in zip(device_plans, sums.split([len(p.params) for p in device_plans])):
            plan.sums = rows
    global_inf = sharded.reduce_sums(plans, found_inf)
    for device_plans in fused.values():
        functional.fused_lars_groups(
            [(p.local_params, p.local_grads, p.local_bufs, p.options) for p in device_plans],
            grad_scale=grad_scale, found_inf=global_inf, sums=torch.cat([p.sums for p in device_plans]).contiguous())
    for plan in plans:
        if plan.path != "fused":
            _run_unfused(plan)
