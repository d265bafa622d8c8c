"""Builds the emulated CUDA backend (emulated_ops.cpp: csrc/cuda's device code run by
the emulator on CPU tensors) with torch.utils.cpp_extension, and loads it, which
registers torch.ops.lars_cuda_emulated.*. Variants:

  plain      -O2, what the emulated tests run
  sanitized  AddressSanitizer + UndefinedBehaviorSanitizer (load it in a process
             started with LD_PRELOAD=<libasan>, see sanitizer_env())
  coverage   -O0 --coverage, for gcov/gcovr (scripts/emulator_coverage.sh)

    python -m tests.support.cuda_emulator.build [VARIANT]   builds it (the tests build it on first use)
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CSRC = os.path.join(REPO, "csrc")

SOURCES = [
    os.path.join(HERE, "emulator.cpp"),
    os.path.join(HERE, "emulated_ops.cpp"),
    os.path.join(HERE, "selftest_kernels.cpp"),
    os.path.join(CSRC, "group_args.cpp"),
    os.path.join(CSRC, "buckets.cpp"),
    os.path.join(CSRC, "lamb_args.cpp"),
    os.path.join(CSRC, "lamb_buckets.cpp"),
]

FLAGS = {
    "plain": (["-O2"], []),
    "sanitized": (["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=all"], ["-fsanitize=address,undefined"]),
    "coverage": (["-O0", "--coverage"], ["--coverage"]),
}


def build_directory(variant: str) -> str:
    return os.path.join(REPO, "build", "cuda_emulator", variant)


def load(variant: str = "plain", verbose: bool = False) -> None:
    """Builds (ninja: only what changed) and loads the variant into this process."""
    from torch.utils.cpp_extension import load as load_extension

    cflags, ldflags = FLAGS[variant]
    os.makedirs(build_directory(variant), exist_ok=True)
    load_extension(
        name=f"lars_cuda_emulated_{variant}",
        sources=SOURCES,
        extra_include_paths=[os.path.join(HERE, "include"), CSRC],
        extra_cflags=cflags + ["-Wno-unknown-pragmas"],
        extra_ldflags=ldflags,
        build_directory=build_directory(variant),
        is_python_module=False,
        verbose=verbose,
    )


def sanitizer_env() -> dict[str, str]:
    """The environment a process needs to load the sanitized variant: ASan's runtime
    first (an uninstrumented python otherwise refuses it), no leak report (torch's
    allocations outlive the tests), and every report fatal."""
    def lib(name):
        return subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()

    # libstdc++ too: ASan's __cxa_throw interceptor needs the real one at start-up
    # (python does not link libstdc++), else the first C++ exception aborts.
    return dict(os.environ, LD_PRELOAD=f"{lib('libasan.so')} {lib('libstdc++.so.6')}",
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")


if __name__ == "__main__":
    load(sys.argv[1] if len(sys.argv) > 1 else "plain", verbose=True)
    print("built and loaded")
