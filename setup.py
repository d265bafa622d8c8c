"""Builds lars_cuda._C: a CUDAExtension when nvcc and a CUDA build of torch are
present, else a CPU-only CppExtension (package metadata: pyproject.toml). Build
without isolation: the extension must be compiled against the torch it will run
with, and an isolated build would install another torch into a throwaway
environment:  pip install --no-build-isolation .   (or -e . for development,
or `pip wheel --no-build-isolation .` for a wheel)

Environment:
  LARS_CUDA_FORCE_CPU=1      build the CPU kernel only
  LARS_CUDA_NO_AVX2=1        leave out the AVX2 and AVX-512 builds of the CPU kernel
                             (for a compiler that rejects their target pragmas)
  TORCH_CUDA_ARCH_LIST       defaults to "8.0;9.0+PTX" when no GPU is visible: SASS for
                             A100 and H100/H200, and compute_90 PTX that the driver
                             compiles for any newer card (Blackwell and on)
  CUDA_HOME                  the toolkit folder (not a wrapper's parent)
"""
import glob
import os
import shutil

# torch guesses CUDA_HOME from `which nvcc` at import time; on machines where
# nvcc is a wrapper script that guess is wrong, so point it at the toolkit first.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda/bin"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("LARS_CUDA_FORCE_CPU") == "1":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    return os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None


def _cuda_library_includes() -> list[str]:
    """Headers of the CUDA libraries torch links (cuSPARSE, cuBLAS, ...) that pip's
    nvidia-* wheels hold and a bare toolkit may lack; ATen's CUDA headers include them."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    found = glob.glob(os.path.join(site, "nvidia", "*", "include")) + glob.glob(
        os.path.join(site, "nvidia", "*", "*", "include"))
    return sorted(d for d in found if os.path.exists(os.path.join(d, "cusparse.h")))


def _cuda_code(arch_flags: list[str]) -> tuple[list[str], list[str]]:
    """(SASS archs, PTX archs) that nvcc's -gencode flags ask for: code=sm_90 / code=compute_90."""
    sass, ptx = [], []
    for flag in arch_flags:
        if "code=" not in flag:
            continue
        for code in flag.rsplit("code=", 1)[1].strip("[]").split(","):
            if code.startswith("compute_"):
                ptx.append(code)
            elif code.startswith("sm_"):
                sass.append(code)
    return sorted(set(sass)), sorted(set(ptx))


def _write_build_info(with_cuda: bool) -> None:
    """lars_cuda/_build_info.json: what this build holds and what it was built against,
    for `python -m lars_cuda` (lars_cuda/diagnostics.py), which must work even when
    the compiled library no longer loads."""
    import json
    import platform

    from torch.utils.cpp_extension import _get_cuda_arch_flags

    sass, ptx = _cuda_code(_get_cuda_arch_flags()) if with_cuda else ([], [])
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    info = {
        "version": VERSION,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_home": CUDA_HOME if with_cuda else None,
        "cuda_sass": sass,
        "cuda_ptx": ptx,
        "cpu_builds": ["default"] + (["avx2", "avx512"] if x86 and os.environ.get("LARS_CUDA_NO_AVX2") != "1" else []),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "source": HERE,
    }
    with open(os.path.join(HERE, "lars_cuda", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def _extension():
    cpp = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"]
    if os.environ.get("LARS_CUDA_NO_AVX2") == "1":
        cxx.append("-DLARS_CUDA_NO_AVX2")
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        _write_build_info(with_cuda=True)
        return CUDAExtension(
            "lars_cuda._C",
            cpp + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=_cuda_library_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    _write_build_info(with_cuda=False)
    return CppExtension("lars_cuda._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


def _version() -> str:
    """lars_cuda/_version.py, the one place the version is written (pyproject.toml reads it too)."""
    scope: dict = {}
    with open(os.path.join(HERE, "lars_cuda", "_version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


VERSION = _version()

# Metadata lives in pyproject.toml; this file only describes the compiled extension.
setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
