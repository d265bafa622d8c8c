"""The LARS step as functions over lists of tensors.

Three implementations of one contract (``docs/semantics.md``):

* :func:`_single_tensor_lars` — a per-parameter loop in plain PyTorch. It is the
  readable statement of the math and the oracle every test compares against.
* :func:`_multi_tensor_lars` — the same math on whole lists with
  ``torch._foreach_*``; it never synchronises with the host (no ``.item()``, no
  Python branch on a tensor value), so it can be captured in a CUDA graph.
* :func:`_fused_lars` — one call of the C++/CUDA op ``torch.ops.lars_cuda.fused_lars_``
  for the whole list (one device; the op buckets dtypes itself).

Per parameter ``p`` with gradient ``g`` (all arithmetic in float32, float64 for
float64 params; ``g = -g`` first when ``maximize``)::

    if lars:  w = ||p||, n = ||g||
              r = eta*w / (n + wd*w + eps)   if w > 0 and n > 0 else 1
              r = clamp(r, 0, trust_clip)
              d = g + wd*p
    else:     r = 1, d = g                    (no weight decay: seed behaviour)
    d = clamp(d, -update_clip, update_clip)
    if momentum: buf = d (first step) | momentum*buf + d;  u = buf  (nesterov: d + momentum*buf)
    else:        u = d
    p = p - (lr*r) * u

The other flavours (``docs/semantics.md``, the flavours; :mod:`lars_cuda.compat`)
are keyword switches of the same functions, all off by default:
``decay`` (weight decay in d; default: exactly when ``lars``),
``ratio_on_grad`` (d = r*d before momentum, then p -= lr*u: timm, LARC, SSL),
``norm_of_update`` (r = eta*||p|| / ||g + wd*p||, no eps: SSL),
``larc_clip`` (r = min(r/lr, 1)), ``zero_norm_skip`` (a zero norm means no
decay and no scaling: apex LARC) and ``dampening`` (buf = mu*buf + (1-dampening)*d
after a first step that copies d, as torch.optim.SGD).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import ops

__all__ = ["fused_lars_groups", "lars"]

LR = Union[float, Tensor]


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

    ``sums``: the sharded step's global ``(sum p², sum g²)`` per tensor (float64
    ``[n, 2]``, :mod:`lars_cuda.sharded`); the norms are then taken from it instead
    of from the (local) tensors."""
    lr = _scalar_lr(lr)
    if foreach and fused:
        raise ValueError("foreach and fused are mutually exclusive")
    if fused:
        fn = _fused_lars
    elif foreach:
        fn = _multi_tensor_lars
    else:
        fn = _single_tensor_lars
    check_amp_scaling_path(fused, grad_scale, found_inf)
    fn(
        params, grads, momentum_buffer_list,
        lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta, epsilon=epsilon,
        lars=lars, nesterov=nesterov, trust_clip=trust_clip, update_clip=update_clip, maximize=maximize,
        grad_scale=grad_scale, found_inf=found_inf, sums=sums, flavour=Flavour(
            decay=lars if decay is None else decay, ratio_on_grad=ratio_on_grad, norm_of_update=norm_of_update,
            larc_clip=larc_clip, zero_norm_skip=zero_norm_skip, dampening=dampening),
    )


class Flavour(NamedTuple):
    """The flavour switches (see the module docstring); the defaults are the seed's
    (with ``decay`` = ``lars``)."""

    decay: bool = True
    ratio_on_grad: bool = False
    norm_of_update: bool = False
    larc_clip: bool = False
    zero_norm_skip: bool = False
    dampening: float = 0.0


SEED = Flavour()


