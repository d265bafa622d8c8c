// The CPU kernel for CPUs with AVX2 and FMA (chosen at run time): this file
// alone is compiled for them, with ATen's 256-bit Vectorized<float> in a
// namespace of its own (CPU_CAPABILITY), as ATen compiles its own kernels.
// setuptools has no per-file flags, so the target pragma stands in for
// -mavx2 -mfma -mf16c, and the macros those flags would define are set by hand
// (sleef.h, included by ATen's AVX2 vectors, declares its AVX functions under them).
//
// The C++ standard library (and ATen's own headers, which pull most of it in)
// are parsed before the pragma: libstdc++ 13 marks std::allocator's members
// always_inline, and GCC 13 refuses to inline one parsed under the pragma into
// an implicitly defined destructor parsed without it ("target specific option
// mismatch"). Our headers (lars.h's element math) and ATen's vector headers come
// after it, so they are compiled for AVX2 — parsing lars.h before the pragma
// made the kernel 2x slower (measured).
// LARS_CUDA_NO_AVX2 (setup.py: LARS_CUDA_NO_AVX2=1) leaves this file empty for
// a compiler that still refuses; the portable kernel then runs everywhere.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <climits>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

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
