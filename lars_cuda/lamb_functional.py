"""The LAMB step as functions over lists of tensors, shaped as ``torch.optim.adam``'s
functional core: :func:`lamb` and two implementations of one contract (the math:
:class:`lars_cuda.Lamb`'s docstring; ``docs/semantics.md``, "LAMB"):

* :func:`single_tensor_lamb` — a per-parameter loop in plain PyTorch, the
  readable statement of the math;
* :func:`multi_tensor_lamb` — the same math on whole lists with
  ``torch._foreach_*``, with no host synchronisation on the tensors' device;
* :func:`fused_lamb` — every group of a step in ONE call of the compiled kernel
  (``torch.ops.lars_cuda.fused_lamb_groups_``; the CPU's so far).

and :func:`global_clip_factor`, the global gradient clipping both take (computed
once per step over every gradient of the optimizer, as timm and apex do).

Every path computes in float32 for float32/float16/bfloat16 tensors and in
float64 for float64 ones (``lars_cuda.options.compute_dtype``); the moments are
kept in the param's dtype, as ``torch.optim.AdamW`` keeps them.
"""

from __future__ import annotations

from typing import Generator, Optional, Sequence, Union

import torch
from torch import Tensor

from . import ops
from .functional import partition
from .lamb_options import LAMB_SUM_FIELDS, LambOptions
from .options import LR, compute_dtype
from .sharded import local_sums

__all__ = ["bias_corrections", "clip_from_sum_of_squares", "finish", "fused_lamb", "fused_lamb_halves",
           "global_clip_factor", "lamb", "lamb_halves", "multi_tensor_lamb", "single_tensor_lamb"]

Step = Union[int, float, Tensor]


def global_clip_factor(grads: Sequence[Tensor], max_grad_norm: Optional[float]) -> Optional[Tensor]:
    """``c = max(1, ||(g1, g2, ...)|| / max_grad_norm)`` over every gradient, a 0-dim
    tensor on the first gradient's device (float64 if any gradient is float64, else
    float32), or ``None`` when clipping is off or there is no gradient. No host sync."""
    if max_grad_norm is None or not grads:
        return None
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    norms = []
    for (part,), _ in partition([list(grads)], [g.device for g in grads]).values():
        norms += [n.to(device) for n in torch._foreach_norm(part, 2, dtype=dtype)]
    total = torch.linalg.vector_norm(torch.stack(norms))
    return (total / max_grad_norm).clamp_min(1.0)


def clip_from_sum_of_squares(sum_of_squares: Tensor, max_grad_norm: float, dtype: torch.dtype) -> Tensor:
    """The clip factor from the global sum of g² (the sharded step's, float64)."""
    return (sum_of_squares.sqrt().to(dtype) / max_grad_norm).clamp_min(1.0)


def bias_corrections(o: LambOptions, step: Step) -> tuple[Union[float, Tensor], Union[float, Tensor]]:
    """``(1 - β1^t, 1 - β2^t)`` for step t (counted from 1), or ``(1, 1)`` without
    bias correction. On these paths (loop, foreach) ``Lamb`` keeps the step counts on
    the CPU (as torch.optim.AdamW does off its fused and capturable paths), so reading
    one is not a device sync; under ``torch.compile``
    a tensor count stays a tensor (as AdamW's ``_get_value``), so that the step
    traces as one graph."""
    if not o.bias_correction:
        return 1.0, 1.0
    beta1, beta2 = o.betas
    if isinstance(step, Tensor) and torch.compiler.is_compiling():
        return 1.0 - torch.pow(beta1, step), 1.0 - torch.pow(beta2, step)
    t = float(step)
    return 1.0 - beta1 ** t, 1.0 - beta2 ** t


def lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: Sequence[Step],
    *,
    lr: LR,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    decay_mode: str = "update",
    bias_correction: bool = True,
    grad_averaging: bool = True,
    trust_clip: bool = False,
    always_adapt: bool = False,
    caution: bool = False,
    max_lr: Optional[float] = None,
    maximize: bool = False,
    max_grad_norm: Optional[float] = None,
    clip: Optional[Tensor] = None,
    foreach: bool = False,
    fused: bool = False,
) -> None:
    """One LAMB step in place. ``state_steps``: each param's step count after this
    step (the caller advances them). The global clip factor is ``clip`` when given
    (the optimizer computes it once over all its groups), else computed here from
    ``grads`` and ``max_grad_norm``. ``fused``: the compiled kernel (float32/float16/
    bfloat16 tensors of one device, state_steps as tensors or numbers)."""
    options = LambOptions.of(locals())
    if fused:
        fused_lamb([([params, grads, exp_avgs, exp_avg_sqs, list(state_steps)], options)],
                   max_grad_norm=max_grad_norm if clip is None else None, clip=clip)
        return
    if clip is None:
        clip = global_clip_factor(grads, max_grad_norm)
    step = multi_tensor_lamb if foreach else single_tensor_lamb
    step(params, grads, exp_avgs, exp_avg_sqs, list(state_steps), options, clip=clip)


def fused_lamb(groups: Sequence[tuple[list, LambOptions]], *, max_grad_norm: Optional[float] = None,
               clip: Optional[Tensor] = None, grad_scale: Optional[Tensor] = None,
               found_inf: Optional[Tensor] = None) -> None:
    """Several groups' steps, of one device, in ONE call of the compiled kernel. Each
    group: ([params, grads, exp_avgs, exp_avg_sqs, steps], options), steps counted
    after this step (a number becomes a float32 CPU tensor). The kernel computes the
    global clip from ``max_grad_norm`` over every grad of the call; a ``clip`` computed
    elsewhere (over more grads than these) divides the grads as a scale does, so it
    cannot come with ``grad_scale``. ``grad_scale``/``found_inf``: a ``GradScaler``'s."""
    if clip is not None and (grad_scale is not None or max_grad_norm is not None):
        raise ValueError("fused_lamb: a precomputed clip comes without grad_scale and max_grad_norm")
    ops.fused_lamb_groups_(*_packed(groups), max_grad_norm, clip if clip is not None else grad_scale, found_inf)


def _packed(groups: Sequence[tuple[list, LambOptions]]) -> tuple:
    """The LAMB ops' arguments for several groups: the five lists of every group in
    one, then group_sizes, hyper, flags and lr_tensors (steps as the ops take them)."""
    flat: list[list] = [[], [], [], [], []]
    sizes, hyper, flags, lrs = [], [], [], []
    for lists, o in groups:
        for acc, xs in zip(flat, lists):
            acc += xs
        sizes.append(len(lists[0]))
        hyper += o.hyper_row()
        flags.append(o.flags)
        lrs.append(o.lr_tensor)
    flat[4] = _step_tensors(flat[4])
    return (*flat, sizes, hyper, flags, lrs)


def _step_tensors(steps: list[Step]) -> list[Tensor]:
    """The ops' step counts: tensors as they are, a number as a float32 CPU tensor."""
    return [s if isinstance(s, Tensor) else torch.tensor(float(s), dtype=torch.float32) for s in steps]


def fused_lamb_halves(groups: Sequence[tuple[list, LambOptions]], clip: Optional[Tensor]) -> Halves:
    """The kernel's step of several groups' shards (local tensors of one device, lists
    as ``fused_lamb``'s) as two halves: the local rows of ``fused_lamb_norms`` (ONE op
    call for every group, nothing written), then ``fused_lamb_apply_`` with the global
    rows (one op call). ``clip``, the global clip, divides the grads as a scale does.
    Where no tensor needs a sum, one call and no yield."""
    args = _packed(groups)
    params = args[0]
    if not params:
        return
    if any(o.adapts or o.caution for _, o in groups):
        rows = yield ops.fused_lamb_norms(*args, clip)
    else:
        rows = torch.zeros((len(params), len(LAMB_SUM_FIELDS)), dtype=torch.float64, device=params[0].device)
    ops.fused_lamb_apply_(*args, rows, clip)


