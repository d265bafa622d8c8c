"""The LARS step as functions over lists of tensors.

Three implementations of one contract (``shared/spec/lars-semantics.md`` §1):

* :func:`_single_tensor_lars` — a per-parameter loop in plain PyTorch. It is the
  readable statement of the math and the oracle every test compares against.
* :func:`_multi_tensor_lars` — the same math on whole lists with
  ``torch._foreach_*``; it never synchronises with the host (no ``.item()``, no
  Python branch on a tensor value), so it can be captured in a CUDA graph.
* :func:`_fused_lars` — one call of the C++/CUDA op ``torch.ops.lars_cuda.fused_lars_``
  for the whole list (one device; the op buckets dtypes itself).

Per parameter ``p`` with gradient ``g`` (all arithmetic in float32)::

    if lars:  w = ||p||, n = ||g||
              r = eta*w / (n + wd*w + eps)   if w > 0 and n > 0 else 1
              r = clamp(r, 0, trust_clip)
              d = g + wd*p
    else:     r = 1, d = g                    (no weight decay: seed behaviour)
    d = clamp(d, -update_clip, update_clip)
    if momentum: buf = d (first step) | momentum*buf + d;  u = buf  (nesterov: d + momentum*buf)
    else:        u = d
    p = p - (lr*r) * u
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import ops

__all__ = ["lars"]

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
    foreach: bool = False,
    fused: bool = False,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """Apply one LARS step in place. ``momentum_buffer_list`` is updated in place
    with the (possibly new) buffers, as in ``torch.optim.sgd``."""
    if foreach and fused:
        raise ValueError("foreach and fused are mutually exclusive")
    if fused:
        fn = _fused_lars
    elif foreach:
        fn = _multi_tensor_lars
    else:
        fn = _single_tensor_lars
    if (grad_scale is not None or found_inf is not None) and not fused:
        raise ValueError("grad_scale/found_inf are only supported by the fused path")
    fn(
        params, grads, momentum_buffer_list,
        lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta, epsilon=epsilon,
        lars=lars, nesterov=nesterov, trust_clip=trust_clip, update_clip=update_clip,
        grad_scale=grad_scale, found_inf=found_inf,
    )


def _single_tensor_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, grad_scale, found_inf,
):
    for i, param in enumerate(params):
        # .float() is a no-op for float32 tensors, so p32 may alias param.
        p32 = param.float()
        g32 = grads[i].float()
        if lars:
            w = torch.linalg.vector_norm(p32)
            n = torch.linalg.vector_norm(g32)
            ratio = eeta * w / (n + weight_decay * w + epsilon)
            ratio = torch.where((w > 0) & (n > 0), ratio, torch.ones_like(ratio))
            if trust_clip is not None:
                ratio = ratio.clamp(0.0, trust_clip)
            d = g32.add(p32, alpha=weight_decay) if weight_decay != 0 else g32
        else:
            ratio = None
            d = g32
        if update_clip is not None:
            d = d.clamp(-update_clip, update_clip)

        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf32 = d.clone()
                buf = buf32.to(param.dtype) if param.dtype != torch.float32 else buf32
            else:
                buf32 = buf.float()
                buf32.mul_(momentum).add_(d)
                if buf.dtype != torch.float32:
                    buf.copy_(buf32)
            momentum_buffer_list[i] = buf
            u = d.add(buf32, alpha=momentum) if nesterov else buf32
        else:
            u = d

        step = lr * ratio if ratio is not None else lr
        if isinstance(step, Tensor):
            step = step.to(device=param.device, dtype=torch.float32)
        p32.sub_(u * step)
        if param.dtype != torch.float32:
            param.copy_(p32)


def _multi_tensor_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, grad_scale, found_inf,
):
    if not params:
        return
    device = params[0].device
    reduced = [p.dtype != torch.float32 for p in params]
    p32 = [p.float() for p in params]
    g32 = [g.float() for g in grads]

    if lars:
        w = torch.stack(torch._foreach_norm(p32, 2, dtype=torch.float32))
        n = torch.stack(torch._foreach_norm(g32, 2, dtype=torch.float32))
        ratio = eeta * w / (n + weight_decay * w + epsilon)
        ratio = torch.where((w > 0) & (n > 0), ratio, torch.ones_like(ratio))
        if trust_clip is not None:
            ratio = ratio.clamp(0.0, trust_clip)
        d = torch._foreach_add(g32, p32, alpha=weight_decay) if weight_decay != 0 else g32
    else:
        ratio = None
        d = g32
    if update_clip is not None:
        d = torch._foreach_clamp_min(d, -update_clip)
        torch._foreach_clamp_max_(d, update_clip)

    if momentum != 0:
        # A fresh buffer of zeros makes the first step exact: momentum*0 + d == d.
        for i, buf in enumerate(momentum_buffer_list):
            if buf is None:
                momentum_buffer_list[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
        bufs = momentum_buffer_list
        b32 = [b.float() for b in bufs]
        torch._foreach_mul_(b32, momentum)
        torch._foreach_add_(b32, d)
        for b, b_32 in zip(bufs, b32):
            if b.dtype != torch.float32:
                b.copy_(b_32)
        u = torch._foreach_add(d, b32, alpha=momentum) if nesterov else b32
    else:
        u = d

    if ratio is not None:
        lr_t = lr.to(device=device, dtype=torch.float32) if isinstance(lr, Tensor) else lr
        steps = (lr_t * ratio).neg().unbind()
        torch._foreach_add_(p32, torch._foreach_mul(u, steps))
    elif isinstance(lr, Tensor):
        neg_lr = lr.to(device=device, dtype=torch.float32).neg()
        torch._foreach_add_(p32, torch._foreach_mul(u, neg_lr))
    else:
        torch._foreach_add_(p32, u, alpha=-lr)
    for p, p_32, r in zip(params, p32, reduced):
        if r:
            p.copy_(p_32)


def _fused_lars(
    params, grads, momentum_buffer_list, *, lr, momentum, weight_decay, eeta, epsilon,
    lars, nesterov, trust_clip, update_clip, grad_scale, found_inf,
):
    if not params:
        return
    if momentum != 0:
        for i, buf in enumerate(momentum_buffer_list):
            if buf is None:
                momentum_buffer_list[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    # One call for the whole list: the op splits it by dtype and lays out grads
    # like their params itself, so this loop-free path keeps Python off the step.
    lr_float, lr_tensor = (0.0, lr) if isinstance(lr, Tensor) else (float(lr), None)
    ops.fused_lars_(
        params, grads, momentum_buffer_list if momentum != 0 else [], lr_float, lr_tensor, momentum,
        weight_decay, eeta, epsilon, lars, nesterov, trust_clip, update_clip, grad_scale, found_inf,
    )
