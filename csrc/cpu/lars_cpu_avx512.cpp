// The CPU kernel for CPUs with AVX-512 (F, BW, VL, DQ; chosen at run time when
// torch's own kernels run AVX-512 too): the AVX2 file's recipe (see there) with
// ATen's 512-bit Vectorized<float>. Sixteen floats per vector instead of eight:
// the float16/bfloat16 conversions, which bound the half-precision step on the
// CPU, take half the instructions (benchmarks/NOTES.md, 2026-11-29).
// LARS_CUDA_NO_AVX2=1 leaves this file empty as well.
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

#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
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
#endif