def check_amp_scaling_path(fused: bool, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """GradScaler's on-device scale and inf flag are consumed by the fused kernel
    only: the one error for every caller that would hand them to another path."""
    if (grad_scale is not None or found_inf is not None) and not fused:
        raise ValueError("grad_scale/found_inf are only supported by the fused path")


def _ratio_and_decay(w, n, dot, lr, *, weight_decay, eeta, epsilon, trust_clip, flavour: Flavour):
    """Trust ratios r and the weight decay each tensor applies, from its norms (1-D
    tensors, or 0-dim for one tensor): every flavour's rule (lars.h's tensor_step)."""
    wd = weight_decay if flavour.decay else 0.0
    if flavour.norm_of_update:
        # ||g + wd p||, from the norms and <g, p> (no epsilon: the SSL formula)
        u = (n * n + (2.0 * wd) * dot + (wd * wd) * (w * w)).clamp_min(0.0).sqrt()
        zero = ~((w > 0) & (u > 0))
        ratio = eeta * w / u
    else:
        zero = ~((w > 0) & (n > 0))
        ratio = eeta * w / (n + weight_decay * w + epsilon)
    ratio = torch.where(zero, torch.ones_like(ratio), ratio)
    if flavour.larc_clip:
        clipped = torch.minimum(ratio / lr, torch.ones_like(ratio))
        ratio = torch.where(zero, ratio, clipped) if flavour.zero_norm_skip else clipped
    if trust_clip is not None:
        ratio = ratio.clamp(0.0, trust_clip)
    # apex LARC: a zero norm means the tensor is neither decayed nor scaled
    skip = zero if flavour.zero_norm_skip else None
    return ratio, wd, skip


def _norms_from_sums(sums: Tensor, compute: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(||p||, ||g||, <g, p>) per tensor from the sharded step's global sums."""
    norms = sums[:, :2].sqrt().to(compute)
    return norms[:, 0], norms[:, 1], sums[:, 2].to(compute)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 tensors compute in float64; every other floating type in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _scalar_lr(lr: LR) -> LR:
    """torch.optim takes a one-element lr tensor of any shape ((), (1,), (1, 1));
    a 0-dim view of it broadcasts like a float (no copy, no host sync)."""
    if isinstance(lr, Tensor) and lr.dim() != 0:
        return lr.reshape(())
    return lr


def _single_tensor_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, maximize, grad_scale, found_inf, sums=None, flavour=SEED,
):
    for i, param in enumerate(params):
        # The compute type is float32 (float64 for float64 params); the conversion is a
        # no-op when the param already has it, so p32 may alias param.
        compute = _compute_dtype(param)
        p32 = param.to(compute)
        g32 = grads[i].to(compute)
        if maximize:
            g32 = -g32
        wd = weight_decay if flavour.decay else 0.0
        skip = None
        if lars:
            if sums is None:
                w = torch.linalg.vector_norm(p32)
                n = torch.linalg.vector_norm(g32)
                dot = torch.dot(g32.flatten(), p32.flatten()) if flavour.norm_of_update else None
            else:
                w, n, dot = (x[0] for x in _norms_from_sums(sums[i:i + 1], compute))
            ratio, wd, skip = _ratio_and_decay(w, n, dot, lr, weight_decay=weight_decay, eeta=eeta,
                                               epsilon=epsilon, trust_clip=trust_clip, flavour=flavour)
        else:
            ratio = None
        d = g32.add(p32, alpha=wd) if wd != 0 else g32
        if skip is not None:
            d = torch.where(skip, g32, d)
        if update_clip is not None:
            d = d.clamp(-update_clip, update_clip)
        if flavour.ratio_on_grad and ratio is not None:
            d = d.mul(ratio)
            ratio = None  # the step is lr alone

        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf32 = d.clone()
                buf = buf32.to(param.dtype) if param.dtype != compute else buf32
            else:
                buf32 = buf.to(compute)
                buf32.mul_(momentum).add_(d, alpha=1.0 - flavour.dampening)
                if buf.dtype != compute:
                    buf.copy_(buf32)
            momentum_buffer_list[i] = buf
            u = d.add(buf32, alpha=momentum) if nesterov else buf32
        else:
            u = d

        step = lr * ratio if ratio is not None else lr
        if isinstance(step, Tensor):
            step = step.to(device=param.device, dtype=compute)
        p32.sub_(u * step)
        if param.dtype != compute:
            param.copy_(p32)


def _multi_tensor_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, maximize, grad_scale, found_inf, sums=None, flavour=SEED,
):
    if not params:
        return
    wide = [p.dtype == torch.float64 for p in params]
    if any(wide) and not all(wide):
        # float64 params compute in float64, the others in float32: one call each.
        for part in (True, False):
            idx = [i for i, w in enumerate(wide) if w == part]
            bufs = [momentum_buffer_list[i] for i in idx] if momentum != 0 else []
            _multi_tensor_lars(
                [params[i] for i in idx], [grads[i] for i in idx], bufs, lr=lr, momentum=momentum,
                weight_decay=weight_decay, eeta=eeta, epsilon=epsilon, lars=lars, nesterov=nesterov,
                trust_clip=trust_clip, update_clip=update_clip, maximize=maximize, grad_scale=None, found_inf=None,
                sums=sums[idx] if sums is not None else None, flavour=flavour,
            )
            if momentum != 0:  # the part's new buffers, back into the caller's list
                for j, i in enumerate(idx):
                    momentum_buffer_list[i] = bufs[j]
        return
    device = params[0].device
    compute = torch.float64 if wide[0] else torch.float32
    reduced = [p.dtype != compute for p in params]
    p32 = [p.to(compute) for p in params]
    g32 = [g.to(compute) for g in grads]
    if maximize:
        g32 = torch._foreach_neg(g32)

    wd = weight_decay if flavour.decay else 0.0
    skip = None
    if lars:
        if sums is None:
            w = torch.stack(torch._foreach_norm(p32, 2, dtype=compute))
            n = torch.stack(torch._foreach_norm(g32, 2, dtype=compute))
            dot = torch.stack([torch.dot(g.flatten(), p.flatten()) for g, p in zip(g32, p32)]) \
                if flavour.norm_of_update else None
        else:
            w, n, dot = _norms_from_sums(sums, compute)
        ratio, wd, skip = _ratio_and_decay(w, n, dot, lr, weight_decay=weight_decay, eeta=eeta, epsilon=epsilon,
                                           trust_clip=trust_clip, flavour=flavour)
    else:
        ratio = None
    d = torch._foreach_add(g32, p32, alpha=wd) if wd != 0 else g32
    if skip is not None:  # apex LARC: zero-norm tensors keep their plain gradient
        d = [torch.where(z, g, x) for z, g, x in zip(skip.unbind(), g32, d)]
    if update_clip is not None:
        d = torch._foreach_clamp_min(d, -update_clip)
        torch._foreach_clamp_max_(d, update_clip)
    if flavour.ratio_on_grad and ratio is not None:
        d = torch._foreach_mul(d, ratio.unbind())
        ratio = None  # the step is lr alone

    if momentum != 0:
        fresh = [i for i, buf in enumerate(momentum_buffer_list) if buf is None]
        # A fresh buffer of zeros makes the first step exact: momentum*0 + d == d
        # (with dampening the first step copies d, as torch.optim.SGD; see below).
        for i in fresh:
            momentum_buffer_list[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
        bufs = momentum_buffer_list
        b32 = [b.to(compute) for b in bufs]
        torch._foreach_mul_(b32, momentum)
        torch._foreach_add_(b32, d, alpha=1.0 - flavour.dampening)
        if flavour.dampening != 0:
            for i in fresh:
                b32[i].copy_(d[i])
        for b, b_32 in zip(bufs, b32):
            if b.dtype != compute:
                b.copy_(b_32)
        u = torch._foreach_add(d, b32, alpha=momentum) if nesterov else b32
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


def _fused_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, maximize, grad_scale, found_inf, sums=None, flavour=SEED,
):
    fused_lars_groups(
        [(params, grads, momentum_buffer_list, dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta, epsilon=epsilon, lars=lars,
            nesterov=nesterov, trust_clip=trust_clip, update_clip=update_clip, maximize=maximize,
            **flavour._asdict()))],
        grad_scale=grad_scale, found_inf=found_inf, sums=sums,
    )


