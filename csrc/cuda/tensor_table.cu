// The cached tensor tables (tensor_table.cuh): a bucket's layout
// (table_layout.h) copied to the device once per parameter list (table_cache.h).
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "table_cache.h"
#include "table_layout.h"
#include "tensor_table.cuh"

namespace lars_cuda {
namespace cuda_impl {
namespace {

// A table's device bytes (rows, chunks, waves, partials, steps) and its pointers.
struct CachedTable {
  at::Tensor storage;
  DeviceTable table;
};

TableCache<CachedTable>& cache() {
  static TableCache<CachedTable> c;
  return c;
}

std::vector<int64_t> table_key(const Bucket& b, int64_t wave) {
  std::vector<int64_t> key;
  key.reserve(6 * b.params.size() + 3);
  key.push_back(b.params[0].get_device());
  key.push_back(static_cast<int64_t>(b.p_type) * 64 + static_cast<int64_t>(b.g_type));
  key.push_back(wave);
  for (size_t i = 0; i < b.params.size(); ++i) {
    key.push_back(reinterpret_cast<int64_t>(b.params[i].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(b.grads[i].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(ptr_or_null(b.bufs[i])));
    key.push_back(b.params[i].numel());
    key.push_back(b.group[i]);
    key.push_back(b.index[i]);
  }
  return key;
}

// The rows, chunks and waves into a host buffer of l.bytes bytes (partials and
// steps are the kernel's scratch: left as they are).
void write_layout(const TableLayout& l, uint8_t* host) {
  std::memcpy(host, l.rows.data(), l.rows.size() * sizeof(TensorRow));
  std::memcpy(host + l.off_chunks, l.chunks.data(), l.chunks.size() * sizeof(ChunkRow));
  std::memcpy(host + l.off_waves, l.waves.data(), l.waves.size() * sizeof(WaveRow));
}

CachedTable build_table(const Bucket& b, int64_t wave_limit) {
  const TableLayout layout = table_layout(b, wave_limit);
  at::Tensor host = at::empty({layout.bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  write_layout(layout, host.data_ptr<uint8_t>());
  at::Tensor dev = at::empty({layout.bytes}, b.params[0].options().dtype(at::kByte));
  // Asynchronous from pinned memory; the host allocator keeps `host` alive until the copy ran.
  dev.copy_(host, /*non_blocking=*/true);
  return CachedTable{dev, table_at(layout, dev.data_ptr<uint8_t>())};
}

}  // namespace

DeviceTable get_table(const Bucket& b, int64_t wave, const char* op) {
  return cache().get(table_key(b, wave), op, [&] { return build_table(b, wave); }).table;
}

}  // namespace cuda_impl
}  // namespace lars_cuda