def _trust_ratio(w: Tensor, n: Tensor, o: LambOptions) -> Tensor:
    """``||p|| / ||u||`` where both are non-zero, else 1; at most 1 with trust_clip (LAMBC)."""
    ratio = torch.where((w > 0) & (n > 0), w / n, torch.ones_like(w))
    return ratio.clamp_max(1.0) if o.trust_clip else ratio


def _decoupled_scale(o: LambOptions) -> LR:
    """The factor of a decoupled decay ``p -= s*wd*p``: lr, or lr²/max_lr (timm's corrected decay)."""
    return o.lr if o.max_lr is None else o.lr * o.lr / o.max_lr


def _on(x: LR, device: torch.device, dtype: torch.dtype) -> LR:
    return x.to(device=device, dtype=dtype) if isinstance(x, Tensor) else x


# A step of one set of tensors runs as a generator in two halves around the norms of
# the adapting tensors: plain tensors take them from themselves (the generator never
# yields); DTensor shards (``sharded=True``) yield their local sums, float64 rows
# (``LAMB_SUM_FIELDS``: ``_local_rows``, the layout of the kernel's
# ``fused_lamb_norms`` too) as ``lars_cuda.sharded`` reduces them, and
# receive the global rows, so that one all-reduce serves every group of a step.
Halves = Generator[Tensor, Tensor, None]


def single_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps: list[Step], o: LambOptions, *,
                       clip: Optional[Tensor], ratios_out: Optional[list] = None) -> None:
    """The reference loop: the math, one parameter at a time. ``ratios_out``: a list
    the trust ratio of each adapting param is appended to (``Lamb.trust_ratios``)."""
    finish(_single_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps, o, clip, ratios_out, sharded=False))


def multi_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps: list[Step], o: LambOptions, *,
                      clip: Optional[Tensor]) -> None:
    """The same math on whole lists (torch._foreach_*), no host sync on the tensors'
    device. One device per call (the optimizer splits the rest)."""
    if not params:
        return
    parts = partition([params, grads, exp_avgs, exp_avg_sqs, steps], [compute_dtype(p.dtype) for p in params])
    for lists, _ in parts.values():  # float64 params compute in float64, the others in float32
        finish(_multi_tensor_lamb(*lists, o, clip, sharded=False))


def lamb_halves(path: str, params, grads, exp_avgs, exp_avg_sqs, steps: list[Step], o: LambOptions, *,
                clip: Optional[Tensor], sharded: bool, ratios_out: Optional[list] = None) -> Halves:
    """The step of one set of tensors (one compute dtype for ``foreach``) as its two
    halves (see ``Halves``): ``path`` is "foreach" or "single" (which alone takes
    ``ratios_out``); the kernel's halves take every fused group at once
    (``fused_lamb_halves``)."""
    if path == "foreach":
        return _multi_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps, o, clip, sharded=sharded)
    return _single_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps, o, clip, ratios_out, sharded=sharded)


def finish(halves: Halves, global_rows: Optional[Tensor] = None) -> Optional[Tensor]:
    """Runs a step's halves: to the end for plain tensors; for shards, to the yield
    (returns the local rows) or, given ``global_rows``, from there to the end."""
    try:
        if global_rows is None:
            return next(halves)
        halves.send(global_rows)
    except StopIteration:
        pass
    return None


