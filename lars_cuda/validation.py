"""Every check of the optimizer's input, and so every error it raises, in one
place. One error type per kind of mistake, as torch.optim raises them:

* ``TypeError``: an option of the wrong type (``momentum="0.9"``, ``nesterov=1``);
* ``ValueError``: an option or tensor out of range or inconsistent (a negative lr,
  a buffer unlike its param, tensors on two devices, GradScaler's on-device
  ``grad_scale`` off the fused path, another flavour's state dict);
* :class:`UnsupportedTensorError`: a tensor no path steps (sparse, complex, integer);
* ``RuntimeError``: ``fused=True`` where the compiled kernel is not built.

Nothing here writes: a step checks everything before it touches anything, so a
bad input leaves params and state as they were. (The compiled op checks each
tensor again, in C++, before it writes: ``csrc/group_args.cpp``.)
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import Any, Optional

import torch
from torch import Tensor

from . import ops
from .options import KERNEL_DTYPES, LARS_OPTIONS
from .sharded import any_dtensor, is_dtensor
from .state_dict_schemas import ALL_BUFFER_KEYS, ALL_OPTIONS, HOME
from .user_frame import user_stacklevel

__all__ = ["UnsupportedTensorError", "check_amp_scaling_path", "check_dtype", "check_group_options",
           "check_lamb_grads", "check_lamb_layouts", "check_lamb_options", "lamb_path",
           "check_grads", "check_path", "check_sharded", "check_sharded_buffer", "check_state_dict_schema",
           "check_grad_scale"]


class UnsupportedTensorError(TypeError, ValueError, RuntimeError):
    """A parameter or gradient the optimizer cannot step (sparse, complex, integer).

    A ``TypeError`` by nature; also a ``ValueError`` (a bad input) and a
    ``RuntimeError`` (what ``torch.optim`` raises for sparse gradients), so code
    written against any of the three conventions catches it."""


def _is_real_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def check_group_options(group: dict[str, Any], *, read_tensor_lr: bool) -> None:
    """Raises ValueError/TypeError naming the first invalid option of a param group
    (in Lars's options). ``read_tensor_lr``: also read a CUDA tensor lr's value (a
    host sync: at construction only)."""
    _check_lr(group["lr"], read_tensor_lr, "Lars")
    for name in _CHECKED_BY_RULE:
        _OPTION_RULES.get(name, _a_bool)(name, group[name])
    _check_path_options(group)
    if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a nonzero momentum and zero dampening")


def _check_path_options(group: dict[str, Any]) -> None:
    """torch.optim's rule: a group asks for one path at most."""
    if group["foreach"] and group.get("fused"):
        raise ValueError("foreach and fused cannot both be True")


def check_lamb_options(group: dict[str, Any], max_grad_norm: Any, *, read_tensor_lr: bool) -> None:
    """Raises ValueError/TypeError naming the first invalid option of a LAMB param
    group (in Lamb's options) or of the optimizer-wide ``max_grad_norm``."""
    from .lamb_options import DECAY_MODES

    _check_lr(group["lr"], read_tensor_lr, "Lamb")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    for i, beta in enumerate(betas):
        _real(f"betas[{i}]", beta)
        if not 0 <= beta < 1:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}; it must lie in [0, 1)")
    _non_negative("eps", group["eps"])
    _non_negative("weight_decay", group["weight_decay"])
    if group["decay_mode"] not in DECAY_MODES:
        raise ValueError(f"decay_mode must be one of {DECAY_MODES}, got {group['decay_mode']!r}")
    for name in ("bias_correction", "grad_averaging", "trust_clip", "always_adapt", "caution", "maximize"):
        _a_bool(name, group[name])
    _bool_or_none("foreach", group["foreach"])
    _bool_or_none("fused", group.get("fused"))
    _check_path_options(group)
    max_lr = group["max_lr"]
    if max_lr is not None:
        _real("max_lr", max_lr, "a positive real number or None")
        if not (math.isfinite(max_lr) and max_lr > 0):
            raise ValueError(f"Invalid max_lr value: {max_lr}; it must be positive")
    if max_grad_norm is not None:
        _real("max_grad_norm", max_grad_norm, "a positive real number or None")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}; it must be positive (None turns "
                             "clipping off; 0 would divide every gradient by infinity)")


def check_lamb_grads(owner: str, params: list[Tensor]) -> None:
    """A LAMB group's stepping params' grads: no sparse, complex or integer tensors;
    DTensor grads laid out as their params. This runs every step."""
    grads = [p.grad for p in params]
    check_grads(grads, {p.dtype for p in params}, owner)
    if any_dtensor(params):
        for i, (p, g) in enumerate(zip(params, grads)):
            if is_dtensor(p):
                check_sharded(p, g, i, owner)


