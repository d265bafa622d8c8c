"""``Lars``: the optimizer class. It validates, gathers each group's tensors and
state, picks a path and hands the lists to :mod:`lars_cuda.functional`."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import ops
from .functional import lars

__all__ = ["Lars", "UnsupportedTensorError"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _Required:
    """Default of ``lr``: required unless every param group brings its own (as
    Horovod's DistributedOptimizer does when it re-creates the optimizer)."""

    def __repr__(self) -> str:
        return "<required>"


required = _Required()


class UnsupportedTensorError(TypeError, ValueError, RuntimeError):
    """A parameter or gradient the optimizer cannot step (sparse, complex, integer).

    A ``TypeError`` by nature; also a ``ValueError`` (a bad input) and a
    ``RuntimeError`` (what ``torch.optim`` raises for sparse gradients), so code
    written against any of the three conventions catches it."""


class Lars(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017), as the
    seed project computes it (``shared/spec/lars-semantics.md`` §1).

    For each parameter :math:`p` with gradient :math:`g` in a group with
    ``lars=True``:

    .. math::
        r = \mathrm{clamp}\Big(\frac{\eta\,\lVert p\rVert}{\lVert g\rVert + \beta\lVert p\rVert + \epsilon}, 0, 50\Big)
        \ \text{(1 if either norm is 0)},\qquad d = \mathrm{clamp}(g + \beta p, -10, 10)

    and with ``lars=False``: :math:`r = 1`, :math:`d = \mathrm{clamp}(g, -10, 10)` (no
    weight decay). Then :math:`b \leftarrow \mu b + d` (:math:`b = d` on the first
    step), :math:`u = b` (Nesterov: :math:`d + \mu b`), :math:`p \leftarrow p - \mathrm{lr}\,r\,u`.
    All arithmetic is float32 for float16/bfloat16 tensors; results are rounded once.

    Args:
        params: parameters or parameter groups (groups may set ``lars``, and override
            any keyword below).
        lr: learning rate, a float or a one-element tensor (updated in place by
            schedulers; a CUDA tensor keeps the fused/foreach step free of host syncs).
        momentum: :math:`\mu`, no dampening. 0 keeps no state.
        eeta: trust coefficient :math:`\eta`, in (0, 1].
        weight_decay: :math:`\beta`; enters the trust ratio and ``d`` when ``lars=True``.
        epsilon: :math:`\epsilon` in the trust ratio's denominator.
        nesterov: Nesterov momentum.
        trust_clip: upper bound of the trust ratio (seed: 50); ``None`` disables.
        update_clip: element-wise bound of ``d`` (seed: 10); ``None`` disables.
        foreach: ``True`` for the ``torch._foreach_*`` path (no host synchronisation).
        fused: ``True`` for the compiled multi-tensor kernel (CPU and CUDA), which also
            takes ``GradScaler``'s scale and inf flag on the device.
            ``foreach=False, fused=False`` runs the per-parameter reference loop;
            ``None`` picks the fused kernel where it is built, else foreach.

    The state key ``momentum_buffer`` has ``torch.optim.SGD``'s meaning (lr and r
    stay outside the buffer), so an SGD state dict loads into ``Lars``.
    """

    def __init__(
        self,
        params: Iterable[Union[Tensor, dict[str, Any]]],
        lr: Union[float, Tensor] = required,
        momentum: float = 0,
        eeta: float = 1e-3,
        weight_decay: float = 0,
        epsilon: float = 0.0,
        *,
        nesterov: bool = False,
        trust_clip: Optional[float] = 50.0,
        update_clip: Optional[float] = 10.0,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, eeta=eeta, weight_decay=weight_decay, epsilon=epsilon, lars=True,
            nesterov=nesterov, trust_clip=trust_clip, update_clip=update_clip, foreach=foreach, fused=fused,
        )
        if lr is not required:
            _check_hyperparameters(defaults, read_tensor_lr=True)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        _check_hyperparameters(merged, read_tensor_lr=True)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if isinstance(p, Tensor):
                _check_param_dtype(p)
        if merged["fused"] and not ops.has_fused("cpu"):
            raise RuntimeError(
                f"fused=True needs lars_cuda's compiled extension, which did not load ({ops.EXTENSION_ERROR}); "
                "rebuild with `pip install --no-build-isolation -e .` or use foreach=True"
            )
        super().add_param_group({**param_group, "params": params})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also completes groups loaded from another optimizer's state dict (torch.optim.SGD's).
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("lars", True)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler then hands us grad_scale/found_inf instead of unscaling on the host;
        # only the fused kernel consumes them, so every group must take that path.
        return all(self._path(g, _group_params(g)) == "fused" for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)

        # Check everything before touching anything: a bad input leaves the state as it was.
        plans = []
        for group in self.param_groups:
            _check_hyperparameters(group, read_tensor_lr=False)
            params, grads, bufs = self._gather(group)
            path = self._path(group, params)
            _check_path(path, params, grads, bufs, group)
            if path != "fused" and (grad_scale is not None or found_inf is not None):
                raise RuntimeError(
                    "grad_scale/found_inf were given but a group does not run the fused kernel; "
                    "use fused=True or let GradScaler unscale the gradients"
                )
            plans.append((group, params, grads, bufs, path))

        for group, params, grads, bufs, path in plans:
            new_bufs = [i for i, b in enumerate(bufs) if b is None]
            lars(
                params, grads, bufs,
                lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                eeta=group["eeta"], epsilon=group["epsilon"], lars=group["lars"], nesterov=group["nesterov"],
                trust_clip=group["trust_clip"], update_clip=group["update_clip"],
                foreach=path == "foreach", fused=path == "fused",
                grad_scale=grad_scale, found_inf=found_inf,
            )
            # lars() filled in the buffers it created; only those are new state.
            for i in new_bufs:
                self.state[params[i]]["momentum_buffer"] = bufs[i]
        return loss

    @torch.no_grad()
    def trust_ratios(self) -> Tensor:
        """The trust ratio r the next step would give each LARS parameter (one with a
        grad, in a ``lars=True`` group), from the current weights and gradients, as one
        float32 CPU tensor in group order. For monitoring (e.g. TensorBoard histograms)."""
        ratios = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["lars"] or not params:
                continue
            w = torch.stack([torch.linalg.vector_norm(p.detach().float()).cpu() for p in params])
            n = torch.stack([torch.linalg.vector_norm(p.grad.detach().float()).cpu() for p in params])
            r = group["eeta"] * w / (n + group["weight_decay"] * w + group["epsilon"])
            r = torch.where((w > 0) & (n > 0), r, torch.ones_like(r))
            if group["trust_clip"] is not None:
                r = r.clamp(0.0, group["trust_clip"])
            ratios.append(r)
        return torch.cat(ratios) if ratios else torch.empty(0)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Optional[Tensor]]]:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise UnsupportedTensorError("Lars does not support sparse gradients")
        for dtype in {p.dtype for p in params}:  # per dtype, not per tensor: this runs every step
            _check_dtype(dtype)
        bufs: list[Optional[Tensor]] = []
        if group["momentum"] != 0:
            # One dict lookup per param (Tensor.__hash__ is a Python call): this runs every step.
            get = self.state.get
            bufs = [(get(p) or _NO_STATE).get("momentum_buffer") for p in params]
        return params, grads, bufs

    @staticmethod
    def _path(group: dict[str, Any], params: list[Tensor]) -> str:
        fused, foreach = group["fused"], group["foreach"]
        if fused:
            return "fused"
        if foreach:
            return "foreach"
        devices = {p.device for p in params}
        one_device = len(devices) <= 1
        if fused is None and one_device and {p.dtype for p in params} <= set(_KERNEL_DTYPES):
            if not params or ops.has_fused(next(iter(devices))):
                return "fused"
        if foreach is None and one_device:
            return "foreach"
        return "single"


_NO_STATE: dict[str, Any] = {}


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
    if path == "fused":
        if not ops.has_fused(device):
            raise RuntimeError(f"fused=True: the lars_cuda kernel is not built for {device}")
        dtypes = {p.dtype for p in params} | {g.dtype for g in grads}
        if not dtypes <= set(_KERNEL_DTYPES):
            raise UnsupportedTensorError(
                f"fused Lars takes float32, float16 and bfloat16 tensors, got {sorted(map(str, dtypes))}; "
                "use foreach=True for others"
            )


def _is_real_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check_hyperparameters(group: dict[str, Any], *, read_tensor_lr: bool) -> None:
    """Raises ValueError/TypeError naming the first invalid hyper-parameter."""
    lr = group["lr"]
    if lr is required:
        raise TypeError("Lars needs a learning rate: pass lr=... (or give every param group an 'lr')")
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"a tensor lr must hold one element, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"a tensor lr must be floating point, got {lr.dtype}")
        # Reading a CUDA tensor would synchronise, so a step only checks floats.
        if read_tensor_lr and not (math.isfinite(lr.item()) and lr.item() >= 0):
            raise ValueError(f"Invalid learning rate: {lr.item()}")
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
    for name in ("lars", "nesterov"):
        if not isinstance(group[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(group[name]).__name__}")
    for name in ("foreach", "fused"):
        if group[name] is not None and not isinstance(group[name], bool):
            raise TypeError(f"{name} must be None or a bool, got {type(group[name]).__name__}")
    if group["foreach"] and group["fused"]:
        raise ValueError("foreach and fused cannot both be True")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError("Nesterov momentum requires a nonzero momentum")
