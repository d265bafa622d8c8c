"""The compiled ops, in pytorch/extension-cpp's shape: loading ``lars_cuda._C``
(which registers ``torch.ops.lars_cuda.*``), a Python wrapper per op, their fake
implementations for ``torch.compile`` — and which devices they serve, and why
not where they do not (:func:`fused_unavailable`)."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import build_facts
from .lamb_options import LAMB_SUM_FIELDS

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.lars_cuda.*)

    EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # never built, or built against another torch ("undefined symbol")
    _C = None
    EXTENSION_ERROR = exc
    warnings.warn(f"lars_cuda: {build_facts.load_failure(exc)}. Until then Lars runs its foreach path (exact, slower); "
                  f"`python -m lars_cuda` reports the details", RuntimeWarning, stacklevel=2)

__all__ = ["EXTENSION_ERROR", "cpu_kernel", "cuda_arch", "describe_cuda_device", "fused_lamb_groups_",
           "fused_lamb_unavailable", "fused_lars_apply_", "fused_lars_groups_", "fused_lars_norms", "fused_runs_on",
           "fused_unavailable", "has_fused", "last_cuda_launch", "launch_env"]


def has_fused(device: torch.device | str) -> bool:
    """Whether the compiled kernel serves tensors on ``device``."""
    if _C is None:
        return False
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch._C._dispatch_has_kernel_for_dispatch_key("lars_cuda::fused_lars_groups_", "CUDA")
    return False


_RUNS_ON: dict[int, bool] = {}


def _cuda_index(device: torch.device) -> int:
    """The device's index; a bare "cuda" means the current device."""
    return device.index if device.index is not None else torch.cuda.current_device()


def fused_runs_on(device: torch.device | str) -> bool:
    """Whether the built kernel can run on ``device``: always on the CPU; on a CUDA
    device only if the build holds code for its architecture (SASS, or PTX the
    driver compiles). A build without a visible GPU holds sm_80 and sm_90 SASS and
    compute_90 PTX, so it runs on every card from the A100 on."""
    device = torch.device(device)
    if not has_fused(device):
        return False
    if device.type != "cuda":
        return True
    index = _cuda_index(device)
    if index not in _RUNS_ON:
        _RUNS_ON[index] = bool(torch.ops.lars_cuda.cuda_kernel_runs(index))
    return _RUNS_ON[index]


def describe_cuda_device(device: torch.device | str) -> str:
    """'NVIDIA B200 (sm_100)': the card, for messages."""
    index = _cuda_index(torch.device(device))
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"


def cuda_arch(device: torch.device | str) -> str:
    """'9.0': the card's architecture as TORCH_CUDA_ARCH_LIST spells it."""
    major, minor = torch.cuda.get_device_capability(_cuda_index(torch.device(device)))
    return f"{major}.{minor}"


def fused_unavailable(device: torch.device) -> Optional[str]:
    """Why the fused kernel cannot run on ``device`` (with the fix), or None if it can."""
    if EXTENSION_ERROR is not None:
        return f"lars_cuda's compiled kernels did not load ({build_facts.load_failure(EXTENSION_ERROR)})"
    if fused_runs_on(device):
        return None
    if has_fused(device):  # a CUDA build without code for this card
        return (f"the fused kernel has no code for {describe_cuda_device(device)}; rebuild for this card: "
                f"{build_facts.rebuild_command(cuda_arch(device))}")
    info = build_facts.build_info() or {}
    if device.type == "cuda" and not info.get("with_cuda", True):
        return (f"this build of lars_cuda has no CUDA kernel (built with LARS_CUDA_FORCE_CPU=1 or without nvcc); "
                f"rebuild it with: {build_facts.rebuild_command()}")
    return f"the fused kernel is not built for {device.type}"


def _require_extension() -> None:
    if _C is None:
        raise RuntimeError(f"lars_cuda's compiled extension did not load, so its ops are unavailable: "
                           f"{build_facts.load_failure(EXTENSION_ERROR)}")


