"""``Lars``: the optimizer class. It validates, gathers each group's tensors and
state, picks a path and hands the lists to :mod:`lars_cuda.functional`."""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import ops, sharded
from .functional import Flavour, _ratio_and_decay, check_amp_scaling_path, fused_lars_groups, fused_lars_norms, lars

__all__ = ["Lars", "UnsupportedTensorError"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_DTYPE_SET = frozenset(_KERNEL_DTYPES)




class UnsupportedTensorError(TypeError, ValueError, RuntimeError):
    """A parameter or gradient the optimizer cannot step (sparse, complex, integer).

    A ``TypeError`` by nature; also a ``ValueError`` (a bad input) and a
    ``RuntimeError`` (what ``torch.optim`` raises for sparse gradients), so code
    written against any of the three conventions catches it."""


class Lars(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017), as the
    seed project computes it (``docs/semantics.md``).

    For each parameter :math:`p` with gradient :math:`g` in a group with
    ``lars=True``:

    .. math::
        r = \mathrm{clamp}\Big(\frac{\eta\,\lVert p\rVert}{\lVert g\rVert + \beta\lVert p\rVert + \epsilon}, 0, 50\Big)
        \ \text{(1 if either norm is 0)},\qquad d = \mathrm{clamp}(g + \beta p, -10, 10)

    and with ``lars=False``: :math:`r = 1`, :math:`d = \mathrm{clamp}(g, -10, 10)` (no
    weight decay). Then :math:`b \leftarrow \mu b + d` (:math:`b = d` on the first
    step), :math:`u = b` (Nesterov: :math:`d + \mu b`), :math:`p \leftarrow p - \mathrm{lr}\,r\,u`.
    All arithmetic is float32 for float16/bfloat16/float32 tensors (float64 for float64
    ones); results are rounded once.

    Args:
        params: parameters or parameter groups (groups may set ``lars``, and override
            any keyword below).
        lr: learning rate (required unless every group brings its own), a float or a one-element tensor (updated in place by
            schedulers; a CUDA tensor keeps the fused/foreach step free of host syncs).
        momentum: :math:`\mu`, no dampening. 0 keeps no state.
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
        defaults = dict(
            lr=lr, momentum=momentum, eeta=eeta, weight_decay=weight_decay, epsilon=epsilon, lars=True,
            nesterov=nesterov, trust_clip=trust_clip, update_clip=update_clip, maximize=maximize,
            dampening=dampening, decay=decay, ratio_on_grad=ratio_on_grad, norm_of_update=norm_of_update,
            larc_clip=larc_clip, zero_norm_skip=zero_norm_skip, always_adapt=always_adapt,
            decay_filter=decay_filter, adaptation_filter=adaptation_filter,
            foreach=foreach, fused=fused,
        )
        # add_param_group (called by Optimizer.__init__ for every group) checks each
        # group's options merged with these defaults.
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_options(merged)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if isinstance(p, Tensor):
                _check_param_dtype(p)
        super().add_param_group({**param_group, "params": params})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Completes groups from an older Lars or from torch.optim.SGD's state dict with
        # the class's own options only: torch's __setstate__ adds keys (``differentiable``)
        # to self.defaults that Lars does not have, and copying those into the groups
        # would make state_dict() change under every load, deepcopy or pickle.
        super().__setstate__(state)
        for group in self.param_groups:
            for key in self._OPTIONS:  # incl. lars=True and maximize=False
                if key in self.defaults:
                    group.setdefault(key, self.defaults[key])

    # ---- the schema of param groups and state (lars_cuda.compat speaks the originals') ----
    # The options a param group of this class holds; the key of its momentum buffer.
    _OPTIONS: tuple[str, ...] = ()  # set below the class: Lars's group options
    _BUFFER_KEY = "momentum_buffer"

    def _check_options(self, group: dict[str, Any]) -> None:
        """Raises ValueError/TypeError naming the first invalid option of a group."""
        _check_hyperparameters(group, read_tensor_lr=True)

    def _kernel_groups(self) -> list[dict[str, Any]]:
        """The param groups in Lars's own options, which the step reads: for Lars, the
        groups themselves; a compat class derives them from its original's options
        (once per group and step, so a scheduler's change takes effect at once)."""
        return self.param_groups

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict``, after refusing a state dict of another LARS
        flavour whose options or state this class would misread (e.g. timm's
        ``trust_clip=True`` is not Lars's numeric ``trust_clip``): a clear error naming
        the key, never a silent change of the math."""
        check_state_dict_schema(type(self).__name__, self._OPTIONS, self._BUFFER_KEY, state_dict)
        super().load_state_dict(state_dict)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler then hands us grad_scale/found_inf instead of unscaling on the host;
        # only the fused kernel consumes them, so every tensor must take that path.
        for group in self._kernel_groups():
            params = _group_params(group)
            dtypes = {p.dtype for p in params}
            if self._path(group, params, dtypes) != "fused" or not dtypes <= _KERNEL_DTYPE_SET:
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
        fused_plans, other_plans, sharded_plans = [], [], []
        for group_ in self._kernel_groups():
            _check_hyperparameters(group_, read_tensor_lr=False)
            params_, grads_, bufs_, dtypes_ = self._gather(group_)
            for group, params, grads, bufs, dtypes in _flavour_views(group_, params_, grads_, bufs_, dtypes_):
                self._plan_view(group, params, grads, bufs, dtypes, grad_scale, found_inf,
                                fused_plans, other_plans, sharded_plans)

        if sharded_plans:
            self._step_sharded(sharded_plans, grad_scale, found_inf)
        # All kernel groups of a device in ONE op call, which checks every group before
        # it writes any; the other paths cannot fail after the checks above.
        by_device: dict[torch.device, list] = {}
        for plan in fused_plans:
            by_device.setdefault(plan[1][0].device, []).append(plan)
        for plans in by_device.values():
            new_bufs = [[i for i, b in enumerate(bufs) if b is None] for _, _, _, bufs, _ in plans]
            fused_lars_groups(
                [(params, grads, bufs, _group_options(group)) for group, params, grads, bufs, _ in plans],
                grad_scale=grad_scale, found_inf=found_inf,
            )
            for (_, params, _, bufs, _), fresh in zip(plans, new_bufs):
                for i in fresh:
                    self.state[params[i]][self._BUFFER_KEY] = bufs[i]
        for group, params, grads, bufs, path in other_plans:
            new_bufs = [i for i, b in enumerate(bufs) if b is None]
            lars(params, grads, bufs, **_group_options(group), foreach=path == "foreach")
            # lars() filled in the buffers it created; only those are new state.
            for i in new_bufs:
                self.state[params[i]][self._BUFFER_KEY] = bufs[i]
        # The scale the kernel divided the grads by (GradScaler leaves the grads scaled
        # on this path); trust_ratios(grad_scale=...) needs it to read them afterwards.
        self._last_grad_scale = grad_scale
        return loss

    def _plan_view(self, group, params, grads, bufs, dtypes, grad_scale, found_inf,
                   fused_plans, other_plans, sharded_plans) -> None:
        """Checks one view of a group (lars_cuda.compat's filters split a group in two)
        and appends its plans; nothing is written here."""
        if sharded.HAS_DTENSOR and any(sharded.is_dtensor(p) for p in params):
            # DTensor params (FSDP2, HSDP): their own plans, stepped around one all-reduce.
            (params, grads, bufs), (dp, dg, db) = _split_dtensors(params, grads, bufs)
            if group["momentum"] != 0 and group["dampening"] != 0 and any(b is None for b in db):
                # A fresh buffer's first step copies d (torch.optim.SGD): those tensors step
                # with dampening 0 from zero buffers, which gives exactly d.
                fresh = [i for i, b in enumerate(db) if b is None]
                old = [i for i, b in enumerate(db) if b is not None]
                for idx, view in ((fresh, {**group, "dampening": 0.0}), (old, group)):
                    if idx:
                        sharded_plans += self._sharded_plans(view, [dp[i] for i in idx], [dg[i] for i in idx],
                                                             [db[i] for i in idx], grad_scale, found_inf)
            else:
                sharded_plans += self._sharded_plans(group, dp, dg, db, grad_scale, found_inf)
            dtypes = {p.dtype for p in params}
        path = self._path(group, params, dtypes)
        _check_path(path, params, grads, bufs, group)
        if path != "fused" and (grad_scale is not None or found_inf is not None):
            raise RuntimeError(
                "grad_scale/found_inf were given but a group does not run the fused kernel; "
                "use fused=True or let GradScaler unscale the gradients"
            )
        if path == "fused" and not dtypes <= _KERNEL_DTYPE_SET:
            # fused=True with float64 tensors (as torch's fused SGD takes): those run
            # the foreach path, the rest the kernel.
            if grad_scale is not None or found_inf is not None:
                raise RuntimeError("the fused kernel steps float32/float16/bfloat16 only; with "
                                   "grad_scale/found_inf every tensor must be one of those")
            (params, grads, bufs), odd = _split_kernel_dtypes(params, grads, bufs)
            _check_path("foreach", *odd, group)
            other_plans.append((group, *odd, "foreach"))
        if params:
            (fused_plans if path == "fused" else other_plans).append((group, params, grads, bufs, path))

    def _sharded_plans(self, group, params, grads, bufs, grad_scale, found_inf) -> list[sharded.ShardedPlan]:
        """Checks a group's DTensor params and plans their step on the local shards
        (fused where the kernel serves them, float64 ones by foreach, as unsharded)."""
        for i, (p, g) in enumerate(zip(params, grads)):
            sharded.check_sharded(p, g, i)
        if group["momentum"] != 0:
            # Buffers are DTensors like their params (DCP saves them shard by shard);
            # a fresh one holds zeros, which makes the first step exact on every path.
            fresh = [b is None for b in bufs]
            bufs = [torch.zeros_like(p, memory_format=torch.preserve_format) if b is None else b
                    for p, b in zip(params, bufs)]
            for i, (p, b) in enumerate(zip(params, bufs)):
                if not sharded.is_dtensor(b) or b.placements != p.placements or b.shape != p.shape:
                    raise ValueError(f"the momentum buffer of sharded param {i} must be a DTensor laid out as "
                                     f"the param ({tuple(p.shape)}, {tuple(p.placements)})")
        else:
            bufs, fresh = [], []
        local_p = [p.to_local() for p in params]
        local_g = [g.to_local() for g in grads]
        local_b = [b.to_local() for b in bufs]
        dtypes = {p.dtype for p in local_p}
        path = self._path(group, local_p, dtypes)
        parts = [(params, local_p, local_g, local_b, bufs, path)]
        if path == "fused" and not dtypes <= _KERNEL_DTYPE_SET:
            keep = [i for i, p in enumerate(local_p) if p.dtype in _KERNEL_DTYPE_SET]
            odd = [i for i, p in enumerate(local_p) if p.dtype not in _KERNEL_DTYPE_SET]
            parts = [tuple([lst[i] for i in idx] if lst else [] for lst in (params, local_p, local_g, local_b, bufs))
                     + (part_path,) for idx, part_path in ((keep, "fused"), (odd, "foreach"))]
        fresh_by_param = {id(p): f for p, f in zip(params, fresh)}
        plans = []
        for dparams, lp, lg, lb, dbufs, part_path in parts:
            if not dparams:
                continue
            _check_path(part_path, lp, lg, lb, group)
            check_amp_scaling_path(part_path == "fused", grad_scale, found_inf)
            plan = sharded.ShardedPlan(group=group, params=dparams, local_params=lp, local_grads=lg,
                                       local_bufs=lb, path=part_path)
            plan.new_bufs = [(p, b) for p, b in zip(dparams, dbufs) if fresh_by_param[id(p)]]
            plans.append(plan)
        return plans

    def _step_sharded(self, plans: list[sharded.ShardedPlan], grad_scale, found_inf) -> None:
        """Local sums of squares, ONE all-reduce per mesh, then the update on the
        local shards (lars_cuda/sharded.py)."""
        fused_by_device: dict[torch.device, list[sharded.ShardedPlan]] = {}
        for plan in plans:
            if plan.path == "fused":
                fused_by_device.setdefault(plan.local_params[0].device, []).append(plan)
            elif plan.group["lars"]:
                plan.sums = sharded.local_sums(plan.local_params, plan.local_grads, foreach=plan.path == "foreach",
                                               dot=plan.group["norm_of_update"])
            else:
                plan.sums = torch.zeros((len(plan.params), 3), dtype=torch.float64,
                                        device=plan.local_params[0].device)
        for device_plans in fused_by_device.values():
            sums = fused_lars_norms([(p.local_params, p.local_grads, p.group) for p in device_plans])
            for plan, rows in zip(device_plans, sums.split([len(p.params) for p in device_plans])):
                plan.sums = rows
        global_inf = sharded.reduce_sums(plans, found_inf)
        for device_plans in fused_by_device.values():
            fused_lars_groups(
                [(p.local_params, p.local_grads, p.local_bufs, _group_options(p.group)) for p in device_plans],
                grad_scale=grad_scale, found_inf=global_inf,
                sums=torch.cat([p.sums for p in device_plans]).contiguous(),
            )
        for plan in plans:
            if plan.path != "fused":
                lars(plan.local_params, plan.local_grads, plan.local_bufs, **_group_options(plan.group),
                     foreach=plan.path == "foreach", sums=plan.sums)
            for p, buf in plan.new_bufs:
                self.state[p][self._BUFFER_KEY] = buf

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
        scale = 1.0 if grad_scale is None else float(grad_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"grad_scale must be a positive finite number, got {scale}")
        ratios = []
        for group in self._kernel_groups():
            params = [p for p in group["params"] if p.grad is not None]
            if not group["lars"] or not params:
                continue
            # (||p||, ||g||, <g,p>) per param in group order, in float64 as the step's
            # float32 sums widened (one host copy per group, no per-param .item()).
            sums = _trust_ratio_sums(params)
            w, n, dot = sums[:, 0].sqrt(), sums[:, 1].sqrt() / scale, sums[:, 2] / scale
            out = torch.full((len(params),), float("nan"))
            adapted = torch.zeros(len(params), dtype=torch.bool)
            row_of = {id(p): i for i, p in enumerate(params)}
            for view, ps, _, _, _ in _flavour_views(group, params, params, [], set()):
                if not view["lars"]:
                    continue
                rows = torch.tensor([row_of[id(p)] for p in ps], dtype=torch.long)
                flavour = Flavour(decay=view["lars"] if view["decay"] is None else view["decay"],
                                  **{k: view[k] for k in Flavour._fields if k != "decay"})
                r, _, _ = _ratio_and_decay(w[rows].float(), n[rows].float(), dot[rows].float(),
                                           float(view["lr"]), weight_decay=view["weight_decay"],
                                           eeta=view["eeta"], epsilon=view["epsilon"],
                                           trust_clip=view["trust_clip"], flavour=flavour)
                out[rows] = r.float()
                adapted[rows] = True
            ratios.append(out[adapted])
        return torch.cat(ratios) if ratios else torch.empty(0)

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Optional[Tensor]], set[torch.dtype]]:
        """The group's params with a grad, their grads and momentum buffers (None where
        there is none yet), and the set of their dtypes."""
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise UnsupportedTensorError("Lars does not support sparse gradients")
        # Per dtype, not per tensor: this runs every step. (A grad's dtype is its param's:
        # autograd refuses to assign another, and the kernel checks it again.)
        dtypes = {p.dtype for p in params}
        for dtype in dtypes:
            _check_dtype(dtype)
        bufs: list[Optional[Tensor]] = []
        if group["momentum"] != 0:
            # One dict lookup per param (Tensor.__hash__ is a Python call): this runs every step.
            get = self.state.get
            bufs = [(get(p) or _NO_STATE).get(self._BUFFER_KEY) for p in params]
        return params, grads, bufs, dtypes

    @staticmethod
    def _path(group: dict[str, Any], params: list[Tensor], dtypes: Optional[set] = None) -> str:
        """As torch.optim.SGD: fused=True -> kernel; foreach=True -> foreach; foreach=False
        -> the loop. Unset, the kernel where it serves every tensor, else foreach."""
        fused, foreach = group["fused"], group["foreach"]
        if fused:
            device = params[0].device if params else None
            if device is None or device.type not in ("cpu", "cuda") or ops.fused_runs_on(device):
                return "fused"  # (other device types are refused by _check_path)
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
        if fused is None and dtypes <= _KERNEL_DTYPE_SET:
            if not params:
                return "fused"
            device = next(iter(devices))
            if ops.fused_runs_on(device):
                return "fused"
            if ops.has_fused(device):  # built for CUDA, but with no code for this card
                _warn_fused_unavailable(device, asked=False)
        return "foreach"


_NO_STATE: dict[str, Any] = {}

# The options a Lars param group carries (besides "params"): those the step's math
# takes (the keyword arguments of functional.lars), then the path switches.
_STEP_OPTIONS = ("lr", "momentum", "eeta", "weight_decay", "epsilon", "lars", "nesterov", "trust_clip",
                 "update_clip", "maximize", "dampening", "decay", "ratio_on_grad", "norm_of_update", "larc_clip",
                 "zero_norm_skip")
# ... and the options that decide which tensors a step adapts and decays (views below).
_GROUP_OPTIONS = _STEP_OPTIONS + ("always_adapt", "decay_filter", "adaptation_filter", "foreach", "fused")
Lars._OPTIONS = _GROUP_OPTIONS

# The options and state keys of every LARS flavour lars_cuda speaks (Lars, timm's Lars,
# torch SGD under apex LARC, the self-supervised LARS): a state dict that holds one a
# class does not have comes from another flavour. Keys no flavour defines (a
# scheduler's ``initial_lr``, timm's ``lr_scale``, torch's ``differentiable``) pass.
_TIMM_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "trust_coeff", "eps", "trust_clip",
                 "always_adapt", "foreach", "fused")
_SGD_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
                "fused")
_SSL_OPTIONS = ("lr", "weight_decay", "momentum", "eta", "weight_decay_filter", "lars_adaptation_filter", "foreach",
                "fused")
# (torch's ``differentiable`` is in every torch.optim state dict, and Lars reads SGD's.)
_ALL_OPTIONS = frozenset(_GROUP_OPTIONS + _TIMM_OPTIONS + _SGD_OPTIONS + _SSL_OPTIONS) - {"differentiable"}
_ALL_BUFFER_KEYS = frozenset({"momentum_buffer", "mu"})
_HOME = {"eeta": "lars_cuda.Lars", "update_clip": "lars_cuda.Lars", "ratio_on_grad": "lars_cuda.Lars",
         "trust_coeff": "timm.optim.Lars (lars_cuda.compat.TimmLars)",
         "eta": "the self-supervised LARS (lars_cuda.compat.SSLLars)",
         "mu": "the self-supervised LARS (lars_cuda.compat.SSLLars)",
         "momentum_buffer": "torch.optim.SGD, Lars, TimmLars or LARC"}


def check_state_dict_schema(name: str, options: tuple[str, ...], buffer_key: str, state_dict: dict[str, Any]) -> None:
    """Raises ValueError naming the first key of ``state_dict`` that belongs to another
    flavour's schema than ``options`` / ``buffer_key``."""
    own = set(options)
    for i, group in enumerate(state_dict.get("param_groups", [])):
        foreign = sorted(k for k in group if k in _ALL_OPTIONS and k not in own)
        if foreign:
            key = next((k for k in foreign if k in _HOME), foreign[0])  # the key that tells whose it is
            home = _HOME.get(key, "another LARS flavour")
            raise ValueError(
                f"{name}.load_state_dict: param group {i} holds {key!r}, an option {name} does not have: "
                f"this state dict was saved by {home} (keys {foreign}); load it into that class, or see the "
                f"README's 'Switching from ...' for the class that reads it")
    for index, entry in state_dict.get("state", {}).items():
        foreign = sorted(k for k in entry if k in _ALL_BUFFER_KEYS and k != buffer_key)
        if foreign:
            raise ValueError(
                f"{name}.load_state_dict: the state of param {index} holds {foreign[0]!r} but {name} keeps its "
                f"momentum under {buffer_key!r}: this state dict was saved by {_HOME[foreign[0]]}; loading it here "
                f"would start from zero momentum")


def _trust_ratio_sums(params: list[Tensor]) -> Tensor:
    """float64 CPU ``[n, 3]``: Σp², Σg², Σg·p of each param (float32 sums, as the
    step computes them, widened); sharded params' global sums come from one
    all-reduce (so every rank must call this), the others from one host copy per device."""
    out = torch.empty(len(params), 3, dtype=torch.float64)
    is_d = [sharded.HAS_DTENSOR and sharded.is_dtensor(p) for p in params]
    if any(is_d):
        idx = [i for i, d in enumerate(is_d) if d]
        out[idx] = sharded.sharded_trust_ratio_sums([params[i] for i in idx]).to("cpu", torch.float64)
    by_device: dict[torch.device, list[int]] = {}
    for i, d in enumerate(is_d):
        if not d:
            by_device.setdefault(params[i].device, []).append(i)
    for idx in by_device.values():
        rows = []
        for i in idx:
            pf, gf = params[i].detach().float(), params[i].grad.detach().float()
            rows.append(torch.stack([(pf * pf).sum(), (gf * gf).sum(), (gf * pf).sum()]))
        out[idx] = torch.stack(rows).to("cpu", torch.float64)
    return out


def _flavour_views(group, params, grads, bufs, dtypes):
    """The group as the step sees it: timm's "adapt only where weight_decay != 0"
    (``always_adapt=False``) turns LARS off for the group, and the self-supervised
    filters give 1-D params (biases, norms) their own view without decay and/or
    adaptation. The common case is the group itself (no copy)."""
    lars_on = group["lars"] and (group["always_adapt"] or group["weight_decay"] != 0)
    view = group if lars_on == group["lars"] else {**group, "lars": lars_on}
    if not (group["decay_filter"] or group["adaptation_filter"]):
        return [(view, params, grads, bufs, dtypes)]
    decay = lars_on if group["decay"] is None else group["decay"]
    flat = {**view, "lars": lars_on and not group["adaptation_filter"],
            "decay": decay and not group["decay_filter"]}
    views = []
    for want_flat, options in ((False, {**view, "decay": decay}), (True, flat)):
        idx = [i for i, p in enumerate(params) if (p.ndim == 1) == want_flat]
        if idx:
            views.append((options, [params[i] for i in idx], [grads[i] for i in idx],
                          [bufs[i] for i in idx] if bufs else [], {params[i].dtype for i in idx}))
    return views


def _group_options(group: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`lars_cuda.functional.lars` a group holds."""
    return {key: group[key] for key in _STEP_OPTIONS}


_WARNED_UNAVAILABLE: set = set()


def _warn_fused_unavailable(device: torch.device, asked: bool) -> None:
    """One warning per device and process: the fused kernel cannot run there (why, and the
    rebuild command), so the step runs the foreach path (the same math, slower)."""
    if (device, asked) in _WARNED_UNAVAILABLE:
        return
    _WARNED_UNAVAILABLE.add((device, asked))
    from .diagnostics import fused_unavailable

    wanted = "fused=True was asked for, but " if asked else ""
    warnings.warn(f"lars_cuda: {wanted}{fused_unavailable(device)}; Lars runs the foreach path on {device} "
                  f"instead (same math, slower)", RuntimeWarning, stacklevel=4)


def _split_kernel_dtypes(params, grads, bufs):
    """(params, grads, bufs) the kernel takes, and the rest, each as three lists
    (a grad has its param's dtype: autograd refuses another)."""
    keep, odd = ([], [], []), ([], [], [])
    for i, (p, g) in enumerate(zip(params, grads)):
        side = keep if p.dtype in _KERNEL_DTYPE_SET else odd
        side[0].append(p)
        side[1].append(g)
        if bufs:
            side[2].append(bufs[i])
    return keep, odd


def _split_dtensors(params, grads, bufs):
    """(params, grads, bufs) of plain tensors, and those of DTensors, each as three lists."""
    plain, dist = ([], [], []), ([], [], [])
    for i, (p, g) in enumerate(zip(params, grads)):
        side = dist if sharded.is_dtensor(p) else plain
        side[0].append(p)
        side[1].append(g)
        side[2].append(bufs[i] if bufs else None)
    if not bufs:
        plain = (plain[0], plain[1], [])
    return plain, dist


def _group_params(group: dict[str, Any]) -> list[Tensor]:
    return [p for p in group["params"] if p.grad is not None]


def _check_param_dtype(p: Tensor) -> None:
    _check_dtype(p.dtype)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype.is_complex:
        raise UnsupportedTensorError(f"Lars does not support complex parameters (got {dtype})")
    if not dtype.is_floating_point:
        raise UnsupportedTensorError(f"Lars steps floating-point parameters only (got {dtype})")


def _check_path(path: str, params, grads, bufs, group) -> None:
    """What a path needs of its tensors, checked before any of them is written.
    The fused op checks each tensor itself (in C++, before it writes), so here
    the fused path only pays for checks over whole lists."""
    if not params:
        return
    if path != "fused":
        for i, p in enumerate(params):
            buf = bufs[i] if bufs else None
            if buf is not None and (buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device):
                raise ValueError(
                    f"momentum_buffer of shape {tuple(buf.shape)}, {buf.dtype} on {buf.device} does not match "
                    f"its param ({tuple(p.shape)}, {p.dtype}, {p.device})"
                )
    if path == "single":
        return
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"foreach/fused Lars steps one device per param group, got {sorted(map(str, devices))}; "
            "put each device's params in its own group or use foreach=False, fused=False"
        )
    device = params[0].device
    if isinstance(group["lr"], Tensor) and group["lr"].device not in (device, torch.device("cpu")):
        raise ValueError(f"lr tensor is on {group['lr'].device} but the params are on {device}")
    if path == "fused" and not ops.has_fused(device):  # cpu/cuda without the kernel ran foreach (Lars._path)
        raise RuntimeError(f"fused=True: the lars_cuda kernel is not built for {device}")


def _is_real_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check_hyperparameters(group: dict[str, Any], *, read_tensor_lr: bool) -> None:
    """Raises ValueError/TypeError naming the first invalid hyper-parameter."""
    lr = group["lr"]
    if lr is None:  # required unless every group brings its own (as Horovod's re-created optimizer does)
        raise TypeError("Lars needs a learning rate: pass lr=... (or give every param group an 'lr')")
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"a tensor lr must be floating point, got {lr.dtype}")
        # Reading a CUDA tensor would synchronise, so a step checks its value only on
        # the CPU (where .item() is free) and at construction.
        if read_tensor_lr or (lr.device.type == "cpu" and not torch.compiler.is_compiling()):
            value = lr.item()
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Invalid learning rate: {value}")
    elif not _is_real_number(lr):
        raise TypeError(f"lr must be a float or a one-element tensor, got {type(lr).__name__}")
    elif not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"Invalid learning rate: {lr}")

    for name in ("momentum", "weight_decay", "epsilon"):
        value = group[name]
        if not _is_real_number(value):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"Invalid {name} value: {value}")
    eeta = group["eeta"]
    if not _is_real_number(eeta):
        raise TypeError(f"eeta must be a real number, got {type(eeta).__name__}")
    if not 0 < eeta <= 1:
        raise ValueError(f"Invalid eeta (trust coefficient) value: {eeta}; it must lie in (0, 1]")
    for name in ("trust_clip", "update_clip"):
        value = group[name]
        if value is None:
            continue
        if not _is_real_number(value):
            raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
        if not (value >= 0 and not math.isnan(value)):
            raise ValueError(f"Invalid {name} value: {value}")
    for name in ("lars", "nesterov", "maximize", "ratio_on_grad", "norm_of_update", "larc_clip", "zero_norm_skip",
                 "always_adapt", "decay_filter", "adaptation_filter"):
        if not isinstance(group[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(group[name]).__name__}")
    if group["decay"] is not None and not isinstance(group["decay"], bool):
        raise TypeError(f"decay must be None or a bool, got {type(group['decay']).__name__}")
    dampening = group["dampening"]
    if not _is_real_number(dampening):
        raise TypeError(f"dampening must be a real number, got {type(dampening).__name__}")
    if not 0 <= dampening <= 1:
        raise ValueError(f"Invalid dampening value: {dampening}; it must lie in [0, 1]")
    for name in ("foreach", "fused"):
        if group[name] is not None and not isinstance(group[name], bool):
            raise TypeError(f"{name} must be None or a bool, got {type(group[name]).__name__}")
    if group["foreach"] and group["fused"]:
        raise ValueError("foreach and fused cannot both be True")
    if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a nonzero momentum and zero dampening")
