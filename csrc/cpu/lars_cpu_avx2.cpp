// The CPU kernel for CPUs with AVX2 and FMA (chosen at run time): this file
// alone is compiled for them, with ATen's 256-bit Vectorized<float> in a
// namespace of its own (CPU_CAPABILITY), as ATen compiles its own kernels.
// setuptools has no per-file flags, so the target pragma stands in for
// -mavx2 -mfma -mf16c (x86_avx2_macros.h sets the macros they would define);
// x86_prelude.h says what must be parsed before the pragma, and why.
// LARS_CUDA_NO_AVX2 (setup.py: LARS_CUDA_NO_AVX2=1) leaves this file empty for
// a compiler that still refuses; the portable kernel then runs everywhere.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#include "x86_prelude.h"

#pragma GCC target("avx,avx2,fma,f16c")
#include "x86_avx2_macros.h"
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#define LARS_CPU_NS cpu_avx2
#include "lars_cpu_kernel.h"
#include "lamb_cpu_kernel.h"
#endif