def fused_lars_groups_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    group_sizes: list[int],
    hyper: list[float],
    flags: list[int],
    lr_tensors: list[Optional[Tensor]],
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One LARS step over several param groups of one device, in place; every group
    is checked before any is written. Layout: ``lars_cuda.options.StepOptions`` / ``csrc/group_args.h``
    (``fused_lars_groups_``) or :func:`lars_cuda.functional.fused_lars_groups`."""
    _require_extension()
    torch.ops.lars_cuda.fused_lars_groups_(
        params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf)


def fused_lars_norms(params: list[Tensor], grads: list[Tensor], group_sizes: list[int], flags: list[int]) -> Tensor:
    """The sharded step's first half: per tensor, (sum p^2, sum g^2, sum g*p) of the
    given (local) tensors as a float64 ``[N, 3]`` tensor on their device (g*p only
    for groups with flag 32, norm of the update), zeros for the tensors of groups
    without the lars flag. Grads are read as stored (a
    ``GradScaler``'s scale is divided out by :func:`fused_lars_apply_`)."""
    _require_extension()
    return torch.ops.lars_cuda.fused_lars_norms(params, grads, group_sizes, flags)


def fused_lars_apply_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    group_sizes: list[int],
    hyper: list[float],
    flags: list[int],
    lr_tensors: list[Optional[Tensor]],
    sums: Tensor,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """The sharded step's second half: :func:`fused_lars_groups_` with each tensor's
    norms taken from ``sums`` (the all-reduced output of :func:`fused_lars_norms`)
    instead of its own data."""
    _require_extension()
    torch.ops.lars_cuda.fused_lars_apply_(
        params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors, sums, grad_scale, found_inf)


def fused_lamb_unavailable(device: torch.device) -> Optional[str]:
    """Why the LAMB kernel cannot run on ``device`` (with the fix), or None if it can:
    always on the CPU; on a CUDA device where the build registered the CUDA LAMB op and
    holds code for the card (:func:`fused_runs_on`)."""
    if EXTENSION_ERROR is not None:
        return f"lars_cuda's compiled kernels did not load ({build_facts.load_failure(EXTENSION_ERROR)})"
    if device.type == "cpu":
        return None
    if device.type == "cuda" and torch._C._dispatch_has_kernel_for_dispatch_key("lars_cuda::fused_lamb_groups_",
                                                                                 "CUDA"):
        return fused_unavailable(device)
    return f"the fused LAMB kernel is not built for {device.type}"


def fused_lamb_groups_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    group_sizes: list[int],
    hyper: list[float],
    flags: list[int],
    lr_tensors: list[Optional[Tensor]],
    max_grad_norm: Optional[float] = None,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One LAMB step over several param groups of one device, in place; every group
    is checked before any is written. Layout: ``lars_cuda.lamb_options`` /
    ``csrc/lamb_args.h``, or :func:`lars_cuda.lamb_functional.fused_lamb`."""
    _require_extension()
    torch.ops.lars_cuda.fused_lamb_groups_(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                           flags, lr_tensors, max_grad_norm, grad_scale, found_inf)


def fused_lamb_norms(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                     state_steps: list[Tensor], group_sizes: list[int], hyper: list[float], flags: list[int],
                     lr_tensors: list[Optional[Tensor]], grad_scale: Optional[Tensor] = None) -> Tensor:
    """The sharded LAMB step's first half: per tensor of the given (local) tensors a
    float64 row (sum p², sum u², sum u·p, caution mask count, numel; the last three in
    caution groups only) as ``[N, 5]`` on their device, zeros for tensors needing no
    sum; nothing is written. Arguments as :func:`fused_lamb_groups_`'s; ``grad_scale``
    divides every grad (the sharded step passes its global clip there)."""
    _require_extension()
    return torch.ops.lars_cuda.fused_lamb_norms(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes,
                                                hyper, flags, lr_tensors, grad_scale)


def fused_lamb_apply_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                      state_steps: list[Tensor], group_sizes: list[int], hyper: list[float], flags: list[int],
                      lr_tensors: list[Optional[Tensor]], sums: Tensor, grad_scale: Optional[Tensor] = None) -> None:
    """The sharded LAMB step's second half: :func:`fused_lamb_groups_` (without the
    global clip) with each tensor's ratio formed from ``sums`` (the all-reduced output
    of :func:`fused_lamb_norms`) instead of its own data."""
    _require_extension()
    torch.ops.lars_cuda.fused_lamb_apply_(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                          flags, lr_tensors, sums, grad_scale)


def last_cuda_launch() -> str:
    """'cooperative', 'three-kernel', 'single' (lars=False) or 'none': the path of the last CUDA call."""
    _require_extension()
    return torch.ops.lars_cuda.last_cuda_launch()


@contextlib.contextmanager
def launch_env(**knobs: Optional[str]) -> Iterator[None]:
    """Sets CUDA launch knobs (``LARS_CUDA_LAUNCH="three-kernel"``,
    ``LARS_CUDA_WAVE_MB``, ``LARS_CUDA_BLOCKS_PER_SM``; ``None`` unsets one) for the
    ``with`` block. The extension reads them once (csrc/launch_config.h), so a
    change made in-process takes effect through this (or
    ``torch.ops.lars_cuda.reload_launch_config()``)."""
    _require_extension()
    saved = {k: os.environ.get(k) for k in knobs}
    try:
        for k, v in knobs.items():
            _set_env(k, v)
        torch.ops.lars_cuda.reload_launch_config()
        yield
    finally:
        for k, v in saved.items():
            _set_env(k, v)
        torch.ops.lars_cuda.reload_launch_config()


def _set_env(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def cpu_kernel() -> str:
    """'avx512', 'avx2' or 'default': the build of the CPU kernel this process runs.

    The instruction set torch's own CPU kernels use (``torch.backends.cpu.get_cpu_capability()``,
    moved by ``ATEN_CPU_CAPABILITY``), capped by the CPU; ``LARS_CUDA_CPU_KERNEL=avx512|avx2|default``
    asks for one build."""
    _require_extension()
    return torch.ops.lars_cuda.cpu_kernel()


if _C is not None:

    @torch.library.register_fake("lars_cuda::fused_lars_groups_")
    def _fused_lars_groups_fake(params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors,
                                grad_scale=None, found_inf=None):
        if len(params) != len(grads) or sum(group_sizes) != len(params):
            raise ValueError(
                f"fused_lars_groups_: {len(params)} params, {len(grads)} grads, group sizes {list(group_sizes)}")
        return None

    @torch.library.register_fake("lars_cuda::fused_lamb_groups_")
    def _fused_lamb_groups_fake(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper, flags,
                                lr_tensors, max_grad_norm=None, grad_scale=None, found_inf=None):
        _check_lamb_lists("fused_lamb_groups_", params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes)
        return None

    @torch.library.register_fake("lars_cuda::fused_lars_norms")
    def _fused_lars_norms_fake(params, grads, group_sizes, flags):
        if len(params) != len(grads) or sum(group_sizes) != len(params):
            raise ValueError(
                f"fused_lars_norms: {len(params)} params, {len(grads)} grads, group sizes {list(group_sizes)}")
        device = params[0].device if params else torch.device("cpu")
        return torch.empty((len(params), 3), dtype=torch.float64, device=device)

    @torch.library.register_fake("lars_cuda::fused_lars_apply_")
    def _fused_lars_apply_fake(params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors, sums,
                               grad_scale=None, found_inf=None):
        if len(params) != len(grads) or sum(group_sizes) != len(params) or tuple(sums.shape) != (len(params), 3):
            raise ValueError(f"fused_lars_apply_: {len(params)} params, {len(grads)} grads, group sizes "
                             f"{list(group_sizes)}, sums of shape {tuple(sums.shape)}")
        return None

    def _check_lamb_lists(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes):
        n = len(params)
        if sum(group_sizes) != n or any(len(x) != n for x in (grads, exp_avgs, exp_avg_sqs, state_steps)):
            raise ValueError(f"{op}: {n} params, {len(grads)} grads, {len(exp_avgs)} exp_avgs, "
                             f"{len(exp_avg_sqs)} exp_avg_sqs, {len(state_steps)} state_steps, "
                             f"group sizes {list(group_sizes)}")

    @torch.library.register_fake("lars_cuda::fused_lamb_norms")
    def _fused_lamb_norms_fake(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper, flags,
                               lr_tensors, grad_scale=None):
        _check_lamb_lists("fused_lamb_norms", params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes)
        device = params[0].device if params else torch.device("cpu")
        return torch.empty((len(params), len(LAMB_SUM_FIELDS)), dtype=torch.float64, device=device)

    @torch.library.register_fake("lars_cuda::fused_lamb_apply_")
    def _fused_lamb_apply_fake(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper, flags,
                               lr_tensors, sums, grad_scale=None):
        _check_lamb_lists("fused_lamb_apply_", params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes)
        if tuple(sums.shape) != (len(params), len(LAMB_SUM_FIELDS)):
            raise ValueError(f"fused_lamb_apply_: sums of shape {tuple(sums.shape)} for {len(params)} params")
        return None
