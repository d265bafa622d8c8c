"""What was built, for which torch and CUDA, and what runs on this machine: the
report of ``python -m lars_cuda`` (paste it into an issue), the environment
switches lars_cuda reads and how its CUDA kernel was verified. The build's
facts are ``lars_cuda.build_facts``'s; what runs where is ``lars_cuda.ops``'s.
"""

from __future__ import annotations

import os
import platform
import sys

import torch

from . import _version, build_facts, ops

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

# How this release's CUDA kernel was verified (README, "Known limits"): the one statement of it.
CUDA_VERIFIED = ("device code executed on the CPU under the CUDA emulator of the tests (tests/support/cuda_emulator) "
                 "in every make test; last run on a GPU: 2026-11-26 (NVIDIA H100); the LAMB kernel never yet")


def _cpu_choice() -> str:
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


# What each optimizer runs (the paths it has); a line of the report.
OPTIMIZERS = ("Lars and the LARS flavours of lars_cuda.compat (fused kernel, foreach, loop); "
              "Lamb, TimmLamb, FusedLAMB (fused kernel, foreach, loop)")


def report() -> str:
    """The text ``python -m lars_cuda`` prints: paste it into an issue."""
    info = build_facts.build_info()
    lines = [f"lars_cuda {_version.__version__} at {build_facts.PACKAGE_DIR}",
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
        lines.append(f"compiled extension: NOT LOADED -- {build_facts.load_failure(ops.EXTENSION_ERROR)}")
        lines.append("so: Lars runs its foreach path (exact, slower); fused=True warns and does the same")
    else:
        lines.append("compiled extension: loaded")
        lines.append(f"CPU: {_cpu_name()}; CPU kernel that runs here: {_cpu_choice()}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            device = torch.device("cuda", index)
            problem = ops.fused_unavailable(device)
            lines.append(f"cuda:{index} {ops.describe_cuda_device(device)}: "
                         + ("fused kernel runs" if problem is None else f"no fused kernel -- {problem}"))
    else:
        lines.append("GPUs: none visible")
    lines.append(f"optimizers: {OPTIMIZERS}")
    in_force = [f"{k}={os.environ[k]}" for k in ENV_SWITCHES if os.environ.get(k)]
    lines.append("environment switches in force: " + (", ".join(in_force) if in_force else "none"))
    return "\n".join(lines)
