// What our device code uses of CUDA's built-ins, for the emulator (../emulator.h).
// This folder is on the include path of the emulated build only, ahead of any
// CUDA toolkit, so `#include <cuda_runtime.h>` in csrc/cuda/*.cuh lands here and
// the device code compiles unmodified with g++.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../emulator.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A block's fibers share one OS thread (emulator.h): per-thread statics are per block.
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

// Set by the emulator: blockIdx, gridDim and blockDim once per block (its OS
// thread), threadIdx each time it resumes a fiber.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// Cache-hinted loads and stores: plain ones that check natural alignment (a
// misaligned 16-byte access faults on a GPU).
template <typename T>
inline T __ldcg(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::check_aligned(p, sizeof(T), "__ldcg: a load", file, line);
  return *p;
}
template <typename T>
inline T __ldcs(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::check_aligned(p, sizeof(T), "__ldcs: a load", file, line);
  return *p;
}
template <typename T>
inline void __stcs(T* p, const T& v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::check_aligned(p, sizeof(T), "__stcs: a store", file, line);
  *p = v;
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  T out;
  emu::shuffle_down(mask, &var, &out, static_cast<int>(sizeof(T)), delta, width, file, line);
  return out;
}

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::sync_block(file, line);
}
