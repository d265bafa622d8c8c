"""The LARS step as functions over lists of tensors, as ``torch.optim.sgd``'s
functional core: :func:`lars` and three implementations of one contract (the
math: :class:`lars_cuda.Lars`'s docstring; ``docs/semantics.md``):

* :func:`single_tensor_lars` — a per-parameter loop in plain PyTorch. It is the
  readable statement of the math and the oracle every test compares against.
* :func:`multi_tensor_lars` — the same math on whole lists with
  ``torch._foreach_*``; it never synchronises with the host (no ``.item()``, no
  Python branch on a tensor value), so it can be captured in a CUDA graph.
* :func:`fused_lars_groups` — one call of the C++/CUDA op
  ``torch.ops.lars_cuda.fused_lars_groups_`` for every group of a device (the op
  buckets dtypes itself).

The list helpers :func:`partition` and :func:`take` are the one way every module
splits parallel lists (params, grads, buffers) and takes entries by index.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import ops
from .options import FLAG_BITS, LR, StepOptions, compute_dtype
from .validation import check_amp_scaling_path

__all__ = ["create_buffers", "fused_lars_groups", "fused_lars_norms", "lars", "multi_tensor_lars", "partition",
           "ratio_and_decay", "single_tensor_lars", "take"]


def lars(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Optional[Tensor]],
    *,
    lr: LR,
    momentum: float,
    weight_decay: float,
    eeta: float,
    epsilon: float,
    lars: bool,
    nesterov: bool,
    trust_clip: Optional[float],
    update_clip: Optional[float],
    maximize: bool = False,
    foreach: bool = False,
    fused: bool = False,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    sums: Optional[Tensor] = None,
    decay: Optional[bool] = None,
    ratio_on_grad: bool = False,
    norm_of_update: bool = False,
    larc_clip: bool = False,
    zero_norm_skip: bool = False,
    dampening: float = 0.0,
) -> None:
    """Apply one LARS step in place. ``momentum_buffer_list`` is updated in place
    with the (possibly new) buffers, as in ``torch.optim.sgd``.

    ``sums``: the sharded step's global ``(sum p², sum g², sum g·p)`` per tensor
    (float64 ``[n, 3]``, :mod:`lars_cuda.sharded`); the norms are then taken from
    it instead of from the (local) tensors."""
    if foreach and fused:
        raise ValueError("foreach and fused are mutually exclusive")
    check_amp_scaling_path(fused, grad_scale, found_inf)
    options = StepOptions.of(locals())  # (the arguments named as StepOptions' fields)
    if fused:
        fused_lars_groups([(params, grads, momentum_buffer_list, options)], grad_scale=grad_scale,
                          found_inf=found_inf, sums=sums)
        return
    step = multi_tensor_lars if foreach else single_tensor_lars
    for view, idx in create_buffers(options, params, momentum_buffer_list):
        p, g, b = take([params, grads, momentum_buffer_list], idx)
        step(p, g, b if view.has_momentum else [], view,
             sums=sums if sums is None or len(idx) == len(params) else sums[idx])


def create_buffers(options: StepOptions, params: Sequence[Tensor],
                   bufs: list[Optional[Tensor]]) -> list[tuple[StepOptions, list[int]]]:
    """The one place momentum buffers are created: fills each missing entry of
    ``bufs`` (``None``) with zeros like its param (a DTensor for a DTensor), in
    place. A zero buffer makes the first step exact on every path (momentum*0 + d
    == d), except with dampening, where torch.optim.SGD's first step copies d:
    those tensors step with ``options.first_step()`` (dampening 0). Returns the
    ``(options, indices)`` to step: one entry for every param in the common case."""
    everything = [(options, list(range(len(params))))]
    if not options.has_momentum:
        return everything
    fresh = [i for i, b in enumerate(bufs) if b is None]
    for i in fresh:
        bufs[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    if not fresh or options.dampening == 0:
        return everything
    fresh_set = set(fresh)
    old = [i for i in range(len(params)) if i not in fresh_set]
    return [(o, idx) for o, idx in ((options.first_step(), fresh), (options, old)) if idx]


def ratio_and_decay(w, n, dot, o: StepOptions):
    """Trust ratios r and the weight decay each tensor applies, from its norms (1-D
    tensors, or 0-dim for one tensor): every flavour's rule (lars.h's tensor_step)."""
    wd = o.weight_decay if o.decay else 0.0
    if o.norm_of_update:
        # ||g + wd p||, from the norms and <g, p> (no epsilon: the SSL formula)
        u = (n * n + (2.0 * wd) * dot + (wd * wd) * (w * w)).clamp_min(0.0).sqrt()
        zero = ~((w > 0) & (u > 0))
        ratio = o.eeta * w / u
    else:
        zero = ~((w > 0) & (n > 0))
        ratio = o.eeta * w / (n + o.weight_decay * w + o.epsilon)
    ratio = torch.where(zero, torch.ones_like(ratio), ratio)
    if o.larc_clip:
        clipped = torch.minimum(ratio / o.lr, torch.ones_like(ratio))
        ratio = torch.where(zero, ratio, clipped) if o.zero_norm_skip else clipped
    if o.trust_clip is not None:
        clamped = ratio.clamp(0.0, o.trust_clip)
        ratio = torch.where(zero, ratio, clamped) if o.zero_norm_skip else clamped
    # apex LARC: a zero norm means the tensor is neither decayed nor scaled (r = 1:
    # no clip applies to it either, as lars.h's tensor_step returns before its clips)
    skip = zero if o.zero_norm_skip else None
    return ratio, wd, skip


def _norms_from_sums(sums: Tensor, compute: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(||p||, ||g||, <g, p>) per tensor from the sharded step's global sums."""
    norms = sums[:, :2].sqrt().to(compute)
    return norms[:, 0], norms[:, 1], sums[:, 2].to(compute)