def check_lamb_layouts(owner: str, params: list[Tensor], state: dict) -> None:
    """A LAMB group's grads and moments like their params (shape, dtype, device). This
    runs every step off the kernel path (the kernel checks the same in C++ before it
    writes, and ``Lamb`` calls this only to name what it refused): whole lists are
    compared first, a param at a time only to name a mismatch."""
    layout = [(p.shape, p.dtype, p.device) for p in params]
    get, empty = state.get, {}
    entries = [get(p) or empty for p in params]
    for what, tensors in (("the grad", [p.grad for p in params]),
                          ("exp_avg", [e.get("exp_avg") for e in entries]),
                          ("exp_avg_sq", [e.get("exp_avg_sq") for e in entries])):
        seen = [(t.shape, t.dtype, t.device) if t is not None else want for t, want in zip(tensors, layout)]
        if seen != layout:
            i = next(i for i, (a, b) in enumerate(zip(seen, layout)) if a != b)
            (shape, dtype, device), (p_shape, p_dtype, p_device) = seen[i], layout[i]
            raise ValueError(f"{owner}: {what} of param {i} ({tuple(shape)}, {dtype}, {device}) "
                             f"does not match it ({tuple(p_shape)}, {p_dtype}, {p_device})")


def lamb_path(owner: str, foreach: Optional[bool], devices: set, fused: Optional[bool] = None,
              dtypes: frozenset = frozenset()) -> str:
    """A LAMB group's path, as Lars chooses (torch.optim's flags): ``fused=True`` -> the
    kernel, ``foreach=True`` -> foreach, ``foreach=False`` -> the loop; unset, the kernel
    where it serves every tensor of the group, else foreach where they share a device.
    The kernel serves float32/float16/bfloat16 tensors of one device (DTensor params:
    its two halves around their all-reduce), on the CPU and on a CUDA device the
    build has code for (else fused=True warns once and runs foreach).
    ``fused=True`` with another dtype, or either flag over two devices, is refused."""
    if (foreach or fused) and len(devices) > 1:
        raise ValueError(f"foreach/fused {owner} steps one device per param group, got "
                         f"{sorted(map(str, devices))}; put each device's params in its own group or use "
                         "foreach=False")
    if fused and not dtypes <= KERNEL_DTYPES:
        raise TypeError(f"fused {owner} steps float32, float16 and bfloat16 params, got "
                        f"{sorted(map(str, dtypes - KERNEL_DTYPES))}; use foreach=True for them")
    if foreach is False or len(devices) > 1:
        return "single"
    if foreach or fused is False or not dtypes <= KERNEL_DTYPES:
        return "foreach"
    device = next(iter(devices), torch.device("cpu"))
    why_not = ops.fused_lamb_unavailable(device)
    if why_not is None:
        return "fused"
    if fused:
        _warn_lamb_fused_unavailable(owner, device, why_not)
    return "foreach"


_WARNED_LAMB: set = set()


def _warn_lamb_fused_unavailable(owner: str, device: torch.device, why_not: str) -> None:
    """One warning per device and process: fused=True was asked for where the kernel cannot run."""
    if device in _WARNED_LAMB:
        return
    _WARNED_LAMB.add(device)
    warnings.warn(f"lars_cuda: fused=True was asked for, but {why_not}; {owner} runs the foreach path on "
                  f"{device} (the same math)", RuntimeWarning, stacklevel=user_stacklevel())


def _check_lr(lr: Any, read_tensor_lr: bool, owner: str) -> None:
    if lr is None:  # required unless every group brings its own (as Horovod's re-created optimizer does)
        raise TypeError(f"{owner} needs a learning rate: pass lr=... (or give every param group an 'lr')")
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


