// The CPU kernel for CPUs with AVX-512 (F, BW, VL, DQ; chosen at run time when
// torch's own kernels run AVX-512 too): the AVX2 file's recipe (see there) with
// ATen's 512-bit Vectorized<float>. Sixteen floats per vector instead of eight:
// the float16/bfloat16 conversions, which bound the half-precision step on the
// CPU, take half the instructions (benchmarks/NOTES.md, 2026-11-29).
// LARS_CUDA_NO_AVX2=1 leaves this file empty as well.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#include "x86_prelude.h"

#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#include "x86_avx2_macros.h"
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
#define LARS_CPU_NS cpu_avx512
#include "lars_cpu_kernel.h"
#include "lamb_cpu_kernel.h"
#endif