def single_tensor_lars(params, grads, momentum_buffer_list, o: StepOptions, *, sums=None):
    """The reference loop. Buffers exist (create_buffers) wherever o has momentum."""
    lr = o.lr
    for i, param in enumerate(params):
        # The compute type is float32 (float64 for float64 params); the conversion is a
        # no-op when the param already has it, so p32 may alias param.
        compute = compute_dtype(param.dtype)
        p32 = param.to(compute)
        g32 = grads[i].to(compute)
        if o.maximize:
            g32 = -g32
        wd = o.weight_decay if o.decay else 0.0
        skip = None
        if o.lars:
            if sums is None:
                w = torch.linalg.vector_norm(p32)
                n = torch.linalg.vector_norm(g32)
                dot = torch.dot(g32.flatten(), p32.flatten()) if o.norm_of_update else None
            else:
                w, n, dot = (x[0] for x in _norms_from_sums(sums[i:i + 1], compute))
            ratio, wd, skip = ratio_and_decay(w, n, dot, o)
        else:
            ratio = None
        d = g32.add(p32, alpha=wd) if wd != 0 else g32
        if skip is not None:
            d = torch.where(skip, g32, d)
        if o.update_clip is not None:
            d = d.clamp(-o.update_clip, o.update_clip)
        if o.ratio_on_grad and ratio is not None:
            d = d.mul(ratio)
            ratio = None  # the step is lr alone

        if o.has_momentum:
            buf = momentum_buffer_list[i]
            buf32 = buf.to(compute)
            buf32.mul_(o.momentum).add_(d, alpha=1.0 - o.dampening)
            if buf.dtype != compute:
                buf.copy_(buf32)
            u = d.add(buf32, alpha=o.momentum) if o.nesterov else buf32
        else:
            u = d

        step = lr * ratio if ratio is not None else lr
        if isinstance(step, Tensor):
            step = step.to(device=param.device, dtype=compute)
        p32.sub_(u * step)
        if param.dtype != compute:
            param.copy_(p32)


