"""What this machine can run, read from the machine itself (never from the machine a
test was written on): the CPU's instruction-set flags, and which build of the CPU
kernel a request should get here."""

from __future__ import annotations

import functools
import platform

# The flags each x86 build of the CPU kernel needs (csrc/cpu/lars_cpu.cpp's choice).
KERNEL_FLAGS = {
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags as the kernel (/proc/cpuinfo) reports them; empty off Linux x86."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def can_run(kernel: str) -> bool:
    return kernel == "default" or KERNEL_FLAGS[kernel] <= cpu_flags()


def expected_kernel(requested: str) -> str:
    """The build a request (avx512 / avx2 / default) gets on this CPU: the request, capped."""
    if requested == "avx512" and can_run("avx512"):
        return "avx512"
    if requested in ("avx512", "avx2") and can_run("avx2"):
        return "avx2"
    return "default"


BUILDS_BEST_FIRST = ("avx512", "avx2", "default")


def builds_below_best() -> list[str]:
    """The CPU kernel's builds this machine runs besides its best one (make test-cpu-builds
    runs the kernel tests on each): avx2 and default on an AVX-512 CPU, default on an
    AVX2-only one."""
    best = expected_kernel("avx512")
    return [b for b in BUILDS_BEST_FIRST[BUILDS_BEST_FIRST.index(best) + 1:] if can_run(b)]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--builds-below-best"]:
        sys.exit("usage: python -m tests.support.machine --builds-below-best")
    print(" ".join(builds_below_best()))
