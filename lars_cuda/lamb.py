"""``Lamb``: LAMB (You et al. 2019) as a ``torch.optim`` optimizer, as thin as
``torch.optim.AdamW``: options and state in, the step of ``lars_cuda.lamb_functional``
per group. Checks live in ``lars_cuda.validation``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor

from . import sharded
from .functional import partition
from .lamb_functional import (clip_from_sum_of_squares, finish, fused_lamb, fused_lamb_halves, global_clip_factor,
                              lamb_halves, multi_tensor_lamb, single_tensor_lamb)
from .lamb_options import LAMB_OPTIONS, LambOptions
from .options import compute_dtype
from .schema_optimizer import SchemaOptimizer
from .validation import check_grad_scale, check_lamb_grads, check_lamb_layouts, check_lamb_options, lamb_path

__all__ = ["Lamb"]


def _local_shards(part: list[list]) -> list[list[Tensor]]:
    """The local shards of a sharded part's params, grads, exp_avgs and exp_avg_sqs."""
    return [[t.to_local() for t in ts] for ts in part[:4]]


class Lamb(SchemaOptimizer):
    r"""LAMB, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes" (You et al., 2019): LARS's per-tensor trust ratio on an Adam step. The
    math of every path (``docs/semantics.md``, "LAMB", states it with timm's and
    apex's switches); all arithmetic in float32 for float32/float16/bfloat16 tensors,
    float64 for float64 ones, the moments kept in the param's dtype::

        c = max(1, ||(g1, g2, ...)|| / max_grad_norm)      over every grad of the optimizer
        g = g / c                                           (g = -g first when maximize)
        if decay_mode == "grad":  g = g + wd*p
        m = β1*m + β3*g,   β3 = 1 - β1 if grad_averaging else 1
        v = β2*v + (1 - β2)*g²
        u = (m / b1) / (sqrt(v / b2) + eps)                 b1, b2 = 1 - β1^t, 1 - β2^t (bias_correction)
        if caution:  k = [u*g > 0];  u = u*k / max(mean(k), 1e-3)
        if decay_mode == "update":     u = u + wd*p
        if decay_mode == "decoupled":  p = p - s*wd*p,  s = lr (lr²/max_lr when max_lr is set)
        r = ||p|| / ||u|| if both > 0 else 1,  min(r, 1) with trust_clip;  r = 1 unless wd != 0 or always_adapt
        p = p - lr*r*u

    Args:
        params: parameters or parameter groups (groups may override any option below
            but ``max_grad_norm``).
        lr: learning rate, a float or a one-element tensor.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: added to :math:`\sqrt{v}` (timm's and apex's default, 1e-6).
        weight_decay: :math:`wd`; where it enters is ``decay_mode``.
        max_grad_norm: global gradient clipping over every gradient of the optimizer
            (timm's and apex's default, 1.0); ``None`` turns it off. Optimizer-wide, as
            in both originals: a param group's value is not read.
        decay_mode: ``"update"`` (added to the Adam update: timm's default, apex
            ``adam_w_mode=True``), ``"grad"`` (added to the gradient before the
            moments: apex ``adam_w_mode=False``) or ``"decoupled"`` (timm
            ``decoupled_decay=True``).
        bias_correction, grad_averaging: as in timm and apex (both on by default).
        trust_clip: clip the trust ratio at 1 (timm's LAMBC).
        always_adapt: adapt params without weight decay too (timm ``always_adapt``,
            apex ``use_nvlamb``); by default they take a plain Adam step.
        caution: timm's "Cautious Optimizers" mask.
        max_lr: with ``decay_mode="decoupled"``, scale the decay by lr/max_lr (timm's
            ``corrected_weight_decay``, which snapshots its lr as max_lr).
        maximize: maximise the objective, as in ``torch.optim``.
        foreach: ``True`` for the ``torch._foreach_*`` path, ``False`` for the
            per-parameter reference loop.
        fused: ``True`` for the compiled kernel (every fused group of a step in one
            call, one launch per dtype on CUDA; float32/float16/bfloat16; where the
            build has no kernel for the device it warns once and runs foreach).
            Neither flag set: the kernel where it
            serves every tensor of a group, else foreach where they share a device.
            DTensor params take their path's two halves around one all-reduce (the
            kernel's: ``fused_lamb_norms``, then ``fused_lamb_apply_``). On the kernel
            path ``torch.amp.GradScaler`` hands over its scale and inf flag instead
            of unscaling the grads (as for ``torch.optim.AdamW(fused=True)``; for
            DTensor params it unscales them itself).

    The state of a param holds ``step`` (a float32 tensor: on the param's device on the
    kernel path, on the CPU elsewhere, as ``torch.optim.AdamW`` places it for its fused
    and other paths), ``exp_avg`` and ``exp_avg_sq`` in the param's dtype. On the kernel
    path a step never reads the device on the host: ``GradScaler``'s inf flag skips the
    kernel on the device and the step counts are put back there (as torch's fused
    AdamW), so a CUDA step can be captured in a CUDA graph (after one step outside the
    capture, which builds its tensor table on the device). Bad options or
    tensors raise ``ValueError``/``TypeError`` before anything is written.
    """

    def __init__(
        self,
        params: Iterable[Union[Tensor, dict[str, Any]]],
        lr: Union[float, Tensor] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        max_grad_norm: Optional[float] = 1.0,
        decay_mode: str = "update",
        bias_correction: bool = True,
        grad_averaging: bool = True,
        trust_clip: bool = False,
        always_adapt: bool = False,
        caution: bool = False,
        max_lr: Optional[float] = None,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        arguments = locals()
        super().__init__(params, {name: arguments[name] for name in LAMB_OPTIONS})

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Lamb's default group options (its signature's)."""
        signature = inspect.signature(Lamb.__init__).parameters
        return {name: signature[name].default for name in LAMB_OPTIONS}

    # ---- the schema of param groups and state (lars_cuda.compat speaks the originals') ----
    _OPTIONS: tuple[str, ...] = LAMB_OPTIONS
    _BUFFER_KEY = "exp_avg"
    _NAME = "Lamb"
    _STEP_IN_STATE = True  # a step count per param (AdamW's); the compat classes count per group

    def _check_options(self, group: dict[str, Any], read_tensor_lr: bool = True) -> LambOptions:
        """Checks a group's options; returns those it steps with (a compat class
        derives them from its original's)."""
        check_lamb_options(group, self._max_grad_norm(), read_tensor_lr=read_tensor_lr)
        return LambOptions.of(group)

    def _max_grad_norm(self) -> Optional[float]:
        return self.defaults["max_grad_norm"]

    def _advance_steps(self, group: dict[str, Any], states: list[dict[str, Any]]) -> list[Any]:
        """Advances the step counts of a group's stepping params (``states``: theirs);
        returns them, one per param."""
        steps = [s["step"] for s in states]
        if steps:
            torch._foreach_add_(steps, 1)  # (one call: a Python += per CPU tensor costs ~7 us each)
        return steps

    def _init_state(self, params: list[Tensor], path: str,
                    created: Optional[list[Tensor]] = None) -> list[dict[str, Any]]:
        """Creates the state params lack (a fresh step count on the param's device on the
        kernel path, where the kernel reads it, else on the CPU); returns their states
        (one lookup per param: ``Tensor.__hash__`` is a Python call, and this runs every
        step). ``created``: a list the params that had no state are appended to."""
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if created is not None and not state:
                created.append(p)
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p)  # (preserve_format: a channels_last param's layout)
                state["exp_avg_sq"] = torch.zeros_like(p)
            if self._STEP_IN_STATE and "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if path == "fused" else None)
        return states

    def _plan(self) -> list[tuple[dict[str, Any], LambOptions, list[Tensor], str]]:
        """Every group's (group, options, stepping params, path), the options and grads
        checked (the tensors' layouts: ``_check_layouts``); writes nothing."""
        name = type(self).__name__
        planned = []
        for group in self.param_groups:
            options = self._check_options(group, read_tensor_lr=False)
            params = [p for p in group["params"] if p.grad is not None]
            check_lamb_grads(name, params)
            planned.append((group, options, params, self._path(group, params)))
        return planned

    def _check_layouts(self, planned) -> None:
        """Every planned group's grads and moments laid out as their params."""
        for _, _, params, _ in planned:
            check_lamb_layouts(type(self).__name__, params, self.state)

    def _path(self, group: dict[str, Any], params: list[Tensor]) -> str:
        """The path a group's stepping params take (``validation.lamb_path``)."""
        return lamb_path(type(self).__name__, group["foreach"], {p.device for p in params}, group.get("fused"),
                         frozenset(p.dtype for p in params))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)  # set by GradScaler (the fused path)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)
        planned = self._plan()  # options and grads checked before anything is written
        params = [p for _, _, ps, _ in planned for p in ps]
        self._last_grad_scale = grad_scale
        # Where every group runs the kernel on one device and none is sharded, the kernel
        # computes the global clip itself (one call); otherwise the clip is computed here
        # over every grad (DTensor grads: one all-reduce).
        all_fused = (all(path == "fused" for _, _, ps, path in planned if ps)
                     and len({ps[0].device for _, _, ps, _ in planned if ps}) <= 1
                     and not sharded.any_dtensor(params))
        # Where the kernel takes the whole step with the counts in the state, it checks
        # every tensor's layout itself, in C++ before it writes (~0.5 ms of Python saved
        # per step on ResNet-50's 161 tensors); a refusal puts back what the step wrote
        # before the call (_put_back) and is named as every other path names it.
        # Elsewhere the layouts are checked here, before anything is written.
        kernel_checks = all_fused and self._STEP_IN_STATE
        if not kernel_checks:
            self._check_layouts(planned)
        # An inf step is skipped on the device where the counts are tensors that the
        # kernel's skip can be matched with (counts advanced, then found_inf taken off
        # them, as torch's fused AdamW); otherwise found_inf is read on the host (free on
        # the CPU, a sync on CUDA).
        skip_on_device = found_inf is not None and kernel_checks
        self._check_graph_capture(planned, all_fused)
        if found_inf is not None and not skip_on_device and bool(found_inf.item()):
            for _, _, ps, path in planned:  # skipped: states exist, counts stay
                self._init_state(ps, path)
            return loss
        clip = None if all_fused else self._clip_factor(params, [p.grad for p in params])
        advanced: list[Tensor] = []
        created: list[Tensor] = []

        def tensors(group, options, params, path):
            state = self._init_state(params, path, created)
            steps = self._advance_steps(group, state)
            advanced.extend(steps)
            return [params, [p.grad for p in params], [s["exp_avg"] for s in state],
                    [s["exp_avg_sq"] for s in state], steps]
        try:
            self._run(planned, clip, tensors, fused_args=dict(
                max_grad_norm=self._max_grad_norm() if all_fused else None, grad_scale=grad_scale,
                found_inf=found_inf if skip_on_device else None))
        except Exception:
            if kernel_checks:
                self._put_back(advanced, created)
                self._check_layouts(planned)
            raise
        if skip_on_device and advanced:
            by_device: dict = {}
            for step in advanced:
                by_device.setdefault(step.device, []).append(step)
            for device, steps in by_device.items():  # (a CPU count with a CUDA flag: one sync)
                inf = found_inf.to(device=device, dtype=torch.float32)
                torch._foreach_sub_(steps, [inf] * len(steps))
        return loss

    def _put_back(self, advanced: list[Tensor], created: list[Tensor]) -> None:
        """Undoes what a step wrote before the kernel refused it (the kernel writes
        nothing before its checks): the advanced step counts (whole numbers, so the
        subtraction restores them exactly) and the states of params that had none."""
        if advanced:
            torch._foreach_sub_(advanced, 1)
        for p in created:
            del self.state[p]

    def _check_graph_capture(self, planned, all_fused: bool) -> None:
        """Refuses a CUDA graph capture of a step that cannot be captured
        (``_why_not_capturable``) before anything is captured."""
        if not any(ps and ps[0].is_cuda for _, _, ps, _ in planned) or not torch.cuda.is_current_stream_capturing():
            return
        why = self._why_not_capturable(planned, all_fused)
        if why is not None:
            raise RuntimeError(why)

    def _why_not_capturable(self, planned, all_fused: bool) -> Optional[str]:
        """Why a CUDA graph cannot capture this step (it would read the device on the
        host or bake a host value into the graph), or None: every group on the kernel
        path of one device, unsharded, the step counts in the state on the params' device."""
        name = type(self).__name__
        if not all_fused or not self._STEP_IN_STATE:
            return (f"{name}: a CUDA graph can capture a step only where every param group runs the fused kernel "
                    "on one device, unsharded, with its step counts in the state (lars_cuda.Lamb with fused=True; "
                    "the compat classes count steps per group on the host)")
        for _, _, ps, _ in planned:
            for p in ps:
                step = self.state.get(p, {}).get("step")
                if step is not None and step.device != p.device:
                    return (f"{name}: a CUDA graph can capture a step only with the step counts on the params' "
                            f"device; a count is on {step.device} (a state loaded into a group without fused=True "
                            "keeps them on the CPU): load it with fused=True, which places them on the device, "
                            "before capturing")
        return None

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler then hands us grad_scale/found_inf instead of unscaling the grads;
        # only the unsharded kernel consumes them, so every group must take that path
        # (a DTensor's inf flag would have to agree over the ranks: GradScaler unscales).
        # (The paths only: GradScaler asks before every step, and the step checks the rest.)
        try:
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params and (self._path(group, params) != "fused" or sharded.any_dtensor(params)):
                    return False
            return True
        except (TypeError, ValueError):
            return False  # (the step raises the error itself)

    @property
    def last_grad_scale(self) -> Optional[Tensor]:
        """The loss scale the last step divided the gradients by (set by ``GradScaler``
        on the fused path, which leaves the gradients scaled), else ``None``."""
        return getattr(self, "_last_grad_scale", None)

    @torch.no_grad()
    def trust_ratios(self, grad_scale: Union[float, Tensor, None] = None) -> Tensor:
        """The trust ratio r the next step would give each adapting param (one with a
        grad, in a group with weight decay or ``always_adapt``), in group order (a
        group's plain params before its DTensors), as one float32 CPU tensor; for
        monitoring. LAMB's ratio needs the step's update, so this runs the reference
        loop on copies of the params and moments (nothing of the optimizer changes;
        DTensor params take the step's collectives). ``grad_scale``: the factor the
        gradients are still multiplied by (as ``Lars.trust_ratios``)."""
        scale = check_grad_scale(grad_scale)
        planned = self._plan()
        self._check_layouts(planned)
        params = [p for _, _, ps, _ in planned for p in ps]
        grads = {p: (p.grad if scale == 1.0 else p.grad / scale) for p in params}
        clip = self._clip_factor(params, list(grads.values()))

        def copies(group, options, params, path):
            if not options.adapts:
                return None
            state = [self.state.get(p, {}) for p in params]
            return [[p.detach().clone() for p in params], [grads[p] for p in params],
                    [s["exp_avg"].clone() if "exp_avg" in s else torch.zeros_like(p) for s, p in zip(state, params)],
                    [s["exp_avg_sq"].clone() if "exp_avg_sq" in s else torch.zeros_like(p)
                     for s, p in zip(state, params)],
                    [step + 1 for step in self._peek_steps(group, params)]]
        ratios: list[Tensor] = []
        self._run(planned, clip, copies, ratios)
        return torch.stack([r.float().cpu() for r in ratios]) if ratios else torch.zeros(0)

    def _run(self, planned, clip: Optional[Tensor], tensors, ratios_out: Optional[list] = None,
             fused_args: Optional[dict] = None) -> None:
        """Steps each planned group over ``tensors(group, options, params, path)`` (params,
        grads, exp_avgs, exp_avg_sqs, steps; None: nothing to step): plain tensors on
        the group's path (the fused groups together in ONE kernel call, given
        ``fused_args``' max_grad_norm and grad_scale, or ``clip``), DTensors in two
        halves around ONE all-reduce of the norms of every sharded group. With
        ``ratios_out`` (trust_ratios) the reference loop runs and appends each trust ratio."""
        waiting = []  # the sharded halves waiting for their global norms: (DTensors, halves, local rows)
        fused_groups, sharded_fused = [], []
        for group, options, params, path in planned:
            lists = tensors(group, options, params, path)
            if lists is None or not params:
                continue
            if ratios_out is not None:
                path = "single"
            parts = (partition(lists, [sharded.is_dtensor(p) for p in lists[0]]).items()
                     if sharded.any_dtensor(lists[0]) else [(False, (lists, None))])
            for is_sharded, (part, _) in parts:
                if is_sharded and path == "fused":
                    sharded_fused.append((part, options))
                elif is_sharded:
                    waiting += self._start_sharded(part, options, path, clip, ratios_out)
                elif path == "fused":
                    fused_groups.append((part, options))
                elif path == "foreach":
                    multi_tensor_lamb(*part, options, clip=clip)
                else:
                    single_tensor_lamb(*part, options, clip=clip, ratios_out=ratios_out)
        by_device: dict = {}  # one kernel call per device (the groups of one device together)
        for part, options in fused_groups:
            by_device.setdefault(part[0][0].device, []).append((part, options))
        for device, groups in by_device.items():
            if clip is not None:
                fused_lamb(groups, clip=clip.to(device))
            else:
                fused_lamb(groups, **(fused_args or {}))
        waiting += self._start_sharded_fused(sharded_fused, clip)
        if waiting:
            global_rows, _ = sharded.reduce_sums([(dtensors, rows) for dtensors, _, rows in waiting], None)
            for (_, halves, _), rows in zip(waiting, global_rows):
                finish(halves, rows)

    @staticmethod
    def _start_sharded(part: list[list], options: LambOptions, path: str, clip: Optional[Tensor],
                       ratios_out: Optional[list]) -> list:
        """The first halves of one group's DTensor params on the loop or foreach path (on
        their local shards): those that wait for global norms, with their local rows."""
        dtensors, *_, steps = part
        local = _local_shards(part)
        waiting = []
        keys = [compute_dtype(p.dtype) for p in local[0]] if path == "foreach" else [None] * len(steps)
        for (ps, lp, lg, lm, lv, ls), _ in partition([dtensors, *local, steps], keys).values():
            halves = lamb_halves(path, lp, lg, lm, lv, ls, options, clip=clip, sharded=True, ratios_out=ratios_out)
            rows = finish(halves)
            if rows is not None:
                waiting.append((ps, halves, rows))
        return waiting

    @staticmethod
    def _start_sharded_fused(parts: list, clip: Optional[Tensor]) -> list:
        """The kernel's first halves of the DTensor params of every fused group: ONE
        ``fused_lamb_norms`` per device for all of them (and later one
        ``fused_lamb_apply_``); those that wait for global norms, with their local rows."""
        by_device: dict = {}
        for part, options in parts:
            dtensors, *_, steps = part
            local = _local_shards(part) + [steps]
            by_device.setdefault(local[0][0].device, []).append((dtensors, local, options))
        waiting = []
        for entries in by_device.values():
            halves = fused_lamb_halves([(local, options) for _, local, options in entries], clip)
            rows = finish(halves)
            if rows is not None:
                waiting.append(([d for dtensors, _, _ in entries for d in dtensors], halves, rows))
        return waiting

    def _clip_factor(self, params: list[Tensor], grads: list[Tensor]) -> Optional[Tensor]:
        """The global clip factor over every grad of the step; with DTensor grads their
        sums of squares take one all-reduce (so a step with clipping is two)."""
        max_grad_norm = self._max_grad_norm()
        is_sharded = [sharded.is_dtensor(p) for p in params]
        if not any(is_sharded) or max_grad_norm is None:
            return global_clip_factor(grads, max_grad_norm)
        dtensors = [p for p, d in zip(params, is_sharded) if d]
        local = [g.to_local() for g, d in zip(grads, is_sharded) if d]
        rows = sharded.local_sums(local, local, foreach=True)
        (global_rows,), _ = sharded.reduce_sums([(dtensors, rows)], None)
        total = global_rows[:, 0].sum()
        plain = [g for g, d in zip(grads, is_sharded) if not d]
        if plain:
            total = total + sharded.local_sums(plain, plain, foreach=True)[:, 0].sum().to(total.device)
        dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        return clip_from_sum_of_squares(total, max_grad_norm, dtype)

    def _peek_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[float]:
        """The step counts of a group's params before the next step (0 for a fresh one)."""
        return [float(self.state.get(p, {}).get("step", 0.0)) for p in params]