def _real(name: str, value: Any, what: str = "a real number") -> None:
    if not _is_real_number(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def _non_negative(name: str, value: Any) -> None:
    _real(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name} value: {value}")


def _trust_coefficient(name: str, value: Any) -> None:
    _real(name, value)
    if not 0 < value <= 1:
        raise ValueError(f"Invalid {name} (trust coefficient) value: {value}; it must lie in (0, 1]")


def _fraction(name: str, value: Any) -> None:
    _real(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"Invalid {name} value: {value}; it must lie in [0, 1]")


def _clip_or_none(name: str, value: Any) -> None:
    if value is None:
        return
    _real(name, value, "a real number or None")
    if not (value >= 0 and not math.isnan(value)):
        raise ValueError(f"Invalid {name} value: {value}")


def _a_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _bool_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None or a bool, got {type(value).__name__}")


# How each option of a param group is checked (lr, first, by check_group_options
# itself); an option not named here is a bool.
_OPTION_RULES = {
    "momentum": _non_negative, "weight_decay": _non_negative, "epsilon": _non_negative,
    "eeta": _trust_coefficient, "dampening": _fraction, "trust_clip": _clip_or_none, "update_clip": _clip_or_none,
    "decay": _bool_or_none, "foreach": _bool_or_none, "fused": _bool_or_none,
}
_CHECKED_BY_RULE = tuple(name for name in LARS_OPTIONS if name != "lr")


def check_dtype(dtype: torch.dtype, owner: str = "Lars") -> None:
    if dtype.is_complex:
        raise UnsupportedTensorError(f"{owner} does not support complex parameters (got {dtype})")
    if not dtype.is_floating_point:
        raise UnsupportedTensorError(f"{owner} steps floating-point parameters only (got {dtype})")


def check_grads(grads: list[Tensor], dtypes: set[torch.dtype], owner: str = "Lars") -> None:
    """Per dtype, not per tensor: this runs every step. (A grad's dtype is its param's:
    autograd refuses to assign another, and the kernel checks it again.)"""
    if any(g.is_sparse for g in grads):
        raise UnsupportedTensorError(f"{owner} does not support sparse gradients")
    for dtype in dtypes:
        check_dtype(dtype, owner)


def check_amp_scaling_path(fused: bool, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """GradScaler's on-device scale and inf flag are consumed by the fused kernel
    only: the one error for every caller that would hand them to another path."""
    if (grad_scale is not None or found_inf is not None) and not fused:
        raise ValueError("grad_scale/found_inf are only supported by the fused path")


def check_path(path: str, params: list[Tensor], bufs: list[Optional[Tensor]], lr: Any) -> None:
    """What a path needs of its tensors. The fused op checks each tensor itself (in
    C++, before it writes), so the fused path only pays for checks over whole lists."""
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
    if isinstance(lr, Tensor) and lr.device not in (device, torch.device("cpu")):
        raise ValueError(f"lr tensor is on {lr.device} but the params are on {device}")
    if path == "fused" and not ops.has_fused(device):  # cpu/cuda without the kernel ran foreach (plan.choose_path)
        raise RuntimeError(f"fused=True: the lars_cuda kernel is not built for {device}")


def _describe(placements) -> str:
    return "(" + ", ".join(str(p) for p in placements) + ")"


def check_sharded(param: Tensor, grad: Tensor, index: int, owner: str = "Lars") -> None:
    """Raises ValueError/TypeError for a DTensor param the sharded step cannot take."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    if not is_dtensor(grad):
        raise TypeError(f"param {index} is a DTensor but its grad is a {type(grad).__name__}; "
                        "a sharded param needs a DTensor grad on the same mesh")
    for what, t in (("param", param), ("grad", grad)):
        for dim, placement in enumerate(t.placements):
            if isinstance(placement, Partial):
                raise ValueError(
                    f"{owner} cannot step a {what} with placement {placement} on mesh dim {dim} (param {index}, "
                    f"placements {_describe(t.placements)}): a Partial tensor is a pending sum, not a value; "
                    "redistribute it to Shard or Replicate first")
            if not isinstance(placement, (Shard, Replicate)):
                raise ValueError(f"{owner} does not know the placement {placement} of {what} {index} "
                                 f"(placements {_describe(t.placements)}); Shard and Replicate are supported")
    if grad.device_mesh != param.device_mesh or tuple(grad.placements) != tuple(param.placements):
        raise ValueError(
            f"param {index} has placements {_describe(param.placements)} on {param.device_mesh}, but its grad "
            f"{_describe(grad.placements)} on {grad.device_mesh}; {owner.upper()} reads both shard by shard, so they "
            "must match")


def check_sharded_buffer(param: Tensor, buf: Tensor, index: int) -> None:
    """A sharded param's buffer is a DTensor laid out as the param (DCP saves it shard by shard)."""
    if not is_dtensor(buf) or buf.placements != param.placements or buf.shape != param.shape:
        raise ValueError(f"the momentum buffer of sharded param {index} must be a DTensor laid out as "
                         f"the param ({tuple(param.shape)}, {tuple(param.placements)})")


def check_grad_scale(grad_scale: Any) -> float:
    """``trust_ratios(grad_scale=...)``: a positive finite number (or a one-element tensor)."""
    scale = 1.0 if grad_scale is None else float(grad_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"grad_scale must be a positive finite number, got {scale}")
    return scale


def check_state_dict_schema(name: str, options: tuple[str, ...], buffer_key: str, state_dict: dict[str, Any]) -> None:
    """Raises ValueError naming the first key of ``state_dict`` that belongs to another
    flavour's schema than ``options`` / ``buffer_key`` (lars_cuda.state_dict_schemas)."""
    own = set(options)
    for i, group in enumerate(state_dict.get("param_groups", [])):
        foreign = sorted(k for k in group if k in ALL_OPTIONS and k not in own)
        if foreign:
            key = next((k for k in foreign if k in HOME), foreign[0])  # the key that tells whose it is
            home = HOME.get(key, "another LARS flavour")
            raise ValueError(
                f"{name}.load_state_dict: param group {i} holds {key!r}, an option {name} does not have: "
                f"this state dict was saved by {home} (keys {foreign}); load it into that class, or see the "
                f"README's 'Switching from ...' for the class that reads it")
    for index, entry in state_dict.get("state", {}).items():
        foreign = sorted(k for k in entry if k in ALL_BUFFER_KEYS and k != buffer_key)
        if foreign:
            raise ValueError(
                f"{name}.load_state_dict: the state of param {index} holds {foreign[0]!r} but {name} keeps its "
                f"momentum under {buffer_key!r}: this state dict was saved by {HOME[foreign[0]]}; loading it here "
                f"would start from zero momentum")
