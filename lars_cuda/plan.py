"""Planning a step: which tensors run which path with which options. One
:class:`Plan` type for every path, plain and sharded; everything is checked
here, before anything is written (``lars_cuda.execute`` runs the plans).

A param group becomes plans in four cuts, each by :func:`partition`:
the group's views (``StepOptions.views``: timm's always_adapt, the SSL
filters), plain tensors vs DTensors (FSDP2), fresh buffers with dampening vs
the rest (``functional.create_buffers``), and, for ``fused=True`` with float64
tensors, the kernel's dtypes vs the rest (which run foreach, as torch's fused
SGD takes float64).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import ops, sharded
from .functional import create_buffers, partition, take
from .options import KERNEL_DTYPES, StepOptions
from .user_frame import user_stacklevel
from .validation import (check_amp_scaling_path, check_grads, check_group_options, check_path, check_sharded,
                         check_sharded_buffer)

__all__ = ["Plan", "StepPlan", "choose_path", "plan_step"]


@dataclass(frozen=True)
class Plan:
    """One set of tensors a step updates with one set of options on one path. For
    plain tensors ``local_*`` are the tensors themselves; for DTensors (``sharded``)
    their local shards, whose norms come from one all-reduce (``lars_cuda.execute``)."""

    options: StepOptions
    path: str                       # "fused", "foreach" or "single"
    params: list[Tensor]            # the keys of the state (DTensors when sharded)
    local_params: list[Tensor]
    local_grads: list[Tensor]
    local_bufs: list[Tensor]        # [] without momentum
    sharded: bool = False

    @property
    def device(self) -> torch.device:
        return self.local_params[0].device


@dataclass(frozen=True)
class StepPlan:
    """A step, planned: its plans, and the momentum buffers it creates, which go
    into the state after the step (not before: a failed check leaves the state as
    it was)."""

    plans: list[Plan]
    new_buffers: list[tuple[Tensor, Tensor]]  # (param, its fresh buffer)


def plan_step(groups: list[dict[str, Any]], state: dict, buffer_key: str,
              grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> StepPlan:
    """Every plan of one step over param groups in Lars's options; raises (and
    writes nothing) on any bad option or tensor."""
    plans: list[Plan] = []
    new_buffers: list[tuple[Tensor, Tensor]] = []
    for group in groups:
        check_group_options(group, read_tensor_lr=False)
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        dtypes = {p.dtype for p in params}
        check_grads(grads, dtypes)
        bufs: list[Optional[Tensor]] = []
        if group["momentum"] != 0:
            # One dict lookup per param (Tensor.__hash__ is a Python call): this runs every step.
            get, empty = state.get, {}
            bufs = [(get(p) or empty).get(buffer_key) for p in params]
        for options, idx in StepOptions.views(group, params):
            view = take([params, grads, bufs], idx)
            is_sharded = [sharded.HAS_DTENSOR and sharded.is_dtensor(p) for p in view[0]]
            for dist, (lists, _) in partition(view, is_sharded).items():
                view_plans, view_buffers = _view_plans(group, options, *lists, dist, (grad_scale, found_inf))
                plans += view_plans
                new_buffers += view_buffers
    return StepPlan(plans, new_buffers)


def _view_plans(group, options: StepOptions, params, grads, bufs, is_sharded: bool,
                amp: tuple) -> tuple[list[Plan], list[tuple[Tensor, Tensor]]]:
    """The plans of one view's plain tensors or DTensors (their local shards), and
    the buffers created for them (``functional.create_buffers``)."""
    if is_sharded:
        for i, (p, g) in enumerate(zip(params, grads)):
            check_sharded(p, g, i)
    fresh = [i for i, b in enumerate(bufs) if b is None]
    plans = []
    for o, idx in create_buffers(options, params, bufs):
        tensors = take([params, grads, bufs], idx)
        if is_sharded:
            for i, param, buf in zip(idx, tensors[0], tensors[2]):
                check_sharded_buffer(param, buf, i)
            local = [[t.to_local() for t in ts] for ts in tensors]
        else:
            local = tensors
        plans += _by_path(group, o, tensors[0], local, is_sharded, amp)
    return plans, ([(params[i], bufs[i]) for i in fresh] if plans else [])


def _by_path(group, o: StepOptions, params: list[Tensor], local: list[list[Tensor]], is_sharded: bool,
             amp: tuple) -> list[Plan]:
    """The plan(s) of one set of tensors (``local``: params, grads, buffers): the path
    the group asks for, and float64 tensors of a fused group on foreach."""
    local_p = local[0]
    dtypes = {p.dtype for p in local_p}
    path = choose_path(group, local_p, dtypes)
    parts = {path: ([params, *local], None)}
    if path == "fused" and not dtypes <= KERNEL_DTYPES:
        parts = {("fused" if k else "foreach"): v for k, v in
                 partition([params, *local], [p.dtype in KERNEL_DTYPES for p in local_p]).items()}
    plans = []
    for part_path, ((p, lp, lg, lb), _) in parts.items():
        check_path(part_path, lp, lb, o.lr)
        check_amp_scaling_path(part_path == "fused", *amp)
        plans.append(Plan(options=o, path=part_path, params=p, local_params=lp, local_grads=lg, local_bufs=lb,
                          sharded=is_sharded))
    return plans


def choose_path(group: dict[str, Any], params: list[Tensor], dtypes: Optional[set] = None) -> str:
    """As torch.optim.SGD: fused=True -> kernel; foreach=True -> foreach; foreach=False
    -> the loop. Unset, the kernel where it serves every tensor, else foreach."""
    fused, foreach = group["fused"], group["foreach"]
    if fused:
        device = params[0].device if params else None
        if device is None or device.type not in ("cpu", "cuda") or ops.fused_runs_on(device):
            return "fused"  # (other device types are refused by check_path)
        _warn_fused_unavailable(device, asked=True)
        return "foreach"
    if foreach:
        return "foreach"
    if foreach is False:
        return "single"
    devices = {p.device for p in params}
    if len(devices) > 1:
        return "single"
    if dtypes is None:
        dtypes = {p.dtype for p in params}
    if fused is None and dtypes <= KERNEL_DTYPES:
        if not params:
            return "fused"
        device = next(iter(devices))
        if ops.fused_runs_on(device):
            return "fused"
        if ops.has_fused(device):  # built for CUDA, but with no code for this card
            _warn_fused_unavailable(device, asked=False)
    return "foreach"


_WARNED_UNAVAILABLE: set = set()


def _warn_fused_unavailable(device: torch.device, asked: bool) -> None:
    """One warning per device and process: the fused kernel cannot run there (why, and the
    rebuild command), so the step runs the foreach path (the same math, slower)."""
    if (device, asked) in _WARNED_UNAVAILABLE:
        return
    _WARNED_UNAVAILABLE.add((device, asked))
    wanted = "fused=True was asked for, but " if asked else ""
    warnings.warn(f"lars_cuda: {wanted}{ops.fused_unavailable(device)}; Lars runs the foreach path on {device} "
                  f"instead (same math, slower)", RuntimeWarning, stacklevel=user_stacklevel())


