// The CPU kernel for CPUs with AVX2 and FMA (chosen at run time): this file
// alone is compiled for them, with ATen's 256-bit Vectorized<float> in a
// namespace of its own (CPU_CAPABILITY), as ATen compiles its own kernels.
// setuptools has no per-file flags, so the target pragma stands in for
// -mavx2 -mfma -mf16c, and the macros those flags would define are set by hand
// (sleef.h, included by ATen's AVX2 vectors, declares its AVX functions under them).
//
// Every header that does not need AVX2 is parsed before the pragma: GCC 13
// refuses to inline a libstdc++ always_inline function parsed under the
// pragma into one parsed without it ("target specific option mismatch").
// LARS_CUDA_NO_AVX2 (setup.py: LARS_CUDA_NO_AVX2=1) leaves this file empty for
// a compiler that still refuses; the portable kernel then runs everywhere.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "../lars_op.h"

#pragma GCC target("avx,avx2,fma,f16c")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#define LARS_CPU_NS cpu_avx2
#include "lars_cpu_kernel.h"
#endif