_NO_CLIP = float("nan")  # the op's encoding of a disabled clip


def _flag_bits(o: dict) -> int:
    """A group's switches as the op's flag bits (csrc/lars_op.h)."""
    lars = bool(o["lars"])
    decay = o.get("decay")
    return (int(lars) | 2 * int(o["nesterov"]) | 4 * int(o["maximize"]) | 8 * int(lars if decay is None else decay)
            | 16 * int(o.get("ratio_on_grad", False)) | 32 * int(o.get("norm_of_update", False))
            | 64 * int(o.get("larc_clip", False)) | 128 * int(o.get("zero_norm_skip", False)))


def _split_fresh_dampened(groups, sums):
    """With dampening, a fresh buffer's first step copies d (torch.optim.SGD): its
    tensors go into a group of their own with dampening 0 (buffers are zeros, so
    momentum*0 + d == d). Returns the groups and the sums rows in their new order."""
    out, order, at = [], [], 0
    for params, grads, bufs, o in groups:
        n = len(params)
        fresh = [i for i, b in enumerate(bufs) if b is None] if o["momentum"] != 0 and o.get("dampening", 0) else []
        if fresh:
            for i in fresh:
                bufs[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
            fresh_set = set(fresh)
            old = [i for i in range(n) if i not in fresh_set]
            for idx, opts in ((fresh, {**o, "dampening": 0.0}), (old, o)):
                if idx:
                    out.append(([params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx], opts))
                    order += [at + i for i in idx]
        else:
            out.append((params, grads, bufs, o))
            order += range(at, at + n)
        at += n
    if sums is not None and order != list(range(at)):
        sums = sums[torch.tensor(order, device=sums.device)].contiguous()
    return out, sums


def fused_lars_groups(
    groups: list[tuple[list[Tensor], list[Tensor], list[Optional[Tensor]], dict]],
    *,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    sums: Optional[Tensor] = None,
) -> None:
    """Several param groups of one device in ONE call of the op
    ``torch.ops.lars_cuda.fused_lars_groups_``, which checks every group before it
    writes any. Each group is ``(params, grads, momentum_buffer_list, options)`` with
    the keyword arguments of :func:`lars` as options; missing buffers are created
    (zeros) and filled into ``momentum_buffer_list``. With ``sums`` (the sharded
    step's global sums, one row per param of all groups in order) the op
    ``fused_lars_apply_`` runs instead, taking its norms from them."""
    groups, sums = _split_fresh_dampened(groups, sums)
    sizes: list[int] = []
    hyper: list[float] = []
    flags: list[int] = []
    lr_tensors: list[Optional[Tensor]] = []
    for group_params, _, group_bufs, o in groups:
        if o["momentum"] != 0:
            for i, buf in enumerate(group_bufs):
                if buf is None:
                    group_bufs[i] = torch.zeros_like(group_params[i], memory_format=torch.preserve_format)
        sizes.append(len(group_params))
        lr = o["lr"]
        lr_tensors.append(lr if isinstance(lr, Tensor) else None)
        hyper += [
            0.0 if isinstance(lr, Tensor) else float(lr), o["momentum"], o["weight_decay"], o["eeta"], o["epsilon"],
            _NO_CLIP if o["trust_clip"] is None else o["trust_clip"],
            _NO_CLIP if o["update_clip"] is None else o["update_clip"],
            float(o.get("dampening", 0.0)),
        ]
        flags.append(_flag_bits(o))
    # The flat lists (one group, the common case: its own lists, no copy).
    if len(groups) == 1:
        params, grads, bufs, o = groups[0]
        bufs = bufs if o["momentum"] != 0 else []
    else:
        params = [p for g in groups for p in g[0]]
        grads = [p for g in groups for p in g[1]]
        bufs = [b for g in groups if g[3]["momentum"] != 0 for b in g[2]]
    if params and sums is not None:
        ops.fused_lars_apply_(params, grads, bufs, sizes, hyper, flags, lr_tensors, sums, grad_scale, found_inf)
    elif params:
        ops.fused_lars_groups_(params, grads, bufs, sizes, hyper, flags, lr_tensors, grad_scale, found_inf)


def fused_lars_norms(groups: list[tuple[list[Tensor], list[Tensor], dict]]) -> Tensor:
    """The sharded step's first half for several groups of one device in one op
    call: float64 ``[n, 3]`` sums (p², g², g·p — the last only where the group's
    ratio needs it) of each (local) param and grad, zeros for the params of
    ``lars=False`` groups. Each group is ``(params, grads, options)``."""
    params = [p for g in groups for p in g[0]]
    grads = [t for g in groups for t in g[1]]
    sizes = [len(g[0]) for g in groups]
    flags = [int(g[2]["lars"]) | 32 * int(g[2].get("norm_of_update", False)) for g in groups]
    return ops.fused_lars_norms(params, grads, sizes, flags)
