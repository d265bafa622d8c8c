// The tensor table's layout, computed on the host from a bucket (pure C++: no
// CUDA runtime call), so the CUDA build (tensor_table.cu copies it to the
// device) and the emulated build (tests/cuda_emulator) lay it out the same way:
// one row per tensor, its chunks of kChunk elements, waves of consecutive
// tensors, and the offsets of each part in one buffer of `bytes` bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../buckets.h"
#include "device_table.cuh"

namespace lars_cuda {
namespace cuda_impl {

struct TableLayout {
  std::vector<TensorRow> rows;
  std::vector<ChunkRow> chunks;
  std::vector<WaveRow> waves;
  int64_t off_chunks = 0, off_waves = 0, off_partials = 0, off_steps = 0, bytes = 0;
};

inline int64_t align16(int64_t x) { return (x + 15) / 16 * 16; }

inline void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// `wave_limit`: params+grads bytes per wave; 0 is one wave.
inline TableLayout table_layout(const Bucket& b, int64_t wave_limit) {
  TableLayout l;
  const int64_t n_tensors = static_cast<int64_t>(b.params.size());
  l.rows.resize(n_tensors);
  int64_t wave_used = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const at::Tensor& p = b.params[t];
    const at::Tensor& g = b.grads[t];
    const int64_t n = p.numel();
    void* m = ptr_or_null(b.bufs[t]);
    const bool vec_ok = aligned16(p.data_ptr()) && aligned16(g.data_ptr()) && (m == nullptr || aligned16(m));
    // A wave closes before the tensor that would overflow it; a tensor larger
    // than a wave is a wave of its own.
    const int64_t bytes = n * (p.element_size() + g.element_size());
    if (l.waves.empty() || (wave_limit > 0 && wave_used > 0 && wave_used + bytes > wave_limit)) {
      const int64_t c0 = static_cast<int64_t>(l.chunks.size());
      l.waves.push_back({c0, c0, t, t});
      wave_used = 0;
    }
    wave_used += bytes;
    l.rows[t] = {p.data_ptr(), g.data_ptr(), m, static_cast<int64_t>(l.chunks.size()), 0, n, b.index[t],
                 vec_ok ? 1 : 0, static_cast<int32_t>(b.group[t])};
    for (int64_t s = 0; s < n; s += kChunk) l.chunks.push_back({t, s, std::min(n, s + kChunk)});
    l.rows[t].n_chunks = static_cast<int64_t>(l.chunks.size()) - l.rows[t].first_chunk;
    l.waves.back().end_chunk = static_cast<int64_t>(l.chunks.size());
    l.waves.back().end_tensor = t + 1;
  }
  const int64_t n_chunks = static_cast<int64_t>(l.chunks.size());
  l.off_chunks = align16(n_tensors * static_cast<int64_t>(sizeof(TensorRow)));
  l.off_waves = l.off_chunks + align16(n_chunks * static_cast<int64_t>(sizeof(ChunkRow)));
  l.off_partials = l.off_waves + align16(static_cast<int64_t>(l.waves.size() * sizeof(WaveRow)));
  l.off_steps = l.off_partials + align16(n_chunks * static_cast<int64_t>(sizeof(device_code::Sums3)));
  l.bytes = l.off_steps + align16(n_tensors * static_cast<int64_t>(sizeof(TensorStep)));
  return l;
}

// The kernel's view of a buffer holding the layout at `base` (device memory on a GPU).
inline DeviceTable table_at(const TableLayout& l, uint8_t* base) {
  return {reinterpret_cast<const TensorRow*>(base),
          reinterpret_cast<const ChunkRow*>(base + l.off_chunks),
          reinterpret_cast<const WaveRow*>(base + l.off_waves),
          reinterpret_cast<device_code::Sums3*>(base + l.off_partials),
          reinterpret_cast<TensorStep*>(base + l.off_steps),
          static_cast<int64_t>(l.rows.size()),
          static_cast<int64_t>(l.chunks.size()),
          static_cast<int64_t>(l.waves.size())};
}

}  // namespace cuda_impl
}  // namespace lars_cuda
