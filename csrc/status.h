// What the backends report to Python: the last CUDA launch path, whether the
// CUDA build has code for a device, which CPU build runs.
#pragma once

#include <cstdint>
#include <string>

namespace lars_cuda {

// Which launch path the CUDA implementation took last (reported to Python).
// `kind` is a string literal (stored as a pointer, atomically: the hot path takes no lock).
void set_last_cuda_launch(const char* kind);
std::string last_cuda_launch();

// Whether the CUDA kernel has code (SASS, or PTX the driver can compile) for a
// device; the CUDA translation unit installs the probe, a CPU-only build answers false.
using CudaProbe = bool (*)(int64_t device);
CudaProbe& cuda_kernel_probe();

// Which build of the CPU kernel runs here: "avx512", "avx2" or "default".
std::string cpu_kernel_variant();

}  // namespace lars_cuda