def _moments_and_update(p: Tensor, g: Tensor, m_state: Tensor, v_state: Tensor, step: Step, o: LambOptions,
                        clip: Optional[Tensor], defer_caution: bool) -> tuple[Tensor, Optional[Tensor]]:
    """One tensor's Adam half, in its compute dtype ``p.dtype``: advances the moments
    (written back into the states) and returns the update u (decay and caution in)
    and None; a decoupled decay is applied to ``p`` (a compute-dtype copy or the param
    itself). ``defer_caution`` (a shard: the mask's mean is a global one) returns the
    masked u without its scale and without a decay added to it, and the mask
    (:func:`_finish_update` completes it)."""
    compute, device = p.dtype, p.device
    beta1, beta2 = o.betas
    wd = o.weight_decay
    g = g.to(compute)
    if o.maximize:
        g = -g
    if clip is not None:
        g = g / clip.to(device=device, dtype=compute)
    if o.decay_mode == "grad" and wd != 0:
        g = g.add(p, alpha=wd)
    m, v = m_state.to(compute), v_state.to(compute)
    m.mul_(beta1).add_(g, alpha=1.0 - beta1 if o.grad_averaging else 1.0)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    for state, state32 in ((m_state, m), (v_state, v)):
        if state.dtype != compute:
            state.copy_(state32)
    bc1, bc2 = (b.to(device=device, dtype=compute) if isinstance(b, Tensor) else b
                for b in bias_corrections(o, step))
    u = (m / bc1) / ((v / bc2).sqrt() + o.eps)
    mask = None
    if o.caution:
        mask = (u * g > 0).to(compute)
        u = u * mask if defer_caution else u * (mask / mask.mean().clamp_min(1e-3))
    if wd != 0 and o.decay_mode == "decoupled":
        p.sub_(p * (_on(_decoupled_scale(o), device, compute) * wd))
    if defer_caution and o.caution:
        return u, mask
    if wd != 0 and o.decay_mode == "update":
        u = u.add(p, alpha=wd)
    return u, None


def _local_rows(ps: list[Tensor], us: list[Tensor], masks: list[Optional[Tensor]]) -> Tensor:
    """A shard's float64 rows, one per tensor (``LAMB_SUM_FIELDS``: sum p², sum u², sum
    u·p, mask count, numel), the last three only where caution deferred its scale
    (``masks[i]`` given)."""
    rows = torch.zeros((len(ps), len(LAMB_SUM_FIELDS)), dtype=torch.float64, device=ps[0].device)
    rows[:, :3] = local_sums(ps, us, foreach=True, dot=any(m is not None for m in masks))
    for i, mask in enumerate(masks):
        if mask is not None:
            rows[i, 3] = mask.sum()
            rows[i, 4] = mask.numel()
    return rows


def _finish_update(p: Tensor, u: Tensor, mask: Optional[Tensor], row: Tensor,
                   o: LambOptions) -> tuple[Tensor, Tensor, Tensor]:
    """A shard's update u and the global ``(||p||, ||u||)`` from its global row.
    Where caution deferred: u = s*u_masked (+ wd*p), s = 1 / max(count/numel, 1e-3),
    and ||u||² = s²·Σu_m² (+ 2·s·wd·Σu_m·p + wd²·Σp²): the same numbers, from sums."""
    compute = p.dtype
    if mask is None:
        w, n = row[:2].sqrt().to(compute).unbind()
        return u, w, n
    s = (row[3] / row[4]).clamp_min(1e-3).reciprocal()
    u = u * s.to(compute)
    n2 = s * s * row[1]
    if o.weight_decay != 0 and o.decay_mode == "update":
        u = u.add(p, alpha=o.weight_decay)
        n2 = n2 + 2.0 * s * o.weight_decay * row[2] + o.weight_decay ** 2 * row[0]
    return u, row[0].sqrt().to(compute), n2.clamp_min(0.0).sqrt().to(compute)


def _single_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps, o: LambOptions, clip, ratios_out,
                        sharded: bool) -> Halves:
    pending = []  # (param, p, u, mask) of shards waiting for their global sums
    defer = sharded and o.caution
    for i, param in enumerate(params):
        compute = compute_dtype(param.dtype)
        p = param.to(compute)  # (param itself when it is already in the compute dtype)
        u, mask = _moments_and_update(p, grads[i], exp_avgs[i], exp_avg_sqs[i], steps[i], o, clip, defer)
        if sharded and (o.adapts or defer):
            pending.append((param, p, u, mask))
        elif not o.adapts:
            _apply(param, p, u, _on(o.lr, param.device, compute))
        else:
            ratio = _trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u), o)
            if ratios_out is not None:
                ratios_out.append(ratio)
            _apply(param, p, u, _on(o.lr, param.device, compute) * ratio)
    if pending:
        rows = yield _local_rows(*([entry[k] for entry in pending] for k in (1, 2, 3)))
        for (param, p, u, mask), row in zip(pending, rows):
            u, w, n = _finish_update(p, u, mask, row, o)
            lr = _on(o.lr, param.device, p.dtype)
            if o.adapts:
                ratio = _trust_ratio(w, n, o)
                if ratios_out is not None:
                    ratios_out.append(ratio)
                lr = lr * ratio
            _apply(param, p, u, lr)


