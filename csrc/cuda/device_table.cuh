// The layout of the tensor table the kernel walks (rows per tensor, chunk and
// wave lists, partials, steps), shared by the kernel (kernel.cuh) and the
// host code that lays it out (table_layout.h) and caches it (tensor_table.cu).
#pragma once

#include <cstdint>

#include "../lars.h"
#include "traversal.cuh"

namespace lars_cuda {
namespace cuda_impl {

using device_code::kThreads;
using device_code::kWarps;

constexpr int kMinBlocksPerSm = 3;  // caps registers at 80 per thread (768 threads per SM): no spills
// Elements per norm partial: the unit of determinism, and small enough that a
// wave of a few MiB still spreads over every SM.
constexpr int64_t kChunk = 8192;
constexpr int kNormUnroll = 2;    // 16-byte loads of p and g in flight per thread
constexpr int kUpdateUnroll = 1;  // of p, g and m (1024 threads per SM keep enough bytes in flight)
constexpr int kPhaseNorms = 1, kPhaseRatios = 2, kPhaseUpdate = 4, kGridSync = 8;
// Param groups per launch: their options travel in the kernel's arguments.
constexpr int kMaxGroups = 8;

struct TensorRow {
  void* p;
  const void* g;
  void* m;  // nullptr without momentum
  int64_t first_chunk;
  int64_t n_chunks;
  int64_t numel;
  int64_t index;   // position in the op call's flat list: the tensor's row of the sums (SumsIO)
  int32_t vec_ok;  // p, g and m all 16-byte aligned
  int32_t group;   // index into LaunchGroups::g
};

struct ChunkRow {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct WaveRow {
  int64_t first_chunk, end_chunk;    // chunks [first, end)
  int64_t first_tensor, end_tensor;  // tensors [first, end)
};

struct DeviceTable {
  const TensorRow* tensors;
  const ChunkRow* chunks;
  const WaveRow* waves;
  device_code::Sums3* partials;  // per chunk: (sum p^2, sum g^2, sum p*g)
  TensorStep* steps;      // per tensor: step, d's scale, applied weight decay (lars.h)
  int64_t n_tensors;
  int64_t n_chunks;
  int64_t n_waves;
};

}  // namespace cuda_impl
}  // namespace lars_cuda
