"""What was built, for which torch and CUDA, and what runs on this machine: the
report of ``python -m lars_cuda`` and the facts of the warnings given when the
compiled kernels cannot serve a step (the library did not load, or holds no code
for a card).

The build's own facts come from ``lars_cuda/_build_info.json``, written by
setup.py at build time, so that they can be reported even when the compiled
library no longer loads (a torch upgraded after the build: "undefined symbol").
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any, Optional

import torch

# The environment switches lars_cuda reads, and what each does: the one list of them.
ENV_SWITCHES = {
    "LARS_CUDA_CPU_KERNEL": "run: ask for one build of the CPU kernel (avx512, avx2, default), capped by the CPU",
    "ATEN_CPU_CAPABILITY": "run: torch's own CPU instruction set, which the CPU kernel follows",
    "LARS_CUDA_CPU_WAVE_MB": "run: MiB of params+grads per CPU wave (default 4)",
    "LARS_CUDA_WAVE_MB": "run: MiB of params+grads per CUDA wave (default 0: one wave)",
    "LARS_CUDA_LAUNCH": "run: force a CUDA launch path (cooperative, three-kernel)",
    "LARS_CUDA_BLOCKS_PER_SM": "run: cap on CUDA blocks per SM (default 8)",
    "LARS_CUDA_FORCE_CPU": "build: the CPU kernel only",
    "LARS_CUDA_NO_AVX2": "build: leave out the AVX2/AVX-512 CPU builds",
    "TORCH_CUDA_ARCH_LIST": "build: the CUDA architectures to compile for",
    "CUDA_HOME": "build: the CUDA toolkit folder",
}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# How this release's CUDA kernel was verified (README, "Known limits"): the one statement of it.
CUDA_VERIFIED = ("device code executed on the CPU under the CUDA emulator of the tests (tests/cuda_emulator) "
                 "in every make test; last run on a GPU: 2026-11-26 (NVIDIA H100)")


def build_info() -> Optional[dict[str, Any]]:
    """The facts setup.py recorded at build time, or None (a source tree never built)."""
    path = os.path.join(_PACKAGE_DIR, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _source_folder() -> Optional[str]:
    info = build_info()
    candidates = [info.get("source")] if info else []
    candidates.append(os.path.dirname(_PACKAGE_DIR))  # a source checkout imported in place
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "setup.py")) and os.path.isfile(
                os.path.join(folder, "pyproject.toml")):
            return folder
    return None


def rebuild_command() -> str:
    """The command that rebuilds the extension against the torch that runs now."""
    pip = f"{sys.executable} -m pip install --no-build-isolation --no-deps"
    source = _source_folder()
    if source is None:
        return f"{pip} --force-reinstall <the lars_cuda source folder>"
    if os.path.realpath(os.path.join(source, "lars_cuda")) == os.path.realpath(_PACKAGE_DIR):
        return f"{pip} -e {source}"  # imported from the source tree: an editable or in-place build
    return f"{pip} --force-reinstall {source}"


def load_failure(error: BaseException) -> str:
    """Why ``lars_cuda._C`` did not load, in a user's words, with what to do."""
    info = build_info()
    text = str(error)
    if isinstance(error, ModuleNotFoundError) and getattr(error, "name", "") == "lars_cuda._C":
        why = "the compiled extension was never built here"
    elif "undefined symbol" in text and info and info.get("torch") != torch.__version__:
        why = (f"it was built against torch {info['torch']} and this is torch {torch.__version__} "
               f"(torch's C++ ABI changes between releases)")
    else:
        why = "the compiled library failed to load"
    return f"{why}: {type(error).__name__}: {text}; rebuild it with: {rebuild_command()}"


def fused_unavailable(device: torch.device) -> Optional[str]:
    """Why the fused kernel cannot run on ``device`` (with the fix), or None if it can."""
    from . import ops

    if ops.EXTENSION_ERROR is not None:
        return f"lars_cuda's compiled kernels did not load ({load_failure(ops.EXTENSION_ERROR)})"
    if ops.fused_runs_on(device):
        return None
    if ops.has_fused(device):  # a CUDA build without code for this card
        return (f"the fused kernel has no code for {ops.describe_cuda_device(device)}; rebuild for this card: "
                f"{ops.rebuild_hint(device)}")
    info = build_info() or {}
    if device.type == "cuda" and not info.get("with_cuda", True):
        return (f"this build of lars_cuda has no CUDA kernel (built with LARS_CUDA_FORCE_CPU=1 or without nvcc); "
                f"rebuild it with: {rebuild_command()}")
    return f"the fused kernel is not built for {device.type}"


def _cpu_choice(ops) -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get("LARS_CUDA_CPU_KERNEL")
    kernel = ops.cpu_kernel()
    if forced:
        why = f"LARS_CUDA_CPU_KERNEL={forced} asked for it"
    else:
        why = f"torch's own kernels run {capability}"
    wanted = forced or {"AVX512": "avx512", "AVX2": "avx2"}.get(capability, "default")
    if wanted != kernel:
        why += f"; this CPU cannot run the {wanted} build"
    return f"{kernel} ({why})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def report() -> str:
    """The text ``python -m lars_cuda`` prints: paste it into an issue."""
    from . import _version, ops

    info = build_info()
    lines = [f"lars_cuda {_version.__version__} at {_PACKAGE_DIR}",
             f"python {platform.python_version()} ({sys.executable}), {platform.machine()}",
             f"torch running: {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    if info is None:
        lines.append("torch built against: unknown (no _build_info.json: this source tree was never built)")
    else:
        same = "" if info["torch"] == torch.__version__ else "   <-- differs from the torch running: rebuild"
        lines.append(f"torch built against: {info['torch']} (CUDA {info['torch_cuda'] or 'none'}){same}")
        if info["with_cuda"]:
            lines.append(f"CUDA kernel: SASS {', '.join(info['cuda_sass']) or 'none'}; "
                         f"PTX {', '.join(info['cuda_ptx']) or 'none'} (toolkit {info['cuda_home']})")
            lines.append(f"CUDA kernel verified: {CUDA_VERIFIED}")
        else:
            lines.append("CUDA kernel: not built (CPU-only build)")
        lines.append(f"CPU kernel builds: {', '.join(info['cpu_builds'])}")
    if ops.EXTENSION_ERROR is not None:
        lines.append(f"compiled extension: NOT LOADED -- {load_failure(ops.EXTENSION_ERROR)}")
        lines.append("so: Lars runs its foreach path (exact, slower); fused=True warns and does the same")
    else:
        lines.append("compiled extension: loaded")
        lines.append(f"CPU: {_cpu_name()}; CPU kernel that runs here: {_cpu_choice(ops)}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            device = torch.device("cuda", index)
            problem = fused_unavailable(device)
            lines.append(f"cuda:{index} {ops.describe_cuda_device(device)}: "
                         + ("fused kernel runs" if problem is None else f"no fused kernel -- {problem}"))
    else:
        lines.append("GPUs: none visible")
    in_force = [f"{k}={os.environ[k]}" for k in ENV_SWITCHES if os.environ.get(k)]
    lines.append("environment switches in force: " + (", ".join(in_force) if in_force else "none"))
    return "\n".join(lines)