def multi_tensor_lars(params, grads, momentum_buffer_list, o: StepOptions, *, sums=None):
    """The same math on whole lists (torch._foreach_*), no host sync. Buffers exist
    (create_buffers) wherever o has momentum."""
    if not params:
        return
    parts = partition([params, grads, momentum_buffer_list], [compute_dtype(p.dtype) for p in params])
    if len(parts) > 1:
        # float64 params compute in float64, the others in float32: one call each.
        for (p, g, b), idx in parts.values():
            multi_tensor_lars(p, g, b, o, sums=sums[idx] if sums is not None else None)
        return
    lr = o.lr
    device = params[0].device
    compute = compute_dtype(params[0].dtype)
    reduced = [p.dtype != compute for p in params]
    p32 = [p.to(compute) for p in params]
    g32 = [g.to(compute) for g in grads]
    if o.maximize:
        g32 = torch._foreach_neg(g32)

    wd = o.weight_decay if o.decay else 0.0
    skip = None
    if o.lars:
        if sums is None:
            w = torch.stack(torch._foreach_norm(p32, 2, dtype=compute))
            n = torch.stack(torch._foreach_norm(g32, 2, dtype=compute))
            dot = torch.stack([torch.dot(g.flatten(), p.flatten()) for g, p in zip(g32, p32)]) \
                if o.norm_of_update else None
        else:
            w, n, dot = _norms_from_sums(sums, compute)
        ratio, wd, skip = ratio_and_decay(w, n, dot, o)
    else:
        ratio = None
    d = torch._foreach_add(g32, p32, alpha=wd) if wd != 0 else g32
    if skip is not None:  # apex LARC: zero-norm tensors keep their plain gradient
        d = [torch.where(z, g, x) for z, g, x in zip(skip.unbind(), g32, d)]
    if o.update_clip is not None:
        d = torch._foreach_clamp_min(d, -o.update_clip)
        torch._foreach_clamp_max_(d, o.update_clip)
    if o.ratio_on_grad and ratio is not None:
        d = torch._foreach_mul(d, ratio.unbind())
        ratio = None  # the step is lr alone

    if o.has_momentum:
        bufs = momentum_buffer_list
        b32 = [b.to(compute) for b in bufs]
        torch._foreach_mul_(b32, o.momentum)
        torch._foreach_add_(b32, d, alpha=1.0 - o.dampening)
        for b, b_32 in zip(bufs, b32):
            if b.dtype != compute:
                b.copy_(b_32)
        u = torch._foreach_add(d, b32, alpha=o.momentum) if o.nesterov else b32
    else:
        u = d

    # p - (step * u), rounded as the loop rounds it, for a float or a tensor lr alike.
    if ratio is not None:
        lr_t = lr.to(device=device, dtype=compute) if isinstance(lr, Tensor) else lr
        steps = (lr_t * ratio).neg().unbind()
        torch._foreach_add_(p32, torch._foreach_mul(u, steps))
    elif isinstance(lr, Tensor):
        neg_lr = lr.to(device=device, dtype=compute).neg()
        torch._foreach_add_(p32, torch._foreach_mul(u, neg_lr))
    else:
        torch._foreach_add_(p32, torch._foreach_mul(u, -lr))
    for p, p_32, r in zip(params, p32, reduced):
        if r:
            p.copy_(p_32)


Group = tuple[list[Tensor], list[Tensor], list[Optional[Tensor]], Union[StepOptions, Mapping[str, Any]]]


class _Call(NamedTuple):
    """One set of tensors of an op call, with the options they step with."""

    params: list[Tensor]
    grads: list[Tensor]
    bufs: list[Tensor]
    options: StepOptions


