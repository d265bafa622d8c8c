"""Builds lars_cuda._C: a CUDAExtension when nvcc and a CUDA build of torch are
present, else a CPU-only CppExtension. Build without isolation (an isolated
build would fetch another torch):  pip install --no-build-isolation -e .

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
from setuptools import find_packages, setup  # noqa: E402
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


def _extension():
    cpp = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"]
    if os.environ.get("LARS_CUDA_NO_AVX2") == "1":
        cxx.append("-DLARS_CUDA_NO_AVX2")
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        return CUDAExtension(
            "lars_cuda._C",
            cpp + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=_cuda_library_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("lars_cuda._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    name="lars_cuda",
    version="0.1.0",
    description="Exact, fused LARS optimizer for PyTorch (C++/CUDA multi-tensor kernels)",
    packages=find_packages(include=["lars_cuda", "lars_cuda.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
    zip_safe=False,
)