def _apply(param: Tensor, p: Tensor, u: Tensor, step: LR) -> None:
    p.sub_(u * step)
    if param.dtype != p.dtype:
        param.copy_(p)


def _multi_tensor_lamb(params, grads, exp_avgs, exp_avg_sqs, steps, o: LambOptions, clip, sharded: bool) -> Halves:
    """One compute dtype, one device."""
    if not params:
        return
    beta1, beta2 = o.betas
    wd = o.weight_decay
    device = params[0].device
    compute = compute_dtype(params[0].dtype)
    p32 = [p.to(compute) for p in params]
    g32 = [g.to(compute) for g in grads]
    if o.maximize:
        g32 = torch._foreach_neg(g32)
    if clip is not None:
        g32 = torch._foreach_div(g32, clip.to(device=device, dtype=compute))
    if o.decay_mode == "grad" and wd != 0:
        g32 = torch._foreach_add(g32, p32, alpha=wd)
    m32 = [m.to(compute) for m in exp_avgs]
    v32 = [v.to(compute) for v in exp_avg_sqs]
    torch._foreach_mul_(m32, beta1)
    torch._foreach_add_(m32, g32, alpha=1.0 - beta1 if o.grad_averaging else 1.0)
    torch._foreach_mul_(v32, beta2)
    torch._foreach_addcmul_(v32, g32, g32, value=1.0 - beta2)
    for states, states32 in ((exp_avgs, m32), (exp_avg_sqs, v32)):
        for state, state32 in zip(states, states32):
            if state.dtype != compute:
                state.copy_(state32)
    bc1, bc2 = zip(*(bias_corrections(o, s) for s in steps))
    if isinstance(bc1[0], Tensor):  # (under torch.compile: one division per tensor, fused by inductor)
        u = [m / b.to(device=device, dtype=compute) for m, b in zip(m32, bc1)]
        denom = [(v / b.to(device=device, dtype=compute)).sqrt() for v, b in zip(v32, bc2)]
    else:
        u = torch._foreach_div(m32, list(bc1))
        denom = torch._foreach_sqrt(torch._foreach_div(v32, list(bc2)))
    torch._foreach_add_(denom, o.eps)
    torch._foreach_div_(u, denom)
    defer = sharded and o.caution
    masks: list[Optional[Tensor]] = [None] * len(params)
    if o.caution:
        masks = [(x * g > 0).to(compute) for x, g in zip(u, g32)]
        # (deferred: the sharded half divides by the global mean, and _local_rows counts the masks)
        u = torch._foreach_mul(u, masks if defer else [mask / mask.mean().clamp_min(1e-3) for mask in masks])
    if wd != 0 and o.decay_mode == "decoupled":
        scale = _on(_decoupled_scale(o), device, compute)
        torch._foreach_sub_(p32, torch._foreach_mul(p32, scale * wd))
    if wd != 0 and o.decay_mode == "update" and not defer:
        torch._foreach_add_(u, p32, alpha=wd)
    lr = _on(o.lr, device, compute)
    if sharded and (o.adapts or defer):
        rows = yield _local_rows(p32, u, masks)
        u, w, n = (list(x) for x in zip(*(_finish_update(p, x, mask, row, o)
                                          for p, x, mask, row in zip(p32, u, masks, rows))))
        w, n = torch.stack(w), torch.stack(n)
    elif o.adapts:
        w = torch.stack(torch._foreach_norm(p32, 2, dtype=compute))
        n = torch.stack(torch._foreach_norm(u, 2, dtype=compute))
    if o.adapts:
        torch._foreach_sub_(p32, torch._foreach_mul(u, (lr * _trust_ratio(w, n, o)).unbind()))
    else:
        torch._foreach_sub_(p32, torch._foreach_mul(u, lr))
    for param, p in zip(params, p32):
        if param.dtype != compute:
            param.copy_(p)
