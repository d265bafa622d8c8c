"""Line coverage of the CUDA device code (csrc/cuda/*.cuh, csrc/lars.h) and the host
headers both builds share (csrc/cuda/*.h) by the
emulated kernel's tests: builds the coverage variant of the emulated backend
(-O0 --coverage), runs tests/integration/test_emulated_cuda.py on it, and reads gcov's
per-line counts of every object that includes those files (merged: a line is
covered if any object ran it). Prints each file's covered/executable lines and
every uncovered line with its text; exits 1 if any executable line was not run.

    python scripts/emulator_coverage.py          (make emulator-coverage)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build", "cuda_emulator", "coverage")
CUDA_SOURCES = os.path.join(REPO, "csrc", "cuda")
TARGETS = sorted(glob.glob(os.path.join(CUDA_SOURCES, "*.cuh")) + glob.glob(os.path.join(CUDA_SOURCES, "*.h"))) + [
    os.path.join(REPO, "csrc", "lars.h")]
# Why a target has no line counts: gcov reports only files with executable lines in an object of the build.
NO_COUNTS = {
    "csrc/cuda/device_table.cuh": "no executable lines (the table's layout and constants only)",
    "csrc/cuda/launch.cuh": "not in the emulated build: the launch's CUDA runtime calls (occupancy, "
                            "cudaLaunchCooperativeKernel, <<<>>>); its decisions are launch_plan.h's, which is",
    "csrc/cuda/tensor_table.cuh": "a declaration only (the cache it declares is tensor_table.cu's CUDA runtime code)",
}


def run_tests() -> None:
    shutil.rmtree(BUILD, ignore_errors=True)
    env = dict(os.environ, LARS_CUDA_EMULATOR_VARIANT="coverage")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "tests/integration/test_emulated_cuda.py", "-k", "not sanitiz"], cwd=REPO, env=env, check=True)


def line_counts() -> dict[str, dict[int, tuple[int, str]]]:
    """{file: {line: (count, text)}} over every object of the build (count -1: not executable)."""
    out: dict[str, dict[int, tuple[int, str]]] = {}
    work = os.path.join(BUILD, "gcov")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for obj in glob.glob(os.path.join(BUILD, "*.o")):
        subprocess.run(["gcov", "-p", "-o", BUILD, obj], cwd=work, capture_output=True, check=True)
        for report in glob.glob(os.path.join(work, "*.gcov")):
            source = None
            counts: dict[int, tuple[int, str]] = {}
            with open(report) as f:
                for raw in f:
                    count, line, text = (raw.rstrip("\n").split(":", 2) + ["", ""])[:3]
                    count, line = count.strip(), int(line.strip() or 0)
                    if line == 0:
                        if text.startswith("Source:"):
                            source = os.path.realpath(text[len("Source:"):])
                        continue
                    n = -1 if count == "-" else 0 if count in ("#####", "=====") else int(count.rstrip("*"))
                    counts[line] = (n, text)
            os.remove(report)
            if source in TARGETS:
                merged = out.setdefault(source, {})
                for line, (n, text) in counts.items():
                    old = merged.get(line, (-1, text))[0]
                    merged[line] = (max(old, n) if n >= 0 or old >= 0 else -1, text)
    return out


def main() -> int:
    if "--report-only" not in sys.argv:
        run_tests()
    counts = line_counts()
    missing = 0
    for path in TARGETS:
        lines = counts.get(os.path.realpath(path), {})
        executable = {k: v for k, v in lines.items() if v[0] >= 0}
        uncovered = sorted(k for k, v in executable.items() if v[0] == 0)
        rel = os.path.relpath(path, REPO)
        if not lines:
            print(f"{rel}: {NO_COUNTS.get(rel, 'NO LINE COUNTS: no object of the build ran it')}")
            missing += rel not in NO_COUNTS
            continue
        print(f"{rel}: {len(executable) - len(uncovered)} of {len(executable)} executable lines run")
        for k in uncovered:
            print(f"    {k}: {executable[k][1].strip()}")
        missing += len(uncovered)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
