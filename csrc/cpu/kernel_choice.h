// Which build of the CPU kernels (LARS and LAMB, compiled together per
// instruction set) runs on this machine; defined in lars_cpu.cpp.
#pragma once

namespace lars_cuda {

enum class CpuKernel { kDefault, kAvx2, kAvx512 };

// The instruction set torch's own CPU kernels run (ATEN_CPU_CAPABILITY moves it),
// capped by what this CPU and this build hold; LARS_CUDA_CPU_KERNEL=default|avx2|
// avx512 asks for one (the tests run each), again capped.
CpuKernel cpu_kernel_choice();

}  // namespace lars_cuda