def fused_lars_groups(
    groups: list[Group],
    *,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    sums: Optional[Tensor] = None,
) -> None:
    """Several param groups of one device in ONE call of the op
    ``torch.ops.lars_cuda.fused_lars_groups_``, which checks every group before it
    writes any. Each group is ``(params, grads, momentum_buffer_list, options)``,
    options a :class:`~lars_cuda.options.StepOptions` or a mapping of the keyword
    arguments of :func:`lars`; missing buffers are created (:func:`create_buffers`)
    and filled into ``momentum_buffer_list``. With ``sums`` (the sharded step's
    global sums, one row per param of all groups in order) the op
    ``fused_lars_apply_`` runs instead, taking its norms from them."""
    calls: list[_Call] = []
    rows: list[int] = []  # the rows of sums in the order of the calls' tensors
    at, reordered = 0, False
    for params, grads, bufs, options in groups:
        o = options if isinstance(options, StepOptions) else StepOptions.of(options)
        for view, idx in create_buffers(o, params, bufs):
            calls.append(_Call(*take([params, grads, bufs if o.has_momentum else []], idx), view))
            reordered |= len(idx) != len(params)
            if sums is not None:
                rows += [at + i for i in idx]
        at += len(params)
    if sums is not None and reordered:
        sums = sums[torch.tensor(rows, device=sums.device)].contiguous()
    if len(calls) == 1:  # the common case: the group's own lists, no copy
        params, grads, bufs = calls[0].params, calls[0].grads, calls[0].bufs
    else:
        params = [p for c in calls for p in c.params]
        grads = [g for c in calls for g in c.grads]
        bufs = [b for c in calls for b in c.bufs]
    if not params:
        return
    sizes = [len(c.params) for c in calls]
    hyper = [x for c in calls for x in c.options.hyper_row()]
    flags = [c.options.flags for c in calls]
    lr_tensors = [c.options.lr_tensor for c in calls]
    if sums is not None:
        ops.fused_lars_apply_(params, grads, bufs, sizes, hyper, flags, lr_tensors, sums, grad_scale, found_inf)
    else:
        ops.fused_lars_groups_(params, grads, bufs, sizes, hyper, flags, lr_tensors, grad_scale, found_inf)


def fused_lars_norms(groups: list[tuple[list[Tensor], list[Tensor], Union[StepOptions, Mapping[str, Any]]]]) -> Tensor:
    """The sharded step's first half for several groups of one device in one op
    call: float64 ``[n, 3]`` sums (p², g², g·p — the last only where the group's
    ratio needs it) of each (local) param and grad, zeros for the params of
    ``lars=False`` groups. Each group is ``(params, grads, options)``."""
    params = [p for g in groups for p in g[0]]
    grads = [t for g in groups for t in g[1]]
    sizes = [len(g[0]) for g in groups]
    options = [o if isinstance(o, StepOptions) else StepOptions.of({"lr": 0.0, **o}) for _, _, o in groups]
    flags = [o.flags & (FLAG_BITS["lars"] | FLAG_BITS["norm_of_update"]) for o in options]
    return ops.fused_lars_norms(params, grads, sizes, flags)


def partition(lists: Sequence[Sequence[Any]], keys: Sequence[Hashable]) -> dict[Hashable, tuple[list[list], list[int]]]:
    """Splits parallel lists by ``keys`` (one per index), in the shape of torch's
    ``Optimizer._group_tensors_by_device_and_dtype(..., with_indices=True)``: per key
    (in order of first appearance), the sublists and the indices they came from. An
    empty list (no buffers) stays empty in every part; one part is the lists
    themselves (no copy)."""
    n = len(lists[0])
    order = list(dict.fromkeys(keys))
    if len(order) == 1:
        return {order[0]: ([list(lst) if not isinstance(lst, list) else lst for lst in lists], list(range(n)))}
    out: dict[Hashable, tuple[list[list], list[int]]] = {}
    for k in order:
        idx = [i for i in range(n) if keys[i] == k]
        out[k] = ([[lst[i] for i in idx] if len(lst) else [] for lst in lists], idx)
    return out


def take(lists: Sequence[Sequence[Any]], idx: list[int]) -> list[list]:
    """The entries ``idx`` of each of parallel lists (an empty list stays empty; all
    of them: the lists themselves)."""
    if len(idx) == len(lists[0]):
        return [lst if isinstance(lst, list) else list(lst) for lst in lists]
    return [[lst[i] for i in idx] if len(lst) else [] for lst in lists]
