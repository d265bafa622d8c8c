"""``Lars``: the optimizer class, as thin as ``torch.optim.SGD``'s: options and
state in, a plan of the step (``lars_cuda.plan``), the plan run
(``lars_cuda.execute``). Checks live in ``lars_cuda.validation``, the math in
``lars_cuda.functional``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor

from .execute import run_plans
from .options import KERNEL_DTYPES, LARS_OPTIONS
from .plan import choose_path, plan_step
from .schema_optimizer import SchemaOptimizer
from .trust_ratios import trust_ratios
from .validation import UnsupportedTensorError, check_group_options, check_grad_scale

__all__ = ["Lars", "UnsupportedTensorError"]


class Lars(SchemaOptimizer):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017), as the
    seed project computes it. The math of every path (the one statement of it in
    code; ``docs/semantics.md`` states it for readers, with the flavours' sources):

    Per parameter ``p`` with gradient ``g`` (all arithmetic in float32 for
    float32/float16/bfloat16 tensors, float64 for float64 ones, rounded once;
    ``g = -g`` first when ``maximize``)::

        if lars:  w = ||p||, n = ||g||
                  r = eeta*w / (n + wd*w + eps)   if w > 0 and n > 0 else 1
                  r = clamp(r, 0, trust_clip)
                  d = g + wd*p
        else:     r = 1, d = g                     (no weight decay: the seed)
        d = clamp(d, -update_clip, update_clip)
        if momentum: buf = d (first step) | momentum*buf + d;  u = buf  (nesterov: d + momentum*buf)
        else:        u = d
        p = p - (lr*r) * u

    The other flavours (``docs/semantics.md``; :mod:`lars_cuda.compat`) are switches
    of the same step, all off by default: ``decay`` (weight decay in d; default:
    exactly when ``lars``), ``ratio_on_grad`` (d = r*d before momentum, then
    p -= lr*u: timm, LARC, SSL), ``norm_of_update`` (r = eeta*||p|| / ||g + wd*p||,
    no eps: SSL), ``larc_clip`` (r = min(r/lr, 1)), ``zero_norm_skip`` (a zero norm
    means no decay and no scaling: apex LARC), ``dampening`` (buf = momentum*buf +
    (1-dampening)*d after a first step that copies d, as torch.optim.SGD), and per
    group ``always_adapt=False`` (timm: no adaptation where weight_decay == 0),
    ``decay_filter`` / ``adaptation_filter`` (SSL: 1-D params without decay /
    adaptation).

    Args:
        params: parameters or parameter groups (groups may set ``lars``, and override
            any keyword below).
        lr: learning rate (required unless every group brings its own), a float or a
            one-element tensor (updated in place by schedulers; a CUDA tensor keeps the
            fused/foreach step free of host syncs).
        momentum: :math:`\mu` (``dampening``: below). 0 keeps no state.
        eeta: trust coefficient :math:`\eta`, in (0, 1].
        weight_decay: :math:`\beta`; enters the trust ratio and ``d`` when ``lars=True``.
        epsilon: :math:`\epsilon` in the trust ratio's denominator.
        nesterov: Nesterov momentum.
        trust_clip: upper bound of the trust ratio (seed: 50); ``None`` disables.
        update_clip: element-wise bound of ``d`` (seed: 10); ``None`` disables.
        maximize: maximise the objective (``g`` is replaced by ``-g``), as in ``torch.optim``.
        dampening, decay, ratio_on_grad, norm_of_update, larc_clip, zero_norm_skip,
        always_adapt, decay_filter, adaptation_filter: the switches of the other LARS
            flavours (timm, apex LARC, the self-supervised repos), group options like
            the rest; :mod:`lars_cuda.compat` sets them from each original's own
            arguments, and ``lars_cuda.functional`` documents them. The defaults are
            the seed's: no dampening, weight decay exactly where LARS adapts
            (``decay=None``), the ratio outside the buffer, ``||g|| + wd*||p|| + eps``
            in the denominator, adaptation whatever the weight decay
            (``always_adapt=True``), no filters (``decay_filter`` /
            ``adaptation_filter`` exclude 1-D params from decay / adaptation).
        foreach: ``True`` for the ``torch._foreach_*`` path (no host synchronisation).
        fused: ``True`` for the compiled multi-tensor kernel (CPU and CUDA), which also
            takes ``GradScaler``'s scale and inf flag on the device.

    Paths are chosen as ``torch.optim.SGD`` chooses them: ``fused=True`` runs the kernel,
    ``foreach=True`` the ``torch._foreach_*`` path, ``foreach=False`` (with ``fused`` not
    ``True``) the per-parameter reference loop. With both ``None`` (the default) a group
    runs the kernel where it is built for the group's device and dtypes, else foreach
    (one device) or the loop. All groups that run the kernel are stepped by ONE op call,
    which checks every group before it writes any: a failed step changes nothing.

    The state key ``momentum_buffer`` has ``torch.optim.SGD``'s meaning (lr and r
    stay outside the buffer), so an SGD state dict loads into ``Lars``.
    """

    def __init__(
        self,
        params: Iterable[Union[Tensor, dict[str, Any]]],
        lr: Optional[Union[float, Tensor]] = None,
        momentum: float = 0,
        eeta: float = 1e-3,
        weight_decay: float = 0,
        epsilon: float = 0.0,
        *,
        nesterov: bool = False,
        trust_clip: Optional[float] = 50.0,
        update_clip: Optional[float] = 10.0,
        maximize: bool = False,
        dampening: float = 0.0,
        decay: Optional[bool] = None,
        ratio_on_grad: bool = False,
        norm_of_update: bool = False,
        larc_clip: bool = False,
        zero_norm_skip: bool = False,
        always_adapt: bool = True,
        decay_filter: bool = False,
        adaptation_filter: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        # Every option is an argument here but ``lars`` (True; a group may turn it off).
        arguments = locals()
        defaults = {name: True if name == "lars" else arguments[name] for name in LARS_OPTIONS}
        # add_param_group (called by Optimizer.__init__ for every group) checks each
        # group's options merged with these defaults.
        super().__init__(params, defaults)

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Lars's default group options (its signature's, and ``lars=True``)."""
        signature = inspect.signature(Lars.__init__).parameters
        return {name: True if name == "lars" else signature[name].default for name in LARS_OPTIONS}

    # ---- the schema of param groups and state (lars_cuda.compat speaks the originals') ----
    _OPTIONS: tuple[str, ...] = LARS_OPTIONS  # the options a param group of this class holds
    _BUFFER_KEY = "momentum_buffer"
    _NAME = "Lars"

    def _check_options(self, group: dict[str, Any]) -> None:
        """Raises ValueError/TypeError naming the first invalid option of a group."""
        check_group_options(group, read_tensor_lr=True)

    def _kernel_groups(self) -> list[dict[str, Any]]:
        """The param groups in Lars's own options, which the step reads: for Lars, the
        groups themselves; a compat class derives them from its original's options
        (once per group and step, so a scheduler's change takes effect at once)."""
        return self.param_groups

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler then hands us grad_scale/found_inf instead of unscaling on the host;
        # only the fused kernel consumes them, so every tensor must take that path.
        for group in self._kernel_groups():
            params = [p for p in group["params"] if p.grad is not None]
            dtypes = {p.dtype for p in params}
            if choose_path(group, params, dtypes) != "fused" or not dtypes <= KERNEL_DTYPES:
                return False
        return True

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)
        # Check everything before touching anything: a bad input leaves the state as it was.
        planned = plan_step(self._kernel_groups(), self.state, self._BUFFER_KEY, grad_scale, found_inf)
        run_plans(planned.plans, grad_scale, found_inf)
        for param, buf in planned.new_buffers:
            self.state[param][self._BUFFER_KEY] = buf
        # The scale the kernel divided the grads by (GradScaler leaves the grads scaled
        # on this path); trust_ratios(grad_scale=...) needs it to read them afterwards.
        self._last_grad_scale = grad_scale
        return loss

    @property
    def last_grad_scale(self) -> Optional[Tensor]:
        """The loss scale the last step divided the gradients by (set by ``GradScaler``
        on the fused path, which leaves the gradients scaled), else ``None``."""
        return getattr(self, "_last_grad_scale", None)

    @torch.no_grad()
    def trust_ratios(self, grad_scale: Union[float, Tensor, None] = None) -> Tensor:
        """The trust ratio r the next step would give each LARS parameter (one with a
        grad, in a ``lars=True`` group), from the current weights and gradients, as one
        float32 CPU tensor in group order. For monitoring (e.g. TensorBoard histograms).

        ``grad_scale``: the factor the gradients are still multiplied by. Under
        ``GradScaler`` with the fused path the gradients stay scaled (the kernel divides
        as it reads them): pass ``scaler.get_scale()`` before ``scaler.step``, or
        ``opt.last_grad_scale`` (the scale the last step consumed) after it."""
        return trust_ratios(self._kernel_groups(), check_grad_scale(grad_scale))

